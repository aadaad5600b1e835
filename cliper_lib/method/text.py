"""Text side: template-averaged CLIP text embeddings of class names.

The words themselves (class files, templates) come from `cliper_lib.vocab`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..files import TensorCache


@torch.no_grad()
def encode_class_names(
    model: torch.nn.Module,
    tokenizer,
    names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """(len(names), E): per name, L2-normalised template embeddings averaged, then L2-normalised."""
    device = next(model.parameters()).device
    prompts = [template.format(name) for name in names for template in templates]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    per_prompt = torch.cat(chunks).view(len(names), len(templates), -1)  # (C, templates, E)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)  # (C, E)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A cheap digest of the text tower's weights: caches never mix two models of the same name."""
    digest = hashlib.sha256()
    for name in ("text_projection", "token_embedding.weight", "positional_embedding"):
        tensor = model.get_parameter(name) if "." in name else getattr(model, name, None)
        if tensor is None:
            continue
        digest.update(tensor.detach().float().cpu().flatten()[:4096].numpy().tobytes())
    return digest.hexdigest()[:16]


# class-name embeddings, keyed by model, weights, templates and names
TextEmbeddingCache = TensorCache


@dataclass
class TextSet:
    """Encoded classes: fg (C, E) and bg (B, E), both L2-normalised; `names` label the fg rows."""

    names: list[str]
    background: list[str]
    fg: torch.Tensor
    bg: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def softmax_set(self) -> torch.Tensor:
        """T = [fg (C), bg (B), mean of fg (1)], each row L2-normalised: (C + B + 1, E)."""
        return softmax_text_set(self.fg, self.bg)


def softmax_text_set(fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """The rows the softmax runs over: fg classes, background words, and the mean fg embedding."""
    rows = torch.cat([fg, bg, fg.mean(dim=0, keepdim=True)], dim=0)  # (C + B + 1, E)
    return F.normalize(rows.float(), dim=-1)
