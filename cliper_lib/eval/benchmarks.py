"""The 8 benchmarks of the paper in the authors' folder layouts, with their class files and ignored
labels.

Files are listed and checked when a benchmark is built, so a missing folder or file stops the run
before any model work, with one message naming what is missing and the layout that was expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import BENCHMARKS
from .datasets import (
    DatasetError,
    Sample,
    SampleFiles,
    SegmentationDataset,
    check_files,
    read_split,
    shift_labels,
)


def _split_names(split: str, limit: int | None) -> list[str]:
    names = read_split(split)
    return names if limit is None else names[:limit]


def _paired(
    dataset: str,
    root: str | os.PathLike,
    *,
    split: str,
    image_pattern: str,
    mask_pattern: str,
    class_file: str,
    layout: str,
    limit: int | None,
    label_transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> SegmentationDataset:
    """A benchmark whose split names map to one image and one mask path each (patterns use
    {name})."""
    root = Path(root).expanduser()
    names = _split_names(split, limit)
    items = [
        SampleFiles(n, root / image_pattern.format(name=n), root / mask_pattern.format(name=n))
        for n in names
    ]
    # {name} only ever appears in the file name, so the parents are the fixed folders that must
    # exist.
    dirs = [root / Path(image_pattern).parent, root / Path(mask_pattern).parent]
    check_files(dataset, root, layout, dirs, [f for item in items for f in (item.image, item.mask)])
    return SegmentationDataset(
        items, class_file, name=dataset, root=root, label_transform=label_transform
    )


LAYOUTS: dict[str, str] = {
    "voc": (
        "  VOCdevkit/VOC2012/\n"
        "    JPEGImages/<name>.jpg            (e.g. 2007_000033.jpg)\n"
        "    SegmentationClassAug/<name>.png  (0 background, 1..20, 255 ignore)\n"
        "  names: cliper_lib/data/splits/voc12_val.txt (1449)"
    ),
    "context": (
        "  VOCdevkit/VOC2010/\n"
        "    JPEGImages/<name>.jpg                (e.g. 2008_000002.jpg)\n"
        "    SegmentationClassContext/<name>.png  (0 background, 1..59 in context60.txt order)\n"
        "  names: cliper_lib/data/splits/context_val.txt (5104)"
    ),
    "coco_object": (
        "  coco2014/\n"
        "    val2014/<name>.jpg               (e.g. COCO_val2014_000000182611.jpg)\n"
        "    SegmentationObject/<name>.png    (pre-rendered label maps: 0 background, 1..80 in\n"
        "                                      coco_object81.txt order, 255 ignore)\n"
        "  names: cliper_lib/data/splits/coco_object_val5k.txt (5000)"
    ),
    "coco_stuff": (
        "  coco_stuff164k/\n"
        "    images/val2017/<name>.jpg                     (e.g. 000000000139.jpg)\n"
        "    annotations/val2017/<name>_labelTrainIds.png  (0..170, 255 ignore; loaded as 1..171)\n"
        "  names: cliper_lib/data/splits/coco_stuff164_val.txt (5000)"
    ),
    "ade20k": (
        "  ADEChallengeData2016/\n"
        "    images/validation/<name>.jpg       (e.g. ADE_val_00000001.jpg)\n"
        "    annotations/validation/<name>.png  (0 other, 1..150)\n"
        "  names: cliper_lib/data/splits/ade20k_val.txt (2000)"
    ),
    "cityscapes": (
        "  cityscapes/\n"
        "    leftImg8bit/val/<city>/<name>_leftImg8bit.png        "
        "(e.g. frankfurt/frankfurt_000000_000294)\n"
        "    gtFine/val/<city>/<name>_gtFine_labelTrainIds.png    "
        "(0..18, 255 ignore; loaded as 1..19)\n"
        "  names: cliper_lib/data/splits/cityscapes_val.txt "
        "(500 city/name; each image gives a left and a right half)"
    ),
}


def load_voc(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """PASCAL VOC 2012 val (1449) with the SegmentationClassAug masks; used by voc21 and voc20."""
    return _paired(
        "voc21",
        root,
        split="voc12_val",
        class_file="voc21",
        layout=LAYOUTS["voc"],
        limit=limit,
        image_pattern="VOCdevkit/VOC2012/JPEGImages/{name}.jpg",
        mask_pattern="VOCdevkit/VOC2012/SegmentationClassAug/{name}.png",
    )


def load_context(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """PASCAL Context val (5104), 59 classes + background; used by context60 and context59."""
    return _paired(
        "context60",
        root,
        split="context_val",
        class_file="context60",
        layout=LAYOUTS["context"],
        limit=limit,
        image_pattern="VOCdevkit/VOC2010/JPEGImages/{name}.jpg",
        mask_pattern="VOCdevkit/VOC2010/SegmentationClassContext/{name}.png",
    )


def load_coco_object(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """COCO-2014 val 5k with its object annotations pre-rendered as label-map PNGs (the authors'
    "Object")."""
    return _paired(
        "coco_object",
        root,
        split="coco_object_val5k",
        class_file="coco_object81",
        layout=LAYOUTS["coco_object"],
        limit=limit,
        image_pattern="coco2014/val2014/{name}.jpg",
        mask_pattern="coco2014/SegmentationObject/{name}.png",
    )


def load_coco_stuff(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """COCO-Stuff 164k val (5000); train ids shifted by +1 (255 stays) so 0 is never a class."""
    return _paired(
        "coco_stuff",
        root,
        split="coco_stuff164_val",
        class_file="coco_stuff171",
        layout=LAYOUTS["coco_stuff"],
        limit=limit,
        label_transform=shift_labels,
        image_pattern="coco_stuff164k/images/val2017/{name}.jpg",
        mask_pattern="coco_stuff164k/annotations/val2017/{name}_labelTrainIds.png",
    )


def load_ade20k(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """ADE20K val (2000); label 0 is 'other' (ignored by the presets), 1..150 the classes."""
    return _paired(
        "ade20k",
        root,
        split="ade20k_val",
        class_file="ade150",
        layout=LAYOUTS["ade20k"],
        limit=limit,
        image_pattern="ADEChallengeData2016/images/validation/{name}.jpg",
        mask_pattern="ADEChallengeData2016/annotations/validation/{name}.png",
    )


#: the half-image crops a Cityscapes image is evaluated as (the authors' protocol, docs/method.md
#: section 4).
CITYSCAPES_SIZE = (1024, 2048)  # (H, W)
CITYSCAPES_HALVES = {"left": (0, 1024), "right": (1024, 2048)}


def load_cityscapes(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """Cityscapes val (500 images), each 2048x1024 image as its left and right 1024x1024 halves
    (1000 samples).

    `limit` counts samples (halves), so limit=3 gives both halves of the first image and the left of
    the second.
    """
    root = Path(root).expanduser()
    names = read_split("cityscapes_val")
    if limit is not None:
        names = names[: (limit + 1) // 2]
    items = []
    for n in names:
        image = root / f"cityscapes/leftImg8bit/val/{n}_leftImg8bit.png"
        mask = root / f"cityscapes/gtFine/val/{n}_gtFine_labelTrainIds.png"
        items += [
            SampleFiles(f"{n}#{half}", image, mask, cols)
            for half, cols in CITYSCAPES_HALVES.items()
        ]
    if limit is not None:
        items = items[:limit]
    dirs = [
        root / "cityscapes",
        root / "cityscapes/leftImg8bit/val",
        root / "cityscapes/gtFine/val",
    ]
    check_files(
        "cityscapes",
        root,
        LAYOUTS["cityscapes"],
        dirs,
        sorted({f for i in items for f in (i.image, i.mask)}),
    )
    return _CityscapesDataset(
        items, "cityscapes19", name="cityscapes", root=root, label_transform=shift_labels
    )


class _CityscapesDataset(SegmentationDataset):
    """Checks that each image has the 2048x1024 size its fixed half crops assume."""

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        item = self.items[index]
        height, width = self._image(item.image).shape[:2]
        if (height, width) != CITYSCAPES_SIZE:
            raise DatasetError(
                f"Cityscapes image {item.image} is {width}x{height}; "
                "the half-image protocol expects 2048x1024"
            )
        return super().__getitem__(index)


class DatasetSpec(NamedTuple):
    """How to load a benchmark: loader(root, limit), its class file, and the labels its metric
    ignores by default."""

    loader: Callable[..., SegmentationDataset]
    class_file: str
    ignore_labels: tuple[int, ...]


#: the 8 benchmarks, by the names the presets use (docs/method.md section 5).
DATASETS: dict[str, DatasetSpec] = {
    "voc21": DatasetSpec(load_voc, "voc21", (255,)),
    # 21-class prediction, ground-truth background ignored
    "voc20": DatasetSpec(load_voc, "voc21", (0, 255)),
    "context60": DatasetSpec(load_context, "context60", (255,)),
    "context59": DatasetSpec(load_context, "context60", (0, 255)),
    "coco_object": DatasetSpec(load_coco_object, "coco_object81", (255,)),
    "coco_stuff": DatasetSpec(load_coco_stuff, "coco_stuff171", (0, 255)),
    "ade20k": DatasetSpec(load_ade20k, "ade150", (0, 255)),
    "cityscapes": DatasetSpec(load_cityscapes, "cityscapes19", (0, 255)),
}
#: the paper's table order.
BENCHMARK_ORDER = BENCHMARKS


def default_data_root() -> Path:
    """Where the benchmarks live unless --data-root says otherwise: $CLIPER_DATA, else
    ./datasets."""
    return Path(os.environ.get("CLIPER_DATA", "datasets")).expanduser()


def load_benchmark(
    name: str, root: str | os.PathLike | None = None, limit: int | None = None
) -> SegmentationDataset:
    """Build benchmark `name` (a DATASETS key) from `root`, checking its files; `limit` keeps the
    first samples."""
    if name not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; benchmarks: {', '.join(DATASETS)}")
    dataset = DATASETS[name].loader(default_data_root() if root is None else root, limit=limit)
    dataset.name = name
    return dataset
