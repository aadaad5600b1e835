"""What the explorer shows now (`ExplorerState`): the result of the last move, and what it cost."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...config import CLIPerConfig
from ...method.result import SegmentationResult


@dataclass
class ExplorerState:
    """What the explorer shows now, and what the last move cost."""

    image_name: str = ""
    cfg: CLIPerConfig | None = None
    classes: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None  # (H0, W0) int64: 0 background, k = classes[k-1]
    coarse: torch.Tensor | None = None  # (C, h, w) S_c
    refined: torch.Tensor | None = None  # (C, s, s) S_f
    scores: np.ndarray | None = None  # (C,)
    overlay: np.ndarray | None = None  # (H0, W0, 3) uint8, the image with the label colours
    outputs: SegmentationResult | None = None  # every stage result of the last run
    background: list[str] = field(default_factory=list)  # the words the classes competed with
    # what the background rules changed in the input
    notices: list[str] = field(default_factory=list)
    recomputed: dict[str, float] = field(default_factory=dict)  # stage -> seconds, last move
    compute_seconds: float = 0.0
    render_seconds: float = 0.0
    error: str | None = None
