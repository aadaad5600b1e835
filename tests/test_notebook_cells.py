"""The notebooks read as teaching, not plumbing: code cells of at most ten lines (imports and
comments aside) outside the one bookkeeping cell at the end, the parameters cell included; a
paper link on top of each; exercises in 01-06; the profile resolved and shown right after the
parameters; one notation."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
WITH_EXERCISES = [p for p in NOTEBOOKS if p.stem[:2] in {"01", "02", "03", "04", "05", "06"}]
PAPER_URL = "https://arxiv.org/abs/2411.13836"
MAX_LINES = 10
EXERCISE_HEADING = re.compile(r"^#{2,4} Exercise \d+\.\d+ · ", re.MULTILINE)


def counted_lines(source: str) -> int:
    """Lines of a code cell that count: not blank, not a comment, not part of an import."""
    lines = source.splitlines()
    skipped = set()
    try:
        tree = ast.parse("\n".join("pass" if ln.lstrip().startswith("%") else ln for ln in lines))
    except SyntaxError:
        tree = None
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skipped.update(range(node.lineno - 1, node.end_lineno))
    return sum(
        1
        for i, line in enumerate(lines)
        if line.strip() and not line.lstrip().startswith("#") and i not in skipped
    )


def test_counted_lines_sets_aside_imports_comments_and_blanks():
    source = (
        "# a comment\nimport torch\nfrom a import (b,\n    c)\n\nx = 1  # counted\n"
        "y = f(x,\n      2)\n"
    )
    assert counted_lines(source) == 3  # x = 1 and the two lines of the call


def _code_cells(path: Path):
    nb = nbformat.read(path, as_version=4)
    return nb, [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_code_cells_are_short(path):
    _, cells = _code_cells(path)
    long = [
        (i, counted_lines(c.source))
        for i, c in cells
        if "bookkeeping" not in c.metadata.get("tags", []) and counted_lines(c.source) > MAX_LINES
    ]
    assert not long, f"{path.name}: cells over {MAX_LINES} lines (index, lines): {long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_one_bookkeeping_cell_at_the_end_holds_the_records(path):
    _, cells = _code_cells(path)
    tagged = [i for i, c in cells if "bookkeeping" in c.metadata.get("tags", [])]
    assert tagged == [cells[-1][0]], f"{path.name}: one cell tagged bookkeeping, the last code cell"
    for i, cell in cells[:-1]:
        for call in ("publish(", "record_config("):
            assert call not in cell.source, f"{path.name} cell {i}: {call} belongs in bookkeeping"
    assert "record_config(cfg, profile)" in cells[-1][1].source, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem[:2] for p in NOTEBOOKS])
def test_paper_link_on_top_and_profile_shown_first(path):
    nb, cells = _code_cells(path)
    assert PAPER_URL in nb.cells[0].source, f"{path.name}: the first cell links the paper"
    parameters = next(
        n for n, (_, c) in enumerate(cells) if "parameters" in c.metadata.get("tags", [])
    )
    assert 'profile: str = "auto"' in cells[parameters][1].source, path.name
    after = cells[parameters + 1][1].source
    assert "profile = resolve_profile(profile)" in after and "show_profile(profile)" in after, (
        f"{path.name}: the cell after the parameters resolves and shows the profile"
    )


@pytest.mark.parametrize("path", WITH_EXERCISES, ids=[p.stem[:2] for p in WITH_EXERCISES])
def test_exercise_headings(path):
    nb = nbformat.read(path, as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    headings = EXERCISE_HEADING.findall(markdown)
    assert 2 <= len(headings) <= 4, f"{path.name}: {len(headings)} exercise headings"
    assert re.search(r"^## Exercises$", markdown, re.MULTILINE), path.name


def test_one_notation():
    """The notation table of notebook 00 is docs/method.md's, and the retired double meanings are
    gone from the notebooks: CLIP's fused attention is Â, the SD maps are G; λ is the logit scale,
    τ the SD threshold."""
    nb = nbformat.read(NOTEBOOK_DIR / "00_quickstart.ipynb", as_version=4)
    table = next(c.source for c in nb.cells if c.source.startswith("### Notation"))
    rows = [ln for ln in table.splitlines() if ln.startswith("| $")]
    method = (NOTEBOOK_DIR.parent / "docs" / "method.md").read_text()
    assert rows and all(row in method for row in rows), "docs/method.md holds the same table"
    symbols = [row.split("|")[1].strip() for row in rows]
    assert len(symbols) == len(set(symbols)), "a symbol row appears twice"
    for path in NOTEBOOKS:
        text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
        assert "\\tau \\cos" not in text, f"{path.name}: the logit scale is λ"
        if path.stem.startswith("04"):
            assert "\\hat A_k" not in text and "\\hat A_1" not in text, (
                f"{path.name}: SD maps are G"
            )
