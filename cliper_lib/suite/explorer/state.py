"""What the explorer shows now (`ExplorerState`): the result of the last move, and what it cost."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...config import CLIPerConfig
from ...method.result import SegmentationResult


@dataclass
class ExplorerState:
    """What the explorer shows now: the result of the last run, what the page adds to it (overlay,
    notices), and what the last move cost."""

    image_name: str = ""
    cfg: CLIPerConfig | None = None
    classes: list[str] = field(default_factory=list)
    result: SegmentationResult | None = None  # every stage of the last run
    overlay: np.ndarray | None = None  # (H0, W0, 3) uint8, the image with the label colours
    background: list[str] = field(default_factory=list)  # the words the classes competed with
    # what the background rules changed in the input
    notices: list[str] = field(default_factory=list)
    recomputed: dict[str, float] = field(default_factory=dict)  # stage -> seconds, last move
    compute_seconds: float = 0.0
    render_seconds: float = 0.0
    error: str | None = None

    @property
    def labels(self) -> np.ndarray | None:
        """(H0, W0) int64: 0 background, k = classes[k-1]; None before the first result."""
        return None if self.result is None else self.result.labels.numpy()

    @property
    def scores(self) -> np.ndarray | None:
        """(C,) float32."""
        return None if self.result is None else self.result.scores.float().cpu().numpy()

    @property
    def coarse(self) -> torch.Tensor | None:
        """(C, h, w) S_c."""
        return None if self.result is None else self.result.coarse

    @property
    def refined(self) -> torch.Tensor | None:
        """(C, s, s) S_f."""
        return None if self.result is None else self.result.refined
