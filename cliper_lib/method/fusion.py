"""Early-layer fusion (ELF): from the early layers' attentions to the coarse map.

The steps: fused attention, the last block's value path, per-layer maps, sliding window, coarse
map. Each step of docs/method.md section 3 is its own small function so the notebooks can show it.

Shapes: B batch, H heads, N = 1 + h*w tokens, D width, E embedding size, L blocks, C fg classes,
T = C + B_bg + 1 text rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import LAST_LAYER_ATTENTIONS

# the sliding window's geometry, also read as elf.crop_boxes
from ..images import crop_boxes
from .clip_backbone import LayerWalk, project_tokens, walk_layers


# --- fused attention, one step at a time ----------------------------------------------------------
def sum_attention(attentions: Sequence[torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """A = sum of A_i over `layers`, per head, in float32: (B, H, N, N)."""
    if len(layers) == 0:
        raise ValueError("at least one layer must be fused into the attention")
    total = attentions[layers[0]].float().clone()
    for i in layers[1:]:
        total += attentions[i].float()
    return total


def normalize_columns(attention: torch.Tensor) -> torch.Tensor:
    """Divide each column by its sum (sum over the query axis, dim -2)."""
    return attention / attention.sum(dim=-2, keepdim=True)


def normalize_rows(attention: torch.Tensor) -> torch.Tensor:
    """Divide each row by its sum: a row-stochastic matrix."""
    return attention / attention.sum(dim=-1, keepdim=True)


def sinkhorn_round(attention: torch.Tensor) -> torch.Tensor:
    """One column normalisation followed by one row normalisation."""
    return normalize_rows(normalize_columns(attention))


def symmetrize(attention: torch.Tensor) -> torch.Tensor:
    """(A + Aᵀ) / 2 per head."""
    return (attention + attention.transpose(-2, -1)) / 2


def center_columns(attention: torch.Tensor) -> torch.Tensor:
    """Subtract from each column its mean over the rows."""
    return attention - attention.mean(dim=-2, keepdim=True)


def clamp_nonnegative(attention: torch.Tensor) -> torch.Tensor:
    return attention.clamp(min=0)


def finish_fused_attention(balanced: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Â from a Sinkhorn-balanced sum: symmetrise, centre the columns, clamp at 0, row-normalise.

    The same operations as normalize_rows(clamp_nonnegative(center_columns(symmetrize(balanced)))),
    in place on one buffer (`out`, or a new one): on a CPU each fresh (B, H, N, N) temporary costs
    as much as the arithmetic on it. A row left all zero by the clamp (every entry at or below its
    column mean: uniform attention, or a 1-patch image) becomes uniform, where the authors' code
    divides 0 by 0 and every later map turns NaN.
    """
    out = torch.add(balanced, balanced.transpose(-2, -1), out=out)
    out /= 2
    out -= out.mean(dim=-2, keepdim=True)
    out.clamp_(min=0)
    rows = out.sum(dim=-1, keepdim=True)  # (B, H, N, 1)
    empty = rows == 0
    if empty.any():  # rare: fill only then, a full-size masked_fill_ costs a pass over (B, H, N, N)
        out.masked_fill_(empty, 1.0)
        rows.masked_fill_(empty, out.shape[-1])  # the sum of N ones, exactly
    out /= rows
    return out


def iter_fused_attentions(
    summed: torch.Tensor,
    num_outputs: int,
    rounds: str | int = "cumulative",
    reuse: bool = False,
    per_head: bool = False,
) -> Iterator[torch.Tensor]:
    """Yield Â_k for k = 0 … num_outputs-1 (each (B, H, N, N)).

    rounds="cumulative" is the authors' behaviour: their code normalises A in place once per output,
    so output k sees k+1 column/row rounds. An integer gives every output the same fixed number of
    rounds. `reuse`: every Â_k is written into the same buffer, overwritten by the next one (for a
    consumer that is done with Â_k before it asks for Â_{k+1}, as fuse_layers is).

    `per_head`: balance and finish one head's (B, N, N) slice at a time (the same operations, so the
    same bits; a head can stay in a CPU's cache through its ~10 passes, where (B, H, N, N) cannot).
    """
    balanced = summed.clone()  # normalised in place below, as sinkhorn_round computes it
    heads = range(balanced.shape[1]) if per_head else [slice(None)]

    def next_output(rounds: int, out: torch.Tensor | None) -> torch.Tensor:
        out = torch.empty_like(balanced) if out is None else out
        for h in heads:
            part = balanced[:, h]
            for _ in range(rounds):
                part.div_(part.sum(dim=-2, keepdim=True)).div_(part.sum(dim=-1, keepdim=True))
            finish_fused_attention(part, out[:, h])
        return out

    out = torch.empty_like(balanced) if reuse else None
    if rounds == "cumulative":
        for _ in range(num_outputs):
            yield next_output(1, out)
    else:
        fused = next_output(int(rounds), out)
        yield from (fused for _ in range(num_outputs))


# --- the last block's value path ------------------------------------------------------------------
def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)  # (B, H, N, d)


def qkv_heads(
    block: torch.nn.Module, features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of the block's attention for already-normalised features: each (B, H, N, D/H)."""
    attn = block.attn
    # (B, N, D) each
    q, k, v = F.linear(features, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return tuple(_split_heads(t, attn.num_heads) for t in (q, k, v))


def variant_attention(block: torch.Tensor, normed: torch.Tensor, kind: str) -> torch.Tensor:
    """Last-layer attention probabilities (B, H, N, N) of the ablation variants.

    From normalised features `normed` (B, N, D); `kind`: vanilla, q-q, k-k, v-v or identity.
    """
    q, k, v = qkv_heads(block, normed)
    n = normed.shape[1]
    if kind == "identity":
        eye = torch.eye(n, dtype=v.dtype, device=v.device)
        return eye.expand(v.shape[0], v.shape[1], n, n)
    left, right = {"vanilla": (q, k), "q-q": (q, q), "k-k": (k, k), "v-v": (v, v)}[kind]
    scale = left.shape[-1] ** -0.5
    return torch.softmax((left * scale) @ right.transpose(-2, -1), dim=-1)  # (B, H, N, N)


def value_path(
    block: torch.nn.Module, normed: torch.Tensor, attention: torch.Tensor
) -> torch.Tensor:
    """out_proj(attention · V(normed)): the last block's attention branch with a given attention.

    No residual and no MLP (docs/method.md 3.5).
    normed: (B, N, D); attention: (B, H, N, N) -> (B, N, D).
    """
    attn, width = block.attn, normed.shape[-1]  # only V: a third of the in-projection
    v = _split_heads(
        F.linear(normed, attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :]),
        attn.num_heads,
    )
    mixed = attention.to(v.dtype) @ v  # (B, H, N, d)
    b, h, n, d = mixed.shape
    mixed = mixed.transpose(1, 2).reshape(b, n, h * d)  # (B, N, D)
    return block.ls_1(block.attn.out_proj(mixed))


# --- per-layer embeddings and maps ----------------------------------------------------------------
@dataclass
class FusionOutput:
    """ELF on one batch: L per-layer embeddings and the fused attention of the last output."""

    embeddings: torch.Tensor  # (L, B, N, E): ln_post + proj of every Z_k, CLS token first
    # (B, H, N, N): Â_{L-1} (or the variant's attention of the last output)
    last_attention: torch.Tensor
    grid: tuple[int, int]


def _check_fusion(
    num_layers: int, walk: LayerWalk, fuse: list[int], last_layer_attention: str, proxy
) -> None:
    if walk.num_walked < num_layers - 1:
        raise ValueError(
            f"the walk covers {walk.num_walked} blocks; ELF needs the first {num_layers - 1}"
        )
    if last_layer_attention not in LAST_LAYER_ATTENTIONS:
        raise ValueError(
            f"last_layer_attention={last_layer_attention!r}; choose one of {LAST_LAYER_ATTENTIONS}"
        )
    if (last_layer_attention == "proxy") != (proxy is not None):
        raise ValueError(
            "a proxy attention is needed for, and only taken by, last_layer_attention='proxy'"
        )
    if any(not 0 <= i <= num_layers - 2 for i in fuse):
        raise ValueError(f"fused layers {fuse} must lie in 0 .. {num_layers - 2}")
    summed = walk.summed_layers
    if last_layer_attention == "fused" and summed is not None and tuple(fuse) != summed:
        raise ValueError(f"the walk summed layers {list(summed)}, not the fused layers {fuse}")


@torch.no_grad()
def fuse_layers(
    visual: torch.nn.Module,
    walk: LayerWalk,
    fuse: Sequence[int] | None = None,
    rounds: str | int = "cumulative",
    last_layer_attention: str = "fused",
    proxy: torch.Tensor | None = None,
    per_head: bool = False,
) -> FusionOutput:
    """ELF steps 1-3 on a walk of the first L-1 blocks: per-layer embeddings (L, B, N, E), Â_{L-1}.

    `proxy` (B, 1, N, N): the VFM attention of last_layer_attention="proxy".
    `per_head`: see iter_fused_attentions.
    """
    blocks = visual.transformer.resblocks
    num_layers = len(blocks)
    fuse = list(range(num_layers - 1)) if fuse is None else list(fuse)
    _check_fusion(num_layers, walk, fuse, last_layer_attention, proxy)
    last = blocks[num_layers - 1]
    # The kept features: X_0 … X_{L-2} (already ln_1-normalised) then the residual stream x_{L-1}.
    features = walk.normalized_inputs[: num_layers - 1] + [walk.residual_inputs[num_layers - 1]]
    attentions: Iterator[torch.Tensor] | None = None
    if last_layer_attention == "fused":
        # the low-memory walk kept only the sum; each Â_k is used at once (the last one is kept)
        summed = walk.attention_sum if walk.summed_layers is not None else None
        if summed is None:
            summed = sum_attention(walk.attentions, fuse)
        attentions = iter_fused_attentions(summed, num_layers, rounds, True, per_head)
    elif proxy is not None:
        attentions = (proxy for _ in features)
    embeddings, attention = [], None
    for feature in features:
        normed = last.ln_1(feature)  # early features pass through two layer norms, as the authors'
        if attentions is not None:
            attention = next(attentions)
        else:
            attention = variant_attention(last, normed, last_layer_attention)
        embeddings.append(project_tokens(visual, value_path(last, normed, attention)).float())
    return FusionOutput(
        embeddings=torch.stack(embeddings), last_attention=attention.float(), grid=walk.grid
    )


def layer_logits(
    embeddings: torch.Tensor, text_set: torch.Tensor, logit_scale: float, grid
) -> torch.Tensor:
    """logit_scale · cos(patch embeddings, text rows): (L, B, N, E) -> (L, B, T, h, w)."""
    patches = F.normalize(embeddings[:, :, 1:].float(), dim=-1)  # (L, B, h*w, E)
    logits = logit_scale * patches @ text_set.float().T.to(patches.device)  # (L, B, h*w, T)
    layers, b, _, t = logits.shape
    return logits.transpose(-2, -1).reshape(layers, b, t, *grid)  # (L, B, T, h, w)


def logits_to_maps(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Softmax over the text rows (dim -3), keep the fg rows: (..., T, h, w) -> (..., C, h, w)."""
    return logits.softmax(dim=-3)[..., :num_classes, :, :]


def mean_patch_attention(attention: torch.Tensor) -> torch.Tensor:
    """Head-mean of an attention, patch tokens only: (B, H, N, N) -> (B, h*w, h*w)."""
    return attention.mean(dim=1)[:, 1:, 1:]


# --- sliding window -------------------------------------------------------------------------------
@torch.no_grad()
def walk_crops(
    visual: torch.nn.Module,
    image: torch.Tensor,
    crop: int,
    stride: int,
    sum_layers: Sequence[int] | None = None,
) -> LayerWalk:
    """Walk the first L-1 blocks on all sliding-window crops of a (3, H, W) image, as one batch."""
    boxes = crop_boxes(image.shape[1], image.shape[2], crop, stride)
    crops = torch.stack([image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])  # (K, 3, ch, cw)
    return walk_layers(visual, crops, len(visual.transformer.resblocks) - 1, sum_layers)


@dataclass
class SlidingWindowOutput:
    logits: torch.Tensor  # (L, T, h, w): crop logits averaged by count
    attention: torch.Tensor  # (h*w, h*w): accumulated crop attention, averaged and row-normalised
    maps: torch.Tensor  # (L, C, h, w): softmax(logits[flat] @ attention), fg channels


@torch.no_grad()
def sliding_window_maps(
    visual: torch.nn.Module,
    image: torch.Tensor,
    text_set: torch.Tensor,
    num_classes: int,
    patch: int,
    crop: int,
    stride: int,
    logit_scale: float,
    fuse: Sequence[int] | None = None,
    rounds: str | int = "cumulative",
    last_layer_attention: str = "fused",
) -> SlidingWindowOutput:
    """docs/method.md 3.7 for one (3, H, W) image: walk and fuse all crops, then accumulate."""
    if crop % patch or stride % patch:
        raise ValueError(
            f"crop {crop} and stride {stride} must be multiples of the patch size {patch}"
        )
    walk = walk_crops(visual, image, crop, stride)
    fused = fuse_layers(visual, walk, fuse, rounds, last_layer_attention)
    return sliding_window_from_fused(
        fused, image.shape[1:], text_set, num_classes, patch, crop, stride, logit_scale
    )


@torch.no_grad()
def sliding_window_from_fused(
    fused: FusionOutput,
    image_size: Sequence[int],
    text_set: torch.Tensor,
    num_classes: int,
    patch: int,
    crop: int,
    stride: int,
    logit_scale: float,
) -> SlidingWindowOutput:
    """Accumulate the crops' per-layer logits and head-mean Â_{L-1} into the full grid.

    Then mix the logits by that attention and apply the softmax.
    """
    height, width = int(image_size[0]), int(image_size[1])
    gh, gw = height // patch, width // patch
    boxes = crop_boxes(height, width, crop, stride)
    if fused.embeddings.shape[1] != len(boxes):
        raise ValueError(
            f"{fused.embeddings.shape[1]} crops were fused but the window gives {len(boxes)}"
        )
    # (L, K, T, ch, cw)
    crop_logits = layer_logits(fused.embeddings, text_set, logit_scale, fused.grid)
    crop_attn = mean_patch_attention(fused.last_attention)  # (K, ch*cw, ch*cw)

    device = crop_logits.device
    # (L, T, gh, gw)
    logits_sum = torch.zeros(crop_logits.shape[0], crop_logits.shape[2], gh, gw, device=device)
    logits_count = torch.zeros(gh, gw, device=device)
    attn_sum = torch.zeros(gh * gw, gh * gw, device=device)
    attn_count = torch.zeros(gh * gw, gh * gw, device=device)
    flat_index = torch.arange(gh * gw, device=device).view(gh, gw)
    for k, (y1, y2, x1, x2) in enumerate(boxes):
        py1, py2, px1, px2 = y1 // patch, y2 // patch, x1 // patch, x2 // patch
        logits_sum[:, :, py1:py2, px1:px2] += crop_logits[:, k]
        logits_count[py1:py2, px1:px2] += 1
        idx = flat_index[py1:py2, px1:px2].reshape(-1)  # global token index of each crop patch
        attn_sum[idx[:, None], idx[None, :]] += crop_attn[k]
        attn_count[idx[:, None], idx[None, :]] += 1
    logits = logits_sum / logits_count
    attention = normalize_rows(attn_sum / (attn_count + 1e-5))
    layers, t = logits.shape[:2]
    # logits[flat] @ M
    mixed = (logits.reshape(layers, t, gh * gw) @ attention).reshape(layers, t, gh, gw)
    return SlidingWindowOutput(
        logits=logits, attention=attention, maps=logits_to_maps(mixed, num_classes)
    )


# --- coarse map -----------------------------------------------------------------------------------
def threshold_select_map(select_map: torch.Tensor, attention_thr: float) -> torch.Tensor:
    """Zero every value below attention_thr × (spatial max of its class): (C, h, w) -> (C, h, w)."""
    peak = select_map.flatten(1).amax(dim=1)[:, None, None]  # (C, 1, 1)
    return torch.where(select_map < attention_thr * peak, torch.zeros_like(select_map), select_map)


def coarse_map(
    layer_maps: torch.Tensor, patch_attention: torch.Tensor, select_layer: int, attention_thr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_c = R + mean_k S_k with R = thr(S_sel)[flat] @ mean_h Â; returns (S_c, thresholded S_sel).

    layer_maps (L, C, h, w); patch_attention (h*w, h*w). As in the authors' code the layer mean sees
    the thresholded select map (they threshold a view of the stacked maps).
    """
    num_layers, c, h, w = layer_maps.shape
    maps = layer_maps.clone()
    select = select_layer % num_layers
    maps[select] = threshold_select_map(maps[select], attention_thr)
    # (C, h, w)
    refined = (maps[select].reshape(c, h * w) @ patch_attention.to(maps.dtype)).reshape(c, h, w)
    return refined + maps.mean(dim=0), maps[select]
