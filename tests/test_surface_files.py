"""The file system (issue 26): a final write that fails keeps the result (a fallback file, else
printed) and names the file it could not write; image arguments mean what they say; output names
fit the file system; text files are decoded naming file and line.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import cliper_lib.eval.runner as runner
from cliper_lib.files import TextDecodeError, read_text
from cliper_lib.suite.runs.batch import MAX_STEM_BYTES, expand_images, output_stems

from helpers import eval_args, photo, save


class ConstantModel:
    """The CLIPer interface of `cliper eval`, labelling every pixel 0: a known mIoU, no weights."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.weights_ids = {"clip": "constant", "sd": None}

    def encode_text(self, classes, background=None):
        return None

    def segment(self, image, given):
        return SimpleNamespace(labels=torch.zeros(image.shape[:2], dtype=torch.long))


def failing_writes(monkeypatch, *failing: Path) -> None:
    """atomic_write_text in the evaluation raises ENOSPC for the files in `failing`."""
    real = runner.atomic_write_text

    def write(path, text):
        if Path(path).name in {p.name for p in failing}:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(runner, "atomic_write_text", write)


def reference_miou(tmp_path) -> float:
    out = tmp_path / "reference.json"
    assert runner.run_eval(eval_args("--out", str(out)), model_factory=ConstantModel) == 0
    return json.loads(out.read_text())["metrics"]["mIoU"]


def test_a_full_disk_at_the_results_file_keeps_the_result_in_a_fallback_file(
    tmp_path, monkeypatch, capsys
):
    expected = reference_miou(tmp_path)
    capsys.readouterr()
    out = tmp_path / "r.json"
    failing_writes(monkeypatch, out)
    monkeypatch.setattr(runner.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert runner.run_eval(eval_args("--out", str(out)), model_factory=ConstantModel) == 1
    captured = capsys.readouterr()
    assert f"cannot write {out}: No space left on device" in captured.err
    fallbacks = list((tmp_path / "tmp").glob("cliper-*-r.json"))
    assert len(fallbacks) == 1 and f"the result is in {fallbacks[0]}" in captured.err
    assert json.loads(fallbacks[0].read_text())["metrics"]["mIoU"] == expected
    assert not out.exists()


def test_when_the_fallback_fails_too_the_result_is_printed(tmp_path, monkeypatch, capsys):
    expected = reference_miou(tmp_path)
    capsys.readouterr()
    out = tmp_path / "r.json"
    failing_writes(monkeypatch, out, Path("cliper-x-r.json"))
    monkeypatch.setattr(runner.os, "getpid", lambda: "x")
    assert runner.run_eval(eval_args("--out", str(out)), model_factory=ConstantModel) == 1
    captured = capsys.readouterr()
    assert f"cannot write {out}" in captured.err and "cliper-x-r.json either" in captured.err
    start = captured.out.index("{")
    record, _ = json.JSONDecoder().raw_decode(captured.out[start:])
    assert record["metrics"]["mIoU"] == expected


def test_a_table_that_cannot_be_written_names_it_and_the_rows_are_printed(
    tmp_path, monkeypatch, capsys
):
    table = tmp_path / "table.md"
    real = runner.append_markdown_rows

    def full(path, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "append_markdown_rows", full)
    argv = ["--out", str(tmp_path / "r.json"), "--table", str(table)]
    assert runner.run_eval(eval_args(*argv), model_factory=ConstantModel) == 1
    captured = capsys.readouterr()
    assert f"cannot write --table {table}" in captured.err
    assert "| vit-b-16/voc21 |" in captured.out and (tmp_path / "r.json").exists()
    assert real is not full


# --- image arguments ------------------------------------------------------------------------------
@pytest.fixture()
def shots(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a[1].png", "a1.png", "b.png"):
        save(folder / name, photo(8, 8))
    return folder


def test_existing_paths_are_themselves_and_patterns_expand_otherwise(shots):
    assert expand_images([str(shots / "a[1].png")]) == [shots / "a[1].png"]
    assert expand_images([str(shots / "a[0-9].png")]) == [shots / "a1.png"]
    assert expand_images([str(shots / "*.png")]) == sorted(shots.glob("*.png"))
    with pytest.raises(FileNotFoundError, match="no image found for .*c.png.: no such file"):
        expand_images([str(shots / "c.png")])


def test_the_same_file_through_links_and_spellings_is_listed_once(shots, tmp_path):
    (tmp_path / "soft.png").symlink_to(shots / "b.png")
    (tmp_path / "hard.png").hardlink_to(shots / "b.png")
    names = [str(shots / "b.png"), str(tmp_path / "soft.png"), str(tmp_path / "hard.png"),
             str(shots / ".." / "in" / "b.png"), str(shots)]  # fmt: skip
    assert expand_images(names) == [shots / "b.png", shots / "a1.png", shots / "a[1].png"]


def test_nothing_in_the_output_folder_is_an_input(shots, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    save(out / "b_overlay.png", photo(8, 8))
    assert expand_images([str(tmp_path / "*" / "*.png")], out=out) == sorted(shots.glob("*.png"))
    with pytest.raises(ValueError, match="is the output folder"):
        expand_images([str(out)], out=out)
    with pytest.raises(ValueError, match="is in the output folder"):
        expand_images([str(out / "b_overlay.png")], out=out)


@pytest.mark.parametrize("stem", ["x" * 300, "фото" * 60])
def test_output_stems_fit_a_file_name_and_stay_distinct(tmp_path, stem):
    paths = [tmp_path / f"{stem}.png", tmp_path / f"{stem}.jpg", tmp_path / "sub" / f"{stem}.png"]
    stems = output_stems(paths)
    assert len(set(stems.values())) == 3
    assert all(len(s.encode()) <= MAX_STEM_BYTES + 20 for s in stems.values())
    assert output_stems(paths) == stems  # stable
    long_temp = f".{stems[paths[0]]}_overlay.png.12345678.part.png"
    assert len(f".{long_temp}.12345678.png".encode()) <= 255


# --- text files -----------------------------------------------------------------------------------
def test_read_text_drops_a_byte_order_mark_and_names_the_bad_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfone\ntwo\n")
    assert read_text(path) == "one\ntwo\n"
    path.write_bytes(b"one\ntwo\nth\xffree\n")
    with pytest.raises(TextDecodeError, match=f"list {path}, line 3, is not UTF-8.*0xff"):
        read_text(path, "list")
