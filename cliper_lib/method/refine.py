"""Fine-grained compensation (docs/method.md 3.10): normalise SD head maps, refine the coarse map.

Shapes: m head maps of T = s*s tokens (m, T, T), row i = how token i attends to every token; a
coarse map of C classes (C, h, w).

S_f = A_1 A_2 ... A_m S_c↑ is evaluated right to left, so only (T, C) intermediates exist: the T x T
product A_f is never formed (at T = 4096 that is 9 matrix-matrix products saved per image). Which
variant runs is decided in one place, `cliper_lib.method.refinements`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-5  # the authors' guard against empty columns/rows


def check_head_map_shape(maps: torch.Tensor) -> None:
    """ValueError unless `maps` is (m, T, T)."""
    if maps.ndim != 3 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"head maps must have shape (m, T, T), got {tuple(maps.shape)}")


def check_head_maps(maps: torch.Tensor) -> int:
    """The side s of (m, T, T) head maps with m >= 1 and T = s*s; ValueError for any other shape."""
    check_head_map_shape(maps)
    if maps.shape[0] == 0:
        raise ValueError("head maps are empty (m = 0)")
    T = maps.shape[-1]
    side = math.isqrt(T)
    if side * side != T:
        raise ValueError(f"head maps have T={T} tokens, which is not a square grid (s x s)")
    return side


def zero_below_(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """maps.masked_fill_(maps < threshold, 0) in one pass, without a (..., T, T) mask.

    F.threshold_ keeps x > t; t = the largest value below `threshold` in the maps' dtype keeps
    x >= threshold (ties), and NaN stays NaN.
    """
    below = torch.nextafter(
        torch.tensor(threshold, dtype=maps.dtype), torch.tensor(-math.inf, dtype=maps.dtype)
    )
    return F.threshold_(maps, below.item(), 0.0)


def normalize_head_maps_(
    maps: torch.Tensor, attention_thr: float, column_max: torch.Tensor | None = None
) -> torch.Tensor:
    """`normalize_head_maps` in place, on a buffer the caller owns (same operations, same order).

    `column_max` (+ EPS, (..., 1, T)) is given when `maps` is a band of rows of a larger map.
    """
    if column_max is None:
        column_max = maps.amax(dim=-2, keepdim=True) + EPS
    maps /= column_max  # each column's max -> ~1
    zero_below_(maps, attention_thr)
    maps /= maps.sum(dim=-1, keepdim=True) + EPS  # rows sum to ~1 (0 for emptied rows)
    return maps


def normalize_and_apply_(
    A: torch.Tensor, S: torch.Tensor, attention_thr: float, band: int | None = None
) -> torch.Tensor:
    """normalize_head_maps_(A[None]) @ S for one raw map A (T, T) and S (T, C): (T, C).

    A is normalised in place and ends the same bit for bit whatever the band. The product by bands
    of `band` rows (None: the whole map at once) equals the whole one to rounding. A band that fits
    in a CPU's cache goes through the row steps and its product without a trip to memory.
    """
    column_max = A.amax(dim=-2, keepdim=True) + EPS  # (1, T), as normalize_head_maps_ computes it
    out = S.new_empty(A.shape[0], S.shape[1])
    step = band or len(A)
    for start in range(0, len(A), step):
        rows = normalize_head_maps_(A[start : start + step], attention_thr, column_max)
        torch.mm(rows, S, out=out[start : start + step])
    return out


def normalize_head_maps(maps: torch.Tensor, attention_thr: float) -> torch.Tensor:
    """Authors' per-head normalisation: / column max (+eps), zero values < thr, / row sums (+eps).

    (m, T, T) -> (m, T, T).
    """
    check_head_map_shape(maps)
    return normalize_head_maps_(maps.clone(), attention_thr)


def chain_apply(maps: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """A_1 (A_2 (... (A_m S))) for maps (m, T, T) in chain order and S (T, C) -> (T, C).

    Evaluated right to left: the map applied first is the last of the chain (a producer streaming
    maps yields them last first, see HeadChain).
    """
    check_head_map_shape(maps)
    if S.ndim != 2 or S.shape[0] != maps.shape[-1]:
        raise ValueError(f"S must have shape (T={maps.shape[-1]}, C), got {tuple(S.shape)}")
    result = S.to(maps.dtype)
    for A in reversed(maps.unbind(0)):  # unbind: views, no copy
        result = A @ result  # (T, T) @ (T, C) -> (T, C)
    return result


def upsample_coarse(coarse: torch.Tensor, side: int) -> torch.Tensor:
    """S_c (C, h, w) -> S_c↑ (C, side, side), bilinear with align_corners=False (as the authors)."""
    return F.interpolate(coarse[None], size=(side, side), mode="bilinear", align_corners=False)[0]


class HeadChain:
    """S_f = A_1 ... A_m S_c↑ for B coarse maps (C, h_b, w_b), as raw head maps (B, T, T) arrive.

    The maps come from `SDSelfAttention.capture`, a layer's heads last first. Right to left:
    `layers[-1]` is due first; a layer the UNet runs before its turn waits (with the paper's layers
    none does), else one head map exists at a time. A map applied at once is normalised in place:
    the caller's buffer is overwritten (see HeadSink). `band`: rows of a map normalised and applied
    at a time (None: the whole map).
    """

    def __init__(
        self,
        coarse: Sequence[torch.Tensor],
        layers: Sequence[str],
        attention_thr: float,
        band: int | None = None,
    ) -> None:
        self.coarse, self.due, self.thr, self.band = (
            coarse,
            list(reversed(layers)),
            attention_thr,
            band,
        )
        self.waiting: dict[str, list[torch.Tensor]] = {}
        self.S: torch.Tensor | None = None  # (B, T, C), made when the first map gives T
        self.count = 0

    def __call__(self, path: str, head: int, heads: int, probabilities: torch.Tensor) -> None:
        if not self.due or path != self.due[0]:
            # not its turn yet: keep a copy, the capture reuses its buffer
            self.waiting.setdefault(path, []).append(probabilities.clone())
            return
        self._apply(probabilities)
        if head == 0:  # a layer's first head comes last: the layer before it in the chain is due
            self.due.pop(0)
            while self.due and self.due[0] in self.waiting:
                for waiting in self.waiting.pop(self.due.pop(0)):
                    self._apply(waiting)

    def _apply(self, probabilities: torch.Tensor) -> None:
        T = probabilities.shape[-1]
        if self.S is None:
            s = math.isqrt(T)
            if s * s != T:
                raise ValueError(f"head maps have T={T} tokens, which is not a square grid (s x s)")
            dtype = torch.promote_types(probabilities.dtype, torch.float32)
            upsampled = [upsample_coarse(c.to(probabilities.device, dtype), s) for c in self.coarse]
            self.S = torch.stack([u.reshape(len(u), T).T for u in upsampled])  # (B, T, C)
        if probabilities.shape[-2:] != (T, T) or T != self.S.shape[1]:
            raise ValueError(
                f"head map of shape {tuple(probabilities.shape)} does not fit T = {self.S.shape[1]}"
            )
        # the buffer itself when it has S's dtype (the capture's float32)
        maps = probabilities.to(self.S.dtype)
        for b in range(len(self.S)):  # (T, T) @ (T, C), A normalised in place
            self.S[b] = normalize_and_apply_(maps[b], self.S[b], self.thr, self.band)
        self.count += 1

    @property
    def refined(self) -> torch.Tensor:
        """S_f (B, C, s, s)."""
        B, T, C = self.S.shape
        return self.S.transpose(1, 2).reshape(B, C, math.isqrt(T), math.isqrt(T))


def _checked(coarse: torch.Tensor, maps: torch.Tensor) -> tuple[int, torch.dtype]:
    """(s, the dtype of the refinement: at least float32) after checking the shapes."""
    if coarse.ndim != 3:
        raise ValueError(f"coarse maps must have shape (C, h, w), got {tuple(coarse.shape)}")
    return check_head_maps(maps), torch.promote_types(maps.dtype, torch.float32)


def _apply_one_map(coarse: torch.Tensor, A: torch.Tensor, side: int) -> torch.Tensor:
    """A (T, T) @ S_c↑ (T, C) -> S_f (C, s, s)."""
    C, T = coarse.shape[0], A.shape[-1]
    S = upsample_coarse(coarse.to(device=A.device, dtype=A.dtype), side).reshape(C, T).T
    return (A @ S).T.reshape(C, side, side)


def refine_sfsa(
    coarse: torch.Tensor, maps: torch.Tensor, attention_thr: float, band: int | None = None
) -> torch.Tensor:
    """SFSA: S_f = A_1 ... A_m S_c↑ with every map normalised: (C, h, w), (m, T, T) -> (C, s, s)."""
    _checked(coarse, maps)
    chain = HeadChain([coarse], ["maps"], attention_thr, band)
    m = len(maps)
    for k in reversed(range(m)):  # a copy of each map: the chain normalises in place
        chain("maps", k, m, maps[k : k + 1].clone())
    return chain.refined[0]


def refine_mean(coarse: torch.Tensor, maps: torch.Tensor, attention_thr: float) -> torch.Tensor:
    """The mean of the normalised maps, applied once: (C, h, w), (m, T, T) -> (C, s, s)."""
    side, dtype = _checked(coarse, maps)
    mean_map = normalize_head_maps(maps[:1].to(dtype), attention_thr)[0]
    for k in range(1, len(maps)):  # accumulate: never m normalised maps at once
        mean_map += normalize_head_maps(maps[k : k + 1].to(dtype), attention_thr)[0]
    return _apply_one_map(coarse, mean_map / len(maps), side)


def refine_selection(
    coarse: torch.Tensor, maps: torch.Tensor, attention_thr: float, head: int
) -> torch.Tensor:
    """One normalised map, maps[head], applied: (C, h, w), (m, T, T) -> (C, s, s)."""
    side, dtype = _checked(coarse, maps)
    if not 0 <= head < len(maps):
        raise ValueError(
            f"selection_head={head} is out of range "
            f"for {len(maps)} head maps (0 .. {len(maps) - 1})"
        )
    A = normalize_head_maps(maps[head : head + 1].to(dtype), attention_thr)[0]
    return _apply_one_map(coarse, A, side)
