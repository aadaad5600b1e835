"""Stage-level memoisation of the CLIPer pipeline, and a non-interactive sweep over the fused layer range.

`StageCache` is a store for the method's stage graph (`cliper_lib.method.stages`): each stage's result is kept
under a key made of the effective values of the config fields that stage declares, chained with the keys of the
stages it consumes, so moving one knob recomputes only the stages downstream of it, and a setting seen before
is a cache hit. `INVALIDATES` (what each explorer control recomputes) is derived from the same declarations.
`sweep_fused_layer_ranges` uses the cache to score many fused layer ranges while walking each image once.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import CLIPerConfig
from ..eval.metrics import ConfusionMatrix
from ..images import content_id, rgb_array
from ..method.pipeline import CLIPer, ClipFeatures, FusedLayers, LayerMaps
from ..method.stages import STAGES, invalidated_by, refinement_in_effect
from ..method.text import TextSet
from ..vocab import parse_class_names

#: how many results each stage keeps (least recently used goes first). The walk and the SD head maps are the
#: large ones (hundreds of MB per image at paper size), the later stages are small.
DEFAULT_CAPACITY = {
    "text": 32,
    "clip_walk": 2,
    "fusion": 4,
    "layer_maps": 8,
    "coarse": 8,
    "sd_attention": 2,
    "refine": 8,
    "labels": 8,
    "proxy": 4,
    "vfm": 2,
}

#: the config fields (or run inputs) behind each explorer control.
CONTROL_FIELDS = {
    "image": ("image",),
    "classes": ("classes",),
    "background": ("background",),
    "sliding": ("sliding_crop_size",),
    "fuse_layers": ("fuse_layers",),
    "select_layer": ("select_layer",),
    "attention_thr": ("attention_thr",),
    "refinement": ("refinement",),
    "selection_head": ("selection_head",),
    "score_threshold": ("score_threshold",),
    "bkg_thre": ("bkg_thre",),
    "is_normalize": ("is_normalize",),
    "map_class": (),  # display only
}
#: which stages each explorer control invalidates, derived from the stage graph (SD runs the first time a
#: refinement needs it for an image; selection_head matters only while refinement == "selection").
INVALIDATES = {control: invalidated_by(*names) for control, names in CONTROL_FIELDS.items()}


@dataclass
class StageEvent:
    """One recomputation: which stage, how long it took, during which `run` call."""

    stage: str
    seconds: float
    run: int


@dataclass
class StageOutputs:
    """Everything one `StageCache.run` produced (cached objects: treat them as read-only)."""

    image_id: Hashable
    image: np.ndarray  # (H0, W0, 3) uint8
    cfg: CLIPerConfig
    text: TextSet | None  # None if stopped before the text was needed
    features: ClipFeatures | None
    fused: FusedLayers | None
    layer_maps: LayerMaps | None
    coarse: torch.Tensor | None  # (C, h, w) S_c
    select_map: torch.Tensor | None  # (C, h, w) thresholded S_sel
    head_maps: torch.Tensor | None  # (m, T, T) SD head maps, None when no refinement runs
    refined: (
        torch.Tensor | None
    )  # (C, s, s) S_f (S_c when refinement is none); None if stopped before refine
    scores: torch.Tensor | None  # (C,)
    maps: torch.Tensor | None  # (C, H0, W0) score-scaled maps
    labels: torch.Tensor | None  # (H0, W0) int64, 0 = background
    keys: dict[str, Hashable] = field(default_factory=dict)  # the key of every stage reached
    recomputed: dict[str, float] = field(
        default_factory=dict
    )  # stage -> seconds, for this run only

    @property
    def class_names(self) -> list[str]:
        return self.text.names


class StageCache:
    """Memoises each CLIPer stage by exactly the inputs it depends on; counts and times every recomputation.

    `recomputed[stage]` counts recomputations since creation (or `reset_counts`), `hits[stage]` the reuses,
    `log` lists every recomputation as a `StageEvent`; `StageOutputs.recomputed` says what one run redid.
    """

    def __init__(self, model: CLIPer, capacity: Mapping[str, int] | None = None):
        self.model = model
        self.capacity = {**DEFAULT_CAPACITY, **(capacity or {})}
        unknown = set(self.capacity) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
        self._store: dict[str, OrderedDict] = {stage: OrderedDict() for stage in STAGES}
        self.recomputed: Counter = Counter()
        self.hits: Counter = Counter()
        self.log: list[StageEvent] = []
        self.runs = 0

    # --- bookkeeping -----------------------------------------------------------------------------------------
    def reset_counts(self) -> None:
        """Zero the counters and the log (the cached results stay)."""
        self.recomputed.clear()
        self.hits.clear()
        self.log.clear()

    def clear(self, stages: Iterable[str] | None = None) -> None:
        """Drop cached results (all stages, or the named ones)."""
        for stage in stages or STAGES:
            self._store[stage].clear()

    def copy(self) -> StageCache:
        """A cache holding the same results (shared, read-only) with fresh counters, e.g. to branch a sweep."""
        other = StageCache(self.model, self.capacity)
        other._store = {stage: OrderedDict(entries) for stage, entries in self._store.items()}
        return other

    def cached(self, stage: str) -> int:
        """How many results `stage` holds now."""
        return len(self._store[stage])

    # --- the store protocol of run_stages ----------------------------------------------------------------------
    def lookup(self, stage: str, key: Hashable) -> tuple[bool, Any]:
        store = self._store[stage]
        if key not in store:
            return False, None
        store.move_to_end(key)
        self.hits[stage] += 1
        return True, store[key]

    def save(self, stage: str, key: Hashable, value: Any, seconds: float) -> None:
        store = self._store[stage]
        store[key] = value
        while len(store) > max(1, self.capacity[stage]):
            store.popitem(last=False)
        self.recomputed[stage] += 1
        self.log.append(StageEvent(stage, seconds, self.runs))

    def effective_refinement(self, cfg: CLIPerConfig) -> str:
        """The refinement that will run: 'none' when the model has no SD extractor."""
        return refinement_in_effect(self.model, cfg)

    # --- the pipeline ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(
        self,
        image: Any,
        cfg: CLIPerConfig | None = None,
        classes: Sequence[str] | str | TextSet | None = None,
        background: Sequence[str] | str | None = None,
        image_id: Hashable | None = None,
        until: str = "labels",
    ) -> StageOutputs:
        """The pipeline of `CLIPer.segment` with every stage looked up before it is computed.

        `image_id` names the image in the keys (default: a hash of its pixels); `until` stops after a stage
        ("coarse" skips SD, refinement and labels). `classes` may be a list, a ';'-separated string or a TextSet.
        """
        if until not in STAGES:
            raise ValueError(f"until={until!r}; choose one of {', '.join(STAGES)}")
        if classes is None:
            raise ValueError("give the class names (a list, a ';'-separated string, or a TextSet)")
        model = self.model
        cfg = cfg or model.cfg
        text = classes if isinstance(classes, TextSet) else None
        image = rgb_array(image)
        image_id = content_id(image) if image_id is None else image_id
        self.runs += 1
        # the text is always part of a run (the explorer shows the class names, whatever stage it stops at)
        targets = ("text", until) if until != "text" else ("text",)
        run = model.run(
            image,
            None if text else classes,
            background,
            cfg,
            targets,
            text=text,
            image_id=image_id,
            store=self,
        )
        get = run.values.get
        coarse = get("coarse", (None, None))
        scores, maps, labels = get("labels", (None, None, None))
        return StageOutputs(
            image_id=image_id,
            image=run["image"],
            cfg=cfg,
            text=get("text"),
            features=get("clip_walk"),
            fused=get("fusion"),
            layer_maps=get("layer_maps"),
            coarse=coarse[0],
            select_map=coarse[1],
            head_maps=get("sd_attention"),
            refined=get("refine"),
            scores=scores,
            maps=maps,
            labels=labels,
            keys=dict(run.keys),
            recomputed=dict(run.recomputed),
        )


def timing_rows(move: str, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Long-form rows (move, stage, seconds) of one `Explorer.apply` record: every stage (0 when cached) + drawing."""
    rows = [
        {"move": move, "stage": stage, "seconds": float(record["recomputed"].get(stage, 0.0))}
        for stage in STAGES
    ]
    rows.append({"move": move, "stage": "drawing", "seconds": float(record["render_s"])})
    return rows


# --- the layer-range sweep ----------------------------------------------------------------------------------------
#: stages that do not depend on the fused layer range (their time is not charged to any one range).
SHARED_STAGES = tuple(s for s in STAGES if s not in invalidated_by("fuse_layers"))


def layer_ranges(num_layers: int, min_length: int = 1) -> list[tuple[int, int]]:
    """Every contiguous [first, last] range of the fusable blocks 0 .. L-2 with at least `min_length` blocks."""
    top = num_layers - 2
    return [(a, b) for a in range(top + 1) for b in range(a + min_length - 1, top + 1)]


def coarse_prediction(coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label map 1..C from S_c: bilinear upsampling (C, h, w) -> (C, H, W), argmax over classes, + 1."""
    up = F.interpolate(coarse[None].float(), size=size, mode="bilinear", align_corners=False)[
        0
    ]  # (C, H, W)
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

    proxy="coarse": the argmax of the coarse map S_c over the classes, upsampled, against the ground truth on
    its foreground pixels (label 0 and `ignore_labels` skipped): isolates early-layer fusion, no SD needed.
    proxy="labels": the full label map (with refinement and thresholds) against the ground truth, skipping
    `ignore_labels` (default: cfg.ignore_labels): the benchmark mIoU restricted to these samples.
    Samples are anything with `.name`, `.image` (H, W, 3) and `.mask` (H, W) (datasets.Sample), e.g. a
    SyntheticDataset or a benchmark; `text` defaults to the samples' class names. Each image is walked once:
    the images are the outer loop and the walk stays cached while every range is fused. Row fields: first, last,
    range, num_fused, miou, pixel_accuracy (fractions), proxy, num_images, num_pixels, seconds (fusion onward for
    this range), shared_seconds (text, walks, SD for the whole sweep), walks.
    """
    if proxy not in ("coarse", "labels"):
        raise ValueError(f"proxy={proxy!r}; use 'coarse' or 'labels'")
    cfg = cfg or model.cfg
    num_layers = model.clip.num_layers
    ranges = [
        tuple(int(v) for v in r) for r in (layer_ranges(num_layers) if ranges is None else ranges)
    ]
    for first, last in ranges:
        cfg.replace(fuse_layers=[first, last]).check_against_depth(
            num_layers
        )  # fail before any work
    if text is None:
        names = getattr(samples, "class_names", None)
        if names is None:
            raise ValueError("give `text`: the samples do not name their classes")
        text = list(names[1:])  # label 0 is background, k is class_names[k]
    num_classes = (
        text.num_classes
        if isinstance(text, TextSet)
        else len(parse_class_names(text) if isinstance(text, str) else text)
    ) + 1
    ignore = set(cfg.ignore_labels if ignore_labels is None else ignore_labels)
    if proxy == "coarse":
        ignore.add(0)
    cache = cache or StageCache(model)
    matrices = {r: ConfusionMatrix(num_classes, ignore) for r in ranges}
    seconds = {r: 0.0 for r in ranges}  # fusion onward: what each range costs on its own
    shared = (
        0.0  # text, CLIP walks, SD: paid once per image (or once), whatever the number of ranges
    )
    walks_before = cache.recomputed["clip_walk"]

    items = (
        list(samples) if limit is None else [samples[i] for i in range(min(limit, len(samples)))]
    )
    iterator: Iterable[Any] = items
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(items, desc=f"layer-range sweep ({len(ranges)} ranges)", unit="image")
    for sample in iterator:
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
            for stage, spent in out.recomputed.items():
                if stage in SHARED_STAGES:
                    shared += spent
                else:
                    seconds[(first, last)] += spent
            mask = np.asarray(sample.mask)
            pred = (
                coarse_prediction(out.coarse, mask.shape) if proxy == "coarse" else out.labels.cpu()
            )
            matrices[(first, last)].update(mask, pred.numpy().astype(np.int64))

    rows = []
    for first, last in ranges:
        stats = matrices[(first, last)].compute()
        rows.append(
            {
                "first": first,
                "last": last,
                "range": f"{first}-{last}",
                "num_fused": last - first + 1,
                "miou": stats["mIoU"],
                "pixel_accuracy": stats["pAcc"],
                "proxy": proxy,
                "num_images": len(items),
                "num_pixels": stats["num_pixels"],
                "seconds": seconds[(first, last)],
                # the same for every row: the whole sweep's shared stages, and its CLIP walks (== images when reused)
                "shared_seconds": shared,
                "walks": cache.recomputed["clip_walk"] - walks_before,
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

    smoke: synthetic shapes with exact masks. paper: the first `limit` images of benchmark `dataset` under
    `data_root`, or with `dataset="folder"` any folder of images (`data_root`) with label-map PNGs (`mask_dir`)
    whose labels index `cfg.classes`.
    When that data is not there, (None, why and what to point at): a notebook skips the sweep instead of failing.
    """
    from ..eval.datasets import DatasetError, FolderDataset
    from ..eval.synthetic import SyntheticDataset

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
            from ..eval.benchmarks import load_benchmark

            samples = load_benchmark(dataset, root=data_root or None, limit=limit)
            where = f"the first images of {dataset}"
    except DatasetError as error:
        first = str(error).splitlines()[0]
        return None, (
            f"layer-range sweep skipped: it needs images with ground truth, and {first}. Point data_root "
            f"at the benchmarks (or set $CLIPER_DATA), or set sweep_dataset='folder' with data_root (an "
            f"image folder) and sweep_mask_dir (label-map PNGs named like the images)."
        )
    return samples, f"{proxy} proxy: mIoU on {len(samples)} {where}"
