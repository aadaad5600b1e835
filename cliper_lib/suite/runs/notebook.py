"""The notebook runtime: what every notebook imports to publish metrics and find its files.

Inside a notebook, `publish(name, value)` records a metric: under the papermill runner it lands in
the file named by $CLIPER_METRICS_FILE (set per notebook; the kernel inherits the environment),
otherwise it is kept in memory. `repo_path` resolves paths from the repository root and `output_dir`
gives the folder a notebook writes to. This module imports nothing heavy, so notebooks can use it
without papermill.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...files import atomic_write_json
from ...provenance import IN_CHECKOUT, REPO_ROOT

#: env var naming the JSON file `publish` appends to; set by the runner for each notebook.
METRICS_ENV = "CLIPER_METRICS_FILE"
#: env var naming the folder a notebook should write its files to (figures, PNGs); see `output_dir`.
OUTPUT_DIR_ENV = "CLIPER_OUTPUT_DIR"
#: env var holding "<plan>/<run>" while a notebook runs under the runner.
RUN_NAME_ENV = "CLIPER_RUN"
_PUBLISHED: dict[str, Any] = {}


def _jsonable(value: Any, name: str) -> Any:
    """Plain JSON values from Python, numpy or torch scalars/containers; anything else is a
    TypeError."""
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar / 0-d array
        value = value.item()
    if hasattr(value, "tolist") and hasattr(value, "shape"):  # numpy array
        value = value.tolist()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # JSON has no NaN/inf; keep them readable
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{name}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"metric {name!r}: {type(value).__name__} is not a number, string, list or dict"
    )


def publish(name: str, value: float | int | str | dict | list) -> None:
    """Record a metric of the running notebook (file under the runner, memory otherwise) and print
    it."""
    if not isinstance(name, str) or not name:
        raise ValueError("metric name must be a non-empty string")
    clean = _jsonable(value, name)
    _PUBLISHED[name] = clean
    target = os.environ.get(METRICS_ENV)
    if target:
        path = Path(target)
        metrics = json.loads(path.read_text()) if path.exists() else {}
        metrics[name] = clean  # publishing a name again replaces its value
        atomic_write_json(path, metrics)
    # returns None, so a last-line publish does not echo the value again
    print(f"[metric] {name} = {clean!r}")


def published() -> dict[str, Any]:
    """The metrics published in this process so far (a copy)."""
    return dict(_PUBLISHED)


def base_dir() -> Path:
    """Where relative paths start: the repository root in a checkout, else (an installed package)
    the cwd."""
    return REPO_ROOT if IN_CHECKOUT else Path.cwd()


def repo_path(path: str | os.PathLike) -> Path:
    """An absolute path: absolute paths stay, relative ones are taken from `base_dir()` (the
    repository root in a checkout, so a notebook finds the same file whatever its working directory;
    the cwd for an installed package)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else base_dir() / p


def output_dir(name: str) -> Path:
    """Folder for a notebook's files: the runner's per-run folder, else outputs/<name> under
    `base_dir()`; created."""
    folder = Path(os.environ.get(OUTPUT_DIR_ENV) or base_dir() / "outputs" / name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- the learner's side: which profile, what is missing, what ran ---------------------------------
#: env var that sets the profile of every notebook whose parameter cell says "auto".
PROFILE_ENV = "CLIPER_PROFILE"
#: the preset whose weights decide "auto": the one the README's `cliper download` fetches.
AUTO_PRESET = "vit-b-16/voc21"
DOWNLOAD_COMMAND = "cliper download"


def resolve_profile(profile: str) -> str:
    """ "paper" or "smoke": an explicit profile stays; "auto" is $CLIPER_PROFILE, else the paper
    profile when its weights are in the local cache, else smoke."""
    from ...config import PROFILES, CLIPerConfig
    from ...weights.inventory import missing_weight_files

    if profile == "auto":
        profile = os.environ.get(PROFILE_ENV, "").strip() or "auto"
    if profile == "auto":
        cfg = CLIPerConfig.from_preset(AUTO_PRESET, profile="paper")
        return "smoke" if missing_weight_files(cfg) else "paper"
    if profile not in PROFILES:
        where = f" (from ${PROFILE_ENV})" if os.environ.get(PROFILE_ENV) else ""
        raise ValueError(f"profile={profile!r}{where}: use auto, {', '.join(PROFILES)}")
    return profile


def show_profile(profile: str) -> None:
    """Say which weights the pictures below come from; on smoke, the one command that fetches real
    ones."""
    from IPython.display import Markdown, display

    if profile == "smoke":
        text = (
            "> **Random weights (smoke profile).** The models below are tiny and untrained, so the "
            "pictures are noise and the numbers are not the paper's; every step still runs and "
            f"every check holds. For real pictures run `{DOWNLOAD_COMMAND}` once (about 6 GB: "
            "CLIP ViT-B/16 and Stable Diffusion 2.1 base), then rerun this notebook."
        )
    else:
        text = "> **Real weights (paper profile):** CLIP ViT-B/16 (OpenAI), Stable Diffusion 2.1."
    display(Markdown(text))


def missing_weights_note(
    profile: str,
    *,
    vfm: str | None = None,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
) -> str | None:
    """None when what a section needs is here (always, on smoke); else show and return a note
    naming what is missing, its size and the command that fetches it."""
    from IPython.display import Markdown, display

    note = _missing_for(profile, vfm, dataset, data_root)
    if note is not None:
        display(Markdown(f"> **Skipped here:** {note}"))
    return note


def _missing_for(
    profile: str, vfm: str | None, dataset: str | None, data_root: str | os.PathLike | None
) -> str | None:
    from ...weights.inventory import _size, vfm_weight_files
    from ...weights.inventory import _vfm_missing as vfm_missing

    if profile != "paper":
        return None
    if vfm is not None and vfm_missing(vfm):
        size = _size(sum(f.approx_mb or 0 for f in vfm_weight_files(vfm)) or None)
        return (
            f"this section needs the {vfm} model ({size}), which is not in the local cache; "
            f"`{DOWNLOAD_COMMAND} --vfm {vfm}` fetches it."
        )
    if dataset is not None:
        from ...eval.benchmarks import load_benchmark
        from ...eval.datasets import DatasetError

        try:
            load_benchmark(dataset, data_root, limit=1)
        except DatasetError as error:
            first_line = str(error).splitlines()[0]
            return f"this section needs the {dataset} data set: {first_line} (README: data sets)."
    return None


def record_config(cfg: Any, profile: str | None = None) -> None:
    """Publish the effective configuration this notebook ran with (every field, the seed, the
    profile), so its run record holds it."""
    values = cfg.to_dict()
    publish("effective_config", values)
    publish("seed", values["seed"])
    publish("profile", profile or values["profile"])
