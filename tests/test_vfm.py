"""The VFM alternatives (ProxyCLIP-style last layer, DINO/DINOv2 refinement): each formula against a
naive computation, both through `segment` on the smoke profile, the double-normalisation flag, the
weights paths. The settings that run a VFM as the authors' code does: tests/test_vfm_authors.py."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cliper_lib import CLIPer, CLIPerConfig
from cliper_lib.config import LAST_LAYER_ATTENTIONS, REFINEMENTS, VFM_MODELS, ConfigError
from cliper_lib.eval.synthetic import SyntheticDataset
from cliper_lib.vfm import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    proxy_attention,
    refine_with_features,
    refinement_features,
    refinement_probabilities,
)
from cliper_lib.weights.hub import WeightsMissingError
from cliper_lib.weights.vfm import _from_pretrained, build_random_vfm, load_vfm, vfms_used, wrap_vfm

CLASSES = ["red disc", "blue box", "green triangle"]


# --- naive references: explicit loops over token pairs, plain Python floats -----------------------
def naive_cosine(features: torch.Tensor) -> list[list[float]]:
    rows = features.double().tolist()
    norms = [math.sqrt(sum(v * v for v in row)) for row in rows]
    return [
        [
            sum(a * b for a, b in zip(ri, rj, strict=True)) / (ni * nj)
            for rj, nj in zip(rows, norms, strict=True)
        ]
        for ri, ni in zip(rows, norms, strict=True)
    ]


def naive_softmax_of_nonnegative(logits: list[list[float]]) -> torch.Tensor:
    out = []
    for row in logits:
        weights = [math.exp(v) if v >= 0 else 0.0 for v in row]
        total = sum(weights)
        out.append([w / total for w in weights])
    return torch.tensor(out)


def naive_proxy(features: torch.Tensor) -> torch.Tensor:
    """(T, D) -> (1 + T, 1 + T): S - mean(S), negatives dropped, softmax, CLS row and column
    zero."""
    s = naive_cosine(features)
    t = len(s)
    mean = sum(map(sum, s)) / (t * t)
    probs = naive_softmax_of_nonnegative([[v - mean for v in row] for row in s])
    out = torch.zeros(t + 1, t + 1)
    out[1:, 1:] = probs
    return out


def naive_refinement_probabilities(features: torch.Tensor) -> torch.Tensor:
    s = naive_cosine(features)
    t = len(s)
    mean = sum(map(sum, s)) / (t * t)
    return naive_softmax_of_nonnegative([[(v - 1.2 * mean) * 3 for v in row] for row in s])


def random_features(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # an offset: positive mean similarity, as real features have
    return torch.randn(*shape, generator=g) + 0.3


# --- the formulas ---------------------------------------------------------------------------------
def test_proxy_attention_matches_a_naive_computation():
    features = random_features(2, 3, 4, 5)  # (B, fh, fw, D), already on CLIP's 3 x 4 grid
    attention = proxy_attention(features, (3, 4))
    assert attention.shape == (2, 1, 13, 13)
    for b in range(2):
        expected = naive_proxy(features[b].reshape(12, 5))
        torch.testing.assert_close(attention[b, 0], expected, atol=1e-6, rtol=1e-5)
    # patch rows are distributions
    assert torch.allclose(attention[:, 0, 1:].sum(-1), torch.ones(2, 12))
    assert (attention[:, 0, 1:, 1:] == 0).any()  # the cut at the mean dropped some pairs


def test_refinement_probabilities_match_a_naive_computation_whole_and_by_rows():
    features = random_features(20, 6, seed=1)
    expected = naive_refinement_probabilities(features)
    torch.testing.assert_close(refinement_probabilities(features), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        refinement_probabilities(features, slice(7, 13)), expected[7:13], atol=1e-6, rtol=1e-5
    )
    assert 0 < (expected == 0).float().mean() < 1  # the formula's cut is active on these features


def test_refine_with_features_is_p_times_the_upsampled_coarse_map():
    features = random_features(5, 7, 8, seed=2)  # (fh, fw, D)
    coarse = torch.rand(3, 4, 6, generator=torch.Generator().manual_seed(3))  # (C, h, w)
    up = F.interpolate(coarse[None], size=(5, 7), mode="bilinear", align_corners=False)[0].reshape(
        3, 35
    )
    p = naive_refinement_probabilities(features.reshape(35, 8))
    expected = torch.tensor(
        [
            [sum(p[i, j].item() * up[c, j].item() for j in range(35)) for i in range(35)]
            for c in range(3)
        ]
    ).reshape(3, 5, 7)
    for block in (2048, 4):  # in one block, and in blocks of 4 rows (the last one short)
        torch.testing.assert_close(
            refine_with_features(coarse, features, block=block), expected, atol=1e-5, rtol=1e-5
        )


def test_a_token_with_nothing_above_the_cut_keeps_itself():
    # all similarities 1: (1 - 1.2)·3 < 0 everywhere, the formula alone gives NaN
    same = torch.ones(6, 4)
    assert torch.equal(refinement_probabilities(same), torch.eye(6))
    assert torch.equal(refinement_probabilities(same, slice(2, 5)), torch.eye(6)[2:5])


# --- through segment on the smoke profile ---------------------------------------------------------
@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return SyntheticDataset(num_images=1, classes=3, size=(72, 104), seed=4)[0].image


#: how a VFM is run by default (the presets run it as the authors do: tests/test_vfm_authors.py).
VFM_DEFAULTS = {
    name: getattr(CLIPerConfig(), name)
    for name in (
        "proxy_double_normalization",
        "proxy_half_precision",
        "vfm_grid_rounding",
        "vfm_position_resize",
    )
}


def smoke_config(**overrides) -> CLIPerConfig:
    return CLIPerConfig.from_preset(
        "vit-b-16/voc21",
        profile="smoke",
        device="cpu",
        size=160,
        score_threshold=0.0,
        bkg_thre=0.1,
        **{**VFM_DEFAULTS, **overrides},
    )


@pytest.fixture(scope="module")
def proxy_model(smoke_variant) -> CLIPer:
    cfg = smoke_config(
        last_layer_attention="proxy",
        proxy_model="dino-s16",
        refinement="none",
        sliding_crop_size=96,
        sliding_stride=64,
    )
    return smoke_variant(cfg)


def test_the_proxy_variant_runs_through_segment(proxy_model, image):
    result = proxy_model.segment(image, classes=CLASSES)
    run = proxy_model.run(image, CLASSES, until="fusion")
    features = run["clip_walk"]
    encoder = proxy_model.vfm("dino-s16")
    assert encoder.model.__class__.__name__ == "ViTModel" and encoder.patch_size == 16
    # the [0, 1] image CLIP saw
    pixels = (
        features.input * torch.tensor(proxy_model.clip.std)[:, None, None]
        + torch.tensor(proxy_model.clip.mean)[:, None, None]
    )
    mean, std = (torch.tensor(v)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    pixels = (pixels - mean) / std
    grid = result.grid
    # 160 x 224 px: already patch multiples
    dino = encoder.patch_features(pixels[None]).permute(0, 3, 1, 2)
    on_clip_grid = (
        F.interpolate(dino, size=grid, mode="bilinear", align_corners=False).flatten(2)[0].T
    )
    torch.testing.assert_close(
        result.fused_attention[0], naive_proxy(on_clip_grid), atol=1e-5, rtol=1e-4
    )
    crops = run["proxy"][1]
    # each crop has its own attention
    assert crops.shape[0] == run["fusion"].crops.last_attention.shape[0] > 1
    assert result.labels.shape == image.shape[:2] and set(result.present_classes()) <= set(CLASSES)


def test_a_vfm_refinement_runs_through_segment(tmp_path, image):
    # its own build: what `from_config` loads for a VFM refinement is under test
    model = CLIPer.from_config(smoke_config(refinement="dinov2-s14"), text_cache_dir=tmp_path)
    assert model.sd is None  # no Stable Diffusion is loaded for a VFM refinement
    result = model.segment(image, classes=CLASSES)
    encoder = model.vfm("dinov2-s14")
    assert encoder.model.__class__.__name__ == "Dinov2Model" and encoder.patch_size == 14
    features = refinement_features(encoder, image)
    assert features.shape[:2] == (5, 7)  # 72 x 104 px -> 70 x 98 (nearest multiples of 14)
    torch.testing.assert_close(result.refined, refine_with_features(result.coarse, features))
    assert result.labels.shape == image.shape[:2] and not torch.isnan(result.scores).any()


def test_a_vfm_refinement_batches_like_one_at_a_time(smoke_variant, image, monkeypatch):
    from dataclasses import replace

    from cliper_lib.eval.batching import refine_batch
    from cliper_lib.method.refinements import REFINEMENTS

    model = smoke_variant(smoke_config(refinement="dinov2-s14"))
    images = [image, np.ascontiguousarray(image[4:60, 10:90])]  # two sizes: two feature grids
    results = [model.segment(one, classes=CLASSES) for one in images]
    refined = refine_batch(model, images, [r.coarse for r in results], model.cfg)
    for ours, result in zip(refined, results, strict=True):
        assert torch.equal(ours, result.refined)
    without = replace(REFINEMENTS["dinov2-s14"], batch=None)
    monkeypatch.setitem(REFINEMENTS, "dinov2-s14", without)
    with pytest.raises(ValueError, match="no batched path"):
        refine_batch(model, images, [r.coarse for r in results], model.cfg)


class RecordingEncoder:
    """Wraps a VFMEncoder and records the pixels it is given."""

    def __init__(self, encoder):
        self.encoder, self.seen = encoder, []

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def patch_features(self, pixels, *args):
        self.seen.append(pixels.clone())
        return self.encoder.patch_features(pixels, *args)


def test_double_normalisation_changes_only_the_vfm_input(proxy_model, image):
    clip = proxy_model.clip
    recorder = RecordingEncoder(proxy_model.vfm("dino-s16"))
    single_cfg = proxy_model.cfg.replace(sliding_crop_size=0)
    runs = {}
    for double in (False, True):
        model = CLIPer(
            single_cfg.replace(proxy_double_normalization=double),
            clip,
            None,
            text_cache_dir=False,
            vfm=lambda name: recorder,
        )
        runs[double] = model.run(image, CLASSES, until="fusion")
    single, double = recorder.seen
    clip_input = runs[False]["clip_walk"].input
    assert torch.equal(clip_input, runs[True]["clip_walk"].input)  # CLIP's own input is the same
    for a, b in zip(
        runs[False]["clip_walk"].walk.attentions,
        runs[True]["clip_walk"].walk.attentions,
        strict=True,
    ):
        assert torch.equal(a, b)
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    unnormalised = (
        clip_input * torch.tensor(clip.std)[:, None, None] + torch.tensor(clip.mean)[:, None, None]
    )
    # the [0, 1] image, normalised once
    torch.testing.assert_close(single[0], (unnormalised - mean) / std)
    # CLIP's normalised input, normalised again
    torch.testing.assert_close(double[0], (clip_input - mean) / std)
    assert not torch.allclose(runs[False]["proxy"][0], runs[True]["proxy"][0])


def test_config_validates_the_new_fields():
    with pytest.raises(ConfigError, match="proxy_model"):
        CLIPerConfig(proxy_model="dino-b32")
    with pytest.raises(ConfigError, match="proxy_double_normalization"):
        CLIPerConfig(proxy_double_normalization="maybe")
    with pytest.raises(ConfigError, match="proxy_half_precision"):
        CLIPerConfig(proxy_half_precision="maybe")
    with pytest.raises(ConfigError, match="vfm_grid_rounding"):
        CLIPerConfig(vfm_grid_rounding="ceil")
    with pytest.raises(ConfigError, match="vfm_position_resize"):
        CLIPerConfig(vfm_position_resize="bilinear")
    assert set(VFM_MODELS) <= set(REFINEMENTS) and "proxy" in LAST_LAYER_ATTENTIONS
    assert (
        CLIPerConfig(refinement="dinov2-g14", last_layer_attention="proxy").proxy_model == "dino-b8"
    )


def test_without_vfms_the_proxy_variant_says_so(proxy_model, image):
    bare = CLIPer(proxy_model.cfg, proxy_model.clip, None, text_cache_dir=False)
    with pytest.raises(RuntimeError, match="without vision foundation models"):
        bare.run(image, CLASSES, until="fusion")


# --- weights --------------------------------------------------------------------------------------
def test_paper_vfm_weights_offline_fail_fast_with_instructions(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    # imported first: the import time is not what is timed
    from transformers import AutoConfig, AutoModel, ViTModel  # noqa: F401

    start = time.time()
    with pytest.raises(WeightsMissingError) as error:
        load_vfm("dino-b8", CLIPerConfig(profile="paper", device="cpu"))
    assert time.time() - start < 10
    message = str(error.value)
    assert "facebook/dino-vitb8" in message and "config.json" in message and "smoke" in message
    assert "cliper download --vfm dino-b8" in message and str(tmp_path) in message


def test_saved_models_load_through_the_paper_path_and_drop_cls_and_registers(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    dino = build_random_vfm("dino-b8", seed=2)
    dino.model.save_pretrained(tmp_path / "dino")
    loaded = wrap_vfm(
        _from_pretrained(str(tmp_path / "dino"), local_files_only=True), "dino-b8", "local"
    )
    pixels = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(loaded.patch_features(pixels), dino.patch_features(pixels))
    # (1, 1 + 24, D)
    hidden = dino.model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
    torch.testing.assert_close(dino.patch_features(pixels), hidden[:, 1:].reshape(1, 4, 6, -1))

    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=14,
        image_size=518,
        num_register_tokens=4,
    )
    Dinov2WithRegistersModel(config).save_pretrained(tmp_path / "registers")
    registers = wrap_vfm(
        _from_pretrained(str(tmp_path / "registers"), local_files_only=True), "dinov2-s14", "local"
    )
    assert registers.num_prefix_tokens == 5  # CLS + 4 registers
    pixels = torch.randn(2, 3, 28, 42)
    hidden = registers.model(pixel_values=pixels).last_hidden_state  # (2, 5 + 6, D)
    torch.testing.assert_close(registers.patch_features(pixels), hidden[:, 5:].reshape(2, 2, 3, -1))


def test_the_cli_offers_the_vfm_refinements_and_the_proxy_variant():
    from cliper_lib.suite.cli.commands import build_parser, config_from_args

    args = build_parser().parse_args(
        [
            "segment",
            "image.jpg",
            "--out",
            "o",
            "--refinement",
            "dinov2-b14",
            "--last-layer-attention",
            "proxy",
            "--set",
            "proxy_double_normalization=true",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.refinement, cfg.last_layer_attention, cfg.proxy_double_normalization) == (
        "dinov2-b14",
        "proxy",
        True,
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["segment", "image.jpg", "--out", "o", "--refinement", "dino-b32"]
        )
    assert vfms_used(cfg) == ["dino-b8", "dinov2-b14"]


def test_compare_refinements_times_only_the_refinement_stages(proxy_model, image):
    from cliper_lib.suite.studies.refinements import compare_refinements
    from cliper_lib.suite.toolkit.stage_cache import StageCache

    cfg = proxy_model.cfg.replace(last_layer_attention="fused", sliding_crop_size=0)
    cache = StageCache(proxy_model)
    cache.run(image, cfg, CLASSES)  # the CLIP stages, cached
    table, runs = compare_refinements(
        cache, image, CLASSES, {"none": cfg, "dino": cfg.replace(refinement="dino-s16")}
    )
    dino = runs["dino"]
    assert set(dino.seconds) == {"vfm", "refine"} and set(runs["none"].seconds) == {"refine"}
    expected = proxy_model.segment(image, classes=CLASSES, cfg=cfg.replace(refinement="dino-s16"))
    assert torch.equal(dino.run["refine"], expected.refined)
    assert torch.equal(dino.labels, expected.labels)
    features = dino.run["vfm"]
    assert dino.affinity_mib == features.numel() * 4 / 2**20 and runs["none"].affinity_mib == 0
    assert (
        list(table["refinement"]) == ["none", "dino"]
        and table["label agreement with first"][0] == 1.0
    )
    assert table["S_f grid"][1] == "×".join(map(str, features.shape[:2]))


def test_records_name_the_vfm_weights_and_no_sd_for_a_vfm_refinement():
    from cliper_lib.eval.records import weights_ids

    paper = CLIPerConfig(
        refinement="dino-b8", last_layer_attention="proxy", proxy_model="dinov2-s14"
    )
    assert weights_ids(None, paper) == {
        "clip": "ViT-B-16/openai",
        "sd": None,
        "vfm": {"dinov2-s14": "facebook/dinov2-small", "dino-b8": "facebook/dino-vitb8"},
    }
    assert "vfm" not in weights_ids(None, CLIPerConfig())  # CLIPer itself runs no VFM
