"""Data sets: the 8 benchmark layouts on tiny fake roots, label conventions,
up-front errors, synthetic shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliper_lib.config import CLIPerConfig, list_presets
from cliper_lib.eval.benchmarks import BENCHMARK_ORDER, DATASETS, load_benchmark
from cliper_lib.eval.datasets import (
    DatasetError,
    FolderDataset,
    class_file_path,
    num_classes_of,
    read_split,
)
from cliper_lib.eval.synthetic import SyntheticDataset

# Relative image and mask paths of each benchmark for a split name
# (the layouts in benchmarks.LAYOUTS).
LAYOUT = {
    "voc21": (
        "VOCdevkit/VOC2012/JPEGImages/{}.jpg",
        "VOCdevkit/VOC2012/SegmentationClassAug/{}.png",
    ),
    "context60": (
        "VOCdevkit/VOC2010/JPEGImages/{}.jpg",
        "VOCdevkit/VOC2010/SegmentationClassContext/{}.png",
    ),
    "coco_object": ("coco2014/val2014/{}.jpg", "coco2014/SegmentationObject/{}.png"),
    "coco_stuff": (
        "coco_stuff164k/images/val2017/{}.jpg",
        "coco_stuff164k/annotations/val2017/{}_labelTrainIds.png",
    ),
    "ade20k": (
        "ADEChallengeData2016/images/validation/{}.jpg",
        "ADEChallengeData2016/annotations/validation/{}.png",
    ),
    "cityscapes": (
        "cityscapes/leftImg8bit/val/{}_leftImg8bit.png",
        "cityscapes/gtFine/val/{}_gtFine_labelTrainIds.png",
    ),
}
SPLIT = {
    "voc21": "voc12_val",
    "context60": "context_val",
    "coco_object": "coco_object_val5k",
    "coco_stuff": "coco_stuff164_val",
    "ade20k": "ade20k_val",
    "cityscapes": "cityscapes_val",
}


def write_pair(
    root: Path, name: str, layout: str, image: np.ndarray, mask: np.ndarray, mode: str = "L"
) -> None:
    image_rel, mask_rel = LAYOUT[layout]
    for rel, array, kind in ((image_rel, image, "RGB"), (mask_rel, mask, mode)):
        path = root / rel.format(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(array.astype(np.uint8), "RGB" if kind == "RGB" else "L")
        if kind == "P":
            im = im.convert("P")  # keeps the grey values as palette indices
            im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        im.save(path, quality=95) if path.suffix == ".jpg" else im.save(path)


def fake_benchmark(
    root: Path, layout: str, count: int, rng: np.random.Generator, shape=(24, 32), labels=None
):
    """Write the first `count` samples of a benchmark's split with random images and masks;
    return the masks."""
    masks = {}
    for name in read_split(SPLIT[layout])[:count]:
        mask = rng.choice(labels if labels is not None else [0, 1, 2, 255], size=shape)
        image = rng.integers(0, 255, size=(*shape, 3))
        write_pair(root, name, layout, image, mask, mode="P" if layout == "voc21" else "L")
        masks[name] = mask
    return masks


# --------------------------------------------------------------------------------------------------
def test_registry_matches_presets_and_class_files():
    assert set(DATASETS) == set(BENCHMARK_ORDER) and len(DATASETS) == 8
    for preset in list_presets():
        cfg = CLIPerConfig.from_preset(preset)
        spec = DATASETS[cfg.dataset]
        assert class_file_path(cfg.classes) == class_file_path(spec.class_file), preset
        assert sorted(cfg.ignore_labels) == sorted(spec.ignore_labels), preset
    # Labels per set: background/other + classes, so label k = k-th class line.
    assert {n: num_classes_of(s.class_file) for n, s in DATASETS.items()} == {
        "voc21": 21,
        "voc20": 21,
        "context60": 60,
        "context59": 60,
        "coco_object": 81,
        "coco_stuff": 172,
        "ade20k": 151,
        "cityscapes": 20,
    }


def test_split_lists_have_the_published_sizes():
    sizes = {split: len(read_split(split)) for split in SPLIT.values()}
    assert sizes == {
        "voc12_val": 1449,
        "context_val": 5104,
        "coco_object_val5k": 5000,
        "coco_stuff164_val": 5000,
        "ade20k_val": 2000,
        "cityscapes_val": 500,
    }
    assert all(n.count("/") == 1 for n in read_split("cityscapes_val"))  # city/name


@pytest.mark.parametrize(
    "name", ["voc21", "voc20", "context60", "context59", "coco_object", "ade20k"]
)
def test_plain_benchmarks_load_masks_unchanged(tmp_path, name):
    layout = {"voc20": "voc21", "context59": "context60"}.get(name, name)
    masks = fake_benchmark(tmp_path, layout, 3, np.random.default_rng(0))
    ds = load_benchmark(name, tmp_path, limit=3)
    assert len(ds) == 3 and ds.names == list(masks)
    for sample in ds:
        assert sample.image.dtype == np.uint8 and sample.image.shape == (24, 32, 3)
        assert sample.mask.dtype == np.int64
        np.testing.assert_array_equal(
            sample.mask, masks[sample.name]
        )  # incl. palette PNGs (VOC) and ADE's 0


def test_coco_stuff_labels_shift_by_one_and_255_stays(tmp_path):
    masks = fake_benchmark(
        tmp_path, "coco_stuff", 2, np.random.default_rng(1), labels=[0, 5, 170, 255]
    )
    ds = load_benchmark("coco_stuff", tmp_path, limit=2)
    for sample in ds:
        raw = masks[sample.name]
        np.testing.assert_array_equal(sample.mask, np.where(raw == 255, 255, raw + 1))
    assert ds[0].mask.min() >= 1 and ds[0].mask.max() == 255  # 0 is never a class


def test_cityscapes_halves_and_shift(tmp_path):
    rng = np.random.default_rng(2)
    names = read_split("cityscapes_val")[:2]
    raws = {}
    for name in names:
        image = np.zeros((1024, 2048, 3), np.uint8)
        image[:, 1024:] = 200
        image[::97, ::89] = rng.integers(
            0, 255, size=3
        )  # a few marks so the halves differ in detail
        mask = np.zeros((1024, 2048), np.uint8)
        mask[:, 1024:] = 18
        mask[500:510] = 255
        write_pair(tmp_path, name, "cityscapes", image, mask)
        raws[name] = (image, mask)
    ds = load_benchmark("cityscapes", tmp_path, limit=3)  # limit counts halves
    assert ds.names == [f"{names[0]}#left", f"{names[0]}#right", f"{names[1]}#left"]
    for sample in ds:
        base, half = sample.name.split("#")
        image, mask = raws[base]
        cols = slice(0, 1024) if half == "left" else slice(1024, 2048)
        assert sample.image.shape == (1024, 1024, 3)
        np.testing.assert_array_equal(sample.image, image[:, cols])
        np.testing.assert_array_equal(
            sample.mask, np.where(mask == 255, 255, mask.astype(np.int64) + 1)[:, cols]
        )
    assert set(np.unique(ds[1].mask)) == {19, 255}


def test_cityscapes_full_split_is_1000_samples(tmp_path, monkeypatch):
    # The file check is what needs the data; the sample list is derived from the split alone.
    monkeypatch.setattr("cliper_lib.eval.benchmarks.check_files", lambda *a, **k: None)
    assert len(load_benchmark("cityscapes", tmp_path)) == 1000


def test_missing_root_is_reported_once_with_the_layout(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_benchmark("ade20k", tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    assert "ADEChallengeData2016/" in message and "annotations/validation/<name>.png" in message


def test_missing_files_are_listed_up_front_and_summarised(tmp_path):
    fake_benchmark(tmp_path, "voc21", 2, np.random.default_rng(3))
    with pytest.raises(DatasetError) as info:
        load_benchmark("voc21", tmp_path)  # the whole split: 1447 of 1449 pairs missing
    message = str(info.value)
    assert message.count("missing file") == 5 and "more of 2898 files" in message
    assert "SegmentationClassAug/<name>.png" in message
    assert len(load_benchmark("voc21", tmp_path, limit=2)) == 2  # what is there loads


def test_missing_folder_names_it(tmp_path):
    (tmp_path / "coco2014" / "val2014").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"missing folder .*coco2014/SegmentationObject"):
        load_benchmark("coco_object", tmp_path, limit=1)


def test_corrupt_files_raise_naming_the_file(tmp_path):
    fake_benchmark(tmp_path, "ade20k", 3, np.random.default_rng(4))
    names = read_split("ade20k_val")[:3]
    bad_image = tmp_path / LAYOUT["ade20k"][0].format(names[0])
    bad_image.write_bytes(b"\xff\xd8 definitely not a jpeg")
    bad_mask = tmp_path / LAYOUT["ade20k"][1].format(names[1])
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(
        bad_mask
    )  # an RGB rendering, not a label map
    small_mask = tmp_path / LAYOUT["ade20k"][1].format(names[2])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small_mask)
    ds = load_benchmark("ade20k", tmp_path, limit=3)  # decoding is lazy: building succeeds
    with pytest.raises(DatasetError, match=f"cannot read image {bad_image}"):
        ds[0]
    with pytest.raises(DatasetError, match=f"annotation {bad_mask} has mode 'RGB'"):
        ds[1]
    with pytest.raises(DatasetError, match=f"annotation {small_mask} is 10x10"):
        ds[2]


def test_folder_dataset(tmp_path):
    rng = np.random.default_rng(5)
    images, masks = tmp_path / "imgs", tmp_path / "imgs" / "masks"  # masks inside the image folder
    for rel in ("a", "sub/b"):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (masks / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)).save(
            images / f"{rel}.png"
        )
        Image.fromarray(rng.integers(0, 3, (12, 14), dtype=np.uint8)).save(masks / f"{rel}.png")
    ds = FolderDataset(images, "voc21", mask_dir=masks)
    assert ds.names == ["a", "sub/b"] and ds.num_classes == 21 and ds.has_masks
    assert ds[1].mask.shape == (12, 14) and ds[1].mask.max() <= 2
    unlabelled = FolderDataset(images, "voc21")
    assert (
        len(unlabelled) == 4 and not unlabelled.has_masks and unlabelled[0].mask is None
    )  # masks are images too
    (masks / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"missing file .*masks/a\.png"):
        FolderDataset(images, "voc21", mask_dir=masks)
    with pytest.raises(DatasetError, match="does not exist"):
        FolderDataset(tmp_path / "none", "voc21")


# --------------------------------------------------------------------------------------------------
def test_synthetic_is_deterministic_and_order_independent():
    a = SyntheticDataset(6, classes="voc21", size=(40, 56), seed=3)
    b = SyntheticDataset(6, classes="voc21", size=(40, 56), seed=3)
    late = a[5]
    for i in range(6):
        np.testing.assert_array_equal(a[i].image, b[i].image)
        np.testing.assert_array_equal(a[i].mask, b[i].mask)
    np.testing.assert_array_equal(late.image, b[5].image)  # random access gives the same sample
    other = SyntheticDataset(6, classes="voc21", size=(40, 56), seed=4)
    assert not all(np.array_equal(a[i].mask, other[i].mask) for i in range(6))
    assert a.num_classes == 21 and a.class_names[1] == "aeroplane" and len(set(a.names)) == 6


def test_synthetic_masks_are_exact_and_labels_from_a_small_pool():
    ds = SyntheticDataset(12, classes=150, size=64, seed=0)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    seen = set()
    for sample in ds:
        assert sample.image.shape == (64, 64, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (64, 64) and sample.mask.dtype == np.int64
        for k in np.unique(sample.mask):
            if k == 0:
                continue
            seen.add(int(k))
            region = sample.mask == k
            # Every labelled pixel carries exactly its class's texture:
            # the mask is the painted region.
            texture = np.clip(ds._texture(int(k), yy, xx), 0, 255).astype(np.uint8)
            np.testing.assert_array_equal(sample.image[region], texture[region])
        assert (sample.mask == 0).mean() > 0.2  # background stays visible
    assert seen <= set(ds.label_pool.tolist()) and len(ds.label_pool) == 6 and len(seen) >= 3
    rng = np.random.default_rng(0)
    for kind in ds.SHAPES:
        area = np.mean([ds._shape(rng, yy, xx, kind).mean() for _ in range(20)])
        assert 0.02 < area < 0.5, kind  # every kind draws a real, partial region


def test_synthetic_classes_differ_in_appearance():
    ds = SyntheticDataset(1, classes=8, size=32, seed=0)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    means = [ds._texture(k, yy, xx).mean(axis=(0, 1)) for k in range(1, 9)]
    gaps = [np.abs(means[i] - means[j]).max() for i in range(8) for j in range(i + 1, 8)]
    assert min(gaps) > 5  # distinct colours per class
