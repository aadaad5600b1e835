"""The work at the floor: the UNet ends at the last captured layer, the refinement streams, the SD
text encoder is replaced by a cached empty-prompt embedding (tiny random models on CPU)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from cliper_lib import CLIPer
from cliper_lib.config import CLIPerConfig
from cliper_lib.method.refine import HeadChain, refine_sfsa
from cliper_lib.method.sd_attention import (
    AttentionStore,
    SDSelfAttention,
    capture_self_attention,
    run_until_captured,
)
from cliper_lib.weights.sd import build_random_sd_components, load_sd_components, save_sd_folder
from cliper_lib.weights.sd_prompt import encode_empty_prompt

from helpers import refine_variant

SMOKE = CLIPerConfig(profile="smoke")
SIDE = SMOKE.effective_sd_image_size


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def components():
    return build_random_sd_components(seed=0)


@pytest.fixture(scope="module")
def model(smoke_variant) -> CLIPer:
    return smoke_variant(sliding_crop_size=0)


def processors(unet: torch.nn.Module) -> dict[str, object]:
    return {
        name: module.processor
        for name, module in unet.named_modules()
        if hasattr(module, "set_processor")
    }


# --- early exit ----------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize(
    "layers", [SMOKE.sd_layers, ["up_blocks.1.attentions.0", "down_blocks.0.attentions.0"]]
)
def test_early_exit_maps_equal_the_full_pass_and_the_unet_is_restored(components, layers) -> None:
    unet = components.unet
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, SIDE // 8, SIDE // 8, generator=g)
    context = torch.randn(2, 77, 32, generator=g)
    before = processors(unet)
    with capture_self_attention(unet, layers) as full:  # the whole pass, as before
        unet(latents, torch.tensor(101), encoder_hidden_states=context)
    calls = []
    hook = unet.conv_out.register_forward_hook(lambda *args: calls.append(1))
    try:
        early = AttentionStore()
        run_until_captured(
            unet, layers, early, latents, torch.tensor(101), encoder_hidden_states=context
        )
    finally:
        hook.remove()
    assert calls == []  # the pass ended before the UNet's last layer
    assert set(early) == set(full) == set(layers)
    for path in layers:
        assert early[path].shape == full[path].shape and torch.equal(early[path], full[path]), path
    after = processors(unet)
    # the original processors, nothing left behind
    assert all(after[name] is before[name] for name in before)
    # a plain pass still runs
    reference = unet(latents, torch.tensor(101), encoder_hidden_states=context).sample
    assert reference.shape == latents.shape


# --- streamed refinement -------------------------------------------------------------------------
def test_segment_streams_the_refinement_and_equals_the_batch_path(model, cat_image) -> None:
    text = model.encode_text(["cat", "sofa", "wall"])
    streamed = model.segment(cat_image, given={"text": text})
    batch = model.run(cat_image, given={"text": text}, until=("coarse", "sd_attention"))
    head_maps = batch["sd_attention"]  # (4, T, T): asked for, so kept
    thr = model.cfg.effective_sd_attention_thr
    expected = refine_sfsa(batch.coarse.float(), head_maps, thr)
    assert streamed.refined.shape == expected.shape
    assert relative_error(streamed.refined, expected) <= 1e-6
    # streamed: the maps were never kept, the UNet ran inside the refine stage
    assert streamed.head_maps is None and "sd_attention" not in streamed.timings
    assert head_maps.shape[0] == 4 and streamed.refined.shape[-1] ** 2 == head_maps.shape[-1]
    # the batch path, given the maps (a run that keeps every stage reads them whole)
    kept = model.run(cat_image, given={"text": text, "sd_attention": head_maps})
    assert kept.head_maps is head_maps and "sd_attention" not in kept.timings
    assert relative_error(kept.refined, expected) <= 1e-6
    assert torch.equal(kept.labels, streamed.labels)


def test_a_malformed_class_file_fails_before_the_vae_encode(
    model, cat_image, tmp_path, monkeypatch
) -> None:
    """The streamed segment encodes the image first; the class file (read by the text stage) is
    checked before."""
    one_line = tmp_path / "classes.txt"
    one_line.write_text("background, sky\n")  # a background line and no class
    monkeypatch.setattr(
        model.sd, "latents", lambda *args, **kwargs: pytest.fail("the VAE ran first")
    )
    for classes in (str(one_line), str(tmp_path / "missing.txt")):
        with pytest.raises(
            (ValueError, FileNotFoundError), match="needs a background line|missing"
        ):
            model.segment(cat_image, cfg=model.cfg.replace(classes=classes))
    # classes given, the vocabulary from the file
    with pytest.raises(ValueError, match="needs a background line"):
        model.segment(cat_image, classes=["cat"], cfg=model.cfg.replace(classes=str(one_line)))


@pytest.mark.parametrize("variant", ["mean", "selection"])
def test_other_variants_read_the_maps_whole_and_match(model, cat_image, variant) -> None:
    cfg = model.cfg.replace(refinement=variant, selection_head=1)
    text = model.encode_text(["cat", "sofa"])
    run = model.run(cat_image, given={"text": text}, cfg=cfg, until=("coarse", "sd_attention"))
    thr = cfg.effective_sd_attention_thr
    expected = refine_variant(run.coarse.float(), run["sd_attention"], variant, thr, 1)
    assert torch.equal(model.segment(cat_image, given={"text": text}, cfg=cfg).refined, expected)


def test_head_chain_waits_for_a_layer_that_runs_before_its_turn(model, cat_image) -> None:
    # chain order .0 then .1: .1 is due first, but the UNet runs .0 first, so its heads wait
    cfg = model.cfg.replace(sd_layers=["up_blocks.3.attentions.0", "up_blocks.3.attentions.1"])
    coarse = torch.rand(3, 21, 32, generator=torch.Generator().manual_seed(0))
    chain = HeadChain([coarse], cfg.sd_layers, cfg.attention_thr)
    model.sd.capture(model.sd.latents([cat_image], cfg), chain, cfg=cfg)
    expected = refine_sfsa(coarse, model.sd(cat_image, cfg), cfg.attention_thr)
    assert chain.count == 4 and not chain.waiting and not chain.due
    assert relative_error(chain.refined[0], expected) <= 1e-6


# --- what a segmentation holds -------------------------------------------------------------------
def test_a_run_frees_what_nobody_keeps_and_no_cycle_holds_it(model, cat_image) -> None:
    text = model.encode_text(["cat", "sofa"])
    cfg = model.cfg.replace(sliding_crop_size=112, sliding_stride=112)
    # default: every stage value is returned
    kept = model.run(cat_image, given={"text": text}, cfg=cfg)
    lean = model.run(cat_image, given={"text": text}, cfg=cfg, keep=("fusion", "coarse"))
    # read, then dropped
    assert "clip_walk" in kept and "clip_walk" not in lean and "clip_walk" in lean.keys
    assert {"fusion", "coarse", "labels"} <= set(lean.values) and "layer_maps" not in lean.values
    for part in ("scores", "maps", "labels"):
        assert torch.equal(getattr(kept["labels"], part), getattr(lean["labels"], part)), part
    walk = weakref.ref(kept["clip_walk"].walk.normalized_inputs[0])
    gc.disable()  # the run's values must go with the run, not wait for the cyclic garbage collector
    try:
        del kept
        assert walk() is None
    finally:
        gc.enable()


def test_segment_encodes_first_and_matches_a_run_that_keeps_everything(
    model, cat_image, monkeypatch
) -> None:
    text = model.encode_text(["cat", "sofa"])
    order = []
    for name in ("latents", "capture"):
        monkeypatch.setattr(
            model.sd,
            name,
            (lambda f, n: lambda *a, **k: (order.append(n), f(*a, **k))[1])(
                getattr(model.sd, name), name
            ),
        )
    walk = model.clip_features
    monkeypatch.setattr(
        model, "clip_features", lambda *a, **k: (order.append("clip_walk"), walk(*a, **k))[1]
    )
    result = model.segment(cat_image, given={"text": text})
    # the VAE before the CLIP side; the UNet after it
    assert order == ["latents", "clip_walk", "capture"]
    expected = model.run(
        cat_image, given={"text": text}, cfg=model.cfg.replace(seed=model.cfg.seed)
    )
    assert relative_error(result.refined, expected.refined) <= 1e-6
    assert torch.equal(result.labels, expected.labels)
    # the VAE encode is its own stage; the UNet pass runs inside the (streamed) refine stage
    assert result.timings["sd_latents"] > 0 and result.timings["refine"] > 0
    assert "sd_attention" not in result.timings


def test_head_chain_refuses_maps_of_another_size() -> None:
    chain = HeadChain([torch.rand(2, 4, 4)], ["a"], 0.1)
    chain("a", 1, 2, torch.softmax(torch.randn(1, 16, 16), -1))
    with pytest.raises(ValueError, match="does not fit"):
        chain("a", 0, 2, torch.softmax(torch.randn(1, 9, 9), -1))


# --- the empty-prompt embedding ------------------------------------------------------------------
def forbid_text_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder was loaded on a cache hit")

    monkeypatch.setattr(transformers.CLIPTextModel, "__init__", refuse)
    monkeypatch.setattr(transformers.CLIPTextModel, "from_pretrained", refuse)


def test_random_weights_embedding_cached_equals_fresh(monkeypatch, tmp_path, components) -> None:
    monkeypatch.setenv("CLIPER_CACHE", str(tmp_path))
    fresh = encode_empty_prompt(components.tokenizer, components.text_encoder)  # (1, 77, 32)
    lean = load_sd_components(SMOKE)  # a miss: computed and stored
    assert lean.text_encoder is None and lean.tokenizer is None and lean.vae.decoder is None
    assert torch.equal(lean.empty_embedding, fresh)
    assert len(list((tmp_path / "sd-empty-prompt").glob("*.pt"))) == 1
    with monkeypatch.context() as patch:
        forbid_text_encoder(patch)
        # a hit, no encoder built
        assert torch.equal(load_sd_components(SMOKE).empty_embedding, fresh)
    other = load_sd_components(SMOKE.replace(seed=1))  # other weights, another entry
    assert not torch.equal(other.empty_embedding, fresh)
    seed1 = build_random_sd_components(seed=1)
    assert torch.equal(
        other.empty_embedding, encode_empty_prompt(seed1.tokenizer, seed1.text_encoder)
    )


def test_folder_embedding_cached_equals_fresh_and_invalidates(
    monkeypatch, tmp_path, components, cat_image
) -> None:
    monkeypatch.setenv("CLIPER_CACHE", str(tmp_path / "cache"))
    folder = save_sd_folder(components, tmp_path / "sd")
    cfg = CLIPerConfig(profile="paper", sd_repo=str(folder), sd_image_size=SIDE)
    first = load_sd_components(cfg)
    assert torch.equal(
        first.empty_embedding, encode_empty_prompt(components.tokenizer, components.text_encoder)
    )
    with monkeypatch.context() as patch:
        forbid_text_encoder(patch)
        again = load_sd_components(cfg)
    assert torch.equal(again.empty_embedding, first.empty_embedding)
    # the maps equal those of the full components, which run their text encoder
    torch.testing.assert_close(
        SDSelfAttention(again, cfg)(cat_image),
        SDSelfAttention(components, SMOKE)(cat_image),
        rtol=0,
        atol=1e-6,
    )

    other = build_random_sd_components(seed=1)
    # new weights in place: the key changes
    other.text_encoder.save_pretrained(folder / "text_encoder")
    changed = load_sd_components(cfg)
    assert torch.equal(
        changed.empty_embedding, encode_empty_prompt(other.tokenizer, other.text_encoder)
    )
    assert not torch.equal(changed.empty_embedding, first.empty_embedding)
