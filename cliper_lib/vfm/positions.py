"""How a VFM's position embeddings reach a patch grid other than their own (config field
`vfm_position_resize`).

- `to-grid`: transformers' own `interpolate_pos_encoding` (ViTModel, Dinov2Model): bicubic resize
  of the M x M table to exactly the h x w grid.
- `scale-factor`: what the authors' torch.hub models (facebookresearch/dino and /dinov2, the
  variants without registers) do: bicubic with the scale factors ((h + 0.1) / M, (w + 0.1) / M),
  in float32, no antialiasing, the table left as it is on its own square grid. The output has the
  same h x w size, but PyTorch places the samples by the scale factor, so they land up to
  0.1 · M / h of a table cell away from where `to-grid` puts them (squeezed toward the first row).

`scale-factor` is installed as a hook on the transformers model's embeddings module for the length
of one forward pass (`positions_resized`): the model is not copied, and is as before afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

#: the hub models' historical offset added to the target grid before it becomes a scale factor
#: (facebookresearch/dino issue 8; DINOv2 keeps it as `interpolate_offset=0.1`).
HUB_INTERPOLATE_OFFSET = 0.1


def scale_factor_positions(
    position_embeddings: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Position embeddings (1, 1 + M², D), CLS first, for an (h, w) patch grid as the hub models
    resize them: (1, 1 + h·w, D)."""
    count = position_embeddings.shape[1] - 1
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"{count} patch position embeddings do not form a square grid")
    h, w = grid
    if (h, w) == (side, side):  # the table's own grid: used as it is, as the hub models do
        return position_embeddings
    table = position_embeddings[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = ((h + HUB_INTERPOLATE_OFFSET) / side, (w + HUB_INTERPOLATE_OFFSET) / side)
    resized = F.interpolate(table, scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(resized.shape[-2:]) != (h, w):  # the offset exists to make this hold
        raise RuntimeError(f"scale factor {scale} gave {tuple(resized.shape[-2:])}, not {grid}")
    patches = resized.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(position_embeddings.dtype)
    return torch.cat([position_embeddings[:, :1], patches], dim=1)


#: vfm_position_resize -> the resize installed in place of transformers' (None: theirs).
POSITION_RESIZES = {"to-grid": None, "scale-factor": scale_factor_positions}


@contextmanager
def positions_resized(model: torch.nn.Module, position_resize: str, patch: int) -> Iterator[None]:
    """Within the block, `model` (a transformers ViTModel or Dinov2Model with patch size `patch`)
    resizes its position embeddings by `position_resize`."""
    resize = POSITION_RESIZES[position_resize]
    if resize is None:
        yield
        return
    embeddings = getattr(model, "embeddings", None)
    if not hasattr(embeddings, "position_embeddings"):
        raise TypeError(
            f"vfm_position_resize={position_resize!r} needs a transformers ViTModel or "
            f"Dinov2Model (with .embeddings.position_embeddings), not {type(model).__name__}"
        )

    def interpolate_pos_encoding(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # transformers' signature: the tokens being embedded, the input's height and width in pixels
        return resize(embeddings.position_embeddings, (height // patch, width // patch))

    # an instance attribute shadows the class's method for this module only; an enclosing block's
    # hook, if any, comes back afterwards
    enclosing = vars(embeddings).get("interpolate_pos_encoding")
    embeddings.interpolate_pos_encoding = interpolate_pos_encoding
    try:
        yield
    finally:
        if enclosing is None:
            del embeddings.interpolate_pos_encoding
        else:
            embeddings.interpolate_pos_encoding = enclosing
