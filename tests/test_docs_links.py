"""What the notebooks, README.md and docs/ name exists: every `cliper_lib.…` dotted name imports
or is an attribute, and every relative link points to a file or folder of the repository."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from cliper_lib.provenance import REPO_ROOT

DOTTED = re.compile(r"\bcliper_lib(?:\.[A-Za-z_]\w*)+")
# [text](target) and ![alt](target), an optional "title" after the target; src= / href= in HTML
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"\b(?:src|href)=\"([^\"]+)\"")
NOT_RELATIVE = ("http://", "https://", "mailto:", "data:", "#")


def documents() -> list[Path]:
    """The files whose prose a reader follows: the notebooks, README.md, docs/ and the runner's
    README."""
    return [
        REPO_ROOT / "README.md",
        REPO_ROOT / "papermill_runs" / "README.md",
        *sorted((REPO_ROOT / "docs").rglob("*.md")),
        *sorted((REPO_ROOT / "notebooks").glob("*.ipynb")),
    ]


def texts(path: Path) -> tuple[str, str]:
    """(prose with its links, everything that may name code): for a notebook the markdown cells,
    and all cells; for markdown the file twice."""
    if path.suffix != ".ipynb":
        text = path.read_text(encoding="utf-8")
        return text, text
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]

    def source(cell: dict) -> str:
        text = cell.get("source", "")
        return "".join(text) if isinstance(text, list) else text

    prose = "\n".join(source(c) for c in cells if c["cell_type"] == "markdown")
    return prose, "\n".join(source(c) for c in cells)


def resolves(dotted: str) -> bool:
    """Whether `dotted` is a module or an attribute, part by part: an attribute of what came
    before, or a submodule of a package."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=2):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if not hasattr(obj, "__path__"):  # not a package: nothing more to import
            return False
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # the module exists but fails inside: say so
                raise
            return False
    return True


def relative_links(prose: str) -> list[str]:
    targets = MARKDOWN_LINK.findall(prose) + HTML_LINK.findall(prose)
    return [t for t in targets if not t.startswith(NOT_RELATIVE)]


def test_the_scan_finds_names_and_links():
    """The patterns catch what the documents write (a guard against a scan that checks nothing)."""
    sample = (
        "See `cliper_lib.suite.runs.notebook.publish(name)` and [the plan](../papermill_runs/"
        'smoke.yaml#defaults) or ![fig](pipeline.svg "title"), <img src="a/b.png">, '
        "[web](https://arxiv.org/abs/2411.13836), [here](#top)."
    )
    assert DOTTED.findall(sample) == ["cliper_lib.suite.runs.notebook.publish"]
    links = ["../papermill_runs/smoke.yaml#defaults", "pipeline.svg", "a/b.png"]
    assert relative_links(sample) == links  # not the web address, not the anchor
    assert resolves("cliper_lib.config.CLIPerConfig.from_preset")
    assert resolves("cliper_lib.method.stages")
    assert not resolves("cliper_lib.fusion") and not resolves("cliper_lib.config.NoSuchThing")
    assert len(documents()) >= 1 + 7  # README and the seven notebooks at least


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_dotted_name_resolves(path):
    _, code = texts(path)
    broken = sorted({name for name in DOTTED.findall(code) if not resolves(name)})
    assert not broken, f"{path.relative_to(REPO_ROOT)} names what does not exist: {broken}"


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_points_to_a_file(path):
    prose, _ = texts(path)
    broken = sorted(
        {
            target
            for target in relative_links(prose)
            if not (path.parent / target.split("#", 1)[0]).exists()
        }
    )
    assert not broken, f"{path.relative_to(REPO_ROOT)} links what does not exist: {broken}"
