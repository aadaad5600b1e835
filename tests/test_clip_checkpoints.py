"""CLIP checkpoint files: QuickGELU survives a save/reload, OpenAI's TorchScript files load,
wrong files stop early."""

from __future__ import annotations

import json
import pickle

import open_clip
import pytest
import torch

from cliper_lib.config import CLIPerConfig, ConfigError
from cliper_lib.weights import clip as clip_weights
from cliper_lib.weights.clip import CheckpointError, load_clip

#: a tiny ViT whose open_clip config says nothing about the activation (like ViT-B-16's):
#: GELU unless forced.
GELU_TINY = "cliper-test-tiny-gelu"


@pytest.fixture(scope="module", autouse=True)
def gelu_tiny_architecture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oc_cfg")
    config = {k: v for k, v in clip_weights.TINY_CLIP_CONFIG.items() if k != "quick_gelu"}
    (folder / f"{GELU_TINY}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)


@pytest.fixture
def openai_like(monkeypatch):
    """Treat GELU_TINY as a backbone whose paper weights are OpenAI's,
    as ViT-B-16 and ViT-L-14 are."""
    monkeypatch.setitem(clip_weights.PAPER_PRETRAINED, GELU_TINY, "openai")


def _quick_gelu_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.create_model(GELU_TINY, pretrained=None, force_quick_gelu=True).eval()


def _encode(model: torch.nn.Module) -> torch.Tensor:
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model.encode_image(image)


def _paper(path, **overrides) -> CLIPerConfig:
    return CLIPerConfig(profile="paper", backbone=GELU_TINY, pretrained=str(path), **overrides)


def test_quick_gelu_model_round_trips_through_a_checkpoint_file(tmp_path, openai_like):
    original = _quick_gelu_model()
    path = tmp_path / "openai-like.pt"
    torch.save(original.state_dict(), path)

    loaded = load_clip(_paper(path)).model  # quick_gelu: auto -> QuickGELU, as for the `openai` tag
    torch.testing.assert_close(_encode(loaded), _encode(original), rtol=0, atol=0)

    # the knob matters: forced GELU (what every file got before) computes other features from
    # the same weights
    gelu = load_clip(_paper(path, quick_gelu=False)).model
    assert (_encode(gelu) - _encode(original)).abs().max() > 1e-3


def test_quick_gelu_knob_is_validated_and_auto_follows_the_weights(openai_like):
    with pytest.raises(ConfigError, match="quick_gelu"):
        CLIPerConfig(quick_gelu="sometimes").validate()
    assert (
        clip_weights.uses_quick_gelu(
            CLIPerConfig(backbone="ViT-H-14", pretrained="laion2b_s32b_b79k"), False
        )
        is False
    )
    assert (
        clip_weights.uses_quick_gelu(CLIPerConfig(backbone="ViT-B-16", pretrained="openai"), False)
        is True
    )
    assert (
        clip_weights.uses_quick_gelu(CLIPerConfig(backbone="ViT-B-16"), True) is True
    )  # a file for ViT-B-16
    assert clip_weights.uses_quick_gelu(CLIPerConfig(backbone="ViT-H-14"), True) is False
    assert (
        clip_weights.uses_quick_gelu(CLIPerConfig(backbone="ViT-H-14", quick_gelu=True), True)
        is True
    )


def test_torchscript_file_loads(tmp_path, openai_like):
    """A TorchScript archive, as OpenAI published their weights, loads through the paper path."""
    original = _quick_gelu_model(seed=1)
    image = torch.randn(1, 3, 224, 224)
    text = torch.zeros(1, 77, dtype=torch.long)
    traced = torch.jit.trace(original, (image, text), check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(traced, str(path))
    assert clip_weights.is_torchscript(path)

    loaded = load_clip(_paper(path)).model
    torch.testing.assert_close(_encode(loaded), _encode(original), rtol=0, atol=0)


class Payload:
    """Pickled into a file: unpickling it needs this module's code, so a safe loader refuses it."""


def test_not_a_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    junk = tmp_path / "notes.pt"
    junk.write_bytes(b"this is not a checkpoint")

    unsafe = tmp_path / "unsafe.pt"
    unsafe.write_bytes(pickle.dumps({"model": Payload()}))
    for path in (junk, unsafe):
        with pytest.raises(CheckpointError) as error:
            load_clip(_paper(path))
        message = str(error.value)
        assert "not a CLIP checkpoint" in message and str(path) in message
        assert "weights_only=False" not in message and "weights_only" not in message


def test_checkpoint_of_another_architecture_names_both(tmp_path, monkeypatch):
    path = tmp_path / "tiny.pt"
    torch.save(_quick_gelu_model().state_dict(), path)
    built = []
    monkeypatch.setattr(
        open_clip, "create_model", lambda *a, **k: built.append(a)
    )  # must not be reached
    with pytest.raises(CheckpointError) as error:
        load_clip(CLIPerConfig(profile="paper", backbone="ViT-L-14", pretrained=str(path)))
    message = str(error.value)
    assert "ViT-L-14" in message and "width 1024, 24 blocks, patch 14" in message
    assert "width 128, 4 blocks, patch 16" in message and not built
