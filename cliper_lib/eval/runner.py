"""`cliper eval` without its argument parser: presets -> data sets (checked before any model work)
-> CLIPer -> results JSON and a markdown row beside the paper's number; under torchrun, one shard
per rank.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..config import (
    PRESET_DIR,
    CLIPerConfig,
    ConfigError,
    parse_field_overrides,
    with_field_options,
    with_precision,
)
from ..files import OutputPathError, TextDecodeError, atomic_write_text, check_output_file
from ..vocab import read_class_file
from ..weights.hub import WeightsMissingError
from ..weights.inventory import option_spelling, respelled
from ..weights.models import CLIPer, check_before_loading
from .batching import segment_batch
from .benchmarks import BENCHMARK_ORDER, DATASETS, load_benchmark
from .datasets import DatasetError, FolderDataset, Sample, class_file_path, class_names
from .loop import CheckpointError, EvalResult, evaluate, shard_checkpoint_path
from .records import (
    append_markdown_rows,
    format_percent,
    markdown_row,
    markdown_table,
    results_record,
)
from .synthetic import SyntheticDataset

#: the parsed `cliper eval` options (an argparse namespace, or any object with the same attributes:
#: preset, profile, device, overrides, dataset, data_root, mask_dir, limit, synthetic_size, out,
#: table, checkpoint, resume, checkpoint_every, all, backbone, no_progress); the parser itself is
#: the command line's.
Options = Any


def init_distributed(device: str | None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's env vars, initialising the process group if
    needed."""
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
    written: Path | None = None  # where the results went: `out`, a fallback, or None (printed)


def _run_key(cfg: CLIPerConfig, source: str, dataset: Sequence[Sample]) -> str:
    # Everything that changes the counts; not the device (a resumed run may land on another GPU) or
    # bookkeeping.
    values = {
        k: v
        for k, v in cfg.to_dict().items()
        if k not in ("device", "paper_miou", "paper_miou_no_fgc")
    }
    root = getattr(dataset, "root", None)
    values.update(
        source=source,
        root=None if root is None else str(Path(root).resolve()),
        synthetic_size=getattr(dataset, "size", None),
    )
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _build_dataset(cfg: CLIPerConfig, source: str, args: Options) -> Sequence[Sample]:
    if source == "synthetic":
        return SyntheticDataset(
            args.limit or 8, classes=cfg.classes, size=args.synthetic_size, seed=cfg.seed
        )
    if source == "folder":
        if not args.data_root:
            raise DatasetError(
                "--dataset folder needs --data-root IMAGE_FOLDER (and --mask-dir to score)"
            )
        dataset = FolderDataset(args.data_root, cfg.classes, args.mask_dir)
        if not dataset.has_masks:
            raise DatasetError("--dataset folder needs --mask-dir with label maps to be evaluated")
        return dataset
    if source not in DATASETS:
        raise DatasetError(
            f"unknown --dataset {source!r}; use synthetic, folder or one of {', '.join(DATASETS)}"
        )
    spec = DATASETS[source]
    if class_file_path(spec.class_file).resolve() != class_file_path(cfg.classes).resolve():
        raise ConfigError(
            f"data set {source!r} is labelled with class file {spec.class_file!r} "
            f"but the config uses {cfg.classes!r}; "
            f"pick the matching preset or --set classes={spec.class_file}"
        )
    return load_benchmark(source, args.data_root, limit=args.limit)


def _plan(args: Options) -> list[_Job]:
    """Configs and data sets of every preset asked for; every data problem is raised here, before
    any model."""
    overrides = with_precision(
        with_field_options(
            parse_field_overrides(getattr(args, "overrides", None)),
            {"profile": args.profile, "device": args.device},
        ),
        getattr(args, "precision", None),
    )
    if args.all:
        folder = PRESET_DIR / args.backbone
        presets = [
            f"{args.backbone}/{d}" for d in BENCHMARK_ORDER if (folder / f"{d}.yaml").exists()
        ]
        if not presets:
            raise ConfigError(f"no presets for backbone {args.backbone!r} in {PRESET_DIR}")
    else:
        presets = [args.preset]
    jobs: list[_Job] = []
    problems: list[str] = []
    out_dir = Path(args.out) if (args.all and args.out) else Path("outputs/eval")
    for preset in presets:
        cfg = CLIPerConfig.from_preset_given(preset, overrides)
        source = args.dataset or cfg.dataset
        try:
            dataset = _build_dataset(cfg, source, args)
        except DatasetError as error:
            problems.append(str(error))
            continue
        stem = str(cfg.preset or preset).replace("/", "__") + (
            "" if source == cfg.dataset else f"__{source}"
        )
        out = Path(args.out) if (args.out and not args.all) else out_dir / f"{stem}.json"
        checkpoint = None
        if args.checkpoint or args.resume:
            if args.checkpoint and not args.all:
                checkpoint = Path(args.checkpoint)
            else:
                checkpoint = (
                    Path(args.checkpoint) if args.checkpoint else out.parent
                ) / f"{out.stem}.ckpt.json"
        jobs.append(_Job(cfg, source, dataset, out, checkpoint))
    if problems:
        raise DatasetError("\n\n".join(problems))
    return jobs


def run_eval(args: Options, *, model_factory: Callable[[CLIPerConfig], Any] | None = None) -> int:
    """`cliper eval`: evaluate one preset (or --all of a backbone) and write results; returns an
    exit status.

    Under torchrun it joins the process group from the environment (and leaves it again if it
    created it). `model_factory(cfg)` builds the model (default `CLIPer.from_config`); tests inject
    a stub.
    """
    created = (
        dist.is_available()
        and not dist.is_initialized()
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
    )
    rank, world_size, local_rank = init_distributed(args.device)
    try:
        return _run_eval(args, model_factory or CLIPer.from_config, rank, world_size, local_rank)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _printer(rank: int) -> Callable[..., None]:
    """`say(message, err=False)`: print on rank 0 only, to stdout (stderr with `err`), flushed."""

    def say(message: str, err: bool = False) -> None:
        if rank == 0:
            print(message, file=sys.stderr if err else sys.stdout, flush=True)

    return say


class _JobFailed(Exception):
    """A job stopped on `error`, which is reported as `cliper eval: <error>`; exit with `status`."""

    def __init__(self, error: Exception, status: int):
        super().__init__(str(error))
        self.error, self.status = error, status


def _run_eval(
    args: Options,
    factory: Callable[[CLIPerConfig], Any],
    rank: int,
    world_size: int,
    local_rank: int,
) -> int:
    say = _printer(rank)
    try:
        jobs, batch_size = _prepare(args, rank, world_size, local_rank)
    except (
        ConfigError,
        DatasetError,
        CheckpointError,
        FileNotFoundError,
        OutputPathError,
        TextDecodeError,
    ) as error:
        say(f"cliper eval: {error}", err=True)
        return 2

    rows: list[str] = []
    for job in jobs:
        try:
            rows.append(_run_job(job, args, factory, batch_size, rank, world_size, say))
        except _JobFailed as failed:
            parser = getattr(args, "parser", None)  # the command line's: say its options
            message = (
                str(failed.error)
                if parser is None
                else respelled(failed.error, option_spelling(parser))
            )
            say(f"cliper eval: {message}", err=True)
            return failed.status
        # the job's model is gone with its frame: give its memory back before the next one
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    say("")
    if jobs and jobs[0].cfg.profile == "smoke":
        say("(profile smoke: tiny random models, so these numbers say nothing about the method)")
    say(markdown_table(rows).rstrip())
    status = 0 if rank != 0 or all(job.written == job.out for job in jobs) else 1
    if args.table and rank == 0:
        try:
            append_markdown_rows(args.table, rows)
        except OSError as error:  # the rows are printed above: nothing is lost
            say(f"cliper eval: cannot write --table {args.table}: {error.strerror or error}", True)
            status = 1
    return status


def _prepare(args: Options, rank: int, world_size: int, local_rank: int) -> tuple[list[_Job], int]:
    """The jobs and the batch size, after every check that can fail before the first model."""
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    batch_size = 1 if getattr(args, "batch_size", None) is None else args.batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    jobs = _plan(args)
    if world_size > 1:
        device = args.device or jobs[0].cfg.device
        if torch.cuda.is_available() and device in ("auto", "cuda"):
            jobs = [
                _Job(
                    j.cfg.replace(device=f"cuda:{local_rank}"),
                    j.source,
                    j.dataset,
                    j.out,
                    j.checkpoint,
                )
                for j in jobs
            ]
    _check_outputs(args, jobs, rank, world_size)
    for job in jobs:  # the device, the class file, the cache: before the first model loads
        check_before_loading(job.cfg)
    return jobs, batch_size


def _check_outputs(args: Options, jobs: list[_Job], rank: int, world_size: int) -> None:
    """No stale checkpoint unless resuming, and every output writable: before the first image, as a
    result that cannot be written would be lost at the end."""
    for job in jobs:
        if job.checkpoint is not None and not args.resume:
            existing = shard_checkpoint_path(job.checkpoint, rank, world_size)
            if existing.exists():
                raise CheckpointError(
                    f"checkpoint {existing} exists: pass --resume to continue it, or delete it"
                )
    for job in jobs:
        check_output_file(job.out, "--out" if args.out else "results file")
        if job.checkpoint is not None:
            check_output_file(job.checkpoint, "checkpoint")
    if args.table:
        check_output_file(args.table, "--table")


def _segmenters(model: Any, text: Any) -> tuple[Callable, Callable]:
    """(one image -> labels, a batch of images -> their labels) of `model` with class texts
    `text`."""

    def segmenter(image: np.ndarray) -> Any:
        return model.segment(image, given={"text": text}).labels

    def segment_many(images: list[np.ndarray]) -> list[Any]:
        # B images per CLIP walk, VAE encode and UNet pass
        return segment_batch(model, images, text)

    return segmenter, segment_many


def _run_job(
    job: _Job,
    args: Options,
    factory: Callable[[CLIPerConfig], Any],
    batch_size: int,
    rank: int,
    world_size: int,
    say: Callable[..., None],
) -> str:
    """Build the job's model, evaluate it and write its results; returns its markdown row.

    _JobFailed when the weights are missing (status 2), the data set fails (1) or the checkpoint
    does not fit (2).
    """
    cfg = job.cfg
    try:
        model = factory(cfg)
    except WeightsMissingError as error:
        raise _JobFailed(error, 2) from error
    class_file = read_class_file(cfg.classes)
    classes = list(class_file.names)
    text = model.encode_text(classes, list(class_file.background))  # once per data set
    segmenter, segment_many = _segmenters(model, text)
    num_classes = len(classes) + 1
    _announce(job, num_classes, world_size, say)
    try:
        result = evaluate(
            segmenter,
            job.dataset,
            num_classes,
            cfg.ignore_labels,
            limit=args.limit,
            checkpoint_path=job.checkpoint,
            checkpoint_every=args.checkpoint_every,
            rank=rank,
            world_size=world_size,
            progress=not args.no_progress,
            resume=args.resume,
            run_key=_run_key(cfg, job.source, job.dataset),
            batch_size=batch_size,
            segment_many=segment_many,
        )
    except (DatasetError, CheckpointError) as error:
        raise _JobFailed(error, 2 if isinstance(error, CheckpointError) else 1) from error
    _save_results(job, result, model, num_classes, rank, world_size, say)
    say(
        f"{cfg.preset}: mIoU {result.miou:.2f} (paper {format_percent(cfg.paper_miou)}), mAcc "
        f"{result.metrics['mAcc_pct']:.2f}, pAcc {result.metrics['pAcc_pct']:.2f} "
        f"on {result.num_images} images, {result.seconds_per_image:.3f} s/image -> "
        f"{job.written or 'printed above'}"
    )
    return markdown_row(cfg.preset, result.miou, cfg.paper_miou)


def _announce(job: _Job, num_classes: int, world_size: int, say: Callable[..., None]) -> None:
    """What is about to be evaluated, and a note when the config leaves the data set's protocol."""
    cfg = job.cfg
    spec = DATASETS.get(job.source)
    if spec is not None and sorted(set(cfg.ignore_labels)) != sorted(spec.ignore_labels):
        say(
            f"note: {job.source!r} is normally scored ignoring {list(spec.ignore_labels)}; "
            f"this config ignores {list(cfg.ignore_labels)} "
            f"(use the {job.source} preset for the paper's protocol)",
            err=True,
        )
    say(
        f"{cfg.preset}: {len(job.dataset)} samples of {job.source!r}, {num_classes} labels, "
        f"ignoring {list(cfg.ignore_labels)}, profile {cfg.profile}, {world_size} process(es)"
    )


def keep_written(path: Path, text: str, say: Callable[..., None]) -> Path | None:
    """Write `text` (a result) to `path`; when that fails (a full disk, a read-only folder) say so
    naming the file, try a file in the temporary folder, and as a last resort print it, so a
    finished result is never lost. Returns where it was written (None: printed only)."""
    try:
        return atomic_write_text(path, text)
    except OSError as error:
        say(f"cliper eval: cannot write {path}: {error.strerror or error}", err=True)
    fallback = Path(tempfile.gettempdir()) / f"cliper-{os.getpid()}-{path.name}"
    try:
        atomic_write_text(fallback, text)
    except OSError as error:
        why = error.strerror or error
        say(f"cliper eval: cannot write {fallback} either ({why}); the result follows", err=True)
        say(text.rstrip())
        return None
    say(f"cliper eval: the result is in {fallback} instead", err=True)
    return fallback


def _save_results(
    job: _Job,
    result: EvalResult,
    model: Any,
    num_classes: int,
    rank: int,
    world_size: int,
    say: Callable[..., None],
) -> None:
    """Warn about unexpected labels, write the results record (rank 0), drop the checkpoint."""
    cfg = job.cfg
    if result.metrics["unexpected_pixels"]:
        say(
            f"warning: {result.metrics['unexpected_pixels']} ground-truth pixels had labels "
            f"outside [0, {num_classes}) and were skipped; "
            f"do the annotations match {cfg.classes!r}?",
            err=True,
        )
    labels = getattr(job.dataset, "class_names", None) or class_names(cfg.classes)
    if rank == 0:
        record = results_record(
            result,
            cfg,
            dataset=job.source,
            labels=labels,
            model=model,
            data_root=getattr(job.dataset, "root", None),
        )
        job.written = keep_written(job.out, json.dumps(record, indent=2) + "\n", say)
    if job.checkpoint is not None:
        # The results file is the record now; a stale checkpoint would only block the next run.
        with contextlib.suppress(OSError):
            shard_checkpoint_path(job.checkpoint, rank, world_size).unlink()
