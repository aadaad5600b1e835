"""Stage-level memoisation of the CLIPer pipeline, and a non-interactive sweep over the fused layer range.

`StageCache` runs the stages of `CLIPer` (pipeline.py) one by one and keeps each stage's result under a key made
of exactly what that stage depends on, chained with the keys of the stages it consumes:

    stage          key (besides the keys of its inputs)                         recomputed when ... changes
    text           class lines, background words, templates                     classes, background
    clip_walk      image id, size, sliding window geometry, dtype               image, size, sliding window
    fusion         fuse_layers (None = all), normalization_rounds, last_layer_attention
    layer_maps     (fusion, text), logit_scale
    coarse         select_layer (mod L), attention_thr
    sd_attention   image id                                                     image
    refine         refinement, attention_thr, selection_head (selection only), (coarse, sd_attention)
    labels         score_threshold, bkg_thre, is_normalize

so moving one knob recomputes only the stages downstream of it, and a setting seen before is a cache hit.
`sweep_fused_layer_ranges` uses the same cache to score many fused layer ranges while walking each image once.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import CLIPerConfig
from .metrics import ConfusionMatrix
from .pipeline import CLIPer, ClipFeatures, FusedLayers, LayerMaps
from .text import TextSet, parse_class_names

#: the stages in pipeline order (the names `CLIPer.segment` uses in its timings).
STAGES = ("text", "clip_walk", "fusion", "layer_maps", "coarse", "sd_attention", "refine", "labels")

#: how many results each stage keeps (least recently used goes first). The walk and the SD head maps are the
#: large ones (hundreds of MB per image at paper size), the later stages are small.
DEFAULT_CAPACITY = {"text": 32, "clip_walk": 2, "fusion": 4, "layer_maps": 8, "coarse": 8, "sd_attention": 2,
                    "refine": 8, "labels": 8}

#: which stages each explorer control invalidates (documentation; the keys above are what enforces it).
INVALIDATES = {
    "image": ("clip_walk", "fusion", "layer_maps", "coarse", "sd_attention", "refine", "labels"),
    "classes": ("text", "layer_maps", "coarse", "refine", "labels"),
    "background": ("text", "layer_maps", "coarse", "refine", "labels"),
    "sliding": ("clip_walk", "fusion", "layer_maps", "coarse", "refine", "labels"),
    "fuse_layers": ("fusion", "layer_maps", "coarse", "refine", "labels"),
    "select_layer": ("coarse", "refine", "labels"),
    "attention_thr": ("coarse", "refine", "labels"),
    "refinement": ("refine", "labels"),  # + sd_attention the first time SD is needed for an image
    "selection_head": ("refine", "labels"),  # only while refinement == "selection"
    "score_threshold": ("labels",),
    "bkg_thre": ("labels",),
    "is_normalize": ("labels",),
    "map_class": (),  # display only
}


def image_id_of(image: Any) -> str:
    """A content id for an image (PIL, (H, W, 3) array or tensor): shape + SHA-1 of its bytes."""
    array = np.ascontiguousarray(np.asarray(image.detach().cpu() if hasattr(image, "detach") else image))
    digest = hashlib.sha1(array.tobytes()).hexdigest()[:16]
    return f"{'x'.join(map(str, array.shape))}:{array.dtype}:{digest}"


@dataclass
class StageEvent:
    """One recomputation: which stage, how long it took, during which `run` call."""

    stage: str
    seconds: float
    run: int


@dataclass
class StageOutputs:
    """Everything one `StageCache.run` produced (cached objects: treat them as read-only)."""

    image_id: str
    image: np.ndarray  # (H0, W0, 3) uint8
    cfg: CLIPerConfig
    text: TextSet
    features: ClipFeatures
    fused: FusedLayers
    layer_maps: LayerMaps
    coarse: torch.Tensor  # (C, h, w) S_c
    select_map: torch.Tensor  # (C, h, w) thresholded S_sel
    head_maps: torch.Tensor | None  # (m, T, T) SD head maps, None when refinement is none
    refined: torch.Tensor | None  # (C, s, s) S_f (S_c when refinement is none); None if stopped before refine
    scores: torch.Tensor | None  # (C,)
    maps: torch.Tensor | None  # (C, H0, W0) score-scaled maps
    labels: torch.Tensor | None  # (H0, W0) int64, 0 = background
    keys: dict[str, tuple] = field(default_factory=dict)  # the key of every stage reached
    recomputed: dict[str, float] = field(default_factory=dict)  # stage -> seconds, for this run only

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

    def cached(self, stage: str) -> int:
        """How many results `stage` holds now."""
        return len(self._store[stage])

    def _get(self, stage: str, key: tuple, compute: Callable[[], Any], recomputed: dict[str, float]) -> Any:
        store = self._store[stage]
        if key in store:
            store.move_to_end(key)
            self.hits[stage] += 1
            return store[key]
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        start = time.perf_counter()
        value = compute()
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)  # time the work, not the kernel launches
        seconds = time.perf_counter() - start
        store[key] = value
        while len(store) > max(1, self.capacity[stage]):
            store.popitem(last=False)
        self.recomputed[stage] += 1
        self.log.append(StageEvent(stage, seconds, self.runs))
        recomputed[stage] = recomputed.get(stage, 0.0) + seconds
        return value

    # --- keys ------------------------------------------------------------------------------------------------
    def effective_refinement(self, cfg: CLIPerConfig) -> str:
        """The refinement that will run: 'none' when the model has no SD extractor (as `CLIPer.refine` does)."""
        return "none" if self.model.sd is None else cfg.refinement

    def _text_key(self, classes: Sequence[str] | str | TextSet, background: Sequence[str] | str | None):
        if isinstance(classes, TextSet):  # an already encoded set: keyed by identity, never recomputed
            return ("encoded", tuple(classes.names), tuple(classes.background), id(classes))
        names = parse_class_names(classes) if isinstance(classes, str) else [c.strip() for c in classes if c.strip()]
        if isinstance(background, str):
            from .text import split_background_line

            background = split_background_line(background)
        bg = ("<class file>", self.model.cfg.classes) if background is None else tuple(b.strip() for b in background)
        return ("names", tuple(names), bg, self.model.cfg.templates, self.model.cfg.classes)

    def keys(self, image_id: str, cfg: CLIPerConfig, classes, background=None) -> dict[str, tuple]:
        """The key of every stage for these inputs (each contains the keys of the stages it consumes)."""
        num_layers = self.model.clip.num_layers
        slide = (cfg.sliding_crop_size, cfg.sliding_stride) if cfg.sliding_crop_size > 0 else (0, 0)
        walk = ("walk", image_id, cfg.size, *slide, cfg.dtype)
        fuse = (0, num_layers - 2) if cfg.fuse_layers is None else tuple(cfg.fuse_layers)  # None == all
        fusion = ("fusion", walk, fuse, cfg.normalization_rounds, cfg.last_layer_attention)
        text = self._text_key(classes, background)
        layer_maps = ("layer_maps", fusion, text, float(cfg.logit_scale))
        coarse = ("coarse", layer_maps, cfg.select_layer % num_layers, float(cfg.attention_thr))
        sd = ("sd", image_id)
        refinement = self.effective_refinement(cfg)
        if refinement == "none":
            refine = ("refine", coarse, "none")
        else:
            head = cfg.selection_head if refinement == "selection" else None
            refine = ("refine", coarse, sd, refinement, float(cfg.attention_thr), head)
        labels = ("labels", refine, float(cfg.score_threshold), float(cfg.bkg_thre), bool(cfg.is_normalize))
        return {"text": text, "clip_walk": walk, "fusion": fusion, "layer_maps": layer_maps, "coarse": coarse,
                "sd_attention": sd, "refine": refine, "labels": labels}

    # --- the pipeline ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, image: Any, cfg: CLIPerConfig | None = None, classes: Sequence[str] | str | TextSet | None = None,
            background: Sequence[str] | str | None = None, image_id: str | None = None,
            until: str = "labels") -> StageOutputs:
        """The pipeline of `CLIPer.segment` with every stage looked up before it is computed.

        `image_id` names the image in the keys (default: a hash of its pixels); `until` stops after a stage
        ("coarse" skips SD, refinement and labels). `classes` may be a list, a ';'-separated string or a TextSet.
        """
        if until not in STAGES:
            raise ValueError(f"until={until!r}; choose one of {', '.join(STAGES)}")
        model = self.model
        cfg = cfg or model.cfg
        cfg.check_against_depth(model.clip.num_layers)
        if classes is None:
            raise ValueError("give the class names (a list, a ';'-separated string, or a TextSet)")
        image = np.asarray(image) if not hasattr(image, "detach") else image
        image_id = image_id or image_id_of(image)
        keys = self.keys(image_id, cfg, classes, background)
        self.runs += 1
        done: dict[str, float] = {}

        def text_compute():
            if isinstance(classes, TextSet):
                return classes
            names, bg = list(keys["text"][1]), keys["text"][2]
            return model.encode_text(names, None if bg and bg[0] == "<class file>" else list(bg))

        text = self._get("text", keys["text"], text_compute, done)
        features = self._get("clip_walk", keys["clip_walk"], lambda: model.clip_features(image, cfg), done)
        fused = self._get("fusion", keys["fusion"], lambda: model.fusion(features, cfg), done)
        maps = self._get("layer_maps", keys["layer_maps"], lambda: model.layer_maps(features, fused, text, cfg), done)
        coarse, select_map = self._get("coarse", keys["coarse"], lambda: model.coarse(maps, fused, cfg), done)
        out = StageOutputs(image_id=image_id, image=features.image, cfg=cfg, text=text, features=features,
                           fused=fused, layer_maps=maps, coarse=coarse, select_map=select_map, head_maps=None,
                           refined=None, scores=None, maps=None, labels=None, recomputed=done)
        out.keys = {s: keys[s] for s in STAGES[: STAGES.index("coarse") + 1]}
        if STAGES.index(until) <= STAGES.index("coarse"):
            return out
        if self.effective_refinement(cfg) != "none":
            out.head_maps = self._get("sd_attention", keys["sd_attention"],
                                      lambda: model.sd_attention(features.image), done)
            out.keys["sd_attention"] = keys["sd_attention"]
            if until == "sd_attention":
                return out
        out.refined = self._get("refine", keys["refine"], lambda: model.refine(coarse, out.head_maps, cfg), done)
        out.keys["refine"] = keys["refine"]
        if until == "refine":
            return out
        size = tuple(features.image.shape[:2])
        out.scores, out.maps, out.labels = self._get(
            "labels", keys["labels"], lambda: model.labels(out.refined, coarse, size, cfg), done)
        out.keys["labels"] = keys["labels"]
        return out


# --- the layer-range sweep ----------------------------------------------------------------------------------------
#: stages that do not depend on the fused layer range (their time is not charged to any one range).
SHARED_STAGES = ("text", "clip_walk", "sd_attention")


def layer_ranges(num_layers: int, min_length: int = 1) -> list[tuple[int, int]]:
    """Every contiguous [first, last] range of the fusable blocks 0 .. L-2 with at least `min_length` blocks."""
    top = num_layers - 2
    return [(a, b) for a in range(top + 1) for b in range(a + min_length - 1, top + 1)]


def coarse_prediction(coarse: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label map 1..C from S_c: bilinear upsampling (C, h, w) -> (C, H, W), argmax over classes, + 1."""
    up = F.interpolate(coarse[None].float(), size=size, mode="bilinear", align_corners=False)[0]  # (C, H, W)
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
    ranges = [tuple(int(v) for v in r) for r in (layer_ranges(num_layers) if ranges is None else ranges)]
    for first, last in ranges:
        cfg.replace(fuse_layers=[first, last]).check_against_depth(num_layers)  # fail before any work
    if text is None:
        names = getattr(samples, "class_names", None)
        if names is None:
            raise ValueError("give `text`: the samples do not name their classes")
        text = list(names[1:])  # label 0 is background, k is class_names[k]
    num_classes = (text.num_classes if isinstance(text, TextSet)
                   else len(parse_class_names(text) if isinstance(text, str) else text)) + 1
    ignore = set(cfg.ignore_labels if ignore_labels is None else ignore_labels)
    if proxy == "coarse":
        ignore.add(0)
    cache = cache or StageCache(model)
    matrices = {r: ConfusionMatrix(num_classes, ignore) for r in ranges}
    seconds = {r: 0.0 for r in ranges}  # fusion onward: what each range costs on its own
    shared = 0.0  # text, CLIP walks, SD: paid once per image (or once), whatever the number of ranges
    walks_before = cache.recomputed["clip_walk"]

    items = list(samples) if limit is None else [samples[i] for i in range(min(limit, len(samples)))]
    iterator: Iterable[Any] = items
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(items, desc=f"layer-range sweep ({len(ranges)} ranges)", unit="image")
    for sample in iterator:
        if sample.mask is None:
            raise ValueError(f"sample {sample.name!r} has no ground truth mask")
        image_id = f"sample:{getattr(sample, 'name', '')}:{image_id_of(sample.image)}"
        for first, last in ranges:
            out = cache.run(sample.image, cfg.replace(fuse_layers=[first, last]), text, background,
                            image_id=image_id, until="coarse" if proxy == "coarse" else "labels")
            for stage, spent in out.recomputed.items():
                if stage in SHARED_STAGES:
                    shared += spent
                else:
                    seconds[(first, last)] += spent
            mask = np.asarray(sample.mask)
            pred = coarse_prediction(out.coarse, mask.shape) if proxy == "coarse" else out.labels.cpu()
            matrices[(first, last)].update(mask, pred.numpy().astype(np.int64))

    rows = []
    for first, last in ranges:
        stats = matrices[(first, last)].compute()
        rows.append({
            "first": first, "last": last, "range": f"{first}-{last}", "num_fused": last - first + 1,
            "miou": stats["mIoU"], "pixel_accuracy": stats["pAcc"], "proxy": proxy,
            "num_images": len(items), "num_pixels": stats["num_pixels"], "seconds": seconds[(first, last)],
            # the same for every row: the whole sweep's shared stages, and its CLIP walks (== images when reused)
            "shared_seconds": shared, "walks": cache.recomputed["clip_walk"] - walks_before,
        })
    return rows


def best_range(rows: Sequence[Mapping[str, Any]], metric: str = "miou") -> Mapping[str, Any]:
    """The row with the highest `metric` (NaN rows last; ties to the earlier row)."""
    def value(row):
        v = row[metric]
        return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else v

    return max(rows, key=value)
