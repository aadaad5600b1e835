"""Provenance: versions by distribution name and the git state of this checkout."""

from __future__ import annotations

import subprocess

from cliper_lib.provenance import REPO_ROOT, git_state, package_versions


def test_package_versions_by_key():
    import torch

    versions = package_versions({"torch": "torch", "missing": "no-such-distribution-xyz"})
    assert (
        versions["torch"] == torch.__version__.split("+")[0]
    )  # the distribution version has no local tag
    assert versions["missing"] is None and versions["python"].count(".") == 2


def test_git_state_matches_git(tmp_path):
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    status = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    state = git_state()
    assert state["commit"] == (head.stdout.strip() or None)
    # the dirty flag is what git itself reports for this checkout (None only where there
    # is no repository)
    assert state["dirty"] == (bool(status.stdout.strip()) if head.returncode == 0 else None)
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a repository


def test_git_state_sees_a_commit_and_a_change(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    clean = git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "a.txt").write_text("two\n")
    assert git_state(tmp_path) == {"commit": clean["commit"], "dirty": True}
    (tmp_path / "b.txt").write_text("new\n")  # untracked files count only when asked for
    git("checkout", "-q", "a.txt")
    assert (
        git_state(tmp_path)["dirty"] is False
        and git_state(tmp_path, untracked_files=True)["dirty"] is True
    )
