"""`cliper segment --score-maps`: each image's full-resolution score maps streamed to a .npy beside
its other files, all of them or none, and a disk too small for them said before any is written
(issue 23)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

import cliper_lib.suite.runs.batch as batch
from cliper_lib.config import CLIPerConfig
from cliper_lib.method.labels import labels_from_maps
from cliper_lib.suite.toolkit.outputs import output_suffixes


def test_score_maps_are_written_and_give_back_the_labels(cliper, pictures, tmp_path):
    out = tmp_path / "out"
    status = cliper.segment(
        str(pictures), "--classes", "cat, dog", "--out", str(out), "--score-maps"
    )
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{suffix}" for stem in ("a", "b") for suffix in output_suffixes(score_maps=True)
    )
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21")  # the thresholds `cliper segment` used
    for stem, size in (("a", (24, 40)), ("b", (30, 30))):
        maps = np.load(out / f"{stem}_score_maps.npy", mmap_mode="r")
        record = json.loads((out / f"{stem}_scores.json").read_text())
        assert maps.shape == (2, *size) and maps.dtype == np.float32
        scores = torch.tensor([record["scores"][name] for name in ("cat", "dog")])
        # the labels again, from the written maps alone
        labels = labels_from_maps(
            torch.from_numpy(np.array(maps)), scores, cfg.score_threshold, cfg.bkg_thre,
            cfg.is_normalize,
        )  # fmt: skip
        with Image.open(out / f"{stem}_labels.png") as png:
            written = torch.from_numpy(np.asarray(png).astype(np.int64))
        assert torch.equal(labels, written)


def test_a_disk_too_small_for_the_score_maps_is_said_before_any_is_written(
    cliper, pictures, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(batch.shutil, "disk_usage", lambda path: type("U", (), {"free": 100})())
    out = tmp_path / "out"
    status = cliper.segment(str(pictures), "--classes", "cat", "--out", str(out), "--score-maps")
    err = capsys.readouterr().err
    assert status == 1 and "score maps need" in err and "drop --score-maps or free space" in err
    assert not out.exists()  # nothing half-written, no empty folder
