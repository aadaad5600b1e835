"""Per-layer measures of spatial locality in CLIP's ViT, and query-patch attention maps for image
grids.

Notebook 01 uses these to show where spatial structure lives in CLIP and where it fades (the
observation behind early-layer fusion). Everything is a pure function of tensors. Shapes: B batch, H
heads, N = 1 + h*w tokens (CLS first) or N = h*w (patches only), D width, (h, w) the patch grid, p
the patch size in pixels.

Attention measures look at patch queries and patch keys only: the CLS row is dropped and each patch
query's attention over the patch keys is renormalised to sum to 1 (the mass it pays to CLS is
reported separately by `cls_attention`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from ...method.clip_backbone import LayerWalk

__all__ = [
    "patch_attention",
    "patch_distances",
    "mean_attention_distance",
    "attention_entropy",
    "cls_attention",
    "neighbour_similarity",
    "token_similarity",
    "uniform_attention_distance",
    "layer_locality_table",
    "sd_locality_table",
    "query_patch",
    "query_attention_maps",
    "fraction_range",
]


# --- helpers --------------------------------------------------------------------------------------
def _as_heads(attn: torch.Tensor) -> torch.Tensor:
    """(H, N, N) or (B, H, N, N) -> (B, H, N, N) float32."""
    if attn.ndim == 3:
        attn = attn[None]
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be (H, N, N) or (B, H, N, N), got {tuple(attn.shape)}")
    return attn.float()


def _has_cls(n: int, grid: tuple[int, int]) -> bool:
    """True when n tokens are CLS + the h*w patches, False when they are the patches alone."""
    hw = grid[0] * grid[1]
    if n == hw + 1:
        return True
    if n == hw:
        return False
    raise ValueError(
        f"{n} tokens do not fit a {grid[0]}x{grid[1]} grid (need {hw} or {hw + 1} with CLS)"
    )


def patch_attention(attn: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch-to-patch attention, each query row renormalised over the patch keys: -> (B, H, hw,
    hw)."""
    a = _as_heads(attn)
    if _has_cls(a.shape[-1], grid):
        a = a[..., 1:, 1:]  # (B, H, hw, hw)
    return a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def patch_distances(grid: tuple[int, int], patch: int = 1) -> torch.Tensor:
    """(hw, hw) Euclidean distances between patch centres in pixels (row-major patch order)."""
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).float() * patch  # (hw, 2)
    return torch.cdist(centres, centres)  # (hw, hw)


# --- attention measures ---------------------------------------------------------------------------
def mean_attention_distance(attn: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """(H,) mean attention distance in pixels: Σ_k a[q,k]·‖pos_q − pos_k‖, averaged over patch
    queries (and batch).

    attn: (H, N, N) or (B, H, N, N); patch tokens only, each query renormalised over the patch keys.
    Identity attention gives 0; uniform attention gives `uniform_attention_distance(grid, patch)`.
    """
    a = patch_attention(attn, grid)  # (B, H, hw, hw)
    dist = patch_distances(grid, patch).to(a.device)  # (hw, hw)
    per_query = (a * dist).sum(dim=-1)  # (B, H, hw)
    return per_query.mean(dim=(0, 2))  # (H,)


def attention_entropy(attn: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(H,) entropy in nats of each patch query's attention over the patch keys, averaged over
    queries (and batch).

    attn: (H, N, N) or (B, H, N, N). Uniform attention over hw patches gives log(hw); one-hot
    attention gives 0. Without `grid` the first token is taken to be CLS (N = 1 + hw, CLIP's
    layout); with it, N may also be hw.
    """
    a = _as_heads(attn)
    if grid is None:
        grid = (1, a.shape[-1] - 1)  # only the token count matters here, not the grid's shape
    a = patch_attention(a, grid)  # (B, H, hw, hw)
    # 0·log 0 = 0
    plogp = torch.where(a > 0, a * torch.log(a.clamp_min(1e-30)), torch.zeros_like(a))
    return (-plogp.sum(dim=-1)).mean(dim=(0, 2))  # (H,)


def cls_attention(attn: torch.Tensor) -> torch.Tensor:
    """(H,) attention mass patch queries pay to the CLS key (token 0), averaged over patch queries
    (and batch)."""
    a = _as_heads(attn)
    return a[..., 1:, 0].mean(dim=(0, 2))  # (B, H, hw) -> (H,)


def uniform_attention_distance(grid: tuple[int, int], patch: int) -> float:
    """Mean attention distance (pixels) of uniform attention over the patches: the 'no locality'
    reference."""
    return float(patch_distances(grid, patch).mean())


# --- token measures -------------------------------------------------------------------------------
def _patch_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, D) with or without CLS -> (h, w, D) unit-norm patch tokens."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (N, D), got {tuple(tokens.shape)}")
    t = tokens[1:] if _has_cls(tokens.shape[0], grid) else tokens
    return F.normalize(t.float(), dim=-1).reshape(grid[0], grid[1], -1)  # (h, w, D)


def neighbour_similarity(tokens: torch.Tensor, grid: tuple[int, int]) -> float:
    """Mean over patches of the mean cosine similarity of a patch token to its (up to 4) grid
    neighbours.

    tokens: (N, D), N = h*w or 1 + h*w (CLS dropped). Border patches average over the neighbours
    they have.
    """
    h, w = grid
    if h * w < 2:
        raise ValueError("a grid of one patch has no neighbours")
    t = _patch_tokens(tokens, grid)  # (h, w, D)
    total = torch.zeros(h, w, device=t.device)
    count = torch.zeros(h, w, device=t.device)
    horiz = (t[:, 1:] * t[:, :-1]).sum(-1)  # (h, w-1): cos of (r, c) and (r, c+1)
    vert = (t[1:] * t[:-1]).sum(-1)  # (h-1, w): cos of (r, c) and (r+1, c)
    total[:, 1:] += horiz
    total[:, :-1] += horiz
    count[:, 1:] += 1
    count[:, :-1] += 1
    total[1:] += vert
    total[:-1] += vert
    count[1:] += 1
    count[:-1] += 1
    return float((total / count).mean())


def token_similarity(tokens: torch.Tensor, grid: tuple[int, int]) -> float:
    """Mean cosine similarity over all pairs of distinct patch tokens: the baseline for
    `neighbour_similarity`.

    High neighbour similarity means local structure only when it exceeds this (tokens that are all
    alike are similar to their neighbours too). tokens: (N, D), with or without CLS.
    """
    t = _patch_tokens(tokens, grid).reshape(grid[0] * grid[1], -1)  # (hw, D)
    n = t.shape[0]
    if n < 2:
        raise ValueError("need at least two patches")
    s = t.double().sum(dim=0)  # float64: the difference below cancels most of ‖Σ t‖²
    # Σ_{i≠j} cos_ij = ‖Σ t‖² − Σ ‖t_i‖² = ‖Σ t‖² − n for unit vectors
    return float((s @ s - n) / (n * (n - 1)))


# --- the per-layer table --------------------------------------------------------------------------
def layer_locality_table(walk: LayerWalk, patch: int, batch_index: int = 0):
    """A pandas DataFrame with one row per (layer, head) of a walk (image `batch_index`), for
    seaborn.

    Columns: layer, head, mean_attention_distance (px), attention_entropy (nats), cls_attention
    (mass on CLS), neighbour_similarity and token_similarity (of the layer's normalised input tokens
    X_i; properties of the layer, repeated on each of its head rows: take `table[table["head"] ==
    0]` for one row per layer).
    """
    rows = []
    for layer, (attn, tokens) in enumerate(
        zip(walk.attentions, walk.normalized_inputs, strict=True)
    ):
        a = attn[batch_index]  # (H, N, N)
        x = tokens[batch_index]  # (N, D)
        dist = mean_attention_distance(a, walk.grid, patch).tolist()
        ent = attention_entropy(a, walk.grid).tolist()
        cls = cls_attention(a).tolist()
        nbr = neighbour_similarity(x, walk.grid)
        sim = token_similarity(x, walk.grid)
        for head in range(a.shape[0]):
            rows.append(
                dict(
                    layer=layer,
                    head=head,
                    mean_attention_distance=dist[head],
                    attention_entropy=ent[head],
                    cls_attention=cls[head],
                    neighbour_similarity=nbr,
                    token_similarity=sim,
                )
            )
    return pd.DataFrame(rows)


def sd_locality_table(
    attention: Mapping[int, Mapping[str, torch.Tensor]], side: int
) -> pd.DataFrame:
    """Notebook 03: one row per (timestep index, SD layer, head) of captured self-attention
    {index: {layer path: (heads, T, T)}} on an s × s token grid of a side × side input.

    Columns: timestep index, layer, block, grid, head, label (short name and grid, for plots), mean
    attention distance (SD px), normalised entropy (entropy ÷ log T: 1 is uniform) and uniform
    distance (SD px), the no-locality reference.
    """
    rows = []
    for index, maps in attention.items():
        for path, attn in maps.items():
            s = math.isqrt(attn.shape[-1])
            pixels = side // s  # SD pixels per token
            distance = mean_attention_distance(attn, (s, s), pixels).tolist()
            entropy = (attention_entropy(attn, (s, s)) / math.log(s * s)).tolist()
            short = path.replace("_blocks.", "").replace("attentions.", "attn")
            common = {
                "timestep index": index,
                "layer": path,
                "grid": s,
                "label": f"{short}\n{s}×{s}",
            }
            common["block"] = path.rsplit(".attentions", 1)[0]
            common["uniform distance (SD px)"] = uniform_attention_distance((s, s), pixels)
            rows += [
                common
                | {"head": head, "mean attention distance (SD px)": d, "normalised entropy": e}
                for head, (d, e) in enumerate(zip(distance, entropy, strict=True))
            ]
    return pd.DataFrame(rows)


# --- query maps -----------------------------------------------------------------------------------
def query_patch(point: Sequence[float], grid: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the patch at a point given as (row, col) fractions of the image in [0, 1]."""
    fr, fc = float(point[0]), float(point[1])
    if not (0.0 <= fr <= 1.0 and 0.0 <= fc <= 1.0):
        raise ValueError(f"query point {tuple(point)} must be (row, col) fractions in [0, 1]")
    h, w = grid
    return min(int(fr * h), h - 1), min(int(fc * w), w - 1)


def query_attention_maps(
    attn: torch.Tensor, grid: tuple[int, int], query: int | Sequence[int], renormalize: bool = False
) -> torch.Tensor:
    """(H, h, w): the attention one patch query pays to every patch key, per head.

    attn: (H, N, N) or (N, N), with or without a CLS token first. `query` is a patch index (0 …
    hw-1, row-major, not counting CLS) or (row, col). With `renormalize`, each map is rescaled to
    sum to 1 over the patches.
    """
    a = attn.float()
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"attention must be (H, N, N) or (N, N), got {tuple(attn.shape)}")
    h, w = grid
    if isinstance(query, numbers.Integral) or (torch.is_tensor(query) and query.ndim == 0):
        q = int(query)
    else:
        r, c = (int(v) for v in query)
        if not (0 <= r < h and 0 <= c < w):
            raise ValueError(f"query patch {(r, c)} is outside the {h}x{w} grid")
        q = r * w + c
    if not 0 <= q < h * w:
        raise ValueError(f"query patch {q} is outside the {h}x{w} grid")
    offset = 1 if _has_cls(a.shape[-1], grid) else 0
    row = a[:, q + offset, offset:]  # (H, hw)
    if renormalize:
        row = row / row.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return row.reshape(-1, h, w)  # (H, h, w)


def fraction_range(fractions: Sequence[float], num_fusable: int) -> list[int]:
    """[first, last] block indices from [first, last] fractions of the fusable blocks 0 …
    num_fusable-1.

    Lets a notebook name ranges ("the first half", "the second half") independently of the
    backbone's depth.
    """
    lo, hi = (float(f) for f in fractions)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"fraction range {list(fractions)} must satisfy 0 <= first <= last <= 1")
    top = num_fusable - 1
    return [int(round(lo * top)), int(round(hi * top))]
