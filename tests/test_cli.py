"""The command line: segment writes three files per image;
offline paper weights stop with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cliper_lib.config import DATA_DIR
from cliper_lib.suite.cli.commands import main
from cliper_lib.suite.runs.batch import expand_images

SAMPLES = DATA_DIR / "samples"


@pytest.fixture()
def offline_empty_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_segment_coarse_only_writes_mask_overlay_and_scores(tmp_path):
    out = tmp_path / "out"
    status = main(
        [
            "segment",
            str(SAMPLES / "chelsea.jpg"),
            "--classes",
            "cat; sofa",
            "--refinement",
            "none",
            "--profile",
            "smoke",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    labels = np.asarray(Image.open(out / "chelsea_labels.png"))
    assert Image.open(out / "chelsea_labels.png").mode == "P"
    assert labels.shape == (300, 451) and labels.max() <= 2
    assert Image.open(out / "chelsea_overlay.png").size[0] > 451
    record = json.loads((out / "chelsea_scores.json").read_text())
    assert record["classes"] == ["cat", "sofa"] and set(record["scores"]) == {"cat", "sofa"}
    assert record["refinement"] == "none"


def test_segment_full_method_on_several_images_and_globs(tmp_path):
    out = tmp_path / "out"
    status = main(
        [
            "segment",
            str(SAMPLES / "c*.jpg"),
            str(SAMPLES / "rocket.jpg"),
            "--classes",
            "cat; cup; rocket",
            "--background",
            "sky, wall",
            "--profile",
            "smoke",
            "--out",
            str(out),
            "--quiet",
            "--set",
            "score_threshold=0.0",
            "--set",
            "bkg_thre=0.001",
            "--set",
            "is_normalize=false",
        ]
    )
    assert status == 0
    for stem in ("chelsea", "coffee", "rocket"):
        for suffix in ("_labels.png", "_overlay.png", "_scores.json"):
            assert (out / f"{stem}{suffix}").exists()
        record = json.loads((out / f"{stem}_scores.json").read_text())
        assert record["refinement"] == "sfsa" and record["background"] == ["sky", "wall"]
        # with these thresholds every pixel gets the best-scoring class, so the mask is not empty
        assert np.asarray(Image.open(out / f"{stem}_labels.png")).min() >= 1


def test_demo_offline_without_weights_explains_what_is_missing(
    offline_empty_cache, tmp_path, capsys
):
    status = main(["demo", "--out", str(tmp_path / "demo")])
    assert status != 0
    err = capsys.readouterr().err
    assert (
        "ViT-B-16" in err
        and "cliper download" in err
        and "smoke" in err
        and str(offline_empty_cache) in err
    )
    assert not (tmp_path / "demo").exists()  # nothing half-written


def test_download_offline_fails_clearly(offline_empty_cache, capsys):
    assert main(["download", "--skip-sd"]) == 2
    err = capsys.readouterr().err
    assert (
        "needs internet" in err
        and "timm/vit_base_patch16_clip_224.openai" in err
        and "stable-diffusion" not in err
    )


def test_bad_inputs(tmp_path, capsys):
    assert (
        main(["segment", str(tmp_path / "missing.jpg"), "--classes", "cat", "--out", str(tmp_path)])
        == 2
    )
    assert "no image found" in capsys.readouterr().err
    assert (
        main(
            [
                "segment",
                str(SAMPLES / "chelsea.jpg"),
                "--classes",
                "cat",
                "--profile",
                "smoke",
                "--set",
                "attention_thr=3",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "attention_thr" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        expand_images([str(tmp_path / "*.png")])


def test_presets_listing(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "vit-b-16/voc21" in out and "66.5" in out and out.count("\n") == 17


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "cliper_lib", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "segment" in result.stdout and "reproduce" in result.stdout
