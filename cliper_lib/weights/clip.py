"""Model factory: real weights through the Hugging Face hub cache (paper profile) or tiny random models (smoke).

Both profiles go through the same constructors (`open_clip.create_model`, diffusers' model classes); only the
weights differ. Offline and without cached weights, loading stops at once with `WeightsMissingError`, whose
message names what is missing, where it was looked for and how to get it.
"""
from __future__ import annotations

import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .config import PAPER_PRETRAINED, CLIPerConfig

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


class WeightsMissingError(RuntimeError):
    """Model weights are neither in the local cache nor downloadable; the message says how to get them."""


def hub_cache_dir() -> Path:
    """Where the Hugging Face hub cache lives (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when downloads could work: not HF_HUB_OFFLINE and the hub's host resolves and accepts a connection."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    # create_connection's timeout does not cover the DNS lookup, which can stall for long on some networks:
    # resolve in a worker thread and give up after `timeout`.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        addresses = pool.submit(socket.getaddrinfo, host, 443, type=socket.SOCK_STREAM).result(timeout=timeout)
        family, kind, proto, _, address = addresses[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
        return True
    except (OSError, FutureTimeout, IndexError):
        return False
    finally:
        pool.shutdown(wait=False)


def missing_weights_message(what: str, repo_id: str, files: str, fix: str) -> str:
    return (
        f"{what} weights are not available offline.\n"
        f"  missing : {files} from the Hugging Face repo '{repo_id}'\n"
        f"  looked in: {hub_cache_dir()} (set HF_HOME or HF_HUB_CACHE to use another cache)\n"
        f"  fix     : run `{fix}` on a machine with internet (then copy the cache here), point the config at a "
        f"local copy, or use the tiny random models with `--profile smoke` / `PROFILE=smoke`."
    )


def fetch_hub_file(repo_id: str, filenames: tuple[str, ...], allow_download: bool, what: str, fix: str) -> Path:
    """Return the local path of the first of `filenames` in `repo_id`: from the cache, else downloaded."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, local_files_only=True))
        except (LocalEntryNotFoundError, EntryNotFoundError, FileNotFoundError):
            continue
    if allow_download and hub_reachable():
        last_error: Exception | None = None
        for name in filenames:
            try:
                return Path(hf_hub_download(repo_id, name))
            except EntryNotFoundError as error:  # try the next file name
                last_error = error
        raise WeightsMissingError(f"none of {filenames} exist in '{repo_id}': {last_error}")
    raise WeightsMissingError(missing_weights_message(what, repo_id, " or ".join(filenames), fix))


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ClipBundle:
    """An open_clip model with what the pipeline needs to use it."""

    model: torch.nn.Module  # open_clip CLIP (eval mode)
    tokenizer: Any  # callable: list[str] -> (n, context_length) token ids
    name: str  # open_clip architecture name
    weights_id: str  # where the weights came from (pretrained tag, file, or "random-seed-N")
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def visual(self) -> torch.nn.Module:
        return self.model.visual

    @property
    def num_layers(self) -> int:
        return len(self.model.visual.transformer.resblocks)


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def default_cache_dir() -> Path:
    """The suite's own cache (text embeddings): CLIPER_CACHE, else ~/.cache/cliper."""
    return Path(os.environ.get("CLIPER_CACHE", Path.home() / ".cache" / "cliper"))
