"""The authors' own outputs on a tiny model (shared/reference/golden): every array within 1e-5 relative."""
from __future__ import annotations

import pytest
import torch

from cliper_lib.config import CLIPerConfig
from cliper_lib.method.clip_backbone import preprocess_image
from cliper_lib.method.labels import labels_from_maps
from cliper_lib.method.pipeline import CLIPer
from cliper_lib.method.text import TextSet

CASES = ["select=-1|slide=0", "select=-1|slide=112", "select=-2|slide=0", "select=-2|slide=112"]


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours.float() - theirs.float()).abs().max() / theirs.float().abs().max()).item()


def test_preprocessing_matches_authors(golden, golden_clip):
    x = preprocess_image(golden["image_uint8"].numpy(), 224, 16, golden_clip.mean, golden_clip.std)
    assert x.shape == golden["input"].shape == (3, 224, 336)
    assert relative_error(x, golden["input"]) < 1e-6


@pytest.mark.parametrize("case_name", CASES)
def test_clip_side_matches_authors(golden, golden_clip, case_name):
    case = golden["cases"][case_name]
    preset = case["preset"]
    cfg = CLIPerConfig(
        profile="smoke", size=preset["size"], select_layer=preset["select_layer"],
        logit_scale=preset["logit_scale"], attention_thr=preset["attention_thr"],
        sliding_crop_size=preset["sliding_crop_size"], sliding_stride=preset["sliding_stride"],
        refinement="none", device="cpu",
    )
    model = CLIPer(cfg, golden_clip, text_cache_dir=False)
    text = TextSet(names=golden["classes"], background=golden["background"], fg=case["text_fg"], bg=case["text_bg"])
    result = model.segment(golden["image_uint8"].numpy(), text=text)

    assert result.layer_embeddings.shape == case["layer_embeddings"].shape == (4, 295, 64)
    assert relative_error(result.layer_embeddings, case["layer_embeddings"]) < 1e-5
    assert relative_error(result.layer_maps_whole, case["layer_maps_whole_image"]) < 1e-5
    assert relative_error(result.fused_attention_mean, case["fused_attention_mean"]) < 1e-5
    assert relative_error(result.coarse, case["coarse"]) < 1e-5


@pytest.mark.parametrize("index", range(4))
def test_labels_match_authors(golden, index):
    labels = golden["labels"]
    case = labels["cases"][index]
    ours = labels_from_maps(labels["maps"], labels["scores"], case["score_threshold"], case["bkg_thre"],
                            case["is_normalize"])
    assert ours.dtype == torch.int64
    assert torch.equal(ours, case["labels"])
