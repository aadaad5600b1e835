"""Result records of an evaluation: the JSON file (config, versions, weights, metrics, timings,
commit) and the markdown rows that put our mIoU beside the paper's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import provenance
from ..config import SD_REFINEMENTS, VFM_MODELS, CLIPerConfig
from ..files import atomic_write_text
from ..weights.vfm import vfms_used
from .loop import EvalResult

MARKDOWN_HEADER = "| preset | our mIoU | paper mIoU |\n|---|---|---|"


def git_commit() -> dict[str, Any] | None:
    """The commit of the repository this package lives in, and whether the tree had changes; None
    without git."""
    state = provenance.git_state(untracked_files=True)
    return state if state["commit"] else None


def weights_ids(model: Any, cfg: CLIPerConfig) -> dict[str, Any]:
    """Where the weights came from: what the model reports, else what the config asked for."""
    reported = getattr(model, "weights_ids", None)
    if callable(reported):
        reported = reported()
    if isinstance(reported, dict):
        return dict(reported)
    clip = getattr(getattr(model, "clip", None), "weights_id", None)
    sd = getattr(getattr(model, "sd", None), "weights_id", None)
    smoke = cfg.profile == "smoke"
    vfms = vfms_used(cfg)
    ids = {
        "clip": clip
        or (f"random-seed-{cfg.seed}" if smoke else f"{cfg.backbone}/{cfg.pretrained}"),
        "sd": None
        if cfg.refinement not in SD_REFINEMENTS
        else sd or (f"random-seed-{cfg.seed}" if smoke else cfg.sd_repo),
    }
    # DINO / DINOv2 (proxy attention, VFM refinement): hub repo ids, or the smoke models' seed
    if vfms:
        ids["vfm"] = {
            name: f"random-seed-{cfg.seed}" if smoke else VFM_MODELS[name] for name in vfms
        }
    return ids


def _finite_or_none(value: float) -> float | None:
    return None if value != value else float(value)  # NaN is not valid JSON


def results_record(
    result: EvalResult,
    cfg: CLIPerConfig,
    *,
    dataset: str,
    labels: Sequence[str],
    model: Any = None,
    data_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The JSON record of one evaluation: config, versions, weights, metrics, per-class IoU,
    timings, commit."""
    m = result.metrics
    per_class = [
        {
            "id": k,
            "name": labels[k] if k < len(labels) else str(k),
            "iou": _finite_or_none(100.0 * m["iou"][k]),
            "acc": _finite_or_none(100.0 * m["acc"][k]),
            "gt_pixels": m["gt_pixels"][k],
            "pred_pixels": m["pred_pixels"][k],
        }
        for k in range(result.confusion.num_classes)
    ]
    return {
        "preset": cfg.preset,
        "dataset": dataset,
        "data_root": None if data_root is None else str(data_root),
        "profile": cfg.profile,
        "metrics": {
            "mIoU": _finite_or_none(m["mIoU_pct"]),
            "mAcc": _finite_or_none(m["mAcc_pct"]),
            "pAcc": _finite_or_none(m["pAcc_pct"]),
            "unit": "percent",
            "num_classes_present": m["num_classes_present"],
            "num_pixels": m["num_pixels"],
            "unexpected_pixels": m["unexpected_pixels"],
        },
        "paper_miou": cfg.paper_miou,
        "paper_miou_no_fgc": cfg.paper_miou_no_fgc,
        "per_class": per_class,
        "num_images": result.num_images,
        "timings": {
            "seconds_total": result.seconds_total,
            "seconds_per_image": _finite_or_none(result.seconds_per_image),
            "images_per_second": (result.num_images - result.resumed_images) / result.seconds_total
            if result.seconds_total > 0
            else None,
            "resumed_images": result.resumed_images,
            "world_size": result.world_size,
        },
        "seed": cfg.seed,
        "weights": weights_ids(model, cfg),
        "versions": provenance.package_versions(),
        "git": git_commit(),
        "config": cfg.to_dict(),
        "confusion_matrix": result.confusion.matrix.tolist(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_results(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write a results record as JSON, atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def format_percent(value: float | None) -> str:
    """A percentage with one decimal, or "–" for none (None or NaN), as in the markdown rows."""
    return "–" if value is None or value != value else f"{value:.1f}"


def markdown_row(preset: str | None, miou_pct: float | None, paper_miou: float | None) -> str:
    """`| vit-b-16/voc21 | 66.4 | 66.5 |`: our mIoU next to the paper's (– when there is none)."""
    return f"| {preset or '?'} | {format_percent(miou_pct)} | {format_percent(paper_miou)} |"


def markdown_table(rows: Iterable[str]) -> str:
    """Rows from `markdown_row` under the table header."""
    return "\n".join([MARKDOWN_HEADER, *rows]) + "\n"


def append_markdown_rows(path: str | os.PathLike, rows: Sequence[str]) -> Path:
    """Append rows to a markdown table file, writing the header first when the file is new or
    empty."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    text = old if old.strip() else MARKDOWN_HEADER + "\n"
    if not text.endswith("\n"):
        text += "\n"
    atomic_write_text(path, text + "".join(row + "\n" for row in rows))
    return path
