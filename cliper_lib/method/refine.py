"""Fine-grained compensation (docs/method.md 3.10): normalise SD head maps, refine the coarse map.

Shapes: m head maps of T = s*s tokens (m, T, T), row i = how token i attends to every token; a coarse map of C
classes (C, h, w). S_f = A_1 A_2 ... A_m S_c↑ is evaluated right to left, so only (T, C) intermediates exist:
the T x T product A_f is never formed (at T = 4096 that is 9 matrix-matrix products saved per image).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..config import SD_REFINEMENTS

EPS = 1e-5  # the authors' guard against empty columns/rows


def _check_maps(maps: torch.Tensor, name: str = "head maps") -> None:
    if maps.ndim != 3 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"{name} must have shape (m, T, T), got {tuple(maps.shape)}")


def normalize_head_maps(maps: torch.Tensor, attention_thr: float) -> torch.Tensor:
    """Authors' per-head normalisation: / column max (+eps), zero values < thr, / row sums (+eps); (m,T,T)->(m,T,T)."""
    _check_maps(maps)
    out = maps / (maps.amax(dim=-2, keepdim=True) + EPS)  # (m, T, T) / (m, 1, T): each column's max becomes ~1
    out.masked_fill_(out < attention_thr, 0)  # in place on our own copy: one (m, T, T) buffer, not two
    out /= out.sum(dim=-1, keepdim=True) + EPS  # (m, T, T) / (m, T, 1): rows sum to ~1 (0 for emptied rows)
    return out


def chain_apply_streaming(maps_last_first: Iterable[torch.Tensor], S: torch.Tensor) -> torch.Tensor:
    """A_1(A_2(...(A_m S))) from maps given LAST FIRST (A_m, A_{m-1}, ..., A_1), each (T, T); S (T, C) -> (T, C).

    Each map multiplies the running (T, C) result from the left, so the map applied first is the rightmost
    factor of the chain: a producer that streams maps must yield them in reverse chain order. Given in chain
    order instead, one would have to keep the (T, T) prefix product A_1 ... A_k, which is what this avoids.
    """
    if S.ndim != 2:
        raise ValueError(f"S must have shape (T, C), got {tuple(S.shape)}")
    result = S
    for k, A in enumerate(maps_last_first):
        if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[1] != result.shape[0]:
            raise ValueError(f"map {k} (counted from the last) has shape {tuple(A.shape)}; expected (T, T) with "
                             f"T = {result.shape[0]}")
        result = A @ result.to(A.dtype)  # (T, T) @ (T, C) -> (T, C)
    return result


def chain_apply(maps: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """A_1 (A_2 (... (A_m S))) for maps (m, T, T) in chain order and S (T, C) -> (T, C), right to left."""
    _check_maps(maps)
    if S.ndim != 2 or S.shape[0] != maps.shape[-1]:
        raise ValueError(f"S must have shape (T={maps.shape[-1]}, C), got {tuple(S.shape)}")
    return chain_apply_streaming(reversed(maps.unbind(0)), S.to(maps.dtype))  # unbind: views, no copy


def upsample_coarse(coarse: torch.Tensor, side: int) -> torch.Tensor:
    """S_c (C, h, w) -> S_c↑ (C, side, side), bilinear with align_corners=False (as the authors)."""
    return F.interpolate(coarse[None], size=(side, side), mode="bilinear", align_corners=False)[0]


def refine_coarse_maps(
    coarse: torch.Tensor,
    head_maps: torch.Tensor | None,
    variant: str = "sfsa",
    attention_thr: float = 0.1,
    selection_head: int = 0,
    side: int | None = None,
) -> torch.Tensor:
    """S_f (C, s, s) from the coarse map (C, h, w) and raw head maps (m, T, T), s = sqrt(T).

    variant: sfsa = chain of all normalised maps; mean = their mean, one product; selection = one normalised
    map; none = S_c↑ itself (head_maps may then be None if `side` is given). Computed in at least float32, on
    the device of head_maps; each map is normalised just before use, so only one extra (T, T) buffer is alive.
    """
    if variant not in (*SD_REFINEMENTS, "none"):
        raise ValueError(f"SD refinement variant {variant!r} is unknown; use {', '.join(SD_REFINEMENTS)} or none")
    if coarse.ndim != 3:
        raise ValueError(f"coarse maps must have shape (C, h, w), got {tuple(coarse.shape)}")
    if head_maps is None:
        if variant != "none" or side is None:
            raise ValueError(f"variant {variant!r} needs head maps (m, T, T); only 'none' with `side` works without")
        return upsample_coarse(coarse.float(), side)

    _check_maps(head_maps)
    m, T = head_maps.shape[0], head_maps.shape[-1]
    s = math.isqrt(T)
    if s * s != T:
        raise ValueError(f"head maps have T={T} tokens, which is not a square grid (s x s)")
    if side is not None and side != s:
        raise ValueError(f"side={side} disagrees with the head maps' {s} x {s} token grid")
    if m == 0:
        raise ValueError("head maps are empty (m = 0)")
    if variant == "selection" and not 0 <= selection_head < m:
        raise ValueError(f"selection_head={selection_head} is out of range for {m} head maps (0 .. {m - 1})")

    dtype = torch.promote_types(head_maps.dtype, torch.float32)  # fp16 maps are refined in float32
    C = coarse.shape[0]
    coarse_up = upsample_coarse(coarse.to(device=head_maps.device, dtype=dtype), s)  # (C, s, s)
    if variant == "none":
        return coarse_up
    S = coarse_up.reshape(C, T).T  # (C, s, s) -> (C, T) -> (T, C)

    def normalized(k: int) -> torch.Tensor:
        return normalize_head_maps(head_maps[k : k + 1].to(dtype), attention_thr)[0]  # (T, T)

    if variant == "sfsa":
        refined = chain_apply_streaming((normalized(k) for k in reversed(range(m))), S)  # (T, C)
    elif variant == "mean":
        mean_map = normalized(0)
        for k in range(1, m):
            mean_map += normalized(k)  # accumulate: never m normalised maps at once
        refined = (mean_map / m) @ S  # (T, T) @ (T, C) -> (T, C)
    else:  # selection
        refined = normalized(selection_head) @ S  # (T, C)
    return refined.T.reshape(C, s, s)  # (T, C) -> (C, T) -> (C, s, s)
