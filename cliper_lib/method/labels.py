"""Class scores from the refined and coarse maps, score-scaled maps at image size, the label map."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_scores(refined: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """s = 0.5·max(S_f) + 0.5·max(S_c) per class: (C, h', w'), (C, h, w) -> (C,)."""
    return 0.5 * refined.flatten(1).amax(dim=1) + 0.5 * coarse.flatten(1).amax(dim=1)


def scaled_maps(refined: torch.Tensor, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """S_f resized bilinearly to `size`, each class divided by its max (+1e-5), times its score."""
    # (C, H, W)
    up = F.interpolate(refined[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    peak = up.flatten(1).amax(dim=1)[:, None, None]
    return up / (peak + 1e-5) * scores[:, None, None].float()


def labels_from_maps(
    maps: torch.Tensor,
    scores: torch.Tensor,
    score_threshold: float,
    bkg_thre: float,
    is_normalize: bool,
) -> torch.Tensor:
    """(H, W) label map from score-scaled maps (C, H, W): 0 = background, k = class k-1 + 1.

    Classes with score <= score_threshold are absent. With `is_normalize` each map is min-max scaled
    first. The authors' two modes: with bkg_thre > 0, values below it are zeroed and pixels left
    with nothing are background; with bkg_thre == 0 a background channel (1 - max)² competes.
    """
    c, h, w = maps.shape
    present = (scores > score_threshold).to(maps.dtype)[:, None, None]  # (C, 1, 1)
    values = maps.reshape(c, -1).clone()
    if is_normalize:
        values -= values.amin(dim=1, keepdim=True)
        values /= values.amax(dim=1, keepdim=True) + 1e-6
    values = values.reshape(c, h, w)
    if bkg_thre > 0:
        values = torch.where(values < bkg_thre, torch.zeros_like(values), values)
        valid = present * values
        best, index = valid.max(dim=0)  # ties go to the lower class index
        labels = index + 1
        labels[best == 0] = 0
        return labels
    valid = present * values
    background = (1 - valid.amax(dim=0, keepdim=True)) ** 2  # (1, H, W)
    return torch.cat([background, valid]).argmax(dim=0)
