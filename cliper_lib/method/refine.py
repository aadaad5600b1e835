"""Fine-grained compensation (docs/method.md 3.10): normalise SD head maps, refine the coarse map.

Shapes: m head maps of T = s*s tokens (m, T, T), row i = how token i attends to every token; a coarse map of C
classes (C, h, w). S_f = A_1 A_2 ... A_m S_c↑ is evaluated right to left, so only (T, C) intermediates exist:
the T x T product A_f is never formed (at T = 4096 that is 9 matrix-matrix products saved per image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..config import SD_REFINEMENTS

EPS = 1e-5  # the authors' guard against empty columns/rows


def _check_maps(maps: torch.Tensor, name: str = "head maps") -> None:
    if maps.ndim != 3 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"{name} must have shape (m, T, T), got {tuple(maps.shape)}")


def zero_below_(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """maps.masked_fill_(maps < threshold, 0) in one pass, without a (..., T, T) mask: F.threshold_ keeps x > t, and
    t = the largest value below `threshold` in the maps' dtype keeps x >= threshold (ties), NaN stays NaN."""
    below = torch.nextafter(
        torch.tensor(threshold, dtype=maps.dtype), torch.tensor(-math.inf, dtype=maps.dtype)
    )
    return F.threshold_(maps, below.item(), 0.0)


def normalize_head_maps_(
    maps: torch.Tensor, attention_thr: float, column_max: torch.Tensor | None = None
) -> torch.Tensor:
    """`normalize_head_maps` in place (the same operations in the same order): for a buffer the caller owns.
    `column_max` (+ EPS, (..., 1, T)): given when `maps` is a band of rows of a larger map."""
    maps /= (
        maps.amax(dim=-2, keepdim=True) + EPS if column_max is None else column_max
    )  # each column's max -> ~1
    zero_below_(maps, attention_thr)
    maps /= (
        maps.sum(dim=-1, keepdim=True) + EPS
    )  # (m, T, T) / (m, T, 1): rows sum to ~1 (0 for emptied rows)
    return maps


def normalize_and_apply_(
    A: torch.Tensor, S: torch.Tensor, attention_thr: float, band: int = 256
) -> torch.Tensor:
    """normalize_head_maps_(A[None]) @ S for one raw map A (T, T), normalised in place, and S (T, C) -> (T, C).

    A ends the same bit for bit; the product by bands equals the whole one to rounding (bit for bit with MKL). On a
    CPU a band of `band` rows goes through the row steps and its product in cache: 38 -> 25 ms per 4096² map here."""
    column_max = A.amax(dim=-2, keepdim=True) + EPS  # (1, T), as normalize_head_maps_ computes it
    out, step = (
        S.new_empty(A.shape[0], S.shape[1]),
        band if A.is_cpu else len(A),
    )  # elsewhere: one band, few kernels
    for start in range(0, len(A), step):
        rows = normalize_head_maps_(A[start : start + step], attention_thr, column_max)
        torch.mm(rows, S, out=out[start : start + step])
    return out


def normalize_head_maps(maps: torch.Tensor, attention_thr: float) -> torch.Tensor:
    """Authors' per-head normalisation: / column max (+eps), zero values < thr, / row sums (+eps); (m,T,T)->(m,T,T)."""
    _check_maps(maps)
    return normalize_head_maps_(maps.clone(), attention_thr)


def chain_apply(maps: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """A_1 (A_2 (... (A_m S))) for maps (m, T, T) in chain order and S (T, C) -> (T, C), right to left: the map
    applied first is the last of the chain (a producer streaming maps yields them last first, see HeadChain)."""
    _check_maps(maps)
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
    """S_f = A_1 ... A_m S_c↑ for B coarse maps (C, h_b, w_b), applied as the raw head maps (B, T, T) arrive from
    `SDSelfAttention.capture`, a layer's heads last first. Right to left: `layers[-1]` is due first; a layer the
    UNet runs before its turn waits (with the paper's layers none does), else one head map exists at a time.
    A map that is applied at once is normalised in place: the caller's buffer is overwritten (see HeadSink)."""

    def __init__(
        self, coarse: Sequence[torch.Tensor], layers: Sequence[str], attention_thr: float
    ) -> None:
        self.coarse, self.due, self.thr = coarse, list(reversed(layers)), attention_thr
        self.waiting: dict[str, list[torch.Tensor]] = {}
        self.S: torch.Tensor | None = None  # (B, T, C), made when the first map gives T
        self.count = 0

    def __call__(self, path: str, head: int, heads: int, probabilities: torch.Tensor) -> None:
        if not self.due or path != self.due[0]:
            self.waiting.setdefault(path, []).append(
                probabilities.clone()
            )  # the capture reuses its buffer
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
            self.S = torch.stack(
                [
                    upsample_coarse(c.to(probabilities.device, dtype), s).reshape(len(c), T).T
                    for c in self.coarse
                ]
            )  # (B, T, C)
        if probabilities.shape[-2:] != (T, T) or T != self.S.shape[1]:
            raise ValueError(
                f"head map of shape {tuple(probabilities.shape)} does not fit T = {self.S.shape[1]}"
            )
        maps = probabilities.to(
            self.S.dtype
        )  # the buffer itself when it has S's dtype (the capture's float32)
        for b in range(len(self.S)):
            self.S[b] = normalize_and_apply_(
                maps[b], self.S[b], self.thr
            )  # (T, T) @ (T, C), A normalised in place
        self.count += 1

    @property
    def refined(self) -> torch.Tensor:
        """S_f (B, C, s, s)."""
        B, T, C = self.S.shape
        return self.S.transpose(1, 2).reshape(B, C, math.isqrt(T), math.isqrt(T))


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
        raise ValueError(
            f"SD refinement variant {variant!r} is unknown; use {', '.join(SD_REFINEMENTS)} or none"
        )
    if coarse.ndim != 3:
        raise ValueError(f"coarse maps must have shape (C, h, w), got {tuple(coarse.shape)}")
    if head_maps is None:
        if variant != "none" or side is None:
            raise ValueError(
                f"variant {variant!r} needs head maps (m, T, T); only 'none' with `side` works without"
            )
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
        raise ValueError(
            f"selection_head={selection_head} is out of range for {m} head maps (0 .. {m - 1})"
        )

    if variant == "sfsa":
        chain = HeadChain([coarse], ["maps"], attention_thr)
        for k in reversed(range(m)):
            chain(
                "maps", k, m, head_maps[k : k + 1].clone()
            )  # (1, T, T), a copy: the chain normalises in place
        return chain.refined[0]
    dtype = torch.promote_types(head_maps.dtype, torch.float32)  # fp16 maps are refined in float32
    C = coarse.shape[0]
    coarse_up = upsample_coarse(coarse.to(device=head_maps.device, dtype=dtype), s)  # (C, s, s)
    if variant == "none":
        return coarse_up
    S = coarse_up.reshape(C, T).T  # (C, s, s) -> (C, T) -> (T, C)

    def normalized(k: int) -> torch.Tensor:
        return normalize_head_maps(head_maps[k : k + 1].to(dtype), attention_thr)[0]  # (T, T)

    if variant == "mean":
        mean_map = normalized(0)
        for k in range(1, m):
            mean_map += normalized(k)  # accumulate: never m normalised maps at once
        refined = (mean_map / m) @ S  # (T, T) @ (T, C) -> (T, C)
    else:  # selection
        refined = normalized(selection_head) @ S  # (T, C)
    return refined.T.reshape(C, s, s)  # (T, C) -> (C, T) -> (C, s, s)
