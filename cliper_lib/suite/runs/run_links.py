"""Portable run records: paths relative to the repository, and summary links that resolve where the
summary is read.

Executed notebooks of a plan folder inside the checkout may be git-ignored (the smoke plan's are ~18
MB of figures); a committed summary then links the source notebook and says how to regenerate the
executed copy, instead of a link that resolves only on the machine that ran it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ...provenance import IN_CHECKOUT, REPO_ROOT


def repo_relative(path: str | os.PathLike) -> str:
    """`path` relative to the repository root when it lies inside the checkout, else absolute."""
    path = Path(path).resolve()
    if IN_CHECKOUT:
        try:
            return path.relative_to(REPO_ROOT).as_posix()
        except ValueError:
            pass
    return str(path)


def git_ignored(path: Path) -> bool:
    """True when `path` is inside the checkout and git ignores it (so a committed summary cannot
    link it)."""
    if not IN_CHECKOUT:
        return False
    try:
        path.resolve().relative_to(REPO_ROOT)
        res = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "check-ignore", "-q", str(path.resolve())],
            capture_output=True,
            timeout=20,
        )
    except (ValueError, OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0


def run_cell(out_dir: Path, name: str, notebook: str) -> str:
    """The summary's first cell for a run: a link to its executed copy, or, when that copy is
    git-ignored or missing, a link to the source notebook (relative to the summary) marked as not
    committed."""
    copy = Path(out_dir) / f"{name}.ipynb"
    if copy.exists() and not git_ignored(copy):
        return f"[{name}]({copy.name})"
    source = Path(notebook) if Path(notebook).is_absolute() else REPO_ROOT / notebook
    if source.exists():
        link = os.path.relpath(source.resolve(), Path(out_dir).resolve()).replace(os.sep, "/")
        return (
            f"{name} ([source]({link}){'; executed copy not committed' if copy.exists() else ''})"
        )
    return name


def regenerate_note(out_dir: Path, plan: str) -> str | None:
    """A line for the summary when its executed copies are git-ignored: how to regenerate them."""
    if not any(git_ignored(p) for p in Path(out_dir).glob("*.ipynb")):
        return None
    readme = os.path.relpath(
        REPO_ROOT / "papermill_runs" / "README.md", Path(out_dir).resolve()
    ).replace(os.sep, "/")
    return (
        f"- executed notebooks are not committed (git-ignored: figures of random models); "
        f"regenerate them with `cliper reproduce --plan {plan}` ([how]({readme}))"
    )
