"""Every notebook runs on the paper profile for a learner who followed the README: offline,
against a Hugging Face cache laid out like the real repositories (random weights), with CLIP and
Stable Diffusion but no DINO model and no data set. Each notebook completes; each section that
needs what is missing is skipped with a note saying why.

What it costs: CLIP is full size (the loader checks the checkpoint against ViT-B/16's architecture
before building it: 150 M random parameters, 0.3 GB written as float16), so every notebook runs a
real ViT-B/16 on the CPU; Stable Diffusion is tiny (the diffusers loader builds whatever
architecture the repository's configs describe). Measured: 23 minutes on two CPU cores shared with
other jobs (notebooks 70-340 s each).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
import torch
from test_profile import CLIP_REPO, SD_FILES, SD_REPO, hub_snapshot

from cliper_lib.config import CLIPerConfig
from cliper_lib.provenance import REPO_ROOT
from cliper_lib.suite.runs import notebook, papermill
from cliper_lib.suite.runs.execute import NotebookFailed
from cliper_lib.suite.runs.plans import notebook_parameters

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SKIPPED = "Skipped here:"
#: parameters naming a DINO/DINOv2 model, and those naming a benchmark, in the notebooks.
VFM_PARAMETERS = ("proxy_model", "vfm_refinement")
DATASET_PARAMETERS = ("dataset", "sweep_dataset")


def write_clip(cache: Path) -> None:
    """open_clip's hub repository for ViT-B-16 (openai) with a random checkpoint of that shape."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    weights = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(hub_snapshot(cache, CLIP_REPO) / "open_clip_model.safetensors"))


def write_sd(cache: Path) -> None:
    """The SD repository in the diffusers layout, with tiny random components and the tokenizer
    files the real repository has (transformers now saves a tokenizer as tokenizer.json alone)."""
    import shutil

    from cliper_lib.weights.sd import build_random_sd_components, save_sd_folder, tiny_tokenizer_dir

    folder = save_sd_folder(build_random_sd_components(seed=0), hub_snapshot(cache, SD_REPO))
    shutil.rmtree(folder / "tokenizer")
    shutil.copytree(tiny_tokenizer_dir(), folder / "tokenizer")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!"}
    specials["unk_token"] = "<|endoftext|>"
    (folder / "tokenizer" / "special_tokens_map.json").write_text(json.dumps(specials))
    missing = [name for name in SD_FILES if not (folder / name).exists()]
    assert not missing, f"the SD folder lacks {missing}"


@pytest.fixture(scope="module")
def learner(tmp_path_factory) -> dict[str, str]:
    """The environment of a learner after `cliper download`: a hub cache with CLIP and SD, offline,
    and an empty data root."""
    root = tmp_path_factory.mktemp("learner")
    cache = root / "hf" / "hub"
    write_clip(cache)
    write_sd(cache)
    (root / "datasets").mkdir()
    return {
        "HF_HOME": str(root / "hf"),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "CLIPER_CACHE": str(root / "cliper-cache"),  # text embeddings shared by the notebooks
        "CLIPER_DATA": str(root / "datasets"),
    }


def outputs(path: Path) -> list[str]:
    """Every text output of an executed notebook (markdown, plain text, streams), in order."""
    found = []
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = data.get("text/markdown") or data.get("text/plain") or output.get("text") or ""
            found.append("".join(text) if isinstance(text, list) else str(text))
    return found


def expected_skips(path: Path) -> list[str]:
    """What a notebook must say it skipped, from its own parameters: each DINO model it names
    (none is cached) and each benchmark (no data set is here)."""
    parameters = notebook_parameters(path)
    wanted = [parameters[p] for p in VFM_PARAMETERS if parameters.get(p)]
    return wanted + [parameters[p] for p in DATASET_PARAMETERS if parameters.get(p)]


@pytest.mark.slow
@pytest.mark.paper_offline  # 5-20 minutes: not in `make test`; `make test-paper-offline`, CI
def test_every_notebook_runs_on_the_paper_profile_offline(learner, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    for name, value in learner.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(notebook.PROFILE_ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", learner["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert notebook.resolve_profile("auto") == "paper"  # the cache is complete for the README
    assert notebook.missing_weights_note("paper", vfm="dino-b8") is not None  # and has no DINO

    plan = {"name": "paper-offline", "defaults": {"profile": "paper"}, "runs": NOTEBOOKS}
    plan["runs"] = [str(p) for p in NOTEBOOKS]
    failures = []
    for path in NOTEBOOKS:  # one at a time: a failing notebook does not hide the next ones
        try:
            papermill.run_plan(plan, out_dir=tmp_path, only=path.stem, progress_bar=False)
        except NotebookFailed as failure:
            failures.append(str(failure).splitlines()[0])
    assert not failures, "\n".join(failures)

    for path in NOTEBOOKS:
        record = json.loads((tmp_path / f"{path.stem}.json").read_text())
        assert record["profile"] == "paper", path.name
        assert CLIPerConfig.from_dict(record["config"]).profile == "paper", path.name
        said = outputs(tmp_path / path.name)
        notes = [text for text in said if SKIPPED in text]
        for note in notes:  # each says why, and how to get what is missing
            assert re.search(r"needs the .* (model|data set)", note), note
            assert "`cliper download --vfm" in note or "No command fetches data sets" in note
        for missing in expected_skips(path):
            assert any(missing in note for note in notes), f"{path.name}: no note for {missing}"
