"""Pinned behaviours of the SD refinement that planted one-line bugs slipped past (issue 26,
point 7): the two thresholds on the streamed (default) path, per-stage timings, the early exit of
the UNet pass, and batched `selection`. Each is checked against an independent computation (tiny
random models, CPU)."""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cliper_lib import CLIPer
from cliper_lib.eval.batching import refine_batch
from cliper_lib.method import fusion as elf
from cliper_lib.method.sd_attention import AttentionStore, run_until_captured

CLASSES = ["cat", "sofa", "wall"]


@pytest.fixture(scope="module")
def model(smoke_variant) -> CLIPer:
    return smoke_variant(sliding_crop_size=0)


@pytest.fixture(scope="module")
def text(model):
    return model.encode_text(CLASSES)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over the spread of b: random SD maps smooth S_f almost flat, so differences are
    measured against its variation, not its size."""
    b = b.double()
    return float((a.double() - b).abs().max() / (b.max() - b.min()))


def normalized(maps: torch.Tensor, thr: float) -> torch.Tensor:
    """The authors' per-map normalisation written out with torch.where, in float64 after the
    float32 scaling (so an entry is cut on the same side of `thr` as in float32 code)."""
    scaled = maps.float() / (maps.float().amax(dim=-2, keepdim=True) + 1e-5)
    kept = torch.where(scaled < thr, torch.zeros_like(scaled), scaled).double()
    return kept / (kept.sum(dim=-1, keepdim=True) + 1e-5)


def upsampled_tokens(coarse: torch.Tensor, T: int) -> torch.Tensor:
    """S_c↑ as (T, C) float64."""
    s = math.isqrt(T)
    up = F.interpolate(coarse[None].double(), size=(s, s), mode="bilinear", align_corners=False)[0]
    return up.reshape(len(coarse), T).T


def reference_sfsa(coarse: torch.Tensor, maps: torch.Tensor, thr: float) -> torch.Tensor:
    """S_f = (A_1 A_2 ... A_m) S_c↑ with the product formed left to right (not the code's order)."""
    T = maps.shape[-1]
    product = functools.reduce(torch.matmul, normalized(maps, thr))
    return (product @ upsampled_tokens(coarse, T)).T.reshape(len(coarse), *[math.isqrt(T)] * 2)


def reference_one_map(coarse: torch.Tensor, A: torch.Tensor, thr: float) -> torch.Tensor:
    T = A.shape[-1]
    out = normalized(A[None], thr)[0] @ upsampled_tokens(coarse, T)
    return out.T.reshape(len(coarse), *[math.isqrt(T)] * 2)


# --- sd_attention_thr != attention_thr ------------------------------------------------------------
@pytest.mark.parametrize("coarse_thr, sd_thr", [(0.05, 0.3), (0.3, 0.05)])
def test_streamed_sfsa_cuts_head_maps_at_sd_thr_and_the_coarse_map_at_attention_thr(
    model, text, cat_image, coarse_thr, sd_thr
) -> None:
    cfg = model.cfg.replace(attention_thr=coarse_thr, sd_attention_thr=sd_thr)
    streamed = model.segment(cat_image, given={"text": text}, cfg=cfg)
    assert streamed.head_maps is None  # the default path: maps applied as the UNet yields them
    # the coarse map, from the run's own layer maps and fused attention, cut at attention_thr
    parts = model.run(cat_image, given={"text": text}, cfg=cfg, until=("layer_maps", "fusion"))
    attention = elf.mean_patch_attention(parts["fusion"].whole.last_attention)[0]
    blended = parts["layer_maps"].blended
    expected_coarse, _ = elf.coarse_map(blended, attention, cfg.select_layer, coarse_thr)
    other_coarse, _ = elf.coarse_map(blended, attention, cfg.select_layer, sd_thr)
    assert torch.equal(streamed.coarse, expected_coarse)
    assert not torch.equal(expected_coarse, other_coarse)  # the two thresholds are told apart
    # the SD head maps, cut at sd_attention_thr
    maps = model.sd(cat_image, cfg)  # (m, T, T), authors' order
    expected = reference_sfsa(expected_coarse, maps, sd_thr)
    wrong = reference_sfsa(expected_coarse, maps, coarse_thr)
    assert relative_error(streamed.refined, expected) < 1e-5
    assert relative_error(wrong, expected) > 2e-4  # (1e-3 here) the thresholds are told apart
    # the non-streamed path (the head maps kept whole) agrees
    kept = model.run(cat_image, given={"text": text}, cfg=cfg)
    assert kept.head_maps is not None and torch.equal(kept.coarse, expected_coarse)
    assert relative_error(kept.refined, expected) < 1e-5
    assert torch.equal(kept.labels, streamed.labels)
    # so do the variants that read the maps whole
    for variant, reference in (
        ("mean", normalized(maps, sd_thr).mean(0)),
        ("selection", normalized(maps[1:2], sd_thr)[0]),
    ):
        run = model.run(
            cat_image,
            given={"text": text, "sd_attention": maps},
            cfg=cfg.replace(refinement=variant, selection_head=1),
        )
        T = maps.shape[-1]
        refined = (reference @ upsampled_tokens(expected_coarse, T)).T.reshape(run.refined.shape)
        assert relative_error(run.refined, refined) < 1e-5, variant


def test_batched_sfsa_uses_sd_thr_too(model, text, cat_image) -> None:
    cfg = model.cfg.replace(attention_thr=0.3, sd_attention_thr=0.05)
    images = [cat_image, np.ascontiguousarray(cat_image[:, ::-1])]
    coarse = [torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    refined = refine_batch(model, images, coarse, cfg)  # one UNet pass for both
    for image, c, ours in zip(images, coarse, refined, strict=True):
        maps = model.sd(image, cfg)
        expected, wrong = (reference_sfsa(c, maps, thr) for thr in (0.05, 0.3))
        # the batched UNet pass rounds differently (~5e-5 of the spread here); a wrong cut: > 1e-2
        assert relative_error(ours, expected) < 3e-4 < 5e-3 < relative_error(wrong, expected)


# --- per-stage timings ----------------------------------------------------------------------------
UNET_SECONDS, VAE_SECONDS = 1000.0, 10.0


@pytest.fixture()
def fake_clock(model, monkeypatch):
    """time.perf_counter reads a clock that only the VAE encode and the UNet pass advance, so each
    stage's timing says exactly which of them it contains."""
    clock = {"now": 0.0}
    monkeypatch.setattr(time, "perf_counter", lambda: clock["now"])

    def advancing(method, seconds):
        def run(*args, **kwargs):
            clock["now"] += seconds
            return method(*args, **kwargs)

        return run

    monkeypatch.setattr(model.sd, "capture", advancing(model.sd.capture, UNET_SECONDS))
    monkeypatch.setattr(model.sd, "latents", advancing(model.sd.latents, VAE_SECONDS))
    return clock


def test_streamed_segment_times_the_unet_in_refine_only(model, text, cat_image, fake_clock):
    result = model.segment(cat_image, given={"text": text})
    assert result.timings["refine"] == UNET_SECONDS  # the streamed refine stage runs the UNet
    assert result.timings["sd_latents"] == VAE_SECONDS
    others = {k: v for k, v in result.timings.items() if k not in ("refine", "sd_latents")}
    assert {"clip_walk", "fusion", "layer_maps", "coarse", "labels"} <= set(others)
    assert all(v == 0.0 for v in others.values()), others


def test_kept_head_maps_time_the_unet_in_sd_attention_only(model, text, cat_image, fake_clock):
    result = model.run(cat_image, given={"text": text})  # keeps every stage: not streamed
    assert result.timings["sd_attention"] == UNET_SECONDS
    assert result.timings["sd_latents"] == VAE_SECONDS
    assert result.timings["refine"] == 0.0 and result.timings["labels"] == 0.0
    assert sum(result.timings.values()) == UNET_SECONDS + VAE_SECONDS


# --- the early exit of the UNet pass --------------------------------------------------------------
class TwoAttentions(torch.nn.Module):
    """first -> second -> after; `never` is a self-attention the forward pass does not reach."""

    def __init__(self) -> None:
        from diffusers.models.attention_processor import Attention

        super().__init__()
        torch.manual_seed(0)
        self.first, self.second, self.never = (
            Attention(query_dim=8, heads=2, dim_head=4) for _ in range(3)
        )
        self.after = torch.nn.Linear(8, 8)
        self.after_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.second(self.first(x))
        self.after_calls += 1
        return self.after(h)


def manual_probabilities(attn, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of each head: (B, heads, T, T)."""
    q = attn.to_q(x).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
    k = attn.to_k(x).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
    return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(dim=-1)


@torch.no_grad()
def test_a_captured_layer_the_pass_never_reaches_fails_clearly_and_restores() -> None:
    net = TwoAttentions()
    before = {name: getattr(net, name).processor for name in ("first", "second", "never")}
    x = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(1))
    store = AttentionStore()
    with pytest.raises(RuntimeError, match="ended before capturing all of.*never"):
        run_until_captured(net, ["first", "never"], store, x)
    assert net.after_calls == 1  # no early exit: the layer it waited for never came
    assert all(getattr(net, name).processor is p for name, p in before.items())
    torch.testing.assert_close(store["first"], manual_probabilities(net.first, x))


@torch.no_grad()
def test_the_pass_ends_at_the_last_reached_layer_whatever_the_listed_order() -> None:
    net = TwoAttentions()
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(2))
    store = AttentionStore()
    run_until_captured(net, ["second", "first"], store, x)  # listed against the call order
    assert net.after_calls == 0 and set(store) == {"first", "second"}
    torch.testing.assert_close(store["first"], manual_probabilities(net.first, x))
    torch.testing.assert_close(store["second"], manual_probabilities(net.second, net.first(x)))


def test_segment_with_a_configured_layer_the_unet_skips_fails_clearly(
    model, text, cat_image, monkeypatch
) -> None:
    """Streamed or not, a refinement never runs on a chain that lacks a layer's maps."""
    layer = model.sd.components.unet.get_submodule("up_blocks.3.attentions.0")
    monkeypatch.setattr(layer, "forward", lambda hidden_states, *args, **kwargs: (hidden_states,))
    for run in (
        lambda: model.segment(cat_image, given={"text": text}),
        lambda: model.run(cat_image, given={"text": text}),
    ):
        with pytest.raises(RuntimeError, match="up_blocks.3.attentions.0"):
            run()


# --- batched selection: which head is which -------------------------------------------------------
def unet_head_maps(model: CLIPer, image: np.ndarray, layers: list[str], cfg) -> dict:
    """{layer: (heads, T, T)} computed by hand from the input each layer's attn1 receives in the
    UNet pass (captured by a forward pre-hook), not by the capture processor."""
    unet = model.sd.components.unet
    inputs: dict[str, torch.Tensor] = {}

    def keeper(layer: str):
        def keep(module, args, kwargs) -> None:
            inputs[layer] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

        return keep

    hooks = [
        unet.get_submodule(f"{layer}.transformer_blocks.0.attn1").register_forward_pre_hook(
            keeper(layer), with_kwargs=True
        )
        for layer in layers
    ]
    try:
        model.sd.extract(image, layers=layers, cfg=cfg)
    finally:
        for hook in hooks:
            hook.remove()
    return {
        layer: manual_probabilities(
            unet.get_submodule(f"{layer}.transformer_blocks.0.attn1"), inputs[layer].float()
        )[0]
        for layer in layers
    }


@pytest.mark.parametrize(
    "layers",
    [
        ["up_blocks.3.attentions.1", "up_blocks.3.attentions.0"],  # against the UNet's order
        ["up_blocks.3.attentions.0", "up_blocks.3.attentions.1"],  # in the UNet's order
    ],
)
def test_batched_selection_picks_the_head_in_the_configured_layer_order(
    model, cat_image, layers
) -> None:
    images = [cat_image, np.full((90, 130, 3), 70, np.uint8)]
    images[1][20:60, 30:100] = (200, 40, 90)
    coarse = [torch.rand(3, 6, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    cfg = model.cfg.replace(refinement="selection", sd_layers=layers)
    with torch.no_grad():
        per_image = [unet_head_maps(model, image, layers, cfg) for image in images]
    heads = per_image[0][layers[0]].shape[0]
    assert heads > 1 and len(layers) * heads == len(model.sd(images[0], cfg))
    results = {}
    for head in range(len(layers) * heads):
        layer, index = layers[head // heads], head % heads  # authors' order: layer by layer
        refined = refine_batch(model, images, coarse, cfg.replace(selection_head=head))
        for by_hand, c, ours in zip(per_image, coarse, refined, strict=True):
            expected = reference_one_map(c, by_hand[layer][index], cfg.attention_thr)
            assert relative_error(ours, expected) < 1e-4, (head, layer, index)
        results[head] = refined[0]
    # every head gives its own S_f: a wrong index could not pass by luck
    assert all(
        relative_error(results[a], results[b]) > 1e-3 for a in results for b in results if a < b
    )
