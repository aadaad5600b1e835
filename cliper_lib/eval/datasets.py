"""Data sets as sequences of samples: class files, split lists, decoding, a list of files, and any
image folder.

Every data set is a sequence of `Sample(name, image, mask)`; images are (H, W, 3) uint8, masks
(H, W) int64 in the label convention of docs/method.md section 4 (0 = background or "other", k =
k-th class line, 255 = ignore). Files are listed and checked when a data set is built, so a missing
folder or file stops the run before any model work, with one message naming what is missing and the
layout that was expected. Images are decoded lazily; a file that cannot be decoded raises
`DatasetError` naming it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import DATA_DIR
from ..images import (
    IMAGE_READ_ERRORS,
    IMAGE_SUFFIXES,
    ImageReadError,
    is_image_file,
    read_image,
)
from ..vocab import class_file_path, read_class_file

SPLIT_DIR = DATA_DIR / "splits"
#: how many missing files a layout error lists before it summarises the rest.
MAX_LISTED_MISSING = 5


class DatasetError(RuntimeError):
    """A data set folder or file is missing or unreadable; the message names it and the expected
    layout."""


@dataclass
class Sample:
    """One evaluation item: a name (unique within the data set), the RGB image and its label map
    (or None)."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) int64, or None when the data set has no annotations


# --------------------------------------------------------------------------------------------------
# class files and split lists


def class_names(name: str | os.PathLike) -> list[str]:
    """Label names of a class file by label index: 'background' for 0, then one class line per
    label."""
    # The first line is a background vocabulary (possibly a comma list), never a label name of its
    # own.
    return ["background"] + list(read_class_file(name).names)


def num_classes_of(name: str | os.PathLike) -> int:
    """Number of labels a class file defines, background included (lines of the file)."""
    return len(class_names(name))


def read_split(name: str | os.PathLike) -> list[str]:
    """Sample names of a split list in cliper_lib/data/splits (`voc12_val`) or at a path; one name
    per line."""
    path = Path(name)
    if not (path.suffix == ".txt" and path.exists()):
        path = SPLIT_DIR / f"{name}.txt"
    if not path.exists():
        raise DatasetError(f"split list {name!r} not found at {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# decoding


def load_image(path: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB; DatasetError naming the file if it cannot be
    read."""
    try:
        return read_image(path)
    except ImageReadError as error:
        raise DatasetError(str(error)) from None


def load_mask(path: Path) -> np.ndarray:
    """Decode a label-map PNG to (H, W) int64; palette or grey images only (a colour mask is an
    error)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise DatasetError(
                    f"annotation {path} has mode {im.mode!r}: expected a label map "
                    "(palette 'P' or grey 'L'), not a colour rendering"
                )
            # np.array of a palette image gives the palette indices, which are the labels.
            array = np.array(im)
    except DatasetError:
        raise
    except IMAGE_READ_ERRORS as error:
        raise DatasetError(f"cannot read annotation {path}: {error}") from None
    if array.ndim != 2:
        raise DatasetError(f"annotation {path} has shape {array.shape}: expected (H, W)")
    return array.astype(np.int64)


def shift_labels(mask: np.ndarray, ignore: int = 255) -> np.ndarray:
    """Add 1 to every label except `ignore`, so 0 is never a class (COCO-Stuff and Cityscapes train
    ids)."""
    out = mask.copy()
    out[mask != ignore] += 1
    return out


# --------------------------------------------------------------------------------------------------
# data sets


@dataclass(frozen=True)
class SampleFiles:
    """Where one sample comes from: its files and, for half-image samples, the column range."""

    name: str
    image: Path
    mask: Path | None
    # (start, stop) pixel columns kept; None = the whole image
    columns: tuple[int, int] | None = None


class SegmentationDataset(Sequence[Sample]):
    """A list of (image, mask) files decoded on access; `names` gives sample names without
    decoding."""

    def __init__(
        self,
        items: Sequence[SampleFiles],
        class_file: str | os.PathLike,
        *,
        name: str,
        root: Path | None = None,
        label_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.items = list(items)
        self.class_file = class_file_path(class_file)
        self.name = name
        self.root = root
        self.label_transform = label_transform
        self._names = [item.name for item in self.items]
        if len(set(self._names)) != len(self._names):
            raise DatasetError(f"data set {name!r} has duplicate sample names")
        # Two samples can share one file (the halves of a Cityscapes image): keep the last decoded
        # image.
        self._cache_lock = threading.Lock()
        self._cache: tuple[Path, np.ndarray] | None = None

    @property
    def names(self) -> list[str]:
        """Sample names in order (cheap: nothing is decoded)."""
        return self._names

    @property
    def num_classes(self) -> int:
        return num_classes_of(self.class_file)

    @property
    def class_names(self) -> list[str]:
        return class_names(self.class_file)

    @property
    def has_masks(self) -> bool:
        return all(item.mask is not None for item in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        item = self.items[index]
        image = self._image(item.image)
        mask = None
        if item.mask is not None:
            mask = load_mask(item.mask)
            if mask.shape != image.shape[:2]:
                raise DatasetError(
                    f"annotation {item.mask} is {mask.shape[1]}x{mask.shape[0]} but image "
                    f"{item.image} is {image.shape[1]}x{image.shape[0]} (width x height)"
                )
            if self.label_transform is not None:
                mask = self.label_transform(mask)
        if item.columns is not None:
            start, stop = item.columns
            image = np.ascontiguousarray(image[:, start:stop])
            mask = None if mask is None else np.ascontiguousarray(mask[:, start:stop])
        return Sample(item.name, image, mask)

    def _image(self, path: Path) -> np.ndarray:
        with self._cache_lock:
            if self._cache is not None and self._cache[0] == path:
                return self._cache[1]
        image = load_image(path)
        with self._cache_lock:
            self._cache = (path, image)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} samples, root={self.root})"


def check_files(
    dataset: str, root: Path, layout: str, required_dirs: Sequence[Path], files: Sequence[Path]
) -> None:
    """Raise one DatasetError listing what is missing (root, folders, then files) with the expected
    layout."""
    problems: list[str] = []
    if not root.is_dir():
        problems.append(f"data root {root} does not exist")
    else:
        missing_dirs = [d for d in required_dirs if not d.is_dir()]
        problems += [f"missing folder {d}" for d in missing_dirs]
        if not missing_dirs:
            missing = [f for f in files if not f.is_file()]
            problems += [f"missing file {f}" for f in missing[:MAX_LISTED_MISSING]]
            if len(missing) > MAX_LISTED_MISSING:
                problems.append(
                    f"... and {len(missing) - MAX_LISTED_MISSING} more of {len(files)} files"
                )
    if problems:
        raise DatasetError(
            f"data set {dataset!r} is not complete under {root}:\n  "
            + "\n  ".join(problems)
            + f"\nexpected layout (below --data-root / CLIPER_DATA):\n{layout}"
        )


# --------------------------------------------------------------------------------------------------
# any folder


class FolderDataset(SegmentationDataset):
    """Every image in `root` (recursively, sorted), with masks `<mask_dir>/<relative stem>.png` when
    given."""

    def __init__(
        self,
        root: str | os.PathLike,
        class_file: str | os.PathLike,
        mask_dir: str | os.PathLike | None = None,
    ) -> None:
        root = Path(root).expanduser()
        layout = "  <root>/<name>.jpg|.png|...\n" + (
            "  <mask_dir>/<name>.png  (label maps)" if mask_dir else ""
        )
        if not root.is_dir():
            raise DatasetError(f"image folder {root} does not exist\nexpected layout:\n{layout}")
        images = sorted(p for p in root.rglob("*") if is_image_file(p))
        mask_root = None if mask_dir is None else Path(mask_dir).expanduser()
        if mask_root is not None:
            # Masks may live inside the image folder: never treat them as images.
            images = [p for p in images if mask_root.resolve() not in p.resolve().parents]
        if not images:
            raise DatasetError(f"image folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        items = []
        for path in images:
            name = path.relative_to(root).with_suffix("").as_posix()
            mask = None if mask_root is None else mask_root / f"{name}.png"
            items.append(SampleFiles(name, path, mask))
        if mask_root is not None:
            check_files("folder", root, layout, [mask_root], [item.mask for item in items])
        super().__init__(items, class_file, name="folder", root=root)
