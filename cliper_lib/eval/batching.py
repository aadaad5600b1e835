"""Batched evaluation: B images per forward pass through the CLIP walk, the VAE and the UNet.

How images of different sizes share a pass:
- SD squashes every image to its square side, so all B images share one VAE encode and one UNet pass
  (ended at the last captured layer); each image's head maps are applied, as they are captured, to
  its own coarse map.
- CLIP keeps the aspect ratio (short side `size`, sides rounded to the patch), so images share a
  walk only when their resized shapes are equal: the batch is split into groups of equal CLIP input
  shape, each walked once, crops included (equal shapes give equal crop boxes). On data sets of
  mixed shapes the CLIP half batches less than B; the SD half always batches B.
- No padding and no cropping: padded tokens would take part in every attention (and in the fused
  attention's normalisations), and cropping would drop pixels to label; either would make batch-B
  results differ from batch 1.
- Fusion, layer maps, coarse map and labels run image by image, through the same stage methods.

Results equal batch 1 up to the rounding of batched matrix products (tests/test_batching.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..config import CLIPerConfig
from ..images import rgb_array
from ..method import fusion as elf
from ..method.clip_backbone import LayerWalk, preprocess_image, walk_layers
from ..method.labels import label_map
from ..method.refinements import refinement_in_effect
from ..method.result import ClipFeatures


def split_walk(walk: LayerWalk, sizes: Sequence[int]) -> list[LayerWalk]:
    """A walk of a batch -> one walk per consecutive part of `sizes` images (views, no copies)."""
    parts, start = [], 0
    for size in sizes:

        def cut(
            tensors: list[torch.Tensor], a: int = start, b: int = start + size
        ) -> list[torch.Tensor]:
            return [t[a:b] for t in tensors]

        parts.append(
            LayerWalk(
                walk.grid,
                cut(walk.normalized_inputs),
                cut(walk.attentions),
                cut(walk.residual_inputs),
            )
        )
        start += size
    return parts


@torch.no_grad()
def batched_clip_features(
    model: Any, arrays: Sequence[np.ndarray], cfg: CLIPerConfig
) -> list[ClipFeatures]:
    """Stage clip_walk for several images: one walk per group of equal input shape.

    The group's sliding-window crops are walked together too, one walk per group.
    """
    clip, depth = model.clip, model.clip.num_layers - 1
    dtype = next(clip.model.parameters()).dtype
    inputs = [
        preprocess_image(a, cfg.size, clip.patch_size, clip.mean, clip.std).to(model.device, dtype)
        for a in arrays
    ]  # (3, h_i, w_i) each
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(tuple(x.shape), []).append(i)
    walks: dict[int, LayerWalk] = {}
    crop_walks: dict[int, LayerWalk | None] = dict.fromkeys(range(len(arrays)))
    crop, stride = cfg.sliding_crop_size, cfg.sliding_stride
    for (_, height, width), members in groups.items():
        whole = walk_layers(
            clip.visual, torch.stack([inputs[i] for i in members]), num_blocks=depth
        )
        walks.update(zip(members, split_walk(whole, [1] * len(members)), strict=True))
        if crop > 0:
            boxes = elf.crop_boxes(height, width, crop, stride)
            crops = torch.stack(
                [inputs[i][:, y1:y2, x1:x2] for i in members for y1, y2, x1, x2 in boxes]
            )
            walked = walk_layers(clip.visual, crops, num_blocks=depth)  # (len(members) * K, ...)
            crop_walks.update(
                zip(members, split_walk(walked, [len(boxes)] * len(members)), strict=True)
            )
    return [
        ClipFeatures(a, x, walks[i], crop_walks[i], crop, stride)
        for i, (a, x) in enumerate(zip(arrays, inputs, strict=True))
    ]


@torch.no_grad()
def refine_batch(
    model: Any, arrays: Sequence[np.ndarray], coarse: Sequence[torch.Tensor], cfg: CLIPerConfig
) -> list[torch.Tensor]:
    """Stage refine for several images, by the refinement in effect: S_f per image.

    Each network pass is batched (SD: one VAE encode and one UNet pass for all of them).
    """
    kind = refinement_in_effect(model, cfg)
    if kind.batch is None:
        raise ValueError(
            f"refinement {kind.name!r} has no batched path: evaluate it with --batch-size 1"
        )
    return kind.batch(model, cfg, arrays, coarse)


@torch.no_grad()
def segment_batch(
    model: Any, images: Sequence[Any], text: Any, cfg: CLIPerConfig | None = None
) -> list[torch.Tensor]:
    """Label maps (H_i, W_i) of several images, the network passes batched (see the module doc)."""
    cfg = cfg or model.cfg
    arrays = [rgb_array(image) for image in images]
    features = batched_clip_features(model, arrays, cfg)
    coarse = [
        model.run(a, cfg=cfg, until="coarse", given={"text": text, "clip_walk": f}).coarse
        for a, f in zip(arrays, features, strict=True)
    ]
    refined = refine_batch(model, arrays, coarse, cfg)
    return [
        label_map(r, c, a.shape[:2], cfg).labels
        for r, c, a in zip(refined, coarse, arrays, strict=True)
    ]
