"""Model factory: smoke models are seeded; paper weights offline fail fast with a clear message."""

from __future__ import annotations

import time

import pytest
import torch

from cliper_lib.config import CLIPerConfig
from cliper_lib.weights.clip import fetch_clip_weights, load_clip
from cliper_lib.weights.hub import WeightsMissingError


def test_smoke_clip_is_seeded_and_deterministic():
    a = load_clip(CLIPerConfig(profile="smoke", seed=3))
    b = load_clip(CLIPerConfig(profile="smoke", seed=3))
    c = load_clip(CLIPerConfig(profile="smoke", seed=4))
    wa, wb, wc = (m.visual.conv1.weight for m in (a.model, b.model, c.model))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.num_layers == 4 and a.patch_size == 16 and a.weights_id == "random-seed-3"


def test_paper_weights_offline_fail_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.time()
    with pytest.raises(WeightsMissingError) as error:
        load_clip(CLIPerConfig(profile="paper", backbone="ViT-B-16", pretrained="openai"))
    assert time.time() - start < 10
    message = str(error.value)
    assert "timm/vit_base_patch16_clip_224.openai" in message
    assert "cliper download" in message and "smoke" in message and str(tmp_path) in message


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", "https://no-such-host.invalid")
    start = time.time()
    with pytest.raises(WeightsMissingError, match="not available offline"):
        fetch_clip_weights("ViT-L-14", "openai")
    assert time.time() - start < 10


def test_missing_local_checkpoint_file():
    with pytest.raises(WeightsMissingError, match="does not exist"):
        load_clip(CLIPerConfig(profile="paper", pretrained="/nonexistent/clip.pt"))


def test_local_checkpoint_file_loads_through_paper_path(tmp_path):
    """The paper path with a local file: the same weights come back
    (proves the real loading code)."""
    smoke = load_clip(CLIPerConfig(profile="smoke", seed=1))
    path = tmp_path / "tiny.pt"
    torch.save(smoke.model.state_dict(), path)
    loaded = load_clip(CLIPerConfig(profile="paper", backbone="cliper-tiny", pretrained=str(path)))
    assert torch.equal(loaded.model.visual.proj, smoke.model.visual.proj)


def test_hub_reachable_gives_up_on_a_stalling_dns_lookup(monkeypatch):
    import socket

    import huggingface_hub.constants as constants

    from cliper_lib.weights.hub import hub_reachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(5))
    start = time.time()
    assert hub_reachable(timeout=0.5) is False
    assert time.time() - start < 2
