"""Patch affinities from VFM features: ProxyCLIP-style last-layer attention and the VFM refinement
(S_f = P·S_c).

Shapes: B images, T = h*w patch tokens of a (h, w) grid, N = 1 + T tokens (CLIP's CLS first), D
feature width, C classes. Features are a VFM's last-layer patch tokens after its final norm (CLS and
register tokens dropped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the refinement's logits are (S - REFINE_MEAN_WEIGHT · mean(S)) · REFINE_SCALE (the authors'
#: constants).
REFINE_MEAN_WEIGHT = 1.2
REFINE_SCALE = 3.0


def _softmax_of_nonnegative(logits: torch.Tensor, first_row: int = 0) -> torch.Tensor:
    """Softmax over keys of the logits >= 0 (the rest count as -inf): (R, T) or (B, R, T), rows
    first_row....

    A row with no logit >= 0 would be all -inf (NaN after the softmax); such a token keeps itself
    (its diagonal entry) instead. That happens only for degenerate features (all tokens nearly
    alike), never in the formulas' normal range, where the diagonal (similarity 1) clears the cut.
    """
    masked = logits < 0
    empty = masked.all(dim=-1)  # (..., R)
    if empty.any():
        rows = torch.arange(logits.shape[-2], device=logits.device)
        diagonal = torch.zeros_like(masked)
        diagonal[..., rows, rows + first_row] = True
        masked &= ~(diagonal & empty[..., None])
    return logits.masked_fill(masked, float("-inf")).softmax(dim=-1)


def fp16_stored(values: torch.Tensor) -> torch.Tensor:
    """`values` rounded to float16 and held in float32: what a float16 operation on a GPU keeps of
    the float32 result it computes."""
    return values.half().float()


def _as_computed(values: torch.Tensor) -> torch.Tensor:
    return values


def proxy_attention(
    features: torch.Tensor, grid: tuple[int, int], half_precision: bool = False
) -> torch.Tensor:
    """ProxyCLIP-style attention on CLIP's (h, w) grid from VFM features (B, fh, fw, D):
    (B, 1, N, N), N = 1 + h·w.

    The features are resized bilinearly to the grid; S = cos(features); S - mean(S) (one mean per
    image over all pairs); entries below 0 dropped; softmax over keys. The CLS row and column stay
    zero: the attention mixes patch tokens only. `half_precision`: every step's result stored in
    float16, as the authors' code computes it after `.half()` on the features (`fp16_stored`),
    which moves entries near the cut across it.
    """
    if features.ndim != 4:
        raise ValueError(f"features must have shape (B, fh, fw, D), got {tuple(features.shape)}")
    store = fp16_stored if half_precision else _as_computed
    on_grid = F.interpolate(
        store(features.float()).permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False
    )
    tokens = store(on_grid).flatten(2).transpose(1, 2)  # (B, T, D)
    # F.normalize's arithmetic, with its norm stored as a float16 tensor would be
    unit = store(tokens / store(tokens.norm(dim=-1, keepdim=True).clamp_min(1e-12)))
    similarity = store(unit @ unit.transpose(-2, -1))  # (B, T, T)
    centred = store(similarity - store(similarity.mean(dim=(-2, -1), keepdim=True)))
    b, t = similarity.shape[:2]
    attention = similarity.new_zeros(b, 1, t + 1, t + 1)
    attention[:, 0, 1:, 1:] = store(_softmax_of_nonnegative(centred))
    return attention


def refinement_probabilities(features: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
    """P = softmax over keys of (S - 1.2·mean(S))·3 with entries below 0 dropped; rows `rows` of it.

    features (T, D) -> (R, T), R = the number of rows asked for (all T by default). mean(S) is over
    all T x T pairs; for unit vectors it equals |mean of the vectors|², so a block of rows needs no
    full S.
    """
    if features.ndim != 2:
        raise ValueError(f"features must have shape (T, D), got {tuple(features.shape)}")
    unit = F.normalize(features.float(), dim=-1)  # (T, D)
    start, stop, _ = (rows or slice(None)).indices(unit.shape[0])
    mean = unit.mean(dim=0).square().sum()  # mean of all pairwise cosine similarities
    logits = (unit[start:stop] @ unit.T - REFINE_MEAN_WEIGHT * mean) * REFINE_SCALE  # (R, T)
    return _softmax_of_nonnegative(logits, first_row=start)


def refine_with_features(
    coarse: torch.Tensor, features: torch.Tensor, block: int = 2048
) -> torch.Tensor:
    """S_f = P · S_c↑ for coarse maps (C, h, w) and VFM features (fh, fw, D) -> (C, fh, fw).

    S_c is resized bilinearly to the VFM grid; P (T x T, T = fh·fw) is built `block` rows at a time,
    so memory grows with block·T, not T² (a 1000 x 750 image through a patch-8 VFM has T ≈ 11,700).
    """
    if coarse.ndim != 3 or features.ndim != 3:
        raise ValueError(
            f"expected coarse (C, h, w) and features (fh, fw, D), got {tuple(coarse.shape)}, "
            f"{tuple(features.shape)}"
        )
    fh, fw, d = features.shape
    c = coarse.shape[0]
    up = F.interpolate(
        coarse[None].float().to(features.device),
        size=(fh, fw),
        mode="bilinear",
        align_corners=False,
    )[0]  # (C, fh, fw)
    scores = up.reshape(c, fh * fw).T  # (T, C)
    flat = features.reshape(fh * fw, d)
    refined = torch.empty_like(scores)
    for start in range(0, fh * fw, block):
        rows = slice(start, min(start + block, fh * fw))
        refined[rows] = refinement_probabilities(flat, rows) @ scores  # (R, T) @ (T, C)
    return refined.T.reshape(c, fh, fw)
