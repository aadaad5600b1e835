"""The files of one segmented image: label PNG, overlay PNG and scores JSON, written by `cliper
segment`, `cliper demo` (runs/batch.py) and the explorer's export (explorer/export.py) alike."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...files import atomic_write_json
from .viz import save_label_png, save_overlay_png

#: the three files of one segmented image: <stem><suffix> (the explorer's export adds a config).
OUTPUT_SUFFIXES = ("_labels.png", "_overlay.png", "_scores.json")


def write_segmentation_files(
    paths: Sequence[Path],
    image: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    record: dict,
    title: str,
    alpha: float = 0.5,
    num_labels: int | None = None,
) -> None:
    """Label PNG, overlay PNG (with a legend) and scores JSON of one image, to `paths` in
    OUTPUT_SUFFIXES order."""
    label_path, overlay_path, scores_path = paths
    save_label_png(label_path, labels, num_labels=num_labels)
    save_overlay_png(overlay_path, image, labels, classes, alpha=alpha, title=title)
    atomic_write_json(scores_path, record)
