"""Plain helpers shared by several test modules (fixtures live in conftest.py).

pytest's default import mode puts tests/ on sys.path, so a test module imports these with
`from helpers import ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import cliper_lib.suite.cli.commands as cli
from cliper_lib.config import CLIPerConfig
from cliper_lib.method.clip_backbone import ClipBundle
from cliper_lib.method.pipeline import CLIPer
from cliper_lib.method.refine import (
    check_head_maps,
    refine_mean,
    refine_selection,
    refine_sfsa,
    upsample_coarse,
)

# --- the smoke models ----------------------------------------------------------------------------
#: the config fields that choose the models and their weights; every other field steers a run
MODEL_FIELDS = (
    "profile",
    "backbone",
    "pretrained",
    "quick_gelu",
    "sd_repo",
    "device",
    "dtype",
    "sd_dtype",
    "seed",
)


def smoke_config(**overrides) -> CLIPerConfig:
    """The preset vit-b-16/voc21 on the smoke models (tiny random CLIP and SD) on the CPU, with
    `overrides`."""
    return CLIPerConfig.from_preset("vit-b-16/voc21", profile="smoke", device="cpu", **overrides)


# --- the refinements ------------------------------------------------------------------------------
#: the refinements that read SD head maps
SD_VARIANTS = ("sfsa", "mean", "selection")


def refine_variant(
    coarse: torch.Tensor, maps: torch.Tensor, variant: str, thr: float, head: int = 0
) -> torch.Tensor:
    """S_f of one SD variant from S_c (C, h, w) and head maps (m, T, T); `head` is the selection
    variant's head. "none" is S_c↑ at the head maps' token grid."""
    if variant == "sfsa":
        return refine_sfsa(coarse, maps, thr)
    if variant == "mean":
        return refine_mean(coarse, maps, thr)
    if variant == "selection":
        return refine_selection(coarse, maps, thr, head)
    if variant == "none":
        return upsample_coarse(coarse, check_head_maps(maps))
    raise ValueError(f"unknown variant {variant!r}")


# --- bad input (tests/test_bad_input_*.py) --------------------------------------------------------
#: the coarse method at a small input size: a segment call takes milliseconds
FAST = dict(profile="smoke", refinement="none", device="cpu", size=32, sliding_crop_size=0)


def photo(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray | Image.Image, **kwargs) -> Path:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    image.save(path, **kwargs)
    return path


def fast_golden_model(golden_clip: ClipBundle, **overrides) -> CLIPer:
    """The method on the golden tiny CLIP, coarse only (no SD), small inputs (FAST and
    `overrides`): a segment call takes milliseconds."""
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", **{**FAST, **overrides})
    return CLIPer(cfg, golden_clip, None, text_cache_dir=False)


def eval_args(*argv: str) -> argparse.Namespace:
    """`cliper eval` arguments on the smoke models and two synthetic images, plus `argv`."""
    return cli.build_parser().parse_args(
        [
            "eval",
            "--profile",
            "smoke",
            "--dataset",
            "synthetic",
            "--limit",
            "2",
            "--no-progress",
            *argv,
        ]
    )
