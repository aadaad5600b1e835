"""SD self-attention capture on tiny random components: transparency, maps, determinism,
preprocessing, loading."""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cliper_lib.config import CLIPerConfig
from cliper_lib.method.sd_attention import (
    AttentionStore,
    SDComponents,
    SDSelfAttention,
    capture_self_attention,
    resolve_self_attention,
    self_attention_paths,
)
from cliper_lib.weights.hub import WeightsMissingError, hub_cache_dir
from cliper_lib.weights.sd import (
    build_random_sd_components,
    download_sd_weights,
    load_sd_components,
    load_sd_extractor,
    save_sd_folder,
    tiny_tokenizer_dir,
)

# diffusers passes a deprecated argument to huggingface_hub when it loads from a repo id: not ours
# to fix
pytestmark = pytest.mark.filterwarnings(
    "ignore:The `local_dir_use_symlinks` argument is deprecated"
)

UNCACHED_REPO = "cliper-tests/no-such-stable-diffusion"  # a repo id that is in no cache anywhere
SMOKE = CLIPerConfig(profile="smoke")
SIDE = SMOKE.effective_sd_image_size  # 256
T = (SIDE // 8) ** 2  # tokens at the latent resolution of up_blocks.3: 32 x 32


@pytest.fixture(scope="module")
def components() -> SDComponents:
    return build_random_sd_components(seed=0)


@pytest.fixture(scope="module")
def extractor(components: SDComponents) -> SDSelfAttention:
    return SDSelfAttention(components, SMOKE)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A non-square, non-SD-size uint8 image with structure (a gradient and a bright square)."""
    image = np.zeros((300, 451, 3), dtype=np.uint8)
    image[..., 0] = np.linspace(0, 255, 451, dtype=np.uint8)[None, :]
    image[..., 1] = np.linspace(0, 255, 300, dtype=np.uint8)[:, None]
    image[80:200, 150:330] = (240, 200, 30)
    return image


def unet_inputs(
    components: SDComponents, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, SIDE // 8, SIDE // 8, generator=g)  # (1, 4, 32, 32)
    context = torch.randn(
        1, 77, components.text_encoder.config.hidden_size, generator=g
    )  # (1, 77, D)
    return latents, torch.tensor(500), context


def processors(unet: torch.nn.Module) -> dict[str, object]:
    return {
        name: module.processor
        for name, module in unet.named_modules()
        if hasattr(module, "set_processor")
    }


# --------------------------------------------------------------------------------------------------
# tiny components
# --------------------------------------------------------------------------------------------------
def test_tiny_unet_has_the_sd21_layer_layout(components: SDComponents) -> None:
    paths = self_attention_paths(components.unet)
    for path in SMOKE.sd_layers:  # up_blocks.3.attentions.1 and .0
        assert path in paths
        attn = resolve_self_attention(components.unet, path)
        assert attn.heads == 2 and not attn.is_cross_attention
    assert resolve_self_attention(
        components.unet, "up_blocks[3].attentions[1]"
    ) is resolve_self_attention(
        components.unet, "up_blocks.3.attentions.1.transformer_blocks.0.attn1"
    )


def test_tokenizer_gives_open_clip_ids(components: SDComponents) -> None:
    import open_clip

    tokenizer = components.tokenizer
    assert tokenizer.model_max_length == 77 and len(tokenizer) == 49408
    assert (tiny_tokenizer_dir() / "vocab.json").exists()
    for text in [
        "",
        "a photo of a Cat.",
        "person with cloth people human",
        "naïve café, 123 don't",
    ]:
        ids = tokenizer(
            text, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        assert torch.equal(ids, open_clip.tokenize([text])), text


# --------------------------------------------------------------------------------------------------
# the processor
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_capture_is_transparent_and_restores_processors(components: SDComponents) -> None:
    unet = components.unet
    latents, t, context = unet_inputs(components)
    before = processors(unet)
    reference = unet(latents, t, encoder_hidden_states=context).sample
    every_layer = self_attention_paths(
        unet
    )  # all 11 transformer layers, not only the two the paper reads
    with capture_self_attention(unet, every_layer) as store:
        captured = unet(latents, t, encoder_hidden_states=context).sample
    torch.testing.assert_close(captured, reference, rtol=0, atol=1e-5)
    assert set(store) == set(every_layer)
    for (
        path,
        maps,
    ) in (
        store.items()
    ):  # layers of three sizes share the capture's scratch buffers: each got a copy
        torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), rtol=0, atol=1e-5)
        assert not torch.equal(maps[:, 0], maps[:, 1]), path
    after = processors(unet)
    assert all(after[name] is before[name] for name in before)


@torch.no_grad()
def test_processors_restored_when_the_forward_raises(components: SDComponents) -> None:
    unet = components.unet
    latents, t, context = unet_inputs(components)
    before = processors(unet)
    with pytest.raises(RuntimeError):
        with capture_self_attention(unet, SMOKE.sd_layers):
            unet(latents, t, encoder_hidden_states=context[..., :5])  # wrong text width

    def failing_sink(path: str, head: int, heads: int, probabilities: torch.Tensor) -> None:
        raise ValueError("the sink refused")

    with pytest.raises(
        ValueError, match="the sink refused"
    ):  # raised inside the capture processor itself
        with capture_self_attention(unet, SMOKE.sd_layers, failing_sink):
            unet(latents.repeat(2, 1, 1, 1), t, encoder_hidden_states=context.repeat(2, 1, 1))
    after = processors(unet)
    assert all(after[name] is before[name] for name in before)


def test_bad_path_lists_valid_paths_and_installs_nothing(components: SDComponents) -> None:
    before = processors(components.unet)
    with pytest.raises(ValueError, match=r"up_blocks\.3\.attentions\.0") as info:
        with capture_self_attention(
            components.unet, ["up_blocks.3.attentions.0", "up_blocks.3.attentions.7"]
        ):
            pass
    assert "up_blocks.3.attentions.7" in str(info.value)
    with pytest.raises(ValueError, match="no self-attention"):  # cross-attention is refused
        resolve_self_attention(
            components.unet, "up_blocks.3.attentions.1.transformer_blocks.0.attn2"
        )
    with pytest.raises(ValueError, match="same attention module"):
        with capture_self_attention(
            components.unet,
            ["up_blocks.3.attentions.1", "up_blocks.3.attentions.1.transformer_blocks.0.attn1"],
        ):
            pass
    after = processors(components.unet)
    assert all(after[name] is before[name] for name in before)


@torch.no_grad()
def test_half_precision_attention_records_float32_probabilities(components: SDComponents) -> None:
    # one attention module on its own keeps this fast on CPU
    holder = torch.nn.Module()
    holder.attn1 = copy.deepcopy(
        resolve_self_attention(components.unet, "up_blocks.3.attentions.1")
    ).half()
    x = torch.randn(
        1, 64, holder.attn1.to_q.in_features, generator=torch.Generator().manual_seed(1)
    ).half()
    reference = holder.attn1(x)
    with capture_self_attention(holder, ["attn1"]) as store:
        captured = holder.attn1(x)
    probabilities = store["attn1"]
    assert probabilities.dtype == torch.float32 and probabilities.shape == (
        1,
        2,
        64,
        64,
    )  # (B, heads, T, S)
    # fp16 attention vs our float32 probabilities: equal up to fp16 rounding
    torch.testing.assert_close(captured.float(), reference.float(), rtol=0, atol=2e-3)
    assert isinstance(store, AttentionStore)


# --------------------------------------------------------------------------------------------------
# the extractor
# --------------------------------------------------------------------------------------------------
def test_head_maps_shape_order_and_row_stochastic(
    extractor: SDSelfAttention, photo: np.ndarray
) -> None:
    maps = extractor(photo)
    assert maps.shape == (4, T, T) and maps.dtype == torch.float32  # 2 layers x 2 heads
    assert (maps >= 0).all()
    assert (maps.sum(-1) - 1).abs().max() < 1e-5
    per_layer = extractor.extract(photo)
    assert list(per_layer) == SMOKE.sd_layers
    assert torch.equal(
        maps,
        torch.cat([per_layer["up_blocks.3.attentions.1"], per_layer["up_blocks.3.attentions.0"]]),
    )


def test_latents_then_head_maps_equal_one_image_at_a_time(
    extractor: SDSelfAttention, photo: np.ndarray
) -> None:
    flipped = np.ascontiguousarray(photo[:, ::-1])
    latents = extractor.latents([photo, flipped])  # stage sd_latents, for two images at once
    assert latents.shape == (2, 4, SIDE // 8, SIDE // 8)
    torch.testing.assert_close(latents[:1], extractor.latents([photo]), rtol=1e-5, atol=1e-5)
    maps = extractor.head_maps(latents)  # stage sd_attention: one UNet pass, (m, T, T) each
    assert len(maps) == 2 and all(m.shape == (4, T, T) for m in maps)
    for one, ours in zip((photo, flipped), maps, strict=True):
        torch.testing.assert_close(ours, extractor(one), rtol=1e-4, atol=1e-5)
    store = AttentionStore()
    extractor.capture(latents[1:], store)  # any sink, on latents (batch 1: rounding aside)
    assert list(store) == SMOKE.sd_layers[::-1]  # in the order the UNet runs them
    torch.testing.assert_close(
        torch.cat([store[path][0] for path in SMOKE.sd_layers]), maps[1], rtol=1e-4, atol=1e-5
    )


def test_extract_any_layer_and_timestep(extractor: SDSelfAttention, photo: np.ndarray) -> None:
    maps = extractor.extract(
        photo, layers=["down_blocks.1.attentions.0", "mid_block.attentions.0"], timestep_index=0
    )
    assert maps["down_blocks.1.attentions.0"].shape == (2, (SIDE // 16) ** 2, (SIDE // 16) ** 2)
    assert maps["mid_block.attentions.0"].shape[-1] == (SIDE // 64) ** 2
    early = extractor.extract(photo, timestep_index=0)["up_blocks.3.attentions.1"]
    assert not torch.equal(early, extractor.extract(photo)["up_blocks.3.attentions.1"])


def test_timestep_and_empty_prompt(extractor: SDSelfAttention) -> None:
    # PNDM (SD-2.1-base's scheduler), 50 PLMS steps with steps_offset 1: index 45 -> 101
    assert int(extractor.timestep()) == 101
    embedding = extractor.components.empty_embedding  # computed once, by the loader
    assert embedding.shape == (1, 77, 32)
    text_encoder, tokenizer = extractor.components.text_encoder, extractor.components.tokenizer
    ids = tokenizer(
        "", padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    torch.testing.assert_close(
        embedding, text_encoder(ids)[0], rtol=0, atol=0
    )  # what encode_prompt gives
    with pytest.raises(ValueError, match="outside"):
        extractor.timestep(1000)  # PNDM with PLMS steps has 51 timesteps for 50 steps


def test_same_seed_same_maps_other_seed_other_maps(
    components: SDComponents, photo: np.ndarray
) -> None:
    first = SDSelfAttention(components, SMOKE)(photo)
    again = SDSelfAttention(components, SMOKE)(photo)
    assert torch.equal(first, again)
    other = SDSelfAttention(components, SMOKE.replace(seed=1))(photo)
    assert (other - first).abs().max() > 1e-4


def test_nearest_resize_of_a_non_square_image(
    extractor: SDSelfAttention, photo: np.ndarray
) -> None:
    pixels = extractor.preprocess(photo)
    # independent computation of what diffusers' VaeImageProcessor does with a [0, 1] tensor
    as_tensor = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255  # (1, 3, 300, 451)
    expected = F.interpolate(as_tensor, size=(SIDE, SIDE), mode="nearest") * 2 - 1
    assert pixels.shape == (1, 3, SIDE, SIDE)
    torch.testing.assert_close(pixels, expected, rtol=0, atol=0)
    # the three input types give the same VAE input
    assert torch.equal(extractor.preprocess(Image.fromarray(photo)), pixels)
    assert torch.equal(extractor.preprocess(as_tensor[0]), pixels)
    with pytest.raises(ValueError, match="uint8"):
        extractor.preprocess(photo.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extractor.preprocess(as_tensor[0] * 255)


def test_lanczos_resize_is_pils(components: SDComponents, photo: np.ndarray) -> None:
    extractor = SDSelfAttention(components, SMOKE.replace(sd_resize="lanczos"))
    resized = np.array(Image.fromarray(photo).resize((SIDE, SIDE), Image.Resampling.LANCZOS))
    expected = torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255 * 2 - 1
    torch.testing.assert_close(extractor.preprocess(photo), expected, rtol=0, atol=0)


def test_load_sd_extractor_smoke_matches_injected_components(
    photo: np.ndarray, extractor: SDSelfAttention
) -> None:
    built = load_sd_extractor(SMOKE, device="cpu")
    assert built.components.source == "random-seed-0"
    assert torch.equal(built(photo), extractor(photo))


# --------------------------------------------------------------------------------------------------
# paper-profile loading: offline failure, local folder, hub cache layout
# --------------------------------------------------------------------------------------------------
def test_offline_uncached_repo_fails_fast_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = CLIPerConfig(profile="paper", sd_repo=UNCACHED_REPO)
    start = time.perf_counter()
    with pytest.raises(WeightsMissingError) as info:
        load_sd_components(cfg)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert (
        UNCACHED_REPO in message
        and "cliper download" in message
        and str(hub_cache_dir()) in message
    )
    with pytest.raises(WeightsMissingError, match="cliper download"):
        download_sd_weights(UNCACHED_REPO)


def test_online_flag_unset_does_not_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    with pytest.raises(WeightsMissingError, match=UNCACHED_REPO):
        # no internet: hub_reachable() says so in seconds; with internet the repo does not exist
        load_sd_components(CLIPerConfig(profile="paper", sd_repo=UNCACHED_REPO))
    assert time.perf_counter() - start < 10
    start = time.perf_counter()
    with pytest.raises(WeightsMissingError):
        load_sd_components(
            CLIPerConfig(profile="paper", sd_repo=UNCACHED_REPO), allow_download=False
        )
    assert time.perf_counter() - start < 5


def test_local_folder_round_trip(
    components: SDComponents, photo: np.ndarray, tmp_path: Path
) -> None:
    folder = save_sd_folder(components, tmp_path / "tiny-sd")
    paper = CLIPerConfig(profile="paper", sd_repo=str(folder), sd_image_size=SIDE)
    loaded = load_sd_components(paper)
    assert loaded.source == str(folder)
    assert type(loaded.scheduler).__name__ == "PNDMScheduler"
    assert (
        loaded.text_encoder is None and loaded.tokenizer is None and loaded.vae.decoder is None
    )  # never used
    expected = SDSelfAttention(components, SMOKE)(photo)
    torch.testing.assert_close(SDSelfAttention(loaded, paper)(photo), expected, rtol=0, atol=1e-6)

    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(WeightsMissingError, match="not a complete diffusers"):
        load_sd_components(paper)


def test_hub_cache_layout_loads_by_repo_id(
    components: SDComponents, photo: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # a hand-made hub cache entry (refs/main -> snapshots/<commit>/...), as `cliper download` would
    # leave it
    repo, commit = "cliper-tests/tiny-sd", "0" * 40
    entry = tmp_path / "hub" / "models--cliper-tests--tiny-sd"
    save_sd_folder(components, entry / "snapshots" / commit)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    paper = CLIPerConfig(profile="paper", sd_repo=repo, sd_image_size=SIDE)
    loaded = load_sd_components(paper)
    assert loaded.source == repo
    torch.testing.assert_close(
        SDSelfAttention(loaded, paper)(photo),
        SDSelfAttention(components, SMOKE)(photo),
        rtol=0,
        atol=1e-6,
    )


def test_download_flow_with_a_stand_in_hub(
    components: SDComponents, photo: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    import huggingface_hub.constants

    import cliper_lib.weights.sd as weights_sd

    # the hub is "reachable"; snapshot_download is replaced by a writer of a hub cache entry
    repo, commit = "cliper-tests/downloaded-sd", "1" * 40
    entry = tmp_path / "hub" / "models--cliper-tests--downloaded-sd"
    requested: list[list[str]] = []

    def fake_snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        assert repo_id == repo
        requested.append(allow_patterns)
        if not (
            entry / "refs" / "main"
        ).exists():  # later calls find the cache as it is (hub semantics)
            save_sd_folder(components, entry / "snapshots" / commit)
            (entry / "refs").mkdir()
            (entry / "refs" / "main").write_text(commit)
        return str(entry / "snapshots" / commit)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(weights_sd, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    paper = CLIPerConfig(profile="paper", sd_repo=repo, sd_image_size=SIDE)
    with pytest.raises(WeightsMissingError, match="cliper download"):
        load_sd_components(paper, allow_download=False)  # not cached and downloads not allowed
    loaded = load_sd_components(paper)
    assert len(requested) == 1
    assert {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"} <= set(
        requested[0]
    )
    assert not any("safety_checker" in pattern for pattern in requested[0])
    torch.testing.assert_close(
        SDSelfAttention(loaded, paper)(photo),
        SDSelfAttention(components, SMOKE)(photo),
        rtol=0,
        atol=1e-6,
    )
    # a repo lacking a weight file is reported by name, not as a later loading error
    (entry / "snapshots" / commit / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(WeightsMissingError, match="text_encoder/model.safetensors"):
        download_sd_weights(repo)
