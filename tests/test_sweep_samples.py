"""The layer-range sweep's ground truth: synthetic (smoke), a benchmark or any folder with masks
(paper), else a skip."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cliper_lib.config import CLIPerConfig
from cliper_lib.suite.studies.layer_sweep import sweep_samples

PAPER = CLIPerConfig(profile="paper", classes="voc21")


def test_smoke_sweeps_synthetic_shapes():
    samples, what = sweep_samples(CLIPerConfig(profile="smoke"), "voc21", "", 3)
    assert len(samples) == 3 and "synthetic" in what


def test_paper_without_data_skips_and_says_what_to_point_at(tmp_path):
    samples, why = sweep_samples(PAPER, "voc21", str(tmp_path / "nothing"), 4)
    assert samples is None and "skipped" in why and "data_root" in why and "sweep_mask_dir" in why
    samples, why = sweep_samples(
        PAPER, "folder", str(tmp_path), 4
    )  # a folder without masks: nothing to score
    assert samples is None and "mask" in why


def test_paper_sweeps_any_folder_of_images_with_masks(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(
            images / f"{name}.jpg"
        )
        Image.fromarray(np.full((40, 60), 8, dtype=np.uint8)).save(
            masks / f"{name}.png"
        )  # class 8: cat
    samples, what = sweep_samples(PAPER, "folder", str(images), 2, mask_dir=str(masks))
    assert len(samples) == 2 and str(images) in what
    assert samples[0].mask.shape == (40, 60) and set(np.unique(samples[0].mask)) <= {8, 255}
