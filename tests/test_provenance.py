"""Provenance: versions by distribution name and the git state of this checkout."""
from __future__ import annotations

import subprocess

from cliper_lib.provenance import REPO_ROOT, git_state, package_versions


def test_package_versions_by_key():
    import torch

    versions = package_versions({"torch": "torch", "missing": "no-such-distribution-xyz"})
    assert versions["torch"] == torch.__version__.split("+")[0]  # the distribution version has no local tag
    assert versions["missing"] is None and versions["python"].count(".") == 2


def test_git_state_matches_git(tmp_path):
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    state = git_state()
    assert state["commit"] == (head.stdout.strip() or None) and state["dirty"] in (True, False, None)
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a repository
