"""Every exercise's solution (notebooks/solutions/NN_solutions.py) passes its check cell: each
notebook runs on smoke with the solutions in place of the answer cells, and every check cell must
print the pass line. The profile comes from $CLIPER_PROFILE through the parameter cell's "auto"
default, so that path is exercised too."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from cliper_lib.suite.runs.papermill import ensure_kernel
from cliper_lib.suite.studies.teaching import PASS_MARK

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SOLUTION_DIR = NOTEBOOK_DIR / "solutions"
WITH_EXERCISES = sorted(p for p in NOTEBOOK_DIR.glob("0[1-6]_*.ipynb"))
_MARKER = re.compile(r"^# %% exercise (\S+)\s*$", re.MULTILINE)


def solutions(notebook: Path) -> dict[str, str]:
    """Exercise number -> the solution's source, from the notebook's solutions file."""
    text = (SOLUTION_DIR / f"{notebook.stem[:2]}_solutions.py").read_text()
    parts = _MARKER.split(text)  # [header, number, source, number, source, ...]
    return {number: source.strip() for number, source in zip(parts[1::2], parts[2::2], strict=True)}


def tagged(nb, prefix: str) -> dict[str, nbformat.NotebookNode]:
    """Exercise number -> the cell tagged `<prefix><number>`."""
    cells = {}
    for cell in nb.cells:
        for tag in cell.metadata.get("tags", []):
            if tag.startswith(prefix):
                cells[tag[len(prefix) :]] = cell
    return cells


def output_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


def test_every_exercise_has_a_solution_and_a_check():
    for path in WITH_EXERCISES:
        nb = nbformat.read(path, as_version=4)
        answers, checks = tagged(nb, "exercise-"), tagged(nb, "check-")
        assert 2 <= len(answers) <= 4, f"{path.name}: {len(answers)} exercises"
        assert set(answers) == set(checks) == set(solutions(path)), path.name
        for number, cell in answers.items():
            assert "..." in cell.source, f"{path.name} exercise {number}: the answer cell has a ..."
            assert f'passed("{number}"' in checks[number].source, f"{path.name} check {number}"


@pytest.mark.slow
@pytest.mark.parametrize("path", WITH_EXERCISES, ids=[p.stem[:2] for p in WITH_EXERCISES])
def test_solutions_pass_their_checks(path, tmp_path, monkeypatch):
    import papermill

    nb = nbformat.read(path, as_version=4)
    answers = tagged(nb, "exercise-")
    for number, source in solutions(path).items():
        answers[number].source = source
    source, executed = tmp_path / path.name, tmp_path / f"executed_{path.name}"
    nbformat.write(nb, source)
    monkeypatch.setenv("CLIPER_PROFILE", "smoke")  # the notebook's "auto" resolves through it
    monkeypatch.setenv("CLIPER_OUTPUT_DIR", str(tmp_path / "outputs"))
    papermill.execute_notebook(
        str(source), str(executed), kernel_name=ensure_kernel(), progress_bar=False,
        cwd=str(NOTEBOOK_DIR),
    )  # fmt: skip
    done = nbformat.read(executed, as_version=4)
    for number, cell in tagged(done, "check-").items():
        assert f"{PASS_MARK} {number}: correct." in output_text(cell), (number, cell.outputs)
    banner = next(c for c in done.cells if "resolve_profile(profile)" in c.source)
    shown = "".join(str(o.get("data", {}).get("text/markdown", "")) for o in banner.outputs)
    assert "Random weights (smoke profile)" in shown, banner.outputs
