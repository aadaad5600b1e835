"""docs/pipeline.svg is what the code draws from the stage graph: every stage and arrow, each box
naming an existing notebook, no box on another, and the committed file current."""

from __future__ import annotations

import re

import pytest

from cliper_lib.method.stages import GRAPH, RUN_INPUTS
from cliper_lib.provenance import REPO_ROOT
from cliper_lib.suite.toolkit import pipeline_figure as figure


def test_the_committed_svg_is_what_the_code_draws():
    committed = figure.SVG_PATH.read_text(encoding="utf-8")
    assert committed == figure.pipeline_svg(), (
        "docs/pipeline.svg is out of date: python -m cliper_lib.suite.toolkit.pipeline_figure"
    )
    assert len(committed.encode()) < 300_000
    for name in (*RUN_INPUTS, *(s.name for s in GRAPH)):
        assert re.search(rf">\s*{name}\s*<", committed), name  # each box is labelled, as text
    labels = re.findall(r">\s*notebook (\d\d)\s*<", committed)
    assert len(labels) == len(RUN_INPUTS) + len(GRAPH) and set(labels) <= set(figure.NOTEBOOKS)


def test_every_stage_names_a_notebook_that_exists():
    nodes = {*RUN_INPUTS, *(s.name for s in GRAPH)}
    assert set(figure.STAGE_NOTEBOOK) == nodes  # a new stage cannot be left out of the picture
    on_disk = {p.name[:2] for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert set(figure.NOTEBOOKS) == on_disk
    named = set(figure.STAGE_NOTEBOOK.values()) | set(figure.BEYOND_STAGES)
    assert named == on_disk  # and every notebook appears somewhere in the figure


def test_layout_draws_every_arrow_left_to_right_without_overlaps():
    plan = figure.layout()
    arrows = {(need, s.name) for s in GRAPH for need in (*s.needs, *s.may_need)}
    assert {(e.source, e.target) for e in plan.routes} == arrows
    dashed = {(need, s.name) for s in GRAPH for need in s.may_need}
    assert {(e.source, e.target) for e in plan.routes if e.dashed} == dashed
    for edge, bends in plan.routes.items():
        start, end = plan.position[edge.source][0], plan.position[edge.target][0]
        assert start < end
        assert [c for c, _ in bends] == list(range(start + 1, end))  # one bend per column crossed
    taken: dict[int, list[float]] = {}
    for column, slot in [*plan.position.values(), *(b for r in plan.routes.values() for b in r)]:
        taken.setdefault(column, []).append(slot)
    for slots in taken.values():
        slots.sort()
        assert all(b - a >= 1 - 1e-6 for a, b in zip(slots, slots[1:], strict=False)), slots


def test_highlighting_a_chapter():
    assert figure.pipeline_figure(highlight="02") is not None
    with pytest.raises(ValueError, match=r"highlight=\['07'\]"):
        figure.pipeline_figure(highlight=["02", "07"])


def test_the_docs_show_it():
    for doc in ("README.md", "docs/method.md", "docs/architecture.md"):
        text = (REPO_ROOT / doc).read_text(encoding="utf-8")
        assert "pipeline.svg" in text, doc
