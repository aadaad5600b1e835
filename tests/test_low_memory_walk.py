"""The low-memory walk (issue 12): when nobody keeps the walk (`segment`, eval), the walk keeps only
the float32 sum of the fused layers' attentions instead of every A_i, and everything downstream is
bit-for-bit the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cliper_lib import CLIPerConfig
from cliper_lib.method import fusion as elf
from cliper_lib.method.clip_backbone import walk_layers
from cliper_lib.method.pipeline import SEGMENT_KEEPS, CLIPer
from cliper_lib.suite.toolkit.stage_cache import StageCache

CLASSES = ["red disc", "blue box", "green triangle"]
BASE = dict(
    profile="smoke",
    refinement="none",
    device="cpu",
    size=64,
    sliding_crop_size=48,
    sliding_stride=32,
    score_threshold=0.0,
    bkg_thre=0.1,
)


@pytest.fixture(scope="module")
def tiny(golden_clip) -> CLIPer:
    return CLIPer(
        CLIPerConfig.from_preset("vit-b-16/voc21", **BASE), golden_clip, None, text_cache_dir=False
    )


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (56, 88, 3), dtype=np.uint8)


@pytest.mark.parametrize("layers", [[0, 1, 2], [1, 2], [2]])
def test_summing_walk_equals_the_stored_sum_exactly(golden_clip, layers):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 48, 80)
    visual, depth = golden_clip.visual, golden_clip.num_layers - 1
    kept = walk_layers(visual, images, depth)
    summed = walk_layers(visual, images, depth, sum_layers=layers)
    assert summed.attentions == [] and summed.num_walked == kept.num_walked == depth
    assert torch.equal(summed.attention_sum, elf.sum_attention(kept.attentions, layers))
    for a, b in zip(
        kept.residual_inputs + kept.normalized_inputs,
        summed.residual_inputs + summed.normalized_inputs,
        strict=True,
    ):
        assert torch.equal(a, b)
    for rounds in ("cumulative", 2):
        full = elf.fuse_layers(visual, kept, layers, rounds)
        low = elf.fuse_layers(visual, summed, layers, rounds)
        assert torch.equal(full.embeddings, low.embeddings)
        assert torch.equal(full.last_attention, low.last_attention)


def test_a_walk_summed_over_other_layers_is_refused(golden_clip):
    walk = walk_layers(
        golden_clip.visual, torch.randn(1, 3, 32, 32), golden_clip.num_layers - 1, sum_layers=[0, 1]
    )
    with pytest.raises(ValueError, match="summed layers"):
        elf.fuse_layers(golden_clip.visual, walk, [1, 2])
    with pytest.raises(ValueError, match="ascending"):
        walk_layers(golden_clip.visual, torch.randn(1, 3, 32, 32), 2, sum_layers=[1, 0])


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"fuse_layers": [1, 2]},
        {"normalization_rounds": 2},
        {"last_layer_attention": "vanilla"},
        {"sliding_crop_size": 0},
    ],
)
def test_segment_without_a_store_equals_the_stored_run(tiny, image, changes, monkeypatch):
    cfg = tiny.cfg.replace(**changes)
    walks = []
    features = tiny.clip_features
    monkeypatch.setattr(
        tiny, "clip_features", lambda *a, **k: walks.append(features(*a, **k)) or walks[-1]
    )
    # the walk not kept (segment's keeps, no store): the summing walk
    low = tiny.run(image, CLASSES, cfg=cfg, keep=SEGMENT_KEEPS)
    assert "clip_walk" not in low and len(walks) == 1 and walks[0].walk.attentions == []
    monkeypatch.undo()
    stored = StageCache(tiny).run(image, cfg, CLASSES)  # a store: every A_i kept
    assert len(stored["clip_walk"].walk.attentions) == tiny.clip.num_layers - 1
    assert torch.equal(low["fusion"].whole.last_attention, stored["fusion"].whole.last_attention)
    assert torch.equal(low["fusion"].whole.embeddings, stored["fusion"].whole.embeddings)
    assert torch.equal(low.layer_maps, stored.layer_maps)
    assert torch.equal(low.refined, stored.refined)
    assert torch.equal(low.labels, stored.labels)


def test_a_walk_asked_for_keeps_its_attentions(tiny, image):
    run = tiny.run(image, CLASSES, until=("clip_walk", "labels"))
    assert len(run["clip_walk"].walk.attentions) == tiny.clip.num_layers - 1
