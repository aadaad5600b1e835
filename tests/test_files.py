"""Atomic writes: on failure the old file stays and no temporary file is left behind."""

from __future__ import annotations

import json

import pytest

from cliper_lib.files import atomic_path, atomic_write_json, atomic_write_text


def test_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "r.json"
    atomic_write_json(target, {"miou": 1.0})
    atomic_write_json(target, {"miou": 2.0})
    assert json.loads(target.read_text()) == {"miou": 2.0}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]


def test_failure_keeps_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "result.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_permissions_follow_umask(tmp_path):
    import os

    target = atomic_write_text(tmp_path / "x.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask
