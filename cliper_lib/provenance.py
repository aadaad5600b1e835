"""Where a number came from: package versions and the git state, recorded by evaluations and notebook runs."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent


def package_versions(packages: Mapping[str, str]) -> dict[str, str | None]:
    """{key: version of distribution} for `packages` (key -> distribution name), plus Python's; None if absent."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in packages.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def git_state(root: Path = REPO_ROOT, untracked_files: bool = False) -> dict[str, Any]:
    """Commit and dirty flag of the repository (None values when git or the repo is unavailable)."""

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", f"--untracked-files={'normal' if untracked_files else 'no'}") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}
