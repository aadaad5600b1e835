"""Benchmark evaluation: a segmenter over a data set into one confusion matrix, resumable and sharded across ranks.

    python -m cliper_lib.evaluate --preset vit-b-16/voc21 --profile smoke --dataset synthetic --limit 4
    torchrun --nproc_per_node=4 -m cliper_lib.evaluate --preset vit-l-14/ade20k --data-root /data

`evaluate` is model-agnostic: it takes any callable image -> (H, W) label map. Rank r of W evaluates samples
r, r+W, ...; the int64 matrices are summed across ranks, so the result equals a single-process run exactly.
With a checkpoint path, the partial matrix and the names of the samples it covers are written together,
atomically, every N images; a restarted run skips those samples and ends with the same matrix.
`run_eval` is the `cliper eval` command: presets -> data sets (checked before any model work) -> CLIPer ->
results JSON and a markdown row beside the paper's number.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .config import PRESET_DIR, CLIPerConfig, ConfigError, parse_overrides
from .datasets import (
    BENCHMARK_ORDER,
    DATASETS,
    DatasetError,
    FolderDataset,
    Sample,
    SyntheticDataset,
    class_file_path,
    class_names,
    load_benchmark,
)
from . import provenance
from .files import atomic_write_text
from .metrics import ConfusionMatrix

Segmenter = Callable[[np.ndarray], Any]  # image (H, W, 3) uint8 -> label map (H, W), or an object with .labels
CHECKPOINT_VERSION = 1
MARKDOWN_HEADER = "| preset | our mIoU | paper mIoU |\n|---|---|---|"


class CheckpointError(RuntimeError):
    """A checkpoint does not belong to this run (other data, classes, config or number of ranks)."""


# ---------------------------------------------------------------------------------------------------------------
# atomic files


def shard_checkpoint_path(path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The checkpoint file of one rank: `path` itself for one process, `<stem>.rank<r>-of-<W><suffix>` otherwise."""
    path = Path(path)
    if world_size == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}-of-{world_size}{path.suffix}")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `evaluate`; CheckpointError if it is not one."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is not an evaluation checkpoint (version {CHECKPOINT_VERSION})")
    return state


# ---------------------------------------------------------------------------------------------------------------
# evaluation


@dataclass
class EvalResult:
    """The summed confusion matrix of one evaluation, its metrics and timings."""

    confusion: ConfusionMatrix
    metrics: dict[str, Any]  # ConfusionMatrix.compute()
    num_images: int  # images scored, over all ranks (resumed ones included)
    resumed_images: int  # of those, taken from checkpoints
    seconds_total: float  # wall time of this call (on this rank)
    seconds_per_image: float  # device-time per image: summed over ranks and resumed runs, divided by images
    world_size: int = 1
    names: list[str] = field(default_factory=list)  # samples this rank scored, in order

    @property
    def miou(self) -> float:
        """mIoU in percent (the paper's unit)."""
        return self.metrics["mIoU_pct"]


def _label_map(output: Any) -> torch.Tensor | np.ndarray:
    labels = getattr(output, "labels", output)  # a pipeline result, or the map itself
    if not isinstance(labels, (torch.Tensor, np.ndarray)):
        raise TypeError(f"the segmenter returned {type(output).__name__}; expected an (H, W) label map")
    return labels


def _prefetch(dataset: Sequence[Sample], indices: Sequence[int], depth: int) -> Iterator[tuple[int, Sample]]:
    """Yield (index, sample), decoding up to `depth` samples ahead in a thread while the model runs."""
    if depth <= 0:
        for i in indices:
            yield i, dataset[i]
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cliper-load") as pool:
        pending: deque = deque()
        todo = iter(indices)
        for i in todo:
            pending.append((i, pool.submit(dataset.__getitem__, i)))
            if len(pending) >= depth:
                break
        while pending:
            i, future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(dataset.__getitem__, nxt)))
            yield i, future.result()  # a decoding error surfaces here, naming its file


def _all_reduce_floats(values: list[float]) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    return buf.cpu().tolist()


def evaluate(
    segmenter: Segmenter,
    dataset: Sequence[Sample],
    num_classes: int,
    ignore_labels: Iterable[int],
    *,
    limit: int | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    resume: bool = True,
    run_key: str | None = None,
    prefetch: int = 2,
) -> EvalResult:
    """Score `segmenter` on the first `limit` samples of `dataset`; this rank takes samples rank, rank+W, ...

    With `checkpoint_path`, progress is saved atomically every `checkpoint_every` images (per rank:
    `shard_checkpoint_path`) and, when `resume`, picked up from there. `run_key` (any string identifying the
    model and settings) is stored in the checkpoint and must match on resume. Under torch.distributed the
    matrices are all-reduced, so every rank returns the full result; without a process group each rank returns
    its own shard (`ConfusionMatrix.merge` them).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    total = len(dataset) if limit is None else min(int(limit), len(dataset))
    names = list(getattr(dataset, "names", None) or [str(i) for i in range(len(dataset))])[:total]
    mine = list(range(rank, total, world_size))
    confusion = ConfusionMatrix(num_classes, ignore_labels)
    done: list[str] = []
    seconds_before = 0.0
    ckpt = None if checkpoint_path is None else shard_checkpoint_path(checkpoint_path, rank, world_size)
    if ckpt is not None and resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        expected = {"world_size": world_size, "rank": rank, "run_key": run_key}
        for key, value in expected.items():
            if state.get(key) != value:
                raise CheckpointError(
                    f"checkpoint {ckpt} was written with {key}={state.get(key)!r}, this run has {value!r}; "
                    "resume with the same settings, or delete the checkpoint to start over"
                )
        try:
            confusion = ConfusionMatrix.from_state_dict(state["confusion"])
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"checkpoint {ckpt} holds no valid confusion matrix: {error}") from None
        if (confusion.num_classes, confusion.ignore_labels) != (num_classes, tuple(sorted(set(ignore_labels)))):
            raise CheckpointError(
                f"checkpoint {ckpt} counts {confusion.num_classes} classes ignoring {confusion.ignore_labels}; "
                f"this run has {num_classes} ignoring {sorted(set(ignore_labels))}"
            )
        done = list(state["done"])
        stray = set(done) - {names[i] for i in mine}
        if stray:
            # A larger limit is fine (more to do); samples outside this shard mean another data set or split.
            example = sorted(stray)[0]
            raise CheckpointError(f"checkpoint {ckpt} covers {len(stray)} samples not in this run, e.g. {example!r}")
        seconds_before = float(state.get("seconds", 0.0))
    resumed = len(done)
    done_set = set(done)
    todo = [i for i in mine if names[i] not in done_set]

    def save() -> None:
        state = {
            "version": CHECKPOINT_VERSION,
            "rank": rank,
            "world_size": world_size,
            "run_key": run_key,
            "seconds": seconds_before + busy,
            "confusion": confusion.state_dict(),
            "done": done,
        }
        atomic_write_text(ckpt, json.dumps(state))

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(mine), initial=resumed, unit="img", desc=f"eval {getattr(dataset, 'name', '')}".strip(),
        disable=not progress or rank != 0, dynamic_ncols=True,
    )
    busy = 0.0  # seconds spent on samples in this call (load wait + segment + update)
    unsaved = 0
    consistent = True  # False only between counting a sample and recording its name
    start = time.perf_counter()
    try:
        tick = time.perf_counter()
        for index, sample in _prefetch(dataset, todo, prefetch):
            if sample.mask is None:
                raise DatasetError(f"sample {sample.name!r} has no annotation to score against")
            labels = _label_map(segmenter(sample.image))
            if tuple(labels.shape) != tuple(sample.mask.shape):
                raise ValueError(
                    f"sample {sample.name!r}: prediction {tuple(labels.shape)} and annotation "
                    f"{tuple(sample.mask.shape)} differ in shape (the segmenter must answer at the image's size)"
                )
            consistent = False
            confusion.update(sample.mask, labels)
            done.append(names[index])
            consistent = True
            now = time.perf_counter()
            busy += now - tick
            tick = now
            unsaved += 1
            if ckpt is not None and unsaved >= checkpoint_every:
                save()
                unsaved = 0
            if not bar.disable:
                bar.set_postfix(mIoU=f"{confusion.compute()['mIoU_pct']:.2f}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
        # Keep what was finished before an error or Ctrl-C, unless it struck between the two halves of a record.
        if ckpt is not None and unsaved and consistent:
            save()
    seconds_total = time.perf_counter() - start
    confusion.all_reduce()
    num_images, resumed_all, seconds_all = _all_reduce_floats([len(done), resumed, seconds_before + busy])
    num_images = int(round(num_images))
    return EvalResult(
        confusion=confusion,
        metrics=confusion.compute(),
        num_images=num_images,
        resumed_images=int(round(resumed_all)),
        seconds_total=seconds_total,
        seconds_per_image=seconds_all / num_images if num_images else float("nan"),
        world_size=world_size,
        names=done,
    )


# ---------------------------------------------------------------------------------------------------------------
# results


#: the packages whose versions go into a results file (key -> distribution name)
VERSIONED_PACKAGES = {"torch": "torch", "open_clip": "open_clip_torch", "diffusers": "diffusers",
                      "transformers": "transformers", "numpy": "numpy", "pillow": "pillow",
                      "cliper_suite": "cliper-suite"}


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide the numbers (None when one is not installed), and CUDA's."""
    return {**provenance.package_versions(VERSIONED_PACKAGES), "cuda": torch.version.cuda}


def git_commit() -> dict[str, Any] | None:
    """The commit of the repository this package lives in, and whether the tree had changes; None without git."""
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
    return {
        "clip": clip or (f"random-seed-{cfg.seed}" if smoke else f"{cfg.backbone}/{cfg.pretrained}"),
        "sd": None if cfg.refinement == "none" else sd or (f"random-seed-{cfg.seed}" if smoke else cfg.sd_repo),
    }


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
    """The JSON record of one evaluation: config, versions, weights, metrics, per-class IoU, timings, commit."""
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
            if result.seconds_total > 0 else None,
            "resumed_images": result.resumed_images,
            "world_size": result.world_size,
        },
        "seed": cfg.seed,
        "weights": weights_ids(model, cfg),
        "versions": package_versions(),
        "git": git_commit(),
        "config": cfg.to_dict(),
        "confusion_matrix": result.confusion.matrix.tolist(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_results(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write a results record as JSON, atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def _fmt(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.1f}"


def markdown_row(preset: str | None, miou_pct: float | None, paper_miou: float | None) -> str:
    """`| vit-b-16/voc21 | 66.4 | 66.5 |`: our mIoU next to the paper's (– when there is none)."""
    return f"| {preset or '?'} | {_fmt(miou_pct)} | {_fmt(paper_miou)} |"


def markdown_table(rows: Iterable[str]) -> str:
    """Rows from `markdown_row` under the table header."""
    return "\n".join([MARKDOWN_HEADER, *rows]) + "\n"


def append_markdown_rows(path: str | os.PathLike, rows: Sequence[str]) -> Path:
    """Append rows to a markdown table file, writing the header first when the file is new or empty."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    text = old if old.strip() else MARKDOWN_HEADER + "\n"
    if not text.endswith("\n"):
        text += "\n"
    atomic_write_text(path, text + "".join(row + "\n" for row in rows))
    return path


# ---------------------------------------------------------------------------------------------------------------
# command line


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The `cliper eval` options (also `python -m cliper_lib.evaluate`)."""
    parser.add_argument("--preset", default="vit-b-16/voc21", help="preset name (e.g. vit-l-14/ade20k) or YAML path")
    parser.add_argument("--profile", choices=["paper", "smoke"], default=None,
                        help="paper: real weights (preset default); smoke: tiny random models, works offline")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (under torchrun: per LOCAL_RANK)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override any config field, e.g. --set attention_thr=0.2 (repeatable)")
    parser.add_argument("--dataset", default=None,
                        help=f"synthetic | folder | a benchmark ({', '.join(DATASETS)}); default: the preset's")
    parser.add_argument("--data-root", default=None,
                        help="folder holding the benchmark folders (default $CLIPER_DATA, else ./datasets); "
                             "the image folder for --dataset folder")
    parser.add_argument("--mask-dir", default=None, help="--dataset folder: label-map PNGs named like the images")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    parser.add_argument("--synthetic-size", type=int, default=96, help="--dataset synthetic: image side in pixels")
    parser.add_argument("--out", default=None,
                        help="results JSON (default outputs/eval/<preset>.json); with --all, a folder")
    parser.add_argument("--table", default=None, help="append the markdown row(s) to this file (else printed only)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file (with --all, a folder) written every --checkpoint-every images")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint (default path: next to --out) if it exists")
    parser.add_argument("--checkpoint-every", type=int, default=50, metavar="N")
    parser.add_argument("--all", action="store_true", help="run the 8 presets of --backbone, render the full table")
    parser.add_argument("--backbone", default="vit-b-16", help="with --all: preset folder (vit-b-16 | vit-l-14)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def init_distributed(device: str | None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's env vars, initialising the process group if needed."""
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device or "auto") not in ("cpu", "mps")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world_size, local_rank


@dataclass
class _Job:
    """One preset to evaluate: its config, data, and where results and checkpoints go."""

    cfg: CLIPerConfig
    source: str  # synthetic | folder | benchmark name
    dataset: Sequence[Sample]
    out: Path
    checkpoint: Path | None


def _run_key(cfg: CLIPerConfig, source: str, dataset: Sequence[Sample]) -> str:
    # Everything that changes the counts; not the device (a resumed run may land on another GPU) or bookkeeping.
    values = {k: v for k, v in cfg.to_dict().items() if k not in ("device", "paper_miou", "paper_miou_no_fgc")}
    root = getattr(dataset, "root", None)
    values.update(source=source, root=None if root is None else str(Path(root).resolve()),
                  synthetic_size=getattr(dataset, "size", None))
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _build_dataset(cfg: CLIPerConfig, source: str, args: argparse.Namespace) -> Sequence[Sample]:
    if source == "synthetic":
        return SyntheticDataset(args.limit or 8, classes=cfg.classes, size=args.synthetic_size, seed=cfg.seed)
    if source == "folder":
        if not args.data_root:
            raise DatasetError("--dataset folder needs --data-root IMAGE_FOLDER (and --mask-dir to score)")
        dataset = FolderDataset(args.data_root, cfg.classes, args.mask_dir)
        if not dataset.has_masks:
            raise DatasetError("--dataset folder needs --mask-dir with label maps to be evaluated")
        return dataset
    if source not in DATASETS:
        raise DatasetError(f"unknown --dataset {source!r}; use synthetic, folder or one of {', '.join(DATASETS)}")
    spec = DATASETS[source]
    if class_file_path(spec.class_file).resolve() != class_file_path(cfg.classes).resolve():
        raise ConfigError(
            f"data set {source!r} is labelled with class file {spec.class_file!r} but the config uses "
            f"{cfg.classes!r}; pick the matching preset or --set classes={spec.class_file}"
        )
    return load_benchmark(source, args.data_root, limit=args.limit)


def _plan(args: argparse.Namespace) -> list[_Job]:
    """Configs and data sets of every preset asked for; every data problem is raised here, before any model."""
    overrides = parse_overrides(getattr(args, "overrides", None))
    overrides.update({k: v for k, v in (("profile", args.profile), ("device", args.device)) if v is not None})
    if args.all:
        folder = PRESET_DIR / args.backbone
        presets = [f"{args.backbone}/{d}" for d in BENCHMARK_ORDER if (folder / f"{d}.yaml").exists()]
        if not presets:
            raise ConfigError(f"no presets for backbone {args.backbone!r} in {PRESET_DIR}")
    else:
        presets = [args.preset]
    jobs: list[_Job] = []
    problems: list[str] = []
    out_dir = Path(args.out) if (args.all and args.out) else Path("outputs/eval")
    for preset in presets:
        cfg = CLIPerConfig.from_preset(preset, **overrides)
        source = args.dataset or cfg.dataset
        try:
            dataset = _build_dataset(cfg, source, args)
        except DatasetError as error:
            problems.append(str(error))
            continue
        stem = str(cfg.preset or preset).replace("/", "__") + ("" if source == cfg.dataset else f"__{source}")
        out = Path(args.out) if (args.out and not args.all) else out_dir / f"{stem}.json"
        checkpoint = None
        if args.checkpoint or args.resume:
            if args.checkpoint and not args.all:
                checkpoint = Path(args.checkpoint)
            else:
                checkpoint = (Path(args.checkpoint) if args.checkpoint else out.parent) / f"{out.stem}.ckpt.json"
        jobs.append(_Job(cfg, source, dataset, out, checkpoint))
    if problems:
        raise DatasetError("\n\n".join(problems))
    return jobs


def _default_model_factory(cfg: CLIPerConfig) -> Any:
    from .pipeline import CLIPer  # heavy: imported only when a model is needed

    return CLIPer.from_config(cfg)


def _class_list(cfg: CLIPerConfig) -> tuple[list[str], list[str]]:
    from .text import read_class_file

    parsed = read_class_file(class_file_path(cfg.classes))
    names, background = (parsed.names, parsed.background) if hasattr(parsed, "names") else parsed
    return list(names), list(background)


def run_eval(args: argparse.Namespace, *, model_factory: Callable[[CLIPerConfig], Any] | None = None) -> int:
    """`cliper eval`: evaluate one preset (or --all of a backbone) and write results; returns an exit status.

    Under torchrun it joins the process group from the environment (and leaves it again if it created it).
    `model_factory(cfg)` builds the model (default `CLIPer.from_config`); tests inject a stub.
    """
    import torch.distributed as dist

    created = dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world_size, local_rank = init_distributed(args.device)
    try:
        return _run_eval(args, model_factory or _default_model_factory, rank, world_size, local_rank)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _run_eval(args: argparse.Namespace, factory: Callable[[CLIPerConfig], Any], rank: int, world_size: int,
              local_rank: int) -> int:
    from .models import WeightsMissingError

    def say(message: str, err: bool = False) -> None:
        if rank == 0:
            print(message, file=sys.stderr if err else sys.stdout, flush=True)

    try:
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {args.limit}")
        jobs = _plan(args)
        if world_size > 1:
            device = args.device or jobs[0].cfg.device
            if torch.cuda.is_available() and device in ("auto", "cuda"):
                jobs = [
                    _Job(j.cfg.replace(device=f"cuda:{local_rank}"), j.source, j.dataset, j.out, j.checkpoint)
                    for j in jobs
                ]
        for job in jobs:
            if job.checkpoint is not None and not args.resume:
                existing = shard_checkpoint_path(job.checkpoint, rank, world_size)
                if existing.exists():
                    raise CheckpointError(f"checkpoint {existing} exists: pass --resume to continue it, or delete it")
    except (ConfigError, DatasetError, CheckpointError) as error:
        say(f"cliper eval: {error}", err=True)
        return 2

    rows: list[str] = []
    for job in jobs:
        cfg = job.cfg
        try:
            model = factory(cfg)
        except WeightsMissingError as error:
            say(f"cliper eval: {error}", err=True)
            return 2
        classes, background = _class_list(cfg)
        text = model.encode_text(classes, background)  # once per data set

        def segmenter(image: np.ndarray, model: Any = model, text: Any = text) -> Any:
            return model.segment(image, text=text).labels

        num_classes = len(classes) + 1
        spec = DATASETS.get(job.source)
        if spec is not None and sorted(set(cfg.ignore_labels)) != sorted(spec.ignore_labels):
            say(f"note: {job.source!r} is normally scored ignoring {list(spec.ignore_labels)}; this config ignores "
                f"{list(cfg.ignore_labels)} (use the {job.source} preset for the paper's protocol)", err=True)
        say(f"{cfg.preset}: {len(job.dataset)} samples of {job.source!r}, {num_classes} labels, "
            f"ignoring {list(cfg.ignore_labels)}, profile {cfg.profile}, {world_size} process(es)")
        try:
            result = evaluate(
                segmenter, job.dataset, num_classes, cfg.ignore_labels, limit=args.limit,
                checkpoint_path=job.checkpoint, checkpoint_every=args.checkpoint_every, rank=rank,
                world_size=world_size, progress=not args.no_progress, resume=args.resume,
                run_key=_run_key(cfg, job.source, job.dataset),
            )
        except (DatasetError, CheckpointError) as error:
            say(f"cliper eval: {error}", err=True)
            return 2 if isinstance(error, CheckpointError) else 1
        if result.metrics["unexpected_pixels"]:
            say(f"warning: {result.metrics['unexpected_pixels']} ground-truth pixels had labels outside "
                f"[0, {num_classes}) and were skipped; do the annotations match {cfg.classes!r}?", err=True)
        labels = getattr(job.dataset, "class_names", None) or class_names(cfg.classes)
        if rank == 0:
            record = results_record(result, cfg, dataset=job.source, labels=labels, model=model,
                                    data_root=getattr(job.dataset, "root", None))
            write_results(job.out, record)
        if job.checkpoint is not None:
            # The results file is the record now; a stale checkpoint would only block the next run.
            with contextlib.suppress(OSError):
                shard_checkpoint_path(job.checkpoint, rank, world_size).unlink()
        row = markdown_row(cfg.preset, result.miou, cfg.paper_miou)
        rows.append(row)
        say(f"{cfg.preset}: mIoU {result.miou:.2f} (paper {_fmt(cfg.paper_miou)}), mAcc "
            f"{result.metrics['mAcc_pct']:.2f}, pAcc {result.metrics['pAcc_pct']:.2f} on {result.num_images} "
            f"images, {result.seconds_per_image:.3f} s/image -> {job.out}")
        del model, text, segmenter
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    say("")
    if jobs and jobs[0].cfg.profile == "smoke":
        say("(profile smoke: tiny random models, so these numbers say nothing about the method)")
    say(markdown_table(rows).rstrip())
    if args.table and rank == 0:
        append_markdown_rows(args.table, rows)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cliper_lib.evaluate`: the same as `cliper eval`."""
    parser = argparse.ArgumentParser(prog="python -m cliper_lib.evaluate", description=__doc__.splitlines()[0])
    add_eval_arguments(parser)
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
