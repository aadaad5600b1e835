"""Benchmark reports (notebook 05): the paper's table beside ours, per-class IoU, per-image scores
and examples.

`paper_table` builds the paper's result table (docs/method.md section 5) from the presets'
`paper_miou` / `paper_miou_no_fgc` fields, with rows of measured numbers added. `PerImageScores.add`
is handed to `evaluate` as its per-sample hook, so the one pass that fills the confusion matrix also
scores every image on its own and keeps the predictions of the best and worst few (memory stays
bounded on a whole split); `cliper_lib.suite.studies.examples.examples_figure` draws them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..config import BACKBONES, CLIPerConfig
from .benchmarks import BENCHMARK_ORDER
from .datasets import Sample
from .metrics import ConfusionMatrix

#: column titles of the paper's table, by benchmark name, in BENCHMARK_ORDER
DATASET_TITLES = {
    "voc21": "VOC21",
    "context60": "Context60",
    "coco_object": "Object",
    "voc20": "VOC20",
    "context59": "Context59",
    "coco_stuff": "Stuff",
    "ade20k": "ADE",
    "cityscapes": "City",
}
PAPER_ROW = "CLIPer (paper)"
PAPER_ROW_NO_FGC = "without FGC (paper)"
AVERAGE = "Avg."
RANK_KEYS = ("miou", "pacc")
#: how the per-image scores are named in titles
RANK_TITLES = {"miou": "mIoU", "pacc": "pixel accuracy"}

__all__ = [
    "DATASET_TITLES",
    "RANK_TITLES",
    "backbone_title",
    "short_name",
    "paper_table",
    "style_paper_table",
    "results_frame",
    "per_class_frame",
    "bars_to_draw",
    "image_scores",
    "ImageScore",
    "Example",
    "PerImageScores",
]


# --------------------------------------------------------------------------------------------------
# the paper's table
def backbone_title(folder: str) -> str:
    """'vit-b-16' -> 'ViT-B/16' (the paper's spelling); unknown folders are returned unchanged."""
    name = BACKBONES.get(folder)
    if name is None or not name.startswith("ViT-"):
        return folder
    family, size, patch = name.split("-")
    return f"{family}-{size}/{patch}"


def short_name(class_line: str) -> str:
    """A class line's display name: the text before its first comma ('person with clothes, people'
    -> 'person with clothes')."""
    return class_line.split(",")[0].strip()


def paper_table(
    backbones: Sequence[str] = ("vit-b-16", "vit-l-14"),
    measured: Mapping[str, float] | None = None,
    measured_label: str = "measured",
) -> pd.DataFrame:
    """The paper's mIoU table (%): rows (backbone, row), columns the 8 benchmarks and their average.

    For each backbone folder: the paper's CLIPer row and its row without FGC, read from the presets
    (`paper_miou`, `paper_miou_no_fgc`), then, when `measured` names presets of that backbone
    (`{"vit-b-16/voc21": 64.2}`), a `measured_label` row with those numbers (NaN elsewhere). A
    measured backbone missing from `backbones` is added. The average is taken only over rows that
    have all 8 sets.
    """
    measured = dict(measured or {})
    folders = list(backbones) + sorted({p.split("/")[0] for p in measured} - set(backbones))
    columns = [DATASET_TITLES[d] for d in BENCHMARK_ORDER]
    rows: dict[tuple[str, str], list[float]] = {}
    for folder in folders:
        title = backbone_title(folder)
        with_fgc, no_fgc, ours = [], [], []
        for dataset in BENCHMARK_ORDER:
            preset = f"{folder}/{dataset}"
            try:
                cfg = CLIPerConfig.from_preset(preset)
            except ValueError:
                # ConfigError: no preset of this backbone for this set (e.g. vit-h-14)
                cfg = None
            with_fgc.append(_number(cfg.paper_miou if cfg else None))
            no_fgc.append(_number(cfg.paper_miou_no_fgc if cfg else None))
            ours.append(_number(measured.pop(preset, None)))
        rows[(title, PAPER_ROW)] = with_fgc
        rows[(title, PAPER_ROW_NO_FGC)] = no_fgc
        if any(not math.isnan(v) for v in ours):
            rows[(title, measured_label)] = ours
    if measured:
        raise ValueError(
            f"measured presets {sorted(measured)} are not benchmark presets "
            f"({', '.join(BENCHMARK_ORDER)})"
        )
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["backbone", "row"])
    frame[AVERAGE] = frame[columns].mean(axis=1, skipna=False)  # NaN unless the row has all 8 sets
    return frame


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def style_paper_table(
    frame: pd.DataFrame, highlight: tuple[tuple[str, str], str] | None = None, caption: str = ""
) -> Any:
    """A pandas Styler of `paper_table`: one decimal, '–' for missing, the cell `((backbone, row),
    column)` highlighted."""
    styler = frame.style.format("{:.1f}", na_rep="–").set_caption(caption)
    if highlight is not None:
        (row, column) = highlight
        styler = styler.set_properties(
            subset=pd.IndexSlice[[row], [column]],
            **{"font-weight": "bold", "background-color": "#ffe9a8"},
        )
    return styler


def results_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per `evaluate.results_record`: metrics (%), the paper's numbers, the gap, and the
    speed; by preset."""
    rows = []
    for record in records:
        metrics, timings, paper = record["metrics"], record["timings"], record.get("paper_miou")
        miou = _number(metrics["mIoU"])
        rows.append(
            {
                "preset": record["preset"],
                "data set": record["dataset"],
                "profile": record["profile"],
                "images": record["num_images"],
                "mIoU": miou,
                "mAcc": _number(metrics["mAcc"]),
                "pAcc": _number(metrics["pAcc"]),
                "paper mIoU": _number(paper),
                "paper mIoU without FGC": _number(record.get("paper_miou_no_fgc")),
                "mIoU − paper": miou - _number(paper),
                "s / image": _number(timings["seconds_per_image"]),
                "images / s": _number(timings["images_per_second"]),
            }
        )
    return pd.DataFrame(rows).set_index("preset")


# --------------------------------------------------------------------------------------------------
# per-class IoU
def per_class_frame(metrics: Mapping[str, Any], class_names: Sequence[str]) -> pd.DataFrame:
    """One row per label of `ConfusionMatrix.compute()` output: id, name, iou and acc (%), pixel
    counts, present.

    `class_names[k]` names label k (background first). Rows are sorted by IoU, best first; labels
    absent from the ground truth (IoU NaN, excluded from the mean) come last.
    """
    n = len(metrics["iou"])
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for {n} labels")
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "name": [short_name(c) for c in class_names],
            "iou": 100.0 * np.asarray(metrics["iou"], dtype=float),
            "acc": 100.0 * np.asarray(metrics["acc"], dtype=float),
            "gt_pixels": np.asarray(metrics["gt_pixels"], dtype=np.int64),
            "pred_pixels": np.asarray(metrics["pred_pixels"], dtype=np.int64),
            "present": np.asarray(metrics["present"], dtype=bool),
        }
    )
    frame = frame.sort_values(
        ["present", "iou", "id"], ascending=[False, False, True], na_position="last"
    )
    return frame.reset_index(drop=True)


def bars_to_draw(frame: pd.DataFrame, max_bars: int) -> pd.DataFrame:
    """The present classes of `per_class_frame`, best first, with a `group` column for the plot's
    legend.

    With more than `max_bars` present classes only the best `max_bars // 2` and the worst rest are
    kept (groups "best classes" / "worst classes"); otherwise all are kept (group "IoU per class").
    """
    if max_bars < 2:
        raise ValueError(f"max_bars must be >= 2, got {max_bars}")
    present = frame[frame["present"]].sort_values(["iou", "id"], ascending=[False, True])
    if len(present) <= max_bars:
        return present.assign(group="IoU per class").reset_index(drop=True)
    best = present.head(max_bars // 2).assign(group="best classes")
    worst = present.tail(max_bars - max_bars // 2).assign(group="worst classes")
    return pd.concat([best, worst]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# per-image scores
def image_scores(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_labels: Iterable[int]
) -> tuple[float, float, int]:
    """(mIoU, pixel accuracy, classes) of one image: the split metric's conventions on one label-map
    pair.

    Pixels whose ground truth is ignored or outside [0, num_classes) are skipped; the mean runs over
    the classes present in this image's ground truth (a class only predicted lowers the IoU of the
    classes whose pixels it took, as in the split's metric). Both fractions; NaN when no pixel is
    scored.
    """
    gt, pred = (
        np.asarray(gt).astype(np.int64, copy=False),
        np.asarray(pred).astype(np.int64, copy=False),
    )
    if gt.size != pred.size:
        raise ValueError(f"ground truth has {gt.size} pixels, prediction {pred.size}")
    metrics = (
        ConfusionMatrix(num_classes, ignore_labels)
        .update(gt.reshape(-1), pred.reshape(-1))
        .compute()
    )
    return metrics["mIoU"], metrics["pAcc"], metrics["num_classes_present"]


@dataclass
class ImageScore:
    """The per-image scores of one evaluated sample (fractions; NaN when nothing was scored)."""

    index: int  # position in the data set
    name: str
    miou: float
    pacc: float
    num_classes: int  # classes in this image's (scored) ground truth


@dataclass
class Example:
    """One kept sample with its prediction, for the best/worst figure."""

    rank: str  # "best 1", "worst 2", ...
    score: ImageScore
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) ground truth
    pred: np.ndarray  # (H, W) prediction


class PerImageScores:
    """Scores every image an `evaluate` run segments; keeps the `keep` best and worst predictions.

        scorer = PerImageScores(dataset, num_classes, ignore_labels, keep=3)
        result = evaluate(segment, dataset, num_classes, ignore_labels, on_sample=scorer.add)
        scorer.frame(); scorer.examples()

    `evaluate` calls `add` with each sample it counted and the prediction it counted (any order, any
    shard, with prefetching threads). Images with nothing scored (NaN) are listed but not ranked.
    Ties rank the earlier sample first.
    """

    def __init__(
        self,
        dataset: Sequence[Sample],
        num_classes: int,
        ignore_labels: Iterable[int],
        keep: int = 3,
        rank_by: str = "miou",
    ) -> None:
        if rank_by not in RANK_KEYS:
            raise ValueError(f"rank_by={rank_by!r}: use one of {', '.join(RANK_KEYS)}")
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.dataset = dataset
        self.num_classes = int(num_classes)
        self.ignore_labels = tuple(int(v) for v in ignore_labels)
        self.keep = int(keep)
        self.rank_by = rank_by
        self.scores: list[ImageScore] = []
        self._lock = threading.Lock()
        self._best: list[tuple] = []  # min-heap: the `keep` highest scores
        self._worst: list[tuple] = []  # min-heap on -score: the `keep` lowest scores
        self._tiebreak = itertools.count()

    def add(self, index: int, sample: Sample, pred: np.ndarray) -> ImageScore:
        """Score one prediction against its sample and keep it if it ranks among the best or
        worst."""
        if sample.mask is None:
            raise ValueError(f"sample {sample.name!r} has no annotation to score against")
        pred = np.asarray(pred)
        miou, pacc, present = image_scores(sample.mask, pred, self.num_classes, self.ignore_labels)
        score = ImageScore(index, sample.name, miou, pacc, present)
        with self._lock:  # the hook may be called from more than one thread
            self._keep(score, sample, pred)
        return score

    def _keep(self, score: ImageScore, sample: Sample, pred: np.ndarray) -> None:
        index = score.index
        self.scores.append(score)
        key = getattr(score, self.rank_by)
        if self.keep and not math.isnan(key):
            # the kept maps stay small
            compact = pred.astype(np.uint8 if self.num_classes <= 256 else np.int32)
            entry = (score, sample.image, sample.mask, compact)
            tick = next(self._tiebreak)
            # Ties: the later sample is the first to leave either heap, so the earlier one ranks
            # first.
            self._push(self._best, (key, -index, tick, entry))
            self._push(self._worst, (-key, -index, tick, entry))

    def _push(self, heap: list, item: tuple) -> None:
        if len(heap) < self.keep:
            heapq.heappush(heap, item)
        else:
            heapq.heappushpop(heap, item)

    def frame(self) -> pd.DataFrame:
        """Every scored image: index, name, miou and pacc (%), classes; in data set order."""
        frame = pd.DataFrame(
            [vars(s) for s in self.scores], columns=["index", "name", "miou", "pacc", "num_classes"]
        )
        frame[["miou", "pacc"]] *= 100.0
        return frame.sort_values("index").reset_index(drop=True)

    def best(self) -> list[Example]:
        """The kept highest-scoring samples, best first."""
        ranked = sorted(self._best, key=lambda item: (-item[0], -item[1]))
        return [Example(f"best {k + 1}", *item[3]) for k, item in enumerate(ranked)]

    def worst(self) -> list[Example]:
        """The kept lowest-scoring samples, worst first."""
        ranked = sorted(self._worst, key=lambda item: (-item[0], -item[1]))
        return [Example(f"worst {k + 1}", *item[3]) for k, item in enumerate(ranked)]

    def examples(self) -> list[Example]:
        """Best then worst; a sample among both (fewer than 2·keep ranked images) appears once."""
        best = self.best()
        shown = {e.score.index for e in best}
        return best + [e for e in self.worst() if e.score.index not in shown]
