"""Run records are portable: repository-relative paths, the files that differed,
links that resolve."""

from __future__ import annotations

import subprocess

from cliper_lib.provenance import REPO_ROOT, changed_files, git_state
from cliper_lib.suite.runs.run_links import git_ignored, regenerate_note, repo_relative, run_cell

SMOKE = REPO_ROOT / "papermill_runs" / "smoke"


def test_paths_inside_the_checkout_are_relative(tmp_path):
    assert (
        repo_relative(SMOKE / "00_quickstart.ipynb") == "papermill_runs/smoke/00_quickstart.ipynb"
    )
    assert repo_relative(REPO_ROOT / "notebooks") == "notebooks"
    assert repo_relative(tmp_path) == str(tmp_path.resolve())  # outside: absolute, still meaningful


def test_changed_files_are_what_git_reports():
    status = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = [line[3:] for line in status.splitlines() if line.strip()][:50]
    assert changed_files()[:50] == expected
    assert bool(expected) == git_state()["dirty"]


def test_ignored_executed_copies_link_their_source_and_how_to_regenerate(tmp_path):
    assert git_ignored(
        SMOKE / "00_quickstart.ipynb"
    )  # .gitignore: executed smoke notebooks are not committed
    assert not git_ignored(SMOKE / "summary.md") and not git_ignored(tmp_path / "x.ipynb")
    cell = run_cell(SMOKE, "00_quickstart", "notebooks/00_quickstart.ipynb")
    assert "[source](../../notebooks/00_quickstart.ipynb)" in cell
    assert (SMOKE / "../../notebooks/00_quickstart.ipynb").resolve().exists()  # the link resolves
    (tmp_path / "00_quickstart.ipynb").write_text("{}")
    assert (
        run_cell(tmp_path, "00_quickstart", "notebooks/00_quickstart.ipynb")
        == "[00_quickstart](00_quickstart.ipynb)"
    )
    assert regenerate_note(tmp_path, "smoke") is None
