"""Tests that let deliberate bugs through otherwise (mutation gaps, found with issue 10's bad-input
cases): the SD latents' scaling, the fused block range, threshold ties, rounding to patch multiples.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cliper_lib.config import CLIPerConfig
from cliper_lib.method import fusion as elf
from cliper_lib.method.clip_backbone import (
    preprocess_image,
    resized_shape,
    walk_layers,
)
from cliper_lib.method.refine import normalize_head_maps

from helpers import fast_golden_model


def test_sd_encode_is_latent_mean_times_scaling_factor():
    """Independent of the extractor: diffusers' own VAE call. (The authors' latents are also pinned
    by tests/test_golden.py::test_sd_input_latents_and_timestep_match_authors.)"""
    from cliper_lib.method.sd_attention import SDSelfAttention
    from cliper_lib.weights.sd import build_random_sd_components

    components = build_random_sd_components(seed=0)
    vae = components.vae
    assert vae.config.scaling_factor not in (0, 1)  # else dropping it would go unnoticed
    extractor = SDSelfAttention(components, CLIPerConfig(profile="smoke"))
    # walked
    assert all(type(block).__name__ == "DownEncoderBlock2D" for block in vae.encoder.down_blocks)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(extractor.encode(pixels), expected, rtol=0, atol=0)


@pytest.fixture(scope="module")
def walk_and_features(golden_clip, cat_image):
    model = fast_golden_model(golden_clip, size=64)
    return model, model.clip_features(cat_image)


def test_fuse_layers_full_range_is_the_default_exactly(walk_and_features):
    model, features = walk_and_features
    last = model.clip.num_layers - 2
    default = model.fusion(features)
    full = model.fusion(features, model.cfg.replace(fuse_layers=[0, last]))
    assert torch.equal(default.whole.last_attention, full.whole.last_attention)
    assert torch.equal(default.whole.embeddings, full.whole.embeddings)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_fuse_layers_single_block_fuses_exactly_that_block(walk_and_features, k):
    model, features = walk_and_features
    single = model.fusion(features, model.cfg.replace(fuse_layers=[k, k])).whole
    expected = elf.fuse_layers(model.clip.visual, features.walk, fuse=[k])
    assert torch.equal(single.last_attention, expected.last_attention)
    # Â_0 of block k alone
    summed = next(elf.iter_fused_attentions(features.walk.attentions[k].float(), 1))
    first = elf.fuse_layers(model.clip.visual, features.walk, fuse=[k], rounds=1)
    torch.testing.assert_close(first.last_attention, summed.float(), rtol=1e-5, atol=1e-7)


def test_head_map_threshold_tie_is_kept():
    """DESIGN: zero entries `< attention_thr`; an entry exactly at the threshold stays (a `<=` would
    drop it)."""
    maps = torch.tensor([[[0.2, 0.6], [0.8, 0.4]]], dtype=torch.float64)
    scaled = maps / (maps.amax(dim=-2, keepdim=True) + 1e-5)
    thr = float(scaled[0, 0, 0])  # the (0, 0) entry lands exactly on the threshold
    out = normalize_head_maps(maps, thr)
    assert out[0, 0, 0] > 0
    torch.testing.assert_close(out[0, 0], scaled[0, 0] / (scaled[0, 0].sum() + 1e-5))
    assert normalize_head_maps(maps, thr + 1e-9)[0, 0, 0] == 0


def test_coarse_map_threshold_tie_is_kept():
    """DESIGN: zero every value below attention_thr × max; a value exactly at it stays."""
    select = torch.tensor([[[1.0, 0.5, 0.25, 0.0]]])
    kept = elf.threshold_select_map(select, 0.5)
    assert kept.tolist() == [[[1.0, 0.5, 0.0, 0.0]]]


def test_sides_are_rounded_to_patch_multiples_not_floored():
    """DESIGN: round each side to the nearest multiple of p: 451 x 300 at 336 -> 505.1 px -> 32
    patches (512), where flooring would give 31 (496)."""
    assert resized_shape(451, 300, 336, 16) == (336, 512)
    x = preprocess_image(np.zeros((300, 451, 3), np.uint8), 336, 16, (0, 0, 0), (1, 1, 1))
    assert tuple(x.shape) == (3, 336, 512)


def test_walk_grid_follows_the_rounded_sides(golden_clip):
    x = preprocess_image(
        np.zeros((300, 451, 3), np.uint8), 336, 16, golden_clip.mean, golden_clip.std
    )
    assert walk_layers(golden_clip.visual, x[None], num_blocks=1).grid == (21, 32)
