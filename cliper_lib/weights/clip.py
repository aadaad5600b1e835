"""CLIP weights: open_clip pretrained tags through the hub cache, a local checkpoint file, or a tiny random ViT.

Both profiles go through the same constructor (`open_clip.create_model`); only the weights differ. Offline and
without cached weights, loading stops at once with `WeightsMissingError`, whose message names what is missing,
where it was looked for and how to get it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import PAPER_PRETRAINED, CLIPerConfig, resolve_dtype
from ..method.clip_backbone import ClipBundle
from .hub import WeightsMissingError, fetch_hub_file

#: open_clip config of the tiny smoke backbone: the architecture of the authors' golden outputs
#: (ViT, width 128, 4 blocks, 2 heads, patch 16, QuickGELU, embedding 64).
TINY_CLIP_NAME = "cliper-tiny"
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 128, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
#: the file names open_clip looks for in a hub repository, in its order of preference.
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def register_tiny_clip() -> None:
    import open_clip

    if TINY_CLIP_NAME in open_clip.list_models():
        return
    # open_clip registers configs from JSON files only; write ours to a private temporary folder.
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="cliper_oc_cfg_"))
    (folder / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder)


def clip_weights_repo(backbone: str, pretrained: str) -> str:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(backbone, pretrained)
    if not cfg or not cfg.get("hf_hub"):
        raise WeightsMissingError(f"open_clip has no hub weights for {backbone!r} with pretrained={pretrained!r}")
    return cfg["hf_hub"].rstrip("/")


def fetch_clip_weights(backbone: str, pretrained: str, allow_download: bool = True) -> Path:
    """Local path of the open_clip checkpoint `backbone`/`pretrained`, downloading it into the hub cache if allowed."""
    repo = clip_weights_repo(backbone, pretrained)
    return fetch_hub_file(
        repo, OPEN_CLIP_WEIGHT_FILES, allow_download, what=f"CLIP {backbone} ({pretrained})", fix="cliper download"
    )


def load_clip(cfg: CLIPerConfig, device: torch.device | str = "cpu", allow_download: bool = True) -> ClipBundle:
    """Build the CLIP model of `cfg`: real weights (paper) or a seeded tiny random ViT (smoke)."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    register_tiny_clip()  # so the tiny architecture can also be loaded from a local checkpoint
    if cfg.profile == "smoke":
        name = TINY_CLIP_NAME
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = open_clip.create_model(name, pretrained=None)
        weights_id = f"random-seed-{cfg.seed}"
    else:
        name = cfg.backbone
        pretrained = cfg.pretrained or PAPER_PRETRAINED.get(name, "openai")
        path = Path(pretrained).expanduser()
        if path.suffix in (".pt", ".bin", ".safetensors", ".pth"):
            if not path.exists():
                raise WeightsMissingError(f"CLIP checkpoint file {path} does not exist (config field `pretrained`)")
            weights = path
        else:
            weights = fetch_clip_weights(name, pretrained, allow_download)
        model = open_clip.create_model(
            name, pretrained=str(weights), force_quick_gelu=cfg.force_quick_gelu and pretrained == "openai"
        )
        weights_id = f"{name}/{pretrained}"
    model = model.eval().to(device=device, dtype=resolve_dtype(cfg.dtype))
    patch = model.visual.conv1.kernel_size[0]
    return ClipBundle(
        model=model,
        tokenizer=open_clip.get_tokenizer(name),
        name=name,
        weights_id=weights_id,
        patch_size=patch,
        mean=tuple(OPENAI_DATASET_MEAN),
        std=tuple(OPENAI_DATASET_STD),
    )
