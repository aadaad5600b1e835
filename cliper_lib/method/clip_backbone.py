"""CLIP image side: preprocessing, position-embedding interpolation and a layer walk.

The walk calls open_clip's modules (conv1, ln_pre, each block's ln_1 / attn / ln_2 / mlp, ln_post,
proj) in the order `VisionTransformer.forward` does, and keeps what CLIPer needs along the way: each
block's normalised attention input X_i, its per-head attention probabilities A_i (from
`nn.MultiheadAttention` itself, with `need_weights=True, average_attn_weights=False`) and the
residual stream entering it. Nothing is patched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..images import rgb_array

#: the most patch tokens (h·w) one CLIP input may have (a 64×64 grid); the early layers' attention
#: grows with its square, so a longer image (3×5000 px at size 336: 21×35000 patches) is refused
#: before anything is resized.
MAX_PATCH_TOKENS = 4096


def resized_shape(width: int, height: int, size: int, patch: int) -> tuple[int, int]:
    """(h, w) in pixels: the short side scaled to `size`, sides rounded to multiples of `patch`.

    Each side goes to its nearest multiple; more than MAX_PATCH_TOKENS patches is a ValueError.
    """
    if min(width, height) < 1:
        raise ValueError(f"image is empty ({width}x{height} pixels)")
    ratio = size / min(width, height)
    h = max(int(height * ratio / patch + 0.5), 1) * patch
    w = max(int(width * ratio / patch + 0.5), 1) * patch
    if (h // patch) * (w // patch) > MAX_PATCH_TOKENS:
        raise ValueError(
            f"a {width}x{height} image at size {size} would be {h // patch}x{w // patch} patches, "
            f"over the limit of {MAX_PATCH_TOKENS} (at this size the long side may be about "
            f"{MAX_PATCH_TOKENS * patch * patch / size**2:.1f}x the short side): "
            "crop it or lower size"
        )
    return h, w


def preprocess_image(image, size: int, patch: int, mean, std) -> torch.Tensor:
    """(3, h, w) normalised CLIP input, resized bicubically.

    The short side becomes `size` and both sides multiples of `patch` (see `resized_shape`).
    """
    pil = Image.fromarray(rgb_array(image))
    h, w = resized_shape(pil.width, pil.height, size, patch)
    resized = pil.resize((w, h), Image.BICUBIC)
    # (3, h, w)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - mean_t) / std_t


def interpolate_pos_embedding(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1 + h*w, D): a square (1 + g*g, D) position embedding, its patch part resized to `grid`.

    The resize is bilinear; the CLS row is kept as it is.
    """
    cls_pos, patch_pos = pos[:1], pos[1:]
    side = int(round(patch_pos.shape[0] ** 0.5))
    if side * side != patch_pos.shape[0]:
        raise ValueError(f"position embedding of {patch_pos.shape[0]} patches is not a square grid")
    if (side, side) == tuple(grid):
        return pos
    dim = patch_pos.shape[1]
    square = patch_pos.float().T.reshape(1, dim, side, side)  # (1, D, g, g)
    resized = F.interpolate(square, size=grid, mode="bilinear", align_corners=False)  # (1, D, h, w)
    # (1 + h*w, D)
    return torch.cat([cls_pos.float(), resized.reshape(dim, -1).T], dim=0).to(pos.dtype)


@dataclass
class ClipBundle:
    """An open_clip model with what the method needs to use it.

    Built by cliper_lib.weights, or by hand.
    """

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


@dataclass
class LayerWalk:
    """What the walk kept; lists are indexed by block.

    B = batch, N = 1 + h*w tokens, D = width, H = heads.
    """

    grid: tuple[int, int]  # (h, w) patch grid
    normalized_inputs: list[torch.Tensor]  # X_i = ln_1_i(x_i): (B, N, D) for each walked block
    attentions: list[torch.Tensor]  # A_i: (B, H, N, N) per-head attention probabilities
    # x_i entering block i: (B, N, D); one extra entry = the walk's output
    residual_inputs: list[torch.Tensor]
    # Low-memory walk (no A_i kept): float32 sum of A_i over `summed_layers`,
    # ascending as sum_attention adds them.
    attention_sum: torch.Tensor | None = None  # (B, H, N, N)
    summed_layers: tuple[int, ...] | None = None  # None: the A_i are kept in `attentions`

    @property
    def num_walked(self) -> int:
        return len(self.normalized_inputs)

    @property
    def output(self) -> torch.Tensor:
        """The residual stream after the last walked block: (B, N, D)."""
        return self.residual_inputs[-1]


def patch_embed(
    visual: torch.nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Tokens entering block 0 (B, N, D) for any image size, the position embedding interpolated."""
    x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, D, h, w)
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
    x = torch.cat([cls, x], dim=1)  # (B, N, D)
    x = x + interpolate_pos_embedding(visual.positional_embedding, grid).to(x.dtype)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x), grid


def run_block(block: torch.nn.Module, x: torch.Tensor, keep: LayerWalk) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock, keeping its X_i and A_i; returns the block's output."""
    normed = block.ln_1(x)  # X_i: (B, N, D)
    attn_out, probs = block.attn(
        normed, normed, normed, need_weights=True, average_attn_weights=False
    )
    keep.normalized_inputs.append(normed)
    if keep.summed_layers is None:
        keep.attentions.append(probs)  # (B, H, N, N)
    elif len(keep.normalized_inputs) - 1 in keep.summed_layers:
        # same order and dtype steps as sum_attention
        keep.attention_sum = (
            probs.float().clone()
            if keep.attention_sum is None
            else keep.attention_sum.add_(probs.float())
        )
    del probs  # what fusion needs is kept; an unneeded (B, H, N, N) goes now
    x = x + block.ls_1(attn_out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    keep.residual_inputs.append(x)
    return x


@torch.no_grad()
def walk_layers(
    visual: torch.nn.Module,
    images: torch.Tensor,
    num_blocks: int | None = None,
    sum_layers: Sequence[int] | None = None,
) -> LayerWalk:
    """Run the first `num_blocks` blocks (default: all) on (B, 3, H, W) images; keep X_i, A_i, x_i.

    With `sum_layers` (ascending) only the float32 sum of their A_i is kept (`attention_sum`).
    """
    if not getattr(visual.transformer, "batch_first", True):
        raise ValueError("the layer walk expects an open_clip transformer with batch_first=True")
    blocks = visual.transformer.resblocks
    num_blocks = len(blocks) if num_blocks is None else num_blocks
    x, grid = patch_embed(visual, images)
    if sum_layers is not None and list(sum_layers) != sorted(set(sum_layers)):
        raise ValueError(f"summed layers {list(sum_layers)} must be ascending without repeats")
    summed = None if sum_layers is None else tuple(sum_layers)
    walk = LayerWalk(
        grid=grid, normalized_inputs=[], attentions=[], residual_inputs=[x], summed_layers=summed
    )
    for block in blocks[:num_blocks]:
        x = run_block(block, x, walk)
    return walk


def project_tokens(visual: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """ln_post then the visual projection, applied to every token: (..., N, D) -> (..., N, E)."""
    tokens = visual.ln_post(tokens)
    return tokens @ visual.proj if visual.proj is not None else tokens
