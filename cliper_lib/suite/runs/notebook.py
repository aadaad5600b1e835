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
#: env var naming the JSON file `record_config` writes; set by the runner for each notebook.
RECORD_ENV = "CLIPER_RECORD_FILE"
DOWNLOAD_COMMAND = "cliper download"
_RECORDED: dict[str, Any] = {}


def resolve_profile(profile: str) -> str:
    """ "paper" or "smoke": an explicit profile stays; "auto" is $CLIPER_PROFILE, else the paper
    profile when its weights are in the local cache, else smoke."""
    from ...config import PROFILES

    resolved = profile
    if resolved == "auto":
        resolved = os.environ.get(PROFILE_ENV, "").strip() or "auto"
    if resolved == "auto":
        return "smoke" if _auto_preset_missing() else "paper"
    if resolved not in PROFILES:
        where = f" (from ${PROFILE_ENV})" if profile == "auto" else ""
        raise ValueError(f"profile={resolved!r}{where}: use auto, {', '.join(PROFILES)}")
    return resolved


def _auto_preset_missing() -> list[Any]:
    """The weight files of the default preset (the command line's, the one the README's
    `cliper download` fetches) on the paper profile that the local cache lacks."""
    from ...config import DEFAULT_PRESET, CLIPerConfig
    from ...weights.inventory import missing_weight_files

    return missing_weight_files(CLIPerConfig.from_preset(DEFAULT_PRESET, profile="paper"))


def _check_resolved(profile: str) -> None:
    """ValueError unless `profile` is one `resolve_profile` returns."""
    from ...config import PROFILES

    if profile not in PROFILES:
        raise ValueError(
            f"profile={profile!r}: pass what resolve_profile returns ({', '.join(PROFILES)})"
        )


def show_profile(profile: str) -> None:
    """Show which weights the pictures below come from; on smoke, what the real ones weigh and the
    one command that fetches them."""
    from IPython.display import Markdown, display

    display(Markdown(profile_banner(profile)))


def profile_banner(profile: str) -> str:
    """The markdown `show_profile` displays for a resolved profile ("paper" or "smoke")."""
    from ...weights.inventory import size_text as size

    if profile == "paper":
        return (
            "> **Real weights (paper profile):** the trained CLIP and Stable Diffusion of the "
            "paper; the pictures and numbers below are the method's own."
        )
    _check_resolved(profile)
    banner = (
        "> **Random weights (smoke profile).** The models below are tiny and untrained: the "
        "pictures are noise and the numbers are not the paper's, but every step runs and every "
        "check holds."
    )
    missing = _auto_preset_missing()
    if not missing:
        return banner + ' The real weights are in your cache: set `profile = "auto"` and rerun.'
    models = ", ".join(dict.fromkeys(f.model for f in missing))
    total = size(sum(f.approx_mb or 0 for f in missing))
    return banner + (
        f" For real pictures run `{DOWNLOAD_COMMAND}` once ({total}: {models}), then rerun: "
        f'`profile = "auto"` takes the paper profile when the weights are in the cache.'
    )


def missing_weights_note(
    profile: str,
    *,
    vfm: str | None = None,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
) -> str | None:
    """None when what a section needs is here (always, on smoke); else show and return a note
    naming what is missing, its size and how to get it."""
    from IPython.display import Markdown, display

    note = _missing_for(profile, vfm, dataset, data_root)
    if note is not None:
        summary, detail = note
        display(
            Markdown(
                f"> **Skipped here:** {summary}" + (f"\n\n```\n{detail}\n```" if detail else "")
            )
        )
        return summary
    return None


def _missing_for(
    profile: str, vfm: str | None, dataset: str | None, data_root: str | os.PathLike | None
) -> tuple[str, str] | None:
    """(one line, details) for the first missing thing (the VFM, then the data set), else None."""
    _check_resolved(profile)
    if profile == "smoke":
        return None
    if vfm:
        note = _missing_vfm(vfm)
        if note is not None:
            return note, ""
    return _missing_dataset(dataset, data_root) if dataset else None


def _missing_vfm(vfm: str) -> str | None:
    """The note for a DINO/DINOv2 model that is not in the local cache, else None."""
    from ...config import VFM_MODELS
    from ...weights.inventory import size_text as size
    from ...weights.inventory import vfm_missing_files as vfm_missing

    if vfm not in VFM_MODELS:
        raise ValueError(f"vfm={vfm!r}: use one of {', '.join(VFM_MODELS)}")
    missing = vfm_missing(vfm)
    if not missing:
        return None
    total = size(sum(f.approx_mb or 0 for f in missing) or None)
    return (
        f"this section needs the {vfm} model ({total}, hub repository `{missing[0].repo}`), "
        f"which is not in the local cache; `{DOWNLOAD_COMMAND} --vfm {vfm}` fetches it."
    )


def _missing_dataset(dataset: str, data_root: str | os.PathLike | None) -> tuple[str, str] | None:
    """(note, the loader's layout message) for a benchmark that is not under the data root."""
    from ...eval.benchmarks import DATASETS, default_data_root, load_benchmark
    from ...eval.datasets import DatasetError

    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: use one of {', '.join(DATASETS)}")
    root = repo_path(data_root or default_data_root())
    try:
        load_benchmark(dataset, root, limit=1)
    except DatasetError as error:
        return (
            f"this section needs the {dataset} data set, which is not complete under {root}. "
            "No command fetches data sets (each has its own licence): the README's section "
            '"Evaluate on a benchmark" says where to get them; set `data_root` (or $CLIPER_DATA) '
            "to their folder.",
            str(error),
        )
    return None


def record_config(cfg: Any, profile: str | None = None) -> None:
    """Put the configuration this notebook ran with in its run record: every field, the values
    derived from them, the seed and the profile (`profile`: the parameter as given, e.g. "auto").

    `cfg` is a CLIPerConfig, or a CLIPer (its config, plus the device and the fused layers it
    resolved). Calling it again replaces the record.
    """
    model = cfg if hasattr(cfg, "cfg") and hasattr(cfg, "clip") else None
    config = model.cfg if model is not None else cfg
    derived = {
        name: getattr(config, name)
        for name in dir(type(config))
        if name.startswith("effective_") and isinstance(getattr(type(config), name), property)
    }
    if model is not None:
        derived["device"] = str(model.device)
        derived["fused_layers"] = list(config.fused_layers(model.clip.num_layers))
    values = config.to_dict()
    record = {"config": values, "derived": derived, "seed": values["seed"]}
    record["profile"] = values["profile"]
    if profile not in (None, values["profile"]):
        record["profile_requested"] = profile
    record = _jsonable(record, "record")
    _RECORDED.clear()
    _RECORDED.update(record)
    target = os.environ.get(RECORD_ENV)
    if target:
        atomic_write_json(Path(target), record)
    print(f"[record] profile {record['profile']}, seed {record['seed']}, {len(values)} fields")


def recorded() -> dict[str, Any]:
    """What `record_config` recorded in this process (a copy; empty before it ran)."""
    return dict(_RECORDED)
