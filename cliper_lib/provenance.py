"""Where a number came from: package versions, the git state and the device, recorded by evaluations
and runs."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
#: True when the package runs from a checkout of the repository (notebooks, run plans and git beside
#: it); False for an installed wheel, where REPO_ROOT is site-packages and nothing may be read from
#: or written there.
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "notebooks").is_dir()

#: the distributions whose versions decide (or record how we got) the numbers, by their pip names.
VERSIONED_PACKAGES = (
    "cliper-suite",
    "torch",
    "torchvision",
    "open_clip_torch",
    "diffusers",
    "transformers",
    "numpy",
    "pillow",
    "papermill",
    "nbclient",
    "ipykernel",
)


def package_versions(
    packages: Sequence[str] | Mapping[str, str] = VERSIONED_PACKAGES,
) -> dict[str, str | None]:
    """{name: version} of `packages` (distribution names, or key -> distribution), plus Python's and
    CUDA's.

    None where a package is not installed (or torch has no CUDA).
    """
    pairs = (
        packages.items() if isinstance(packages, Mapping) else ((name, name) for name in packages)
    )
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in pairs:
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    # only when already imported: a record never pays for importing torch
    torch = sys.modules.get("torch")
    out["cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    return out


def git_state(root: Path = REPO_ROOT, untracked_files: bool = False) -> dict[str, Any]:
    """Commit and dirty flag of the repository (None values when git or the repo is unavailable).

    An installed package has no repository of its own: None values, never the state of whatever git
    repository happens to enclose site-packages.
    """
    if root == REPO_ROOT and not IN_CHECKOUT:
        return {"commit": None, "dirty": None}

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = (
        git("status", "--porcelain", f"--untracked-files={'normal' if untracked_files else 'no'}")
        if commit
        else None
    )
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def changed_files(root: Path = REPO_ROOT, limit: int = 50) -> list[str] | None:
    """Tracked files that differ from the commit (paths relative to the repository), at most `limit`
    and then "... and N more"; None outside a checkout. What a record made from an uncommitted tree
    ran on."""
    if root == REPO_ROOT and not IN_CHECKOUT:
        return None
    try:
        res = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    paths = [line[3:] for line in res.stdout.splitlines() if line.strip()]
    return paths[:limit] + ([f"... and {len(paths) - limit} more"] if len(paths) > limit else [])


def device_info() -> dict[str, Any]:
    """cpu/cuda and the accelerator name, probed in a child process so the caller never holds a CUDA
    context."""
    probe = (
        "import json, platform\n"
        "try:\n"
        "    import torch\n"
        "    ok = torch.cuda.is_available()\n"
        "    d = {'type': 'cuda', 'name': torch.cuda.get_device_name(0), "
        "'count': torch.cuda.device_count()} "
        "if ok else {'type': 'cpu', 'name': platform.processor() or platform.machine(), "
        "'count': 0}\n"
        "except Exception as e:\n"
        "    d = {'type': 'cpu', 'name': platform.machine(), 'count': 0, 'note': repr(e)}\n"
        "print(json.dumps(d))\n"
    )
    try:
        res = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
        )
        return json.loads(res.stdout.strip().splitlines()[-1])
    except Exception as exc:  # the record is still worth writing without it
        return {"type": "unknown", "name": None, "count": 0, "note": repr(exc)}
