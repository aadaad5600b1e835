"""CLIPer end to end on the smoke models: shapes, stage consistency, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cliper_lib import CLIPer


@pytest.fixture(scope="module")
def coarse_model(smoke_coarse_model) -> CLIPer:
    return smoke_coarse_model


def test_segment_returns_every_intermediate(coarse_model, cat_image):
    result = coarse_model.segment(cat_image, classes="cat; sofa; wall")
    c, (h, w) = 3, result.grid
    assert (h, w) == (21, 32)  # 300x451 -> 336x512 at patch 16
    assert result.layer_embeddings.shape == (4, 1 + h * w, 64)
    assert result.fused_attention.shape == (2, 1 + h * w, 1 + h * w)
    assert result.fused_attention_mean.shape == (h * w, h * w)
    assert result.layer_maps_whole.shape == result.layer_maps.shape == (4, c, h, w)
    assert result.sliding is not None and result.sliding.attention.shape == (h * w, h * w)
    assert result.coarse.shape == result.select_map.shape == (c, h, w)
    assert result.refined.shape == (c, h, w)  # refinement none: S_f = S_c
    assert result.scores.shape == (c,)
    assert result.maps.shape == (c, 300, 451)
    assert result.labels.shape == (300, 451) and result.labels.dtype == torch.int64
    assert int(result.labels.min()) >= 0 and int(result.labels.max()) <= c
    assert set(result.timings) >= {"clip_walk", "fusion", "layer_maps", "coarse", "labels"}
    torch.testing.assert_close(result.fused_attention.sum(-1), torch.ones(2, 1 + h * w))


def test_stages_compose_to_segment(coarse_model, cat_image):
    cfg = coarse_model.cfg.replace(select_layer=-2, sliding_crop_size=0, fuse_layers=[1, 2])
    text = coarse_model.encode_text(["cat", "sofa"])
    full = coarse_model.segment(cat_image, given={"text": text}, cfg=cfg)
    features = coarse_model.clip_features(cat_image, cfg)
    fused = coarse_model.fusion(features, cfg)
    maps = coarse_model.layer_maps(features, fused, text, cfg)
    coarse = coarse_model.coarse(maps, fused, cfg)
    torch.testing.assert_close(coarse.coarse, full.coarse)
    torch.testing.assert_close(coarse.select_map, full.select_map)
    assert maps.sliding is None


def test_segment_is_deterministic(coarse_model, cat_image):
    a = coarse_model.segment(cat_image, classes=["cat", "sofa"])
    b = coarse_model.segment(cat_image, classes=["cat", "sofa"])
    assert torch.equal(a.labels, b.labels) and torch.equal(a.coarse, b.coarse)


def test_accepts_pil_and_tensor_images(coarse_model, cat_image):
    from PIL import Image

    a = coarse_model.segment(Image.fromarray(cat_image), classes=["cat"])
    b = coarse_model.segment(
        torch.from_numpy(cat_image.copy()).permute(2, 0, 1).float() / 255, classes=["cat"]
    )
    assert torch.equal(a.labels, b.labels)


def test_default_classes_come_from_the_class_file(coarse_model):
    result = coarse_model.segment(np.full((64, 80, 3), 128, np.uint8))
    assert len(result.class_names) == 20 and result.class_names[0] == "aeroplane"
    assert result.background[0] == "ground"


def test_bad_inputs_get_clear_errors(coarse_model, cat_image):
    with pytest.raises(ValueError, match="at least one class"):
        coarse_model.segment(cat_image, classes=[" "])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        coarse_model.segment(np.zeros((10, 10, 3), np.float32), classes=["cat"])


@pytest.fixture(scope="module")
def full_model(smoke_model) -> CLIPer:
    return smoke_model


def test_full_method_with_fine_grained_compensation(full_model, cat_image):
    result = full_model.segment(cat_image, classes="cat; sofa")
    side = full_model.cfg.effective_sd_image_size // 8  # up_blocks.3 runs at latent resolution
    assert result.refined.shape == (2, side, side)
    # segment streams the head maps (none kept); a run that keeps them shows their shape
    assert result.head_maps is None
    assert result.cfg.sd_layers == ["up_blocks.3.attentions.1", "up_blocks.3.attentions.0"]
    kept = full_model.run(cat_image, "cat; sofa", until=("labels", "sd_attention"))
    assert kept.head_maps.shape == (4, side * side, side * side)  # 2 heads of each layer
    assert torch.equal(kept.refined, result.refined)
    # the VAE encode, then the UNet pass inside the streamed refinement
    assert "sd_latents" in result.timings and "refine" in result.timings
    torch.testing.assert_close(
        result.scores,
        0.5 * result.refined.flatten(1).amax(1) + 0.5 * result.coarse.flatten(1).amax(1),
    )
    again = full_model.segment(cat_image, classes="cat; sofa")
    assert torch.equal(result.refined, again.refined) and torch.equal(result.labels, again.labels)


def test_refinement_variants_and_threshold_knob(full_model, cat_image):
    head_maps = full_model.sd(cat_image)
    given = {"text": full_model.encode_text(["cat", "sofa"]), "sd_attention": head_maps}

    def refined(**changes) -> torch.Tensor:
        # a run that keeps every stage reads the given head maps (segment would stream its own)
        run = full_model.run(cat_image, given=given, cfg=full_model.cfg.replace(**changes))
        assert run.head_maps is head_maps
        return run.refined

    variants = {v: refined(refinement=v) for v in ("sfsa", "mean", "selection")}
    assert not torch.allclose(variants["sfsa"], variants["mean"])
    fixed = refined(attention_thr=0.3, sd_attention_thr=0.1)
    default = refined(attention_thr=0.3)
    assert not torch.allclose(fixed, default)  # the SD threshold follows attention_thr unless set
