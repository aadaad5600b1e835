"""DINO / DINOv2 weights: transformers' ViTModel and Dinov2Model from the Hugging Face hub cache
(paper profile), or seeded random models of the same classes built from configs (smoke profile:
tiny; benchmarks: full size).

Never torch.hub (it fetches code from GitHub at run time). Offline and uncached, loading stops at
once with `WeightsMissingError`, naming the repo and files, like the CLIP and SD loaders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub.errors import HfHubHTTPError

from ..config import VFM_MODELS, CLIPerConfig, resolve_device, resolve_dtype
from ..vfm import VFMEncoder
from .hub import WeightsMissingError, hub_reachable, missing_weights_message

#: architecture of each VFM: (family, width, blocks, heads, patch). family: vit = DINO, dinov2 =
#: DINOv2.
VFM_ARCHITECTURES: dict[str, tuple[str, int, int, int, int]] = {
    "dino-s8": ("vit", 384, 12, 6, 8),
    "dino-b8": ("vit", 768, 12, 12, 8),
    "dino-s16": ("vit", 384, 12, 6, 16),
    "dino-b16": ("vit", 768, 12, 12, 16),
    "dinov2-s14": ("dinov2", 384, 12, 6, 14),
    "dinov2-b14": ("dinov2", 768, 12, 12, 14),
    "dinov2-l14": ("dinov2", 1024, 24, 16, 14),
    "dinov2-g14": ("dinov2", 1536, 40, 24, 14),
}
#: the smoke profile's size: same classes and patch sizes, width 32, 2 blocks, 2 heads.
TINY_VFM = {"width": 32, "blocks": 2, "heads": 2}
VFM_WEIGHT_FILES = "config.json, model.safetensors"


def vfm_config(name: str, full_size: bool = False) -> Any:
    """The transformers config of VFM `name`: its real architecture (full_size) or the tiny smoke
    one."""
    # lazy (transformers is slow to import): only building a VFM needs it; most configs use none
    from transformers import Dinov2Config, ViTConfig

    family, width, blocks, heads, patch = VFM_ARCHITECTURES[name]
    if not full_size:
        width, blocks, heads = TINY_VFM["width"], TINY_VFM["blocks"], TINY_VFM["heads"]
    if family == "vit":
        return ViTConfig(
            hidden_size=width,
            num_hidden_layers=blocks,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            patch_size=patch,
            image_size=224,
            layer_norm_eps=1e-6,
        )
    giant = name == "dinov2-g14"  # DINOv2-g uses a SwiGLU feed-forward
    return Dinov2Config(
        hidden_size=width,
        num_hidden_layers=blocks,
        num_attention_heads=heads,
        patch_size=patch,
        image_size=518,
        use_swiglu_ffn=giant and full_size,
        layer_norm_eps=1e-6,
    )


def wrap_vfm(model: torch.nn.Module, name: str, weights_id: str) -> VFMEncoder:
    """A transformers DINO / DINOv2 model as a VFMEncoder: patch size, prefix tokens
    (CLS + registers), kwargs."""
    config = model.config
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    kwargs = {"interpolate_pos_encoding": True} if config.model_type == "vit" else {}
    return VFMEncoder(model.eval().requires_grad_(False), name, patch, prefix, weights_id, kwargs)


def build_random_vfm(
    name: str,
    seed: int = 0,
    full_size: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VFMEncoder:
    """A seeded random VFM of `name`'s class: tiny (tests, smoke) or its real size (benchmarks)."""
    from transformers import Dinov2Model, ViTModel  # lazy, as in vfm_config

    config = vfm_config(name, full_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (
            ViTModel(config, add_pooling_layer=False)
            if config.model_type == "vit"
            else Dinov2Model(config)
        )
    tag = f"random-full-size-seed-{seed}" if full_size else f"random-seed-{seed}"
    return wrap_vfm(model.to(device=device, dtype=dtype), name, tag)


def from_pretrained(repo: str, local_files_only: bool) -> torch.nn.Module:
    """The DINO (ViTModel, no pooler) or DINOv2 model in hub repo or folder `repo`."""
    from transformers import AutoConfig, AutoModel, ViTModel  # lazy, as in vfm_config

    config = AutoConfig.from_pretrained(repo, local_files_only=local_files_only)
    if config.model_type == "vit":  # DINO: no pooler (its weights are not in the checkpoint)
        return ViTModel.from_pretrained(
            repo, add_pooling_layer=False, local_files_only=local_files_only
        )
    # Dinov2Model (with registers too)
    return AutoModel.from_pretrained(repo, local_files_only=local_files_only)


#: the former name, which tests/test_vfm.py still imports
_from_pretrained = from_pretrained


def load_vfm(
    name: str,
    cfg: CLIPerConfig,
    device: torch.device | str | None = None,
    allow_download: bool = True,
) -> VFMEncoder:
    """VFM `name` (a config.VFM_MODELS key) for `cfg`'s profile, device and dtype."""
    if name not in VFM_MODELS:
        raise ValueError(f"unknown VFM {name!r}; choose one of {', '.join(VFM_MODELS)}")
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    dtype = resolve_dtype(cfg.dtype)
    if cfg.profile == "smoke":
        return build_random_vfm(name, cfg.seed, device=device, dtype=dtype)
    repo = VFM_MODELS[name]
    try:  # the cache first, with no network at all
        model = from_pretrained(repo, local_files_only=True)
    except (OSError, ValueError) as error:
        if not (allow_download and hub_reachable()):
            message = missing_weights_message(
                f"VFM {name}", repo, VFM_WEIGHT_FILES, f"cliper download --vfm {name}"
            )
            raise WeightsMissingError(message) from error
        model = from_pretrained(repo, local_files_only=False)
    return wrap_vfm(model.to(device=device, dtype=dtype), name, repo)


def vfms_used(cfg: CLIPerConfig) -> list[str]:
    """The VFMs a config runs: proxy_model with last_layer_attention=proxy, and a VFM refinement."""
    names = [cfg.proxy_model] if cfg.last_layer_attention == "proxy" else []
    return (
        names + [cfg.refinement]
        if cfg.refinement in VFM_MODELS and cfg.refinement not in names
        else names
    )


def download_vfm_weights(name: str) -> Path:
    """Fetch VFM `name`'s config and weights into the hub cache; return the snapshot folder."""
    repo = VFM_MODELS[name]
    if not hub_reachable():
        raise WeightsMissingError(
            missing_weights_message(
                f"VFM {name}", repo, VFM_WEIGHT_FILES, f"cliper download --vfm {name}"
            )
        )
    # looked up when called, so that a replacement (a test's monkeypatch) is the one used
    snapshot_download = huggingface_hub.snapshot_download
    try:  # safetensors where the repo has them, else the PyTorch pickle
        snapshot = Path(snapshot_download(repo, allow_patterns=["config.json", "*.safetensors"]))
        if not list(snapshot.glob("*.safetensors")):
            snapshot = Path(
                snapshot_download(repo, allow_patterns=["config.json", "pytorch_model.bin"])
            )
    except HfHubHTTPError as error:
        raise WeightsMissingError(f"could not download {name} from '{repo}': {error}") from error
    return snapshot


class VFMLoader:
    """name -> VFMEncoder for one config's profile/device/dtype, each model loaded on first use and
    kept."""

    def __init__(
        self,
        cfg: CLIPerConfig,
        device: torch.device | str | None = None,
        allow_download: bool = True,
    ):
        self.cfg, self.device, self.allow_download = cfg, device, allow_download
        self.loaded: dict[str, VFMEncoder] = {}

    def __call__(self, name: str) -> VFMEncoder:
        if name not in self.loaded:
            self.loaded[name] = load_vfm(name, self.cfg, self.device, self.allow_download)
        return self.loaded[name]
