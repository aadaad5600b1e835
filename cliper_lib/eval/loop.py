"""The evaluation loop: a segmenter over a data set into one confusion matrix, resumable and sharded
across ranks.

`evaluate` is model-agnostic: it takes any callable image -> (H, W) label map. Rank r of W evaluates
samples r, r+W, ...; the int64 matrices are summed across ranks, so the result equals a
single-process run exactly. With a checkpoint path, the partial matrix and the names of the samples
it covers are written together, atomically, every N images (`Checkpoint`); a restarted run skips
those samples and ends with the same matrix. A per-sample hook (`on_sample`) lets reports score each
image on the same pass.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..files import atomic_write_text
from .datasets import DatasetError, Sample
from .metrics import ConfusionMatrix

# image (H, W, 3) uint8 -> label map (H, W), or an object with .labels
Segmenter = Callable[[np.ndarray], Any]
CHECKPOINT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint does not belong to this run (other data, classes, config or number of ranks)."""


def shard_checkpoint_path(path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The checkpoint file of one rank: `path` itself for one process,
    `<stem>.rank<r>-of-<W><suffix>` otherwise."""
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
        raise CheckpointError(
            f"{path} is not an evaluation checkpoint (version {CHECKPOINT_VERSION})"
        )
    return state


class Checkpoint:
    """One rank's resumable progress in one JSON file: the partial matrix, the samples it covers,
    the seconds.

    `load` refuses a file written by another run (ranks, settings, classes, samples); `save`
    replaces it atomically, so a kill at any moment leaves the previous state or the new one.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        rank: int = 0,
        world_size: int = 1,
        run_key: str | None = None,
    ):
        self.path = shard_checkpoint_path(path, rank, world_size)
        self.rank, self.world_size, self.run_key = rank, world_size, run_key

    def load(
        self, num_classes: int, ignore_labels: Iterable[int], shard_names: set[str]
    ) -> tuple[ConfusionMatrix, list[str], float]:
        """(matrix, names of the samples done, seconds spent) after checking the file belongs to
        this run."""
        path, state = self.path, load_checkpoint(self.path)
        expected = {"world_size": self.world_size, "rank": self.rank, "run_key": self.run_key}
        for key, value in expected.items():
            if state.get(key) != value:
                raise CheckpointError(
                    f"checkpoint {path} was written with {key}={state.get(key)!r}, "
                    f"this run has {value!r}; resume with the same settings, "
                    "or delete the checkpoint to start over"
                )
        try:
            confusion = ConfusionMatrix.from_state_dict(state["confusion"])
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(
                f"checkpoint {path} holds no valid confusion matrix: {error}"
            ) from None
        if (confusion.num_classes, confusion.ignore_labels) != (
            num_classes,
            tuple(sorted(set(ignore_labels))),
        ):
            raise CheckpointError(
                f"checkpoint {path} counts {confusion.num_classes} classes ignoring "
                f"{confusion.ignore_labels}; this run has {num_classes} ignoring "
                f"{sorted(set(ignore_labels))}"
            )
        done = list(state["done"])
        stray = set(done) - shard_names
        if stray:
            # A larger limit is fine (more to do); samples outside this shard mean another data set
            # or split.
            example = sorted(stray)[0]
            raise CheckpointError(
                f"checkpoint {path} covers {len(stray)} samples not in this run, e.g. {example!r}"
            )
        return confusion, done, float(state.get("seconds", 0.0))

    def save(self, confusion: ConfusionMatrix, done: Sequence[str], seconds: float) -> None:
        state = {
            "version": CHECKPOINT_VERSION,
            "rank": self.rank,
            "world_size": self.world_size,
            "run_key": self.run_key,
            "seconds": seconds,
            "confusion": confusion.state_dict(),
            "done": list(done),
        }
        atomic_write_text(self.path, json.dumps(state))


@dataclass
class EvalResult:
    """The summed confusion matrix of one evaluation, its metrics and timings."""

    confusion: ConfusionMatrix
    metrics: dict[str, Any]  # ConfusionMatrix.compute()
    num_images: int  # images scored, over all ranks (resumed ones included)
    resumed_images: int  # of those, taken from checkpoints
    seconds_total: float  # wall time of this call (on this rank)
    # device-time per image: summed over ranks and resumed runs, divided by images
    seconds_per_image: float
    world_size: int = 1
    names: list[str] = field(default_factory=list)  # samples this rank scored, in order

    @property
    def miou(self) -> float:
        """mIoU in percent (the paper's unit)."""
        return self.metrics["mIoU_pct"]


def _label_map(output: Any) -> torch.Tensor | np.ndarray:
    labels = getattr(output, "labels", output)  # a pipeline result, or the map itself
    if not isinstance(labels, (torch.Tensor, np.ndarray)):
        raise TypeError(
            f"the segmenter returned {type(output).__name__}; expected an (H, W) label map"
        )
    return labels


def _prefetch(
    dataset: Sequence[Sample], indices: Sequence[int], depth: int
) -> Iterator[tuple[int, Sample]]:
    """Yield (index, sample), decoding up to `depth` samples ahead in a thread while the model
    runs."""
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


def _segmented(
    samples: Iterable[tuple[int, Sample]],
    segmenter: Segmenter,
    segment_many: Callable[[list[np.ndarray]], Sequence[Any]] | None,
    batch_size: int,
) -> Iterator[tuple[int, Sample, Any]]:
    """(index, sample, segmenter output), segmenting `batch_size` samples at a time
    (one call per batch)."""
    batch: list[tuple[int, Sample]] = []
    for index, sample in samples:
        if sample.mask is None:
            raise DatasetError(f"sample {sample.name!r} has no annotation to score against")
        batch.append((index, sample))
        if len(batch) < batch_size:
            continue
        outputs = (
            segment_many([s.image for _, s in batch])
            if batch_size > 1
            else [segmenter(sample.image)]
        )
        yield from ((i, s, out) for (i, s), out in zip(batch, outputs, strict=True))
        batch = []
    if batch:
        outputs = segment_many([s.image for _, s in batch])
        yield from ((i, s, out) for (i, s), out in zip(batch, outputs, strict=True))


def _all_reduce_floats(values: list[float]) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    )
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    return buf.cpu().tolist()


def _check_arguments(
    rank: int,
    world_size: int,
    batch_size: int,
    segment_many: Callable[[list[np.ndarray]], Sequence[Any]] | None,
) -> None:
    if batch_size < 1 or (batch_size > 1 and segment_many is None):
        raise ValueError(
            f"batch_size={batch_size}: give batch_size >= 1, and segment_many when it is above 1"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")


@dataclass
class _Shard:
    """One rank's part of an evaluation while it runs: its samples, the matrix so far, the time
    spent.

    `count` adds a sample to the matrix and records its name; `sample_done` adds its time and saves
    the checkpoint every `checkpoint_every` samples; `save_unsaved` (on the way out, error or not)
    saves what is not saved yet, unless an error struck between the two halves of a record.
    """

    names: list[str]  # every sample name up to the limit, all ranks
    mine: list[int]  # the indices of this rank's samples
    todo: list[int]  # those not taken from the checkpoint
    confusion: ConfusionMatrix
    done: list[str]  # names of the samples counted, resumed ones first
    resumed: int
    seconds_before: float  # spent by the runs this one resumes
    checkpoint: Checkpoint | None
    checkpoint_every: int
    busy: float = 0.0  # seconds spent on samples in this call (load wait + segment + update)
    unsaved: int = 0
    consistent: bool = True  # False only between counting a sample and recording its name
    tick: float = 0.0  # when the last sample was done (or the loop started)

    @classmethod
    def open(
        cls,
        dataset: Sequence[Sample],
        num_classes: int,
        ignore_labels: Iterable[int],
        limit: int | None,
        rank: int,
        world_size: int,
        checkpoint: Checkpoint | None,
        checkpoint_every: int,
        resume: bool,
    ) -> _Shard:
        """This rank's samples of the first `limit`, resumed from `checkpoint` when asked and
        present."""
        total = len(dataset) if limit is None else min(int(limit), len(dataset))
        names = list(getattr(dataset, "names", None) or [str(i) for i in range(len(dataset))])
        names = names[:total]
        mine = list(range(rank, total, world_size))
        confusion = ConfusionMatrix(num_classes, ignore_labels)
        done: list[str] = []
        seconds_before = 0.0
        if checkpoint is not None and resume and checkpoint.path.exists():
            confusion, done, seconds_before = checkpoint.load(
                num_classes, ignore_labels, {names[i] for i in mine}
            )
        done_set = set(done)
        todo = [i for i in mine if names[i] not in done_set]
        return cls(
            names=names,
            mine=mine,
            todo=todo,
            confusion=confusion,
            done=done,
            resumed=len(done),
            seconds_before=seconds_before,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
        )

    def count(self, index: int, mask: np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        self.consistent = False
        self.confusion.update(mask, labels)
        self.done.append(self.names[index])
        self.consistent = True

    def sample_done(self) -> None:
        now = time.perf_counter()
        self.busy += now - self.tick
        self.tick = now
        self.unsaved += 1
        if self.checkpoint is not None and self.unsaved >= self.checkpoint_every:
            self.checkpoint.save(self.confusion, self.done, self.seconds_before + self.busy)
            self.unsaved = 0

    def save_unsaved(self) -> None:
        if self.checkpoint is not None and self.unsaved and self.consistent:
            self.checkpoint.save(self.confusion, self.done, self.seconds_before + self.busy)


def _checked_labels(sample: Sample, output: Any) -> torch.Tensor | np.ndarray:
    """The label map in `output`, which must have the shape of the sample's annotation."""
    labels = _label_map(output)
    if tuple(labels.shape) != tuple(sample.mask.shape):
        raise ValueError(
            f"sample {sample.name!r}: prediction {tuple(labels.shape)} and annotation "
            f"{tuple(sample.mask.shape)} differ in shape "
            "(the segmenter must answer at the image's size)"
        )
    return labels


def _progress_bar(dataset: Sequence[Sample], shard: _Shard, progress: bool, rank: int) -> tqdm:
    return tqdm(
        total=len(shard.mine),
        initial=shard.resumed,
        unit="img",
        desc=f"eval {getattr(dataset, 'name', '')}".strip(),
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )


def _score_shard(
    shard: _Shard,
    bar: tqdm,
    samples: Callable[[], Iterator[tuple[int, Sample, Any]]],
    on_sample: Callable[[int, Sample, np.ndarray], Any] | None,
) -> None:
    """Count every sample `samples()` yields into `shard`, ticking `bar`.

    Whatever ends the loop (the last sample, an error, Ctrl-C), the bar is closed and the samples
    counted since the last save are saved.
    """
    try:
        shard.tick = time.perf_counter()
        for index, sample, output in samples():
            labels = _checked_labels(sample, output)
            shard.count(index, sample.mask, labels)
            if on_sample is not None:
                on_sample(
                    index,
                    sample,
                    labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels,
                )
            shard.sample_done()
            if not bar.disable:
                bar.set_postfix(mIoU=f"{shard.confusion.compute()['mIoU_pct']:.2f}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
        # Keep what was finished before an error or Ctrl-C, unless it struck between the two
        # halves of a record.
        shard.save_unsaved()


def _reduced_result(shard: _Shard, seconds_total: float, world_size: int) -> EvalResult:
    """The result over all ranks (under torch.distributed), else this rank's own."""
    confusion = shard.confusion
    confusion.all_reduce()
    num_images, resumed_all, seconds_all = _all_reduce_floats(
        [len(shard.done), shard.resumed, shard.seconds_before + shard.busy]
    )
    num_images = int(round(num_images))
    return EvalResult(
        confusion=confusion,
        metrics=confusion.compute(),
        num_images=num_images,
        resumed_images=int(round(resumed_all)),
        seconds_total=seconds_total,
        seconds_per_image=seconds_all / num_images if num_images else float("nan"),
        world_size=world_size,
        names=shard.done,
    )


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
    on_sample: Callable[[int, Sample, np.ndarray], Any] | None = None,
    batch_size: int = 1,
    segment_many: Callable[[list[np.ndarray]], Sequence[Any]] | None = None,
) -> EvalResult:
    """Score `segmenter` on the first `limit` samples of `dataset`; this rank takes samples rank,
    rank+W, ...

    With `checkpoint_path`, progress is saved atomically every `checkpoint_every` images (per rank:
    `shard_checkpoint_path`) and, when `resume`, picked up from there. `run_key` (any string
    identifying the model and settings) is stored in the checkpoint and must match on resume. Under
    torch.distributed the matrices are all-reduced, so every rank returns the full result; without
    a process group each rank returns its own shard (`ConfusionMatrix.merge` them).
    `on_sample(index, sample, labels)` is called after each sample is counted (per-image scores,
    kept examples): a hook sees exactly what the metric saw. With `batch_size` > 1,
    `segment_many(images)` (one output per image) segments that many samples at a time.
    """
    _check_arguments(rank, world_size, batch_size, segment_many)
    checkpoint = (
        None if checkpoint_path is None else Checkpoint(checkpoint_path, rank, world_size, run_key)
    )
    shard = _Shard.open(
        dataset,
        num_classes,
        ignore_labels,
        limit,
        rank,
        world_size,
        checkpoint,
        checkpoint_every,
        resume,
    )
    bar = _progress_bar(dataset, shard, progress, rank)
    start = time.perf_counter()

    def samples() -> Iterator[tuple[int, Sample, Any]]:
        # Made by the loop, inside its try: when an error ends the loop, the loading thread is
        # closed before the checkpoint is saved.
        return _segmented(
            _prefetch(dataset, shard.todo, prefetch), segmenter, segment_many, batch_size
        )

    _score_shard(shard, bar, samples, on_sample)
    seconds_total = time.perf_counter() - start
    return _reduced_result(shard, seconds_total, world_size)
