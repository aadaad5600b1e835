"""The files of one segmented image: label PNG, overlay PNG and scores JSON, written by `cliper
segment`, `cliper demo` (runs/batch.py) and the explorer's export (explorer/export.py) alike; and,
when asked, its full-resolution score maps, streamed to disk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...files import atomic_write_json
from ...method.labels import CHUNK_VALUES, LabelMap
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


def write_score_maps(path: Path, label_map: LabelMap, budget: int = CHUNK_VALUES) -> Path:
    """The score-scaled maps (C, H0, W0) float32 of one image as a .npy file, computed and written
    about `budget` values at a time: a 24 MP photo with 150 classes makes a 14 GB file, never held
    in memory.

    Read it back with `np.load(path, mmap_mode="r")`; the file appears only once complete.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    shape = (len(label_map.scores), *label_map.size)
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
    try:
        for classes, maps in label_map.map_chunks(budget):
            array[classes] = maps.cpu().numpy()
        array.flush()
    except BaseException:
        del array
        partial.unlink(missing_ok=True)
        raise
    del array  # unmapped before the rename
    os.replace(partial, path)
    return path
