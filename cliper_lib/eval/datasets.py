"""The 8 benchmarks in the authors' folder layouts, any folder of images, and a synthetic set with exact masks.

Every data set is a sequence of `Sample(name, image, mask)`; images are (H, W, 3) uint8, masks (H, W) int64 in the
label convention of DESIGN.md section 4 (0 = background or "other", k = k-th class line, 255 = ignore). Files are
listed and checked when a data set is built, so a missing folder or file stops the run before any model work,
with one message naming what is missing and the layout that was expected. Images are decoded lazily; a file
that cannot be decoded raises `DatasetError` naming it.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import text
from .config import DATA_DIR

SPLIT_DIR = DATA_DIR / "splits"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: how many missing files a layout error lists before it summarises the rest.
MAX_LISTED_MISSING = 5


class DatasetError(RuntimeError):
    """A data set folder or file is missing or unreadable; the message names it and the expected layout."""


@dataclass
class Sample:
    """One evaluation item: a name (unique within the data set), the RGB image and its label map (or None)."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) int64, or None when the data set has no annotations


# ---------------------------------------------------------------------------------------------------------------
# class files and split lists


def class_file_path(name: str | os.PathLike) -> Path:
    """Resolve a class file: a name in data/classes (`voc21`) or a path; DatasetError if there is none."""
    try:
        return text.class_file_path(name)
    except FileNotFoundError as error:
        raise DatasetError(str(error)) from None


def class_names(name: str | os.PathLike) -> list[str]:
    """Label names of a class file by label index: 'background' for 0, then one class line per label."""
    # The first line is a background vocabulary (possibly a comma list), never a label name of its own.
    return ["background"] + list(text.read_class_file(class_file_path(name)).names)


def num_classes_of(name: str | os.PathLike) -> int:
    """Number of labels a class file defines, background included (lines of the file)."""
    return len(class_names(name))


def read_split(name: str | os.PathLike) -> list[str]:
    """Sample names of a split list in data/splits (`voc12_val`) or at a path; one name per line."""
    path = Path(name)
    if not (path.suffix == ".txt" and path.exists()):
        path = SPLIT_DIR / f"{name}.txt"
    if not path.exists():
        raise DatasetError(f"split list {name!r} not found at {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------------
# decoding


def load_image(path: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB; DatasetError naming the file if it cannot be read."""
    try:
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from None
    return array


def load_mask(path: Path) -> np.ndarray:
    """Decode a label-map PNG to (H, W) int64; palette or grey images only (a colour mask is an error)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise DatasetError(
                    f"annotation {path} has mode {im.mode!r}: expected a label map (palette 'P' or grey 'L'), "
                    "not a colour rendering"
                )
            # np.array of a palette image gives the palette indices, which are the labels.
            array = np.array(im)
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise DatasetError(f"cannot read annotation {path}: {error}") from None
    if array.ndim != 2:
        raise DatasetError(f"annotation {path} has shape {array.shape}: expected (H, W)")
    return array.astype(np.int64)


def shift_labels(mask: np.ndarray, ignore: int = 255) -> np.ndarray:
    """Add 1 to every label except `ignore`, so 0 is never a class (COCO-Stuff and Cityscapes train ids)."""
    out = mask.copy()
    out[mask != ignore] += 1
    return out


# ---------------------------------------------------------------------------------------------------------------
# data sets


@dataclass(frozen=True)
class _Item:
    """Where one sample comes from: its files and, for half-image samples, the column range."""

    name: str
    image: Path
    mask: Path | None
    columns: tuple[int, int] | None = None  # (start, stop) pixel columns kept; None = the whole image


class SegmentationDataset(Sequence[Sample]):
    """A list of (image, mask) files decoded on access; `names` gives sample names without decoding."""

    def __init__(
        self,
        items: Sequence[_Item],
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
        # Two samples can share one file (the halves of a Cityscapes image): keep the last decoded image.
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
                    f"annotation {item.mask} is {mask.shape[1]}x{mask.shape[0]} but image {item.image} is "
                    f"{image.shape[1]}x{image.shape[0]} (width x height)"
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


def _check_files(dataset: str, root: Path, layout: str, required_dirs: Sequence[Path], files: Sequence[Path]) -> None:
    """Raise one DatasetError listing what is missing (root, folders, then files) with the expected layout."""
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
                problems.append(f"... and {len(missing) - MAX_LISTED_MISSING} more of {len(files)} files")
    if problems:
        raise DatasetError(
            f"data set {dataset!r} is not complete under {root}:\n  "
            + "\n  ".join(problems)
            + f"\nexpected layout (below --data-root / CLIPER_DATA):\n{layout}"
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
    """A benchmark whose split names map to one image and one mask path each (patterns use {name})."""
    root = Path(root).expanduser()
    names = _split_names(split, limit)
    items = [_Item(n, root / image_pattern.format(name=n), root / mask_pattern.format(name=n)) for n in names]
    # {name} only ever appears in the file name, so the parents are the fixed folders that must exist.
    dirs = [root / Path(image_pattern).parent, root / Path(mask_pattern).parent]
    _check_files(dataset, root, layout, dirs, [f for item in items for f in (item.image, item.mask)])
    return SegmentationDataset(items, class_file, name=dataset, root=root, label_transform=label_transform)


LAYOUTS: dict[str, str] = {
    "voc": (
        "  VOCdevkit/VOC2012/\n"
        "    JPEGImages/<name>.jpg            (e.g. 2007_000033.jpg)\n"
        "    SegmentationClassAug/<name>.png  (0 background, 1..20, 255 ignore)\n"
        "  names: data/splits/voc12_val.txt (1449)"
    ),
    "context": (
        "  VOCdevkit/VOC2010/\n"
        "    JPEGImages/<name>.jpg                (e.g. 2008_000002.jpg)\n"
        "    SegmentationClassContext/<name>.png  (0 background, 1..59 in context60.txt order)\n"
        "  names: data/splits/context_val.txt (5104)"
    ),
    "coco_object": (
        "  coco2014/\n"
        "    val2014/<name>.jpg               (e.g. COCO_val2014_000000182611.jpg)\n"
        "    SegmentationObject/<name>.png    (pre-rendered label maps: 0 background, 1..80 in\n"
        "                                      coco_object81.txt order, 255 ignore)\n"
        "  names: data/splits/coco_object_val5k.txt (5000)"
    ),
    "coco_stuff": (
        "  coco_stuff164k/\n"
        "    images/val2017/<name>.jpg                     (e.g. 000000000139.jpg)\n"
        "    annotations/val2017/<name>_labelTrainIds.png  (0..170, 255 ignore; loaded as 1..171)\n"
        "  names: data/splits/coco_stuff164_val.txt (5000)"
    ),
    "ade20k": (
        "  ADEChallengeData2016/\n"
        "    images/validation/<name>.jpg       (e.g. ADE_val_00000001.jpg)\n"
        "    annotations/validation/<name>.png  (0 other, 1..150)\n"
        "  names: data/splits/ade20k_val.txt (2000)"
    ),
    "cityscapes": (
        "  cityscapes/\n"
        "    leftImg8bit/val/<city>/<name>_leftImg8bit.png        (e.g. frankfurt/frankfurt_000000_000294)\n"
        "    gtFine/val/<city>/<name>_gtFine_labelTrainIds.png    (0..18, 255 ignore; loaded as 1..19)\n"
        "  names: data/splits/cityscapes_val.txt (500 city/name; each image gives a left and a right half)"
    ),
}


def load_voc(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """PASCAL VOC 2012 val (1449) with the SegmentationClassAug masks; used by voc21 and voc20."""
    return _paired(
        "voc21", root, split="voc12_val", class_file="voc21", layout=LAYOUTS["voc"], limit=limit,
        image_pattern="VOCdevkit/VOC2012/JPEGImages/{name}.jpg",
        mask_pattern="VOCdevkit/VOC2012/SegmentationClassAug/{name}.png",
    )


def load_context(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """PASCAL Context val (5104), 59 classes + background; used by context60 and context59."""
    return _paired(
        "context60", root, split="context_val", class_file="context60", layout=LAYOUTS["context"], limit=limit,
        image_pattern="VOCdevkit/VOC2010/JPEGImages/{name}.jpg",
        mask_pattern="VOCdevkit/VOC2010/SegmentationClassContext/{name}.png",
    )


def load_coco_object(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """COCO-2014 val 5k with its object annotations pre-rendered as label-map PNGs (the authors' "Object")."""
    return _paired(
        "coco_object", root, split="coco_object_val5k", class_file="coco_object81", layout=LAYOUTS["coco_object"],
        limit=limit,
        image_pattern="coco2014/val2014/{name}.jpg",
        mask_pattern="coco2014/SegmentationObject/{name}.png",
    )


def load_coco_stuff(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """COCO-Stuff 164k val (5000); train ids shifted by +1 (255 stays) so 0 is never a class."""
    return _paired(
        "coco_stuff", root, split="coco_stuff164_val", class_file="coco_stuff171", layout=LAYOUTS["coco_stuff"],
        limit=limit, label_transform=shift_labels,
        image_pattern="coco_stuff164k/images/val2017/{name}.jpg",
        mask_pattern="coco_stuff164k/annotations/val2017/{name}_labelTrainIds.png",
    )


def load_ade20k(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """ADE20K val (2000); label 0 is 'other' (ignored by the presets), 1..150 the classes."""
    return _paired(
        "ade20k", root, split="ade20k_val", class_file="ade150", layout=LAYOUTS["ade20k"], limit=limit,
        image_pattern="ADEChallengeData2016/images/validation/{name}.jpg",
        mask_pattern="ADEChallengeData2016/annotations/validation/{name}.png",
    )


#: the half-image crops a Cityscapes image is evaluated as (the authors' protocol, DESIGN.md section 4).
CITYSCAPES_SIZE = (1024, 2048)  # (H, W)
CITYSCAPES_HALVES = {"left": (0, 1024), "right": (1024, 2048)}


def load_cityscapes(root: str | os.PathLike, limit: int | None = None) -> SegmentationDataset:
    """Cityscapes val (500 images), each 2048x1024 image as its left and right 1024x1024 halves (1000 samples).

    `limit` counts samples (halves), so limit=3 gives both halves of the first image and the left of the second.
    """
    root = Path(root).expanduser()
    names = read_split("cityscapes_val")
    if limit is not None:
        names = names[: (limit + 1) // 2]
    items = []
    for n in names:
        image = root / f"cityscapes/leftImg8bit/val/{n}_leftImg8bit.png"
        mask = root / f"cityscapes/gtFine/val/{n}_gtFine_labelTrainIds.png"
        items += [_Item(f"{n}#{half}", image, mask, cols) for half, cols in CITYSCAPES_HALVES.items()]
    if limit is not None:
        items = items[:limit]
    dirs = [root / "cityscapes", root / "cityscapes/leftImg8bit/val", root / "cityscapes/gtFine/val"]
    _check_files("cityscapes", root, LAYOUTS["cityscapes"], dirs, sorted({f for i in items for f in (i.image, i.mask)}))
    return _CityscapesDataset(items, "cityscapes19", name="cityscapes", root=root, label_transform=shift_labels)


class _CityscapesDataset(SegmentationDataset):
    """Checks that each image has the 2048x1024 size its fixed half crops assume."""

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        item = self.items[index]
        height, width = self._image(item.image).shape[:2]
        if (height, width) != CITYSCAPES_SIZE:
            raise DatasetError(
                f"Cityscapes image {item.image} is {width}x{height}; the half-image protocol expects 2048x1024"
            )
        return super().__getitem__(index)


class DatasetSpec(NamedTuple):
    """How to load a benchmark: loader(root, limit), its class file, and the labels its metric ignores by default."""

    loader: Callable[..., SegmentationDataset]
    class_file: str
    ignore_labels: tuple[int, ...]


#: the 8 benchmarks, by the names the presets use (DESIGN.md section 4).
DATASETS: dict[str, DatasetSpec] = {
    "voc21": DatasetSpec(load_voc, "voc21", (255,)),
    "voc20": DatasetSpec(load_voc, "voc21", (0, 255)),  # 21-class prediction, ground-truth background ignored
    "context60": DatasetSpec(load_context, "context60", (255,)),
    "context59": DatasetSpec(load_context, "context60", (0, 255)),
    "coco_object": DatasetSpec(load_coco_object, "coco_object81", (255,)),
    "coco_stuff": DatasetSpec(load_coco_stuff, "coco_stuff171", (0, 255)),
    "ade20k": DatasetSpec(load_ade20k, "ade150", (0, 255)),
    "cityscapes": DatasetSpec(load_cityscapes, "cityscapes19", (0, 255)),
}
#: the paper's table order.
BENCHMARK_ORDER = ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff", "ade20k", "cityscapes")


def default_data_root() -> Path:
    """Where the benchmarks live unless --data-root says otherwise: $CLIPER_DATA, else ./datasets."""
    return Path(os.environ.get("CLIPER_DATA", "datasets")).expanduser()


def load_benchmark(name: str, root: str | os.PathLike | None = None, limit: int | None = None) -> SegmentationDataset:
    """Build benchmark `name` (a DATASETS key) from `root`, checking its files; `limit` keeps the first samples."""
    if name not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; benchmarks: {', '.join(DATASETS)}")
    dataset = DATASETS[name].loader(default_data_root() if root is None else root, limit=limit)
    dataset.name = name
    return dataset


# ---------------------------------------------------------------------------------------------------------------
# any folder


class FolderDataset(SegmentationDataset):
    """Every image in `root` (recursively, sorted), with masks `<mask_dir>/<relative stem>.png` when given."""

    def __init__(
        self, root: str | os.PathLike, class_file: str | os.PathLike, mask_dir: str | os.PathLike | None = None
    ) -> None:
        root = Path(root).expanduser()
        layout = "  <root>/<name>.jpg|.png|...\n" + ("  <mask_dir>/<name>.png  (label maps)" if mask_dir else "")
        if not root.is_dir():
            raise DatasetError(f"image folder {root} does not exist\nexpected layout:\n{layout}")
        images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
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
            items.append(_Item(name, path, mask))
        if mask_root is not None:
            _check_files("folder", root, layout, [mask_root], [item.mask for item in items])
        super().__init__(items, class_file, name="folder", root=root)


# ---------------------------------------------------------------------------------------------------------------
# synthetic shapes


class SyntheticDataset(Sequence[Sample]):
    """Discs, rectangles and triangles of known classes on a textured background, with exact masks.

    Sample i depends only on (seed, i), so any shard or resumed run sees the same images. Each class has its own
    colour and texture (stripes, checks, dots or flat); the background is a smooth colour gradient with noise.
    Labels are drawn from a small pool of classes so a few images still repeat each class.
    """

    SHAPES = ("disc", "rectangle", "triangle")

    def __init__(
        self,
        num_images: int = 8,
        classes: Sequence[str] | int | str = 20,
        size: int | tuple[int, int] = 96,
        seed: int = 0,
        *,
        max_shapes: int = 3,
        pool_size: int = 6,
    ) -> None:
        if isinstance(classes, str):  # a class file name or path
            self.class_file: Path | None = class_file_path(classes)
            classes = class_names(classes)[1:]
        else:
            self.class_file = None
        self.classes = [f"class{k}" for k in range(1, classes + 1)] if isinstance(classes, int) else list(classes)
        if not self.classes:
            raise ValueError("SyntheticDataset needs at least one class")
        self.num_images = int(num_images)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.seed = int(seed)
        self.max_shapes = max_shapes
        self.name = "synthetic"
        rng = np.random.default_rng([self.seed, 2**31 - 1])
        count = min(pool_size, len(self.classes))
        self.label_pool = np.sort(rng.choice(np.arange(1, len(self.classes) + 1), size=count, replace=False))
        self._names = [f"synthetic_{i:05d}" for i in range(self.num_images)]

    @property
    def names(self) -> list[str]:
        return self._names

    @property
    def num_classes(self) -> int:
        return len(self.classes) + 1

    @property
    def class_names(self) -> list[str]:
        return ["background"] + self.classes

    has_masks = True

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not -self.num_images <= index < self.num_images:
            raise IndexError(index)
        index %= self.num_images
        rng = np.random.default_rng([self.seed, index])
        height, width = self.size
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        # Background: a smooth gradient between two dull colours plus mild noise.
        c0, c1 = rng.uniform(40, 120, size=(2, 3))
        t = ((xx / max(width - 1, 1) + yy / max(height - 1, 1)) / 2)[..., None]  # (H, W, 1)
        image = c0 * (1 - t) + c1 * t + rng.normal(0, 4, size=(height, width, 3))
        mask = np.zeros((height, width), dtype=np.int64)
        for _ in range(int(rng.integers(1, self.max_shapes + 1))):
            label = int(rng.choice(self.label_pool))
            region = self._shape(rng, yy, xx)
            image[region] = self._texture(label, yy, xx)[region]
            mask[region] = label  # later shapes cover earlier ones in the mask exactly as in the image
        return Sample(self._names[index], np.clip(image, 0, 255).astype(np.uint8), mask)

    def _shape(self, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, kind: str | None = None) -> np.ndarray:
        """A random (H, W) boolean region of one shape kind (random kind unless given)."""
        height, width = yy.shape
        short = min(height, width)
        drawn = self.SHAPES[int(rng.integers(len(self.SHAPES)))]
        kind = kind or drawn  # draw anyway so the random stream does not depend on `kind`
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        half = rng.uniform(0.12, 0.3) * short
        if kind == "disc":
            return (yy - cy) ** 2 + (xx - cx) ** 2 <= half**2
        if kind == "rectangle":
            hy, hx = half * rng.uniform(0.6, 1.4), half * rng.uniform(0.6, 1.4)
            return (np.abs(yy - cy) <= hy) & (np.abs(xx - cx) <= hx)
        # Triangle: the intersection of three half-planes through its corners (any winding order).
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        corners = np.stack([cy + half * np.sin(angles), cx + half * np.cos(angles)], axis=1)  # (3, 2) y, x
        sides = []
        for (y0, x0), (y1, x1) in zip(corners, np.roll(corners, -1, axis=0)):
            sides.append((x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0))
        sides = np.stack(sides)  # (3, H, W)
        return np.all(sides >= 0, axis=0) | np.all(sides <= 0, axis=0)

    def _texture(self, label: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """The (H, W, 3) float appearance of class `label`: fixed per (seed, label)."""
        rng = np.random.default_rng([self.seed, 2**31 - 2, label])
        colour = rng.uniform(60, 255, size=3)
        accent = 255 - colour
        period = float(rng.integers(4, 10))
        kind = label % 4
        if kind == 0:
            on = (np.floor(xx / period) % 2) == 0  # vertical stripes
        elif kind == 1:
            on = ((np.floor(xx / period) + np.floor(yy / period)) % 2) == 0  # checks
        elif kind == 2:
            on = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) <= (period / 3) ** 2  # dots
        else:
            on = np.ones_like(xx, dtype=bool)  # flat
        return np.where(on[..., None], colour, 0.7 * colour + 0.3 * accent)

