"""Every weight file a config needs from the Hugging Face hub, which of them the local cache lacks,
and one report.

Offline, `CLIPer.from_config` and `cliper download` list all missing files at once (CLIP and Stable
Diffusion, with approximate sizes) instead of stopping at the first model, so one copy from a
connected machine is enough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache

from ..config import PAPER_PRETRAINED, SD_REFINEMENTS, VFM_MODELS, CLIPerConfig
from . import clip, hub, sd, vfm
from .clip import CHECKPOINT_SUFFIXES, OPEN_CLIP_WEIGHT_FILES, clip_weights_repo
from .hub import WeightsMissingError, hub_cache_dir
from .vfm import vfms_used

#: approximate sizes in MB of the large files (float32 weights unless the name says fp16), from the
#: parameter counts of the architectures; everything else (configs, tokenizer) is under 2 MB.
APPROX_MB = {
    ("timm/vit_base_patch16_clip_224.openai", "open_clip_model.safetensors"): 599,
    ("timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors"): 1711,
    ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip_model.safetensors"): 3944,
    ("sd", "unet/diffusion_pytorch_model.safetensors"): 3464,
    ("sd", "vae/diffusion_pytorch_model.safetensors"): 335,
    ("sd", "text_encoder/model.safetensors"): 1361,
    ("sd", "unet/diffusion_pytorch_model.fp16.safetensors"): 1732,
    ("sd", "vae/diffusion_pytorch_model.fp16.safetensors"): 167,
    ("sd", "text_encoder/model.fp16.safetensors"): 681,
    **{
        (VFM_MODELS[name], "model.safetensors"): mb
        for name, mb in (
            ("dino-s8", 87),
            ("dino-s16", 87),
            ("dino-b8", 343),
            ("dino-b16", 343),
            ("dinov2-s14", 88),
            ("dinov2-b14", 346),
            ("dinov2-l14", 1217),
            ("dinov2-g14", 4546),
        )
    },
}
#: the tokenizer files of a diffusers SD repo (transformers' CLIPTokenizer reads these).
SD_TOKENIZER_FILES = (
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
)


@dataclass(frozen=True)
class WeightFile:
    """One file of a hub repository that a config needs."""

    model: str  # "CLIP ViT-B-16 (openai)" | "Stable Diffusion"
    repo: str
    filename: str
    approx_mb: float | None  # None: small (a config or tokenizer file)


def sd_weight_files(repo: str, variant: str | None = None) -> list[WeightFile]:
    """The files the SD extraction reads from `repo` (no safety checker, no feature extractor)."""
    suffix = "" if variant is None else f".{variant}"
    names = [
        "model_index.json",
        "scheduler/scheduler_config.json",
        *SD_TOKENIZER_FILES,
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        f"unet/diffusion_pytorch_model{suffix}.safetensors",
        f"vae/diffusion_pytorch_model{suffix}.safetensors",
        f"text_encoder/model{suffix}.safetensors",
    ]
    return [
        WeightFile("Stable Diffusion", repo, name, APPROX_MB.get(("sd", name))) for name in names
    ]


def clip_weight_files(backbone: str, pretrained: str) -> list[WeightFile]:
    repo = clip_weights_repo(backbone, pretrained)
    name = OPEN_CLIP_WEIGHT_FILES[0]
    return [WeightFile(f"CLIP {backbone} ({pretrained})", repo, name, APPROX_MB.get((repo, name)))]


def vfm_weight_files(name: str) -> list[WeightFile]:
    """A DINO/DINOv2 repository's config and weights (model.safetensors; pytorch_model.bin counts as
    well)."""
    repo = VFM_MODELS[name]
    return [
        WeightFile(f"VFM {name}", repo, file, APPROX_MB.get((repo, file)))
        for file in ("config.json", "model.safetensors")
    ]


def vfm_missing_files(name: str) -> list[WeightFile]:
    files = vfm_weight_files(name)
    weights_cached = _cached(files[1]) or _cached(
        WeightFile(files[1].model, files[1].repo, "pytorch_model.bin", None)
    )
    return [f for f in files if not (weights_cached if f is files[1] else _cached(f))]


def _cached(file: WeightFile) -> bool:
    return isinstance(try_to_load_from_cache(file.repo, file.filename), str)


def missing_weight_files(cfg: CLIPerConfig, variant: str | None = None) -> list[WeightFile]:
    """The hub files `cfg` needs that the local cache lacks ([] for the smoke profile and for local
    files/folders).

    CLIP counts as present when either of open_clip's file names is cached. SD counts as present
    with either precision (what the loader accepts); when both are missing, `variant` picks which
    files are listed.
    """
    if cfg.profile != "paper":
        return []
    missing: list[WeightFile] = []
    pretrained = cfg.pretrained or PAPER_PRETRAINED.get(cfg.backbone, "openai")
    if Path(pretrained).suffix not in CHECKPOINT_SUFFIXES:
        files = clip_weight_files(cfg.backbone, pretrained)
        alternatives = [
            WeightFile(f.model, f.repo, name, None)
            for f in files
            for name in OPEN_CLIP_WEIGHT_FILES
        ]
        if not any(_cached(f) for f in alternatives):
            missing += files
    if cfg.refinement in SD_REFINEMENTS and not Path(cfg.sd_repo).expanduser().is_dir():
        by_variant = {
            v: [f for f in sd_weight_files(cfg.sd_repo, v) if not _cached(f)]
            for v in (None, "fp16")
        }
        if all(by_variant.values()):
            missing += by_variant[variant]
    for name in vfms_used(cfg):
        missing += vfm_missing_files(name)
    return missing


def size_text(mb: float | None) -> str:
    """A download size in words: ~1.2 GB, ~300 MB, or small (size unknown)."""
    if mb is None:
        return "small"
    return f"~{mb / 1000:.1f} GB" if mb >= 1000 else f"~{mb:.0f} MB"


#: the ways out of missing weights that are config changes: (what it does, {field: value}); where
#: the message is shown decides how they are written (`Spelling`).
CONFIG_WAYS_OUT = (
    (
        "local files (OpenAI's TorchScript files too)",
        {"pretrained": "/path/to/clip.pt", "sd_repo": "/path/to/diffusers-folder"},
    ),
    ("CLIP only, without Stable Diffusion", {"refinement": "none"}),
    ("the tiny random models (offline, noise labels)", {"profile": "smoke"}),
)

#: how one config change is written where a message is shown (None: it cannot be made there).
Spelling = Callable[[str, str], "str | None"]


def config_spelling(field: str, value: str) -> str:
    """A config change in Python and in a notebook: the field and its value."""
    return f"{field}={value!r} in the config"


def option_spelling(parser: Any) -> Spelling:
    """A config change as options of one command (an argparse parser): the field's own option
    (--profile smoke), else --set field=value, else None where the command has neither."""
    actions = {action.dest: action for action in parser._actions if action.option_strings}

    def spell(field: str, value: str) -> str | None:
        if field in actions:
            return f"{actions[field].option_strings[0]} {value}"
        if "overrides" in actions:
            return f"{actions['overrides'].option_strings[0]} {field}={value}"
        return None

    return spell


def offline_report(missing: list[WeightFile], spell: Spelling = config_spelling) -> str:
    """The one message listing every missing file, grouped by repository, with sizes and the ways
    out, the config changes written by `spell` for where it is shown (default: Python)."""
    lines = [
        "model weights are missing from the local Hugging Face cache and cannot be downloaded here "
        "(offline or HF_HUB_OFFLINE=1). Missing, all at once:"
    ]
    total = 0.0
    for repo in dict.fromkeys(f.repo for f in missing):
        files = [f for f in missing if f.repo == repo]
        lines.append(f"  {files[0].model}: hub repo '{repo}'")
        for f in files:
            lines.append(f"      {f.filename:52s} {size_text(f.approx_mb)}")
            total += f.approx_mb or 0
    lines += [
        f"  total about {total / 1000:.1f} GB (sizes are approximate)",
        f"  looked in: {hub_cache_dir()} (set HF_HOME or HF_HUB_CACHE to use another cache)",
        "  ways out:",
        "    - on a machine with internet run `cliper download --preset NAME` (NAME: this "
        "config's preset; `cliper download --preset NAME --dtype float16` fetches the half-size "
        'SD files), then copy its Hugging Face cache here (README: "Weights on an offline '
        'machine")',
    ]
    for what, changes in CONFIG_WAYS_OUT:
        spelled = [spell(field, value) for field, value in changes.items()]
        if all(spelled):
            lines.append(f"    - {what}: {', '.join(f'`{s}`' for s in spelled)}")
    return "\n".join(lines)


def respelled(error: Exception, spell: Spelling) -> str:
    """The message of `error` with its offline report (if it has one) written by `spell`: the
    command line says its own options where the library said config fields."""
    missing = getattr(error, "missing", None)
    if not missing:
        return str(error)
    return str(error).replace(offline_report(missing), offline_report(missing, spell))


def download_weights(
    cfg: CLIPerConfig,
    backbones: list[str] | None = None,
    skip_sd: bool = False,
    vfms: list[str] | None = None,
) -> list[str]:
    """`cliper download`: fetch the CLIP weights of `backbones` (default: the config's) and SD into
    the hub cache.

    `vfms` (default: those the config uses) are DINO/DINOv2 models. With `dtype: float16` the
    half-size fp16 variant of SD is fetched (CLIP has one file; it is cast on load). Without
    internet it says so at once and lists what to copy from a connected machine instead.
    """
    # The fetching functions are looked up on their modules when called, so that a replacement
    # made there (a test's monkeypatch) is the one used.
    variant = "fp16" if cfg.dtype == "float16" else None
    vfms = list(vfms or vfms_used(cfg))
    pairs = (
        [(b, PAPER_PRETRAINED.get(b, cfg.pretrained)) for b in backbones]
        if backbones
        else [(cfg.backbone, cfg.pretrained or PAPER_PRETRAINED.get(cfg.backbone, "openai"))]
    )
    # a local file: nothing to fetch
    pairs = [(b, p) for b, p in pairs if Path(p).suffix not in CHECKPOINT_SUFFIXES]
    if not hub.hub_reachable():
        wanted = [f for b, p in pairs for f in clip_weight_files(b, p)]
        if not skip_sd:
            wanted += sd_weight_files(cfg.sd_repo, variant)
        missing = [f for f in wanted if not _cached(f)] + [
            f for name in vfms for f in vfm_missing_files(name)
        ]
        if not missing:
            return [f"every file is already in {hub_cache_dir()}; nothing to download"]
        raise WeightsMissingError(
            "`cliper download` needs internet (the Hugging Face hub is unreachable from here, "
            "or HF_HUB_OFFLINE=1).\n" + offline_report(missing),
            missing,
        )
    done = [
        f"CLIP {b} ({p}): {clip.fetch_clip_weights(b, p, allow_download=True)}" for b, p in pairs
    ]
    if not skip_sd:
        precision = "fp16 variant" if variant else "float32"
        done.append(
            f"Stable Diffusion ({cfg.sd_repo}, {precision}): "
            f"{sd.download_sd_weights(cfg.sd_repo, variant)}"
        )
    done += [f"VFM {name} ({VFM_MODELS[name]}): {vfm.download_vfm_weights(name)}" for name in vfms]
    return done
