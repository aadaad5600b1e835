"""The SD empty-prompt embedding, cached on disk per text-encoder weights.

The text encoder of a Stable Diffusion pipeline only ever encodes "" here, so its output (1, 77, D)
is computed once per weights and kept in `<cache>/sd-empty-prompt/<key>.pt`; on a cache hit the text
encoder and tokenizer are never loaded (1.4 GB of fp32 weights for SD-2.x). The key names the
weights, not a path:
- a hub snapshot: each file of text_encoder/ and tokenizer/ by its blob name (the content hash the
  hub gives it);
- a local folder: each of those files by name, size and modification time (a rewrite changes the
  key);
- seeded random weights: the source name, the text-encoder config and the torch/transformers
  versions, which decide what a seeded initialisation produces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache

from ..files import TensorCache, default_cache_dir

PROMPT_SUBFOLDERS = ("text_encoder", "tokenizer")


def prompt_cache(folder: str | os.PathLike | None = None) -> TensorCache:
    """The on-disk cache of empty-prompt embeddings (default:
    `<default_cache_dir()>/sd-empty-prompt`)."""
    return TensorCache(default_cache_dir() / "sd-empty-prompt" if folder is None else folder)


@torch.no_grad()
def encode_empty_prompt(tokenizer: Any, text_encoder: Any) -> torch.Tensor:
    """(1, 77, D) float32 on the CPU: the text encoder's output for "" (as the SD pipeline's
    encode_prompt)."""
    ids = tokenizer(
        "",
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids  # (1, 77)
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0].float().cpu()


def folder_identity(folder: str | os.PathLike) -> list[Any]:
    """What identifies the text encoder and tokenizer files of a diffusers folder or hub
    snapshot."""
    identity: list[Any] = []
    for sub in PROMPT_SUBFOLDERS:
        root = Path(folder) / sub
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for path in files:
            name = path.relative_to(folder).as_posix()
            # a hub snapshot links to blobs/<sha256 or etag>: the content's name
            if path.is_symlink():
                identity.append([name, Path(os.readlink(path)).name])
            else:
                stat = path.stat()
                identity.append([name, stat.st_size, stat.st_mtime_ns])
    if not identity:
        raise OSError(f"{folder} has no {' or '.join(PROMPT_SUBFOLDERS)} files")
    return identity


def random_identity(source: str, text_config: dict[str, Any]) -> list[Any]:
    """What decides seeded random text-encoder weights: the seed (in `source`), the config, the
    libraries."""
    import transformers  # lazy (slow to import): only random weights need its version

    return [source, text_config, torch.__version__, transformers.__version__]


def cached_empty_embedding(
    identity: list[Any], compute: Callable[[], torch.Tensor], cache: TensorCache | None = None
) -> torch.Tensor:
    """The empty-prompt embedding of the weights `identity` names: from the cache, else `compute()`
    (stored)."""
    cache = prompt_cache() if cache is None else cache
    return cache.get_or_compute(cache.key("sd-empty-prompt", identity), compute)


def hub_snapshot_folder(repo: str) -> Path:
    """The cached snapshot folder of a hub repo (no network); OSError when its text encoder is not
    cached."""
    config = try_to_load_from_cache(repo, "text_encoder/config.json")
    if not isinstance(config, str):
        raise OSError(f"{repo}: text_encoder/config.json is not in the hub cache")
    return Path(config).parent.parent
