"""What the stages produce, and the one result type holding every intermediate a caller asks for.

Shapes: C classes, (h, w) the CLIP patch grid, L blocks, N = 1 + h*w tokens, E the embedding size,
H heads, m SD head maps of T = s*s tokens, (H0, W0) the image.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import CLIPerConfig
from .clip_backbone import LayerWalk
from .fusion import FusionOutput, SlidingWindowOutput
from .labels import CHUNK_VALUES
from .labels import LabelMap as LabelMap  # stage labels' value, defined next to its arithmetic
from .text import TextSet


@dataclass
class ClipFeatures:
    """Stage clip_walk: the CLIP input and the walk of its first L-1 blocks (and of its crops)."""

    image: np.ndarray  # (H0, W0, 3) uint8, the original image
    input: torch.Tensor  # (3, h*p, w*p) normalised CLIP input
    walk: LayerWalk  # first L-1 blocks of the whole image (batch 1)
    crop_walk: LayerWalk | None  # first L-1 blocks of the sliding-window crops (batch K)
    crop_size: int
    stride: int


@dataclass
class FusedLayers:
    """Stage fusion: early-layer fusion on the whole image (and the crops)."""

    whole: FusionOutput
    crops: FusionOutput | None


@dataclass
class LayerMaps:
    """Stage layer_maps: per-layer class maps S_k (L, C, h, w)."""

    whole: torch.Tensor  # from the whole image
    sliding: SlidingWindowOutput | None
    blended: torch.Tensor  # 0.5·sliding + 0.5·whole when sliding, else whole


@dataclass
class CoarseMap:
    """Stage coarse: S_c and the thresholded select map S_sel it spreads, each (C, h, w)."""

    coarse: torch.Tensor
    select_map: torch.Tensor


class StageNotKept(KeyError):
    """A result was asked for a stage its run did not reach or did not keep."""


@dataclass
class SegmentationResult:
    """Every stage value one run of the graph kept, by stage name, and each intermediate by meaning.

    `result["coarse"]` is a stage's value; `result.coarse` the tensor a reader wants from it. `keys`
    identify each value (a store memoises by them); `timings` holds the seconds of the stages
    computed by this run.
    """

    cfg: CLIPerConfig
    values: dict[str, Any] = field(default_factory=dict)  # stage or run input -> value
    keys: dict[str, Hashable] = field(default_factory=dict)  # stage -> key
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, computed now

    def __getitem__(self, name: str) -> Any:
        if name not in self.values:
            raise StageNotKept(
                f"this run did not keep stage {name!r} (it kept {', '.join(self.values)}); "
                "ask for it with until= or keep="
            )
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    # --- the inputs and the text ------------------------------------------------------------------
    @property
    def image(self) -> np.ndarray:
        """(H0, W0, 3) uint8."""
        return self["image"]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self["image"].shape[:2])

    @property
    def text(self) -> TextSet:
        return self["text"]

    @property
    def class_names(self) -> list[str]:
        return self["text"].names

    @property
    def background(self) -> list[str]:
        return self["text"].background

    @property
    def features(self) -> ClipFeatures:
        """Stage clip_walk: the CLIP input and its layer walk."""
        return self["clip_walk"]

    @property
    def fused(self) -> FusedLayers:
        """Stage fusion: early-layer fusion of the image and its crops."""
        return self["fusion"]

    # --- early-layer fusion -----------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        """(h, w)."""
        return self["fusion"].whole.grid

    @property
    def layer_embeddings(self) -> torch.Tensor:
        """(L, N, E), CLS first."""
        return self["fusion"].whole.embeddings[:, 0]

    @property
    def fused_attention(self) -> torch.Tensor:
        """(H, N, N): Â_{L-1} of the whole image."""
        return self["fusion"].whole.last_attention[0]

    @property
    def fused_attention_mean(self) -> torch.Tensor:
        """(h*w, h*w): the head-mean of Â_{L-1} over patch tokens."""
        return self.fused_attention.mean(0)[1:, 1:]

    @property
    def layer_maps_whole(self) -> torch.Tensor:
        """(L, C, h, w) from the whole image."""
        return self["layer_maps"].whole

    @property
    def layer_maps(self) -> torch.Tensor:
        """(L, C, h, w) after the sliding-window blend."""
        return self["layer_maps"].blended

    @property
    def sliding(self) -> SlidingWindowOutput | None:
        return self["layer_maps"].sliding

    @property
    def coarse(self) -> torch.Tensor:
        """(C, h, w): S_c."""
        return self["coarse"].coarse

    @property
    def select_map(self) -> torch.Tensor:
        """(C, h, w): the thresholded S_sel."""
        return self["coarse"].select_map

    # --- refinement and labels --------------------------------------------------------------------
    @property
    def head_maps(self) -> torch.Tensor | None:
        """(m, T, T) SD head maps if the run kept them, else None (streamed, or not needed)."""
        return self.values.get("sd_attention")

    @property
    def refined(self) -> torch.Tensor:
        """(C, s, s) S_f (S_c itself when the refinement is none)."""
        return self["refine"]

    @property
    def scores(self) -> torch.Tensor:
        """(C,)."""
        return self["labels"].scores

    @property
    def maps(self) -> torch.Tensor:
        """(C, H0, W0): score-scaled maps at image size, computed on each call.

        C × H0 × W0 floats (a 24 MP photo with 150 classes: 14 GB): for a large image, take them a
        few classes at a time with `map_chunks`.
        """
        return self["labels"].maps

    def map_chunks(self, budget: int = CHUNK_VALUES) -> Iterator[tuple[slice, torch.Tensor]]:
        """(classes, score-scaled maps (k, H0, W0)), about `budget` float values at a time."""
        return self["labels"].map_chunks(budget)

    @property
    def labels(self) -> torch.Tensor:
        """(H0, W0) int64 on the CPU: 0 background, k = class_names[k - 1]."""
        return self["labels"].labels.cpu()

    def present_classes(self) -> list[str]:
        ids = torch.unique(self.labels).tolist()
        return [self.class_names[i - 1] for i in ids if i > 0]
