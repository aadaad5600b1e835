"""Class scores from the refined and coarse maps, score-scaled maps at image size, the label map.

The maps live at patch resolution; only the final upsampling and the per-pixel decision touch every
pixel. `tiled_labels` upsamples a few classes at a time and folds each chunk into a running best,
so it never holds C × H0 × W0 floats: its memory grows with the pixels, not with classes × pixels.
Its labels are those of `labels_from_maps(scaled_maps(...))` bit for bit (the same kernels on the
same values, classes compared in the same order).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import CLIPerConfig

#: float32 values an upsampled chunk of classes may hold (16 Mi = 64 MiB); a chunk holds at least
#: one class, so a single full-resolution map may exceed it.
CHUNK_VALUES = 1 << 24


def class_scores(refined: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """s = 0.5·max(S_f) + 0.5·max(S_c) per class: (C, h', w'), (C, h, w) -> (C,)."""
    return 0.5 * refined.flatten(1).amax(dim=1) + 0.5 * coarse.flatten(1).amax(dim=1)


def class_chunks(
    num_classes: int, grid: tuple[int, int], size: tuple[int, int], budget: int = CHUNK_VALUES
) -> list[slice]:
    """Consecutive class ranges whose maps at `size` hold about `budget` values (one class at
    least), upsampled chunk by chunk with the very values of one call on all of them.

    PyTorch's CPU bilinear kernel for float maps (UpSampleKernel.cpp) computes each class on its own
    unless it picks its channels-last kernel, which it does for outputs with H + W <= 128, for a
    1 × 1 grid of more than 3 classes, and for exactly 3 classes when it runs on one thread. There
    the values depend on how many classes go together, so such stacks stay whole (the first two are
    small; three classes are three maps), and no chunk holds exactly 3 classes.
    """
    if size[0] + size[1] <= 128 or tuple(grid) == (1, 1) or num_classes == 3:
        return [slice(0, num_classes)]
    step = max(1, budget // (size[0] * size[1]))
    step = 2 if step == 3 else step
    stops = list(range(step, num_classes, step)) + [num_classes]
    if len(stops) > 1 and stops[-1] - stops[-2] == 3:  # a last chunk of 3: 2 + 1
        stops.insert(-1, stops[-2] + 2)
    return [slice(start, stop) for start, stop in zip([0, *stops[:-1]], stops, strict=True)]


def scaled_map_chunks(
    refined: torch.Tensor,
    scores: torch.Tensor,
    size: tuple[int, int],
    budget: int = CHUNK_VALUES,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(classes, maps (k, H, W)) chunk by chunk: S_f resized bilinearly to `size`, each class
    divided by its max (+1e-5), times its score."""
    for classes in class_chunks(len(refined), refined.shape[1:], size, budget):
        # interpolation is per class: a chunk's values equal those of the whole stack
        up = F.interpolate(
            refined[None, classes].float(), size=size, mode="bilinear", align_corners=False
        )[0]
        peak = up.flatten(1).amax(dim=1)[:, None, None]
        up /= peak + 1e-5
        up *= scores[classes, None, None].float()
        yield classes, up


def scaled_maps(refined: torch.Tensor, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W): every score-scaled map at `size` at once (C × H × W floats: small images only)."""
    chunks = [maps for _, maps in scaled_map_chunks(refined, scores, size)]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


class _RunningBest:
    """The per-pixel decision of the label map, fed consecutive chunks of class maps.

    Within a chunk `max` over classes decides; across chunks a later best replaces the kept one
    only where it is strictly greater (or NaN where the kept one is not): ties go to the lower
    class index and NaN wins, exactly as `max`/`argmax` over all the classes at once decide.
    """

    def __init__(self, score_threshold: float, bkg_thre: float, is_normalize: bool) -> None:
        self.score_threshold = score_threshold
        self.bkg_thre = bkg_thre
        self.is_normalize = is_normalize
        self.best: torch.Tensor | None = None  # (H, W) the best value so far
        self.index: torch.Tensor | None = None  # (H, W) int64, its class

    def add(self, start: int, maps: torch.Tensor, scores: torch.Tensor) -> None:
        """Fold in the score-scaled maps (k, H, W) of classes start .. start+k-1 (changed in
        place)."""
        flat = maps.flatten(1)  # (k, H*W), a view
        if self.is_normalize:
            flat -= flat.amin(dim=1, keepdim=True)
            flat /= flat.amax(dim=1, keepdim=True) + 1e-6
        if self.bkg_thre > 0:
            maps.masked_fill_(maps < self.bkg_thre, 0.0)
        maps *= (scores > self.score_threshold).to(maps.dtype)[:, None, None]  # absent: 0
        if len(maps) == 1 and self.best is not None:  # one class: no (H, W) max and index to make
            self._merge(maps[0], start, None)
            return
        best, index = maps.max(dim=0)  # ties go to the lower class index
        if start:
            index += start
        if self.best is None:
            self.best, self.index = best, index
            return
        self._merge(best, start, index)

    def _merge(self, best: torch.Tensor, start: int, index: torch.Tensor | None) -> None:
        """Keep `best` (and its class: `index`, else `start`) where it beats the kept best."""
        better = best > self.best
        if best.isnan().any():  # rare: keep max's rule that the first NaN wins
            better |= best.isnan() & ~self.best.isnan()
        torch.maximum(self.best, best, out=self.best)  # NaN propagates, as in max
        if index is None:
            self.index.masked_fill_(better, start)
        else:
            torch.where(better, index, self.index, out=self.index)

    def labels(self) -> torch.Tensor:
        """(H, W) int64: 0 = background, k = class k-1 + 1."""
        labels = self.index.add_(1)
        if self.bkg_thre > 0:
            return labels.masked_fill_(self.best == 0, 0)
        # the background channel (1 - max)² competes and wins ties (it comes first), NaN included
        background = (1 - self.best) ** 2
        return labels.masked_fill_((background >= self.best) | background.isnan(), 0)


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
    decision = _RunningBest(score_threshold, bkg_thre, is_normalize)
    decision.add(0, maps.clone(), scores)
    return decision.labels()


def tiled_labels(
    refined: torch.Tensor,
    scores: torch.Tensor,
    size: tuple[int, int],
    score_threshold: float,
    bkg_thre: float,
    is_normalize: bool,
    budget: int = CHUNK_VALUES,
) -> torch.Tensor:
    """`labels_from_maps(scaled_maps(refined, scores, size), ...)` upsampling `budget` values of
    class maps at a time."""
    decision = _RunningBest(score_threshold, bkg_thre, is_normalize)
    for classes, maps in scaled_map_chunks(refined, scores, size, budget):
        decision.add(classes.start, maps, scores[classes])
    return decision.labels()


@dataclass
class LabelMap:
    """Stage labels: class scores (C,), the refined maps S_f (C, h', w') they come from, and the
    labels (H0, W0) int64 (0 background, k = class k - 1 + 1).

    The score-scaled maps at image size are C × H0 × W0 floats, made only when asked: `maps` all at
    once, `map_chunks` a few classes at a time.
    """

    scores: torch.Tensor
    refined: torch.Tensor
    labels: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        """(H0, W0)."""
        return tuple(self.labels.shape)

    @property
    def maps(self) -> torch.Tensor:
        """(C, H0, W0) score-scaled maps, computed now."""
        return scaled_maps(self.refined, self.scores, self.size)

    def map_chunks(self, budget: int = CHUNK_VALUES) -> Iterator[tuple[slice, torch.Tensor]]:
        """(classes, maps (k, H0, W0)), about `budget` values at a time."""
        return scaled_map_chunks(self.refined, self.scores, self.size, budget)


def label_map(
    refined: torch.Tensor, coarse: torch.Tensor, size: tuple[int, int], cfg: CLIPerConfig
) -> LabelMap:
    """Stage labels from S_f (C, h', w') and S_c (C, h, w): scores, then labels at `size`, tiled."""
    scores = class_scores(refined.float(), coarse.float())
    decision = (cfg.score_threshold, cfg.bkg_thre, cfg.is_normalize)
    labels = tiled_labels(refined, scores, size, *decision)
    return LabelMap(scores, refined, labels)
