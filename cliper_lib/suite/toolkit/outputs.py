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
#: the full-resolution score maps (C, H0, W0) float32, written only when asked (`--score-maps`)
SCORE_MAPS_SUFFIX = "_score_maps.npy"


def output_suffixes(score_maps: bool = False) -> tuple[str, ...]:
    """The files of one image, the scores JSON last (a rerun reads it to know the image is done)."""
    if not score_maps:
        return OUTPUT_SUFFIXES
    return (*OUTPUT_SUFFIXES[:-1], SCORE_MAPS_SUFFIX, OUTPUT_SUFFIXES[-1])


def score_maps_bytes(label_map: LabelMap) -> int:
    """The size of `write_score_maps`' file, header aside."""
    height, width = label_map.size
    return 4 * len(label_map.scores) * height * width


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

    Read it back with `np.load(path, mmap_mode="r")`; the file appears only once complete. Written
    with plain writes, not a memory map, so a full disk is an OSError here, not a crash later.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
        "fortran_order": False,
        "shape": (len(label_map.scores), *label_map.size),
    }
    try:
        with open(partial, "wb") as file:
            np.lib.format.write_array_header_1_0(file, header)
            # the chunks are consecutive runs of classes, in order: C order, appended
            for _, maps in label_map.map_chunks(budget):
                file.write(np.ascontiguousarray(maps.cpu().numpy(), dtype=np.float32).data)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return path
