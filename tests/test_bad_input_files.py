"""Output files and folders under bad conditions (issue 10): names that collide, label PNGs past 255
classes, output paths that are files or read-only, a full disk. Nothing partial is left behind.

`cliper` (conftest.py) runs main() in-process with `build_model` replaced by one that counts how
often it was called, so "checked before the model loads" is a count of 0.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cliper_lib.files as files
import cliper_lib.suite.runs.batch as batch
from cliper_lib.eval.runner import run_eval
from cliper_lib.files import OutputPathError, atomic_group, check_output_file, check_output_folder
from cliper_lib.suite.runs.batch import output_stems
from cliper_lib.suite.toolkit.viz import load_label_png, save_label_png

from helpers import eval_args, photo, save


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files left in a folder (atomic writes use hidden '.name.*' files)."""
    return (
        sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        if folder.exists()
        else []
    )


def test_same_stems_get_unique_stable_names(cliper, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    save(folder / "photo.jpg", photo(24, 40, 1))
    save(folder / "photo.png", photo(40, 24, 2))
    out = tmp_path / "out"
    for _ in range(2):  # the same names again on a second run
        assert cliper.segment(str(folder), "--classes", "cat", "--out", str(out)) == 0
        assert sorted(p.name for p in out.iterdir()) == [
            f"photo_{ext}{suffix}" for ext in ("jpg", "png") for suffix in batch.OUTPUT_SUFFIXES
        ]
    assert load_label_png(out / "photo_png_labels.png").shape == (40, 24)
    assert json.loads((out / "photo_jpg_scores.json").read_text())["image"].endswith("photo.jpg")


def test_output_stems_rules(tmp_path):
    paths = [Path("x/photo.jpg"), Path("x/Photo.PNG"), Path("y/photo.jpg"), Path("x/other.png")]
    stems = output_stems(paths)
    assert stems[Path("x/other.png")] == "other" and stems[Path("x/Photo.PNG")] == "Photo_png"
    assert stems[Path("x/photo.jpg")].startswith("photo_jpg_") and stems[
        Path("y/photo.jpg")
    ].startswith("photo_jpg_")
    assert len({s.casefold() for s in stems.values()}) == 4
    assert output_stems(list(reversed(paths))) == stems  # depends on the set, not the order


def test_more_than_255_classes_write_16_bit_label_pngs(tmp_path):
    labels = np.arange(12 * 30).reshape(12, 30) % 301  # ids up to 300
    path = save_label_png(tmp_path / "many.png", labels, num_labels=301)
    with Image.open(path) as written:
        assert written.mode == "I;16"
    np.testing.assert_array_equal(load_label_png(path), labels)
    # the format follows the class list, not what happened to be predicted
    few = save_label_png(tmp_path / "few_ids.png", np.zeros((4, 4), np.int64), num_labels=301)
    assert Image.open(few).mode == "I;16"
    assert Image.open(save_label_png(tmp_path / "p.png", labels % 256)).mode == "P"
    with pytest.raises(ValueError, match="0..65535"):
        save_label_png(tmp_path / "too_many.png", np.array([[70000]]))
    assert not (tmp_path / "too_many.png").exists()


@pytest.mark.parametrize(
    "setup,fragment",
    [
        (lambda t: (t / "out").write_text("x"), "is an existing file, not a folder"),
        (lambda t: (t / "file").write_text("x"), "is a file, so no folder can be made under it"),
    ],
)
def test_bad_out_is_refused_before_the_model(cliper, pictures, tmp_path, capsys, setup, fragment):
    setup(tmp_path)
    out = tmp_path / ("out" if "existing" in fragment else "file/sub")
    assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and cliper.builds == 0


def _read_only(monkeypatch, folder: Path) -> None:
    """Make `folder` refuse new files, also for root (who ignores permission bits): mkstemp there
    fails."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real = files.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).absolute() == folder.absolute():
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


def test_read_only_out_is_refused_before_the_model(cliper, pictures, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    _read_only(monkeypatch, locked)
    assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(locked / "out")) == 2
    assert "cannot write in" in capsys.readouterr().err and cliper.builds == 0
    assert not (locked / "out").exists()


# --- a full disk: each image's three files together or not at all ---------------------------------
@pytest.mark.parametrize("fail_at", [1, 2, 4, 6, 9])
def test_disk_full_keeps_whole_images_only(
    cliper, pictures, tmp_path, capsys, monkeypatch, fail_at
):
    """The fsync number `fail_at` reports ENOSPC. Per image: 1 label PNG, 2 overlay (each its own
    atomic write), 3-5 the group's three files; image b: 6-10."""
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    out = tmp_path / "out" / "nested"
    assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert (tmp_path / "out").exists() == out.exists()  # no empty parent folder either
    assert "No space left on device" in err and err.count("\n") == 1
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    stems = {name.split("_")[0] for name in written}
    assert all(
        f"{s}{x}" in written for s in stems for x in batch.OUTPUT_SUFFIXES
    )  # whole images only
    assert len(written) == 3 * len(stems) and leftovers(out) == []
    assert ("1 image(s) complete" in err) == bool(stems) and ("nothing written" in err) == (
        not stems
    )
    assert out.exists() == bool(stems)  # no empty folder left behind


def test_atomic_group_removes_everything_on_failure(tmp_path):
    (tmp_path / "b.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_group([tmp_path / "a.txt", tmp_path / "b.txt"]) as (a, b):
            a.write_text("new a")
            raise RuntimeError("boom")
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]
        and (tmp_path / "b.txt").read_text() == "old"
    )


# --- cliper eval --out ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option,make,fragment",
    [
        ("--out", lambda t: t.mkdir(), "is a folder; give a file name"),
        ("--table", lambda t: t.mkdir(), "is a folder; give a file name"),
        ("--out", lambda t: t.parent.joinpath("f").write_text("x"), "its folder"),
    ],
)
def test_eval_output_is_checked_before_the_first_image(tmp_path, capsys, option, make, fragment):
    target = tmp_path / "target"
    make(target)
    path = tmp_path / "f" / "r.json" if fragment == "its folder" else target
    built = []
    assert run_eval(eval_args(option, str(path)), model_factory=built.append) == 2
    assert fragment in capsys.readouterr().err and built == []


def test_eval_out_in_read_only_folder(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    _read_only(monkeypatch, locked)
    built = []
    assert run_eval(eval_args("--out", str(locked / "r.json")), model_factory=built.append) == 2
    assert "cannot write in" in capsys.readouterr().err and built == []


def test_output_checks_create_nothing(tmp_path):
    check_output_folder(tmp_path / "a" / "b")
    check_output_file(tmp_path / "c" / "r.json")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(tmp_path)
