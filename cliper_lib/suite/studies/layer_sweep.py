"""The layer-range sweep: many fused layer ranges scored on images with ground truth, each image
walked once (notebook 06 and the paper plan). The walk stays in a `StageCache` while every range is
fused, so the cost of a range is fusion onward.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...config import CLIPerConfig
from ...eval.benchmarks import load_benchmark
from ...eval.datasets import DatasetError, FolderDataset
from ...eval.metrics import ConfusionMatrix
from ...eval.synthetic import SyntheticDataset
from ...images import content_id
from ...method.pipeline import CLIPer
from ...method.stages import STAGES, invalidated_by
from ...method.text import TextSet
from ...vocab import parse_class_names
from ..toolkit.stage_cache import StageCache

#: stages that do not depend on the fused layer range (their time is not charged to any one range).
SHARED_STAGES = tuple(s for s in STAGES if s not in invalidated_by("fuse_layers"))


def layer_ranges(num_layers: int, min_length: int = 1) -> list[tuple[int, int]]:
    """Every contiguous [first, last] range of the fusable blocks 0 .. L-2 with at least
    `min_length` blocks."""
    top = num_layers - 2
    return [(a, b) for a in range(top + 1) for b in range(a + min_length - 1, top + 1)]


def coarse_prediction(coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label map 1..C from S_c: bilinear upsampling (C, h, w) -> (C, H, W), argmax over classes,
    + 1."""
    up = F.interpolate(coarse[None].float(), size=size, mode="bilinear", align_corners=False)
    up = up[0]  # (C, H, W)
    return up.argmax(dim=0).cpu() + 1


def sweep_fused_layer_ranges(
    model: CLIPer,
    samples: Iterable[Any],
    ranges: Iterable[Sequence[int]] | None = None,
    text: Sequence[str] | str | TextSet | None = None,
    cfg: CLIPerConfig | None = None,
    *,
    proxy: str = "coarse",
    background: Sequence[str] | None = None,
    ignore_labels: Iterable[int] | None = None,
    limit: int | None = None,
    cache: StageCache | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score each fused layer range [first, last] on samples with ground truth; one dict per range.

    proxy="coarse": the argmax of the coarse map S_c over the classes, upsampled, against the ground
    truth on its foreground pixels (label 0 and `ignore_labels` skipped): isolates early-layer
    fusion, no SD needed. proxy="labels": the full label map (with refinement and thresholds)
    against the ground truth, skipping `ignore_labels` (default: cfg.ignore_labels): the benchmark
    mIoU restricted to these samples. Samples are anything with `.name`, `.image` (H, W, 3) and
    `.mask` (H, W) (datasets.Sample), e.g. a SyntheticDataset or a benchmark; `text` defaults to the
    samples' class names. Each image is walked once: the images are the outer loop and the walk
    stays cached while every range is fused. Row fields: first, last, range, num_fused, miou,
    pixel_accuracy (fractions), proxy, num_images, num_pixels, seconds (fusion onward for this
    range), shared_seconds (text, walks, SD for the whole sweep), walks.
    """
    if proxy not in ("coarse", "labels"):
        raise ValueError(f"proxy={proxy!r}; use 'coarse' or 'labels'")
    cfg = cfg or model.cfg
    ranges = _checked_ranges(model, cfg, ranges)
    text = _sweep_text(samples, text)
    ignore = set(cfg.ignore_labels if ignore_labels is None else ignore_labels)
    if proxy == "coarse":
        ignore.add(0)
    cache = cache or StageCache(model)
    tally = _Tally(ranges, _num_classes(text) + 1, ignore)
    walks_before = cache.recomputed["clip_walk"]

    items = _first_samples(samples, limit)
    desc = f"layer-range sweep ({len(ranges)} ranges)"
    for sample in tqdm(items, desc=desc, unit="image") if progress else items:
        if sample.mask is None:
            raise ValueError(f"sample {sample.name!r} has no ground truth mask")
        image_id = f"sample:{getattr(sample, 'name', '')}:{content_id(sample.image)}"
        for first, last in ranges:
            out = cache.run(
                sample.image,
                cfg.replace(fuse_layers=[first, last]),
                text,
                background,
                image_id=image_id,
                until="coarse" if proxy == "coarse" else "labels",
            )
            tally.add((first, last), sample, out, proxy)
    walks = cache.recomputed["clip_walk"] - walks_before
    return tally.rows(proxy, len(items), walks)


def _first_samples(samples: Any, limit: int | None) -> list[Any]:
    """The samples, or the first `limit` of them."""
    if limit is None:
        return list(samples)
    return [samples[i] for i in range(min(limit, len(samples)))]


def _checked_ranges(
    model: CLIPer, cfg: CLIPerConfig, ranges: Iterable[Sequence[int]] | None
) -> list[tuple[int, ...]]:
    """The ranges as tuples (default: every range of the model's depth), each checked against the
    depth before any work."""
    num_layers = model.clip.num_layers
    ranges = [
        tuple(int(v) for v in r) for r in (layer_ranges(num_layers) if ranges is None else ranges)
    ]
    for first, last in ranges:
        cfg.replace(fuse_layers=[first, last]).check_against_depth(num_layers)
    return ranges


def _sweep_text(
    samples: Any, text: Sequence[str] | str | TextSet | None
) -> Sequence[str] | str | TextSet:
    """`text`, or by default the samples' class names (label 0 is background, k is
    class_names[k])."""
    if text is not None:
        return text
    names = getattr(samples, "class_names", None)
    if names is None:
        raise ValueError("give `text`: the samples do not name their classes")
    return list(names[1:])


def _num_classes(text: Sequence[str] | str | TextSet) -> int:
    if isinstance(text, TextSet):
        return text.num_classes
    return len(parse_class_names(text) if isinstance(text, str) else text)


class _Tally:
    """Per range: a confusion matrix and the seconds spent on it (fusion onward); and the seconds of
    the stages shared by all ranges (text, CLIP walks, SD: paid once per image, or once)."""

    def __init__(self, ranges: Sequence[tuple[int, ...]], num_classes: int, ignore: set[int]):
        self.ranges = ranges
        self.matrices = {r: ConfusionMatrix(num_classes, ignore) for r in ranges}
        self.seconds = {r: 0.0 for r in ranges}
        self.shared = 0.0

    def add(self, key: tuple[int, ...], sample: Any, out: Any, proxy: str) -> None:
        """Count one range's stage times and prediction on one sample."""
        for stage, spent in out.timings.items():
            if stage in SHARED_STAGES:
                self.shared += spent
            else:
                self.seconds[key] += spent
        mask = np.asarray(sample.mask)
        pred = coarse_prediction(out.coarse, mask.shape) if proxy == "coarse" else out.labels.cpu()
        self.matrices[key].update(mask, pred.numpy().astype(np.int64))

    def rows(self, proxy: str, num_images: int, walks: int) -> list[dict[str, Any]]:
        """One row per range, in range order."""
        rows = []
        for first, last in self.ranges:
            stats = self.matrices[(first, last)].compute()
            rows.append(
                {
                    "first": first,
                    "last": last,
                    "range": f"{first}-{last}",
                    "num_fused": last - first + 1,
                    "miou": stats["mIoU"],
                    "pixel_accuracy": stats["pAcc"],
                    "proxy": proxy,
                    "num_images": num_images,
                    "num_pixels": stats["num_pixels"],
                    "seconds": self.seconds[(first, last)],
                    # the same for every row: the whole sweep's shared stages, and its CLIP walks
                    # (== images when reused)
                    "shared_seconds": self.shared,
                    "walks": walks,
                }
            )
        return rows


def best_range(rows: Sequence[Mapping[str, Any]], metric: str = "miou") -> Mapping[str, Any]:
    """The row with the highest `metric` (NaN rows last; ties to the earlier row)."""

    def value(row):
        v = row[metric]
        return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else v

    return max(rows, key=value)


def sweep_samples(
    cfg: CLIPerConfig,
    dataset: str,
    data_root: str | None,
    limit: int,
    proxy: str = "coarse",
    mask_dir: str | None = None,
) -> tuple[Any | None, str]:
    """The images with ground truth a layer-range sweep scores, and a line saying what they are.

    smoke: synthetic shapes with exact masks. paper: the first `limit` images of benchmark `dataset`
    under `data_root`, or with `dataset="folder"` any folder of images (`data_root`) with label-map
    PNGs (`mask_dir`) whose labels index `cfg.classes`. When that data is not there, (None, why and
    what to point at): a notebook skips the sweep instead of failing.
    """
    if cfg.profile == "smoke":
        samples: Any = SyntheticDataset(num_images=limit, classes=6, size=128, seed=0)
        return (
            samples,
            f"{proxy} proxy: agreement (mIoU) with synthetic ground truth, {len(samples)} images",
        )
    try:
        if dataset == "folder":
            if not data_root or not mask_dir:
                raise DatasetError(
                    "sweep_dataset 'folder' needs data_root (the images) and a mask folder"
                )
            folder = FolderDataset(data_root, cfg.classes, mask_dir)
            samples = [folder[i] for i in range(min(limit, len(folder)))]
            where = f"images in {data_root}"
        else:
            samples = load_benchmark(dataset, root=data_root or None, limit=limit)
            where = f"the first images of {dataset}"
    except DatasetError as error:
        first = str(error).splitlines()[0]
        return None, (
            f"layer-range sweep skipped: it needs images with ground truth, and {first}. "
            f"Point data_root at the benchmarks (or set $CLIPER_DATA), or set "
            f"sweep_dataset='folder' with data_root (an image folder) and sweep_mask_dir "
            f"(label-map PNGs named like the images)."
        )
    return samples, f"{proxy} proxy: mIoU on {len(samples)} {where}"


def explorer_tour(num_layers: int, class_names: str) -> list[tuple[str, str, Any]]:
    """Notebook 06's timed moves (kind, control, value): each kind a few times with fresh values,
    one return to an earlier layer range (a cache hit), thresholds, the coarse map, new classes."""
    last = num_layers - 2  # the last fusable block
    return [
        ("layer range", "fuse_layers", (1, last)),
        ("layer range", "fuse_layers", (0, last - 1)),
        ("layer range", "fuse_layers", (num_layers // 2, last)),
        ("revisit (cached)", "fuse_layers", (1, last)),
        ("label thresholds", "score_threshold", 0.0),
        ("label thresholds", "bkg_thre", 0.2),
        ("label thresholds", "score_threshold", 0.1),
        ("coarse map", "attention_thr", 0.25),
        ("coarse map", "select_layer", -2),
        ("classes", "classes", class_names + "; floor"),
        ("classes", "classes", class_names + "; floor; window"),
    ]
