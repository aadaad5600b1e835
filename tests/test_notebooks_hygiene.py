"""Every committed notebook: valid, outputs stripped, an H1 title,
and a papermill parameters cell of plain literals."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: the notebook sequence the design promises; those not written yet are skipped, not failed
EXPECTED = [
    "00_quickstart",
    "01_clip_attention_per_layer",
    "02_early_layer_fusion",
    "03_sd_self_attention",
    "04_fine_grained_compensation",
    "05_benchmark_evaluation",
    "06_interactive_layer_tuning",
]


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _parameters_cell(nb) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected exactly one cell tagged 'parameters', found {len(cells)}"
    assert cells[0].cell_type == "code"
    return cells[0]


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
    for p in NOTEBOOKS:
        assert p.stem[:2].isdigit() and p.stem[2] == "_", f"{p.name}: name notebooks NN_topic.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_valid_and_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], (
                f"{path.name} cell {i} has outputs: strip them before committing"
            )
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
        assert "injected-parameters" not in cell.metadata.get("tags", []), (
            f"{path.name}: papermill's copy?"
        )
        assert "papermill" not in cell.metadata and "execution" not in cell.metadata, (
            f"{path.name} cell {i} carries execution metadata"
        )
    # saved widget state is output too (and large); so is papermill's notebook-level record
    assert "widgets" not in nb.metadata and "papermill" not in nb.metadata, (
        f"{path.name}: strip metadata"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_title(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0] if nb.cells else None
    assert first is not None and first.cell_type == "markdown", (
        f"{path.name}: start with a markdown cell"
    )
    lines = [ln for ln in first.source.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("# "), (
        f"{path.name}: the first markdown cell starts with an H1 title"
    )
    assert len(lines) > 1, f"{path.name}: add a one-line summary under the title"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_parameters_cell_plain_literals(path):
    nb = nbformat.read(path, as_version=4)
    cell = _parameters_cell(nb)
    tree = ast.parse(cell.source)
    names = []
    for node in tree.body:
        assert isinstance(node, (ast.Assign, ast.AnnAssign)), (
            f"{path.name} parameters line {node.lineno}: only assignments belong here "
            "(no imports, calls, ifs)"
        )
        assert node.value is not None, (
            f"{path.name} parameters line {node.lineno}: give a default value"
        )
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        assert len(targets) == 1 and isinstance(targets[0], ast.Name), (
            f"{path.name} parameters line {node.lineno}: one plain name per line"
        )
        try:
            ast.literal_eval(node.value)
        except ValueError:
            pytest.fail(
                f"{path.name} parameters line {node.lineno}: {ast.unparse(node.value)} is not a "
                "plain literal; derive values in a later cell "
                "(papermill injects its cell after this one)"
            )
        names.append(targets[0].id)
    assert names and names[0] == "profile", (
        f"{path.name}: the first parameter must be profile, got {names[:1]}"
    )
    assert len(set(names)) == len(names), f"{path.name}: a parameter is assigned twice"
    profile = ast.literal_eval(tree.body[0].value)
    assert profile == "auto", (
        f"{path.name}: profile defaults to 'auto' (the paper's weights when cached, else smoke; "
        "$CLIPER_PROFILE overrides it for every notebook)"
    )
    lines = cell.source.splitlines()
    for (
        node
    ) in tree.body:  # the comment sits on the statement's last line (papermill reads it as help)
        assert "#" in lines[node.end_lineno - 1], (
            f"{path.name}: comment every parameter: {lines[node.lineno - 1]!r}"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_papermill_sees_every_parameter(path, caplog):
    """papermill's own parser skips any line with a second '=' (even in a comment);
    keep them all visible."""
    import papermill

    nb = nbformat.read(path, as_version=4)
    statements = [
        n
        for n in ast.parse(_parameters_cell(nb).source).body
        if isinstance(n, (ast.Assign, ast.AnnAssign))
    ]
    declared = [
        t.id
        for n in statements
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Name)
    ]
    with caplog.at_level(logging.WARNING, logger="papermill"):
        seen = papermill.inspect_notebook(str(path))
    assert list(seen) == declared, (
        f"{path.name}: papermill sees {list(seen)}; avoid '=' in parameter comments"
    )


def test_planned_notebooks_are_known():
    """The smoke plan names exactly the design's notebook sequence (those missing are
    not yet written)."""
    from cliper_lib.suite.runs.plans import load_plan

    assert [r.notebook.stem for r in load_plan("smoke").runs] == EXPECTED
    unknown = sorted(set(p.stem for p in NOTEBOOKS) - set(EXPECTED))
    assert not unknown, f"notebooks {unknown} are in no run plan: add them to papermill_runs/*.yaml"
