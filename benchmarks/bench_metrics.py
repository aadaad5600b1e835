"""Throughput of ConfusionMatrix.update on 512x512 label maps (a script, not a test).

    python benchmarks/bench_metrics.py [--classes 21 172] [--repeats 50] [--device cpu|cuda]

Prints maps/s and Mpixel/s for the library's update (numpy uint8 ground truth + int64 torch
prediction, the shapes an evaluation run feeds it) beside two plain baselines: numpy bincount over
the valid pixels, and the same with torch boolean compaction. The update must stay far below the
cost of one segmentation (seconds).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch

from cliper_lib.eval.metrics import ConfusionMatrix


def numpy_baseline(gt: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    """The common recipe: drop invalid pixels, then one bincount."""
    g = gt.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = (g >= 0) & (g < c)
    return np.bincount(g[keep] * c + p[keep], minlength=c * c).reshape(c, c)


def torch_compaction(gt: torch.Tensor, pred: torch.Tensor, c: int) -> torch.Tensor:
    g, p = gt.reshape(-1).long(), pred.reshape(-1).long()
    keep = (g >= 0) & (g < c)
    return torch.bincount(g[keep] * c + p[keep], minlength=c * c).view(c, c)


def timeit(fn, repeats: int, rounds: int = 5) -> float:
    """Seconds per call: the best of `rounds` rounds
    (shared machines are noisy; the minimum is the cost)."""
    for _ in range(3):  # warm-up: first calls pay for page faults, allocator growth, CUDA context
        fn()
    best = float("inf")
    for _ in range(rounds):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(max(1, repeats // rounds)):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / max(1, repeats // rounds))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[21, 172])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cpu", help="where the prediction lives (cpu | cuda)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    pixels = args.size * args.size
    threads = torch.get_num_threads()
    print(f"{args.size}x{args.size} maps, {args.repeats} repeats, torch threads {threads}")
    print(f"{'classes':>8} {'method':<44} {'ms/map':>8} {'maps/s':>9} {'Mpix/s':>8}")
    for c in args.classes:
        gt = rng.integers(0, c, size=(args.size, args.size)).astype(
            np.uint8 if c < 255 else np.int64
        )
        gt[rng.random(gt.shape) < 0.05] = 255  # ~5% ignored boundary pixels, like VOC
        pred_np = rng.integers(0, c, size=(args.size, args.size)).astype(np.int64)
        pred_t = torch.from_numpy(pred_np).to(args.device)
        gt_t = torch.from_numpy(gt).to(args.device)
        cm = ConfusionMatrix(c, ignore_labels=(0, 255))

        # Same counts from every method (the ignored row 0 aside) before timing anything.
        reference = numpy_baseline(gt, pred_np, c)
        reference[0] = 0
        check = ConfusionMatrix(c, ignore_labels=(0, 255)).update(gt, pred_t)
        assert np.array_equal(check.matrix.numpy(), reference), (
            "update disagrees with the numpy baseline"
        )

        rows = [
            ("ConfusionMatrix.update (np gt, torch pred)", partial(cm.update, gt, pred_t)),
            ("ConfusionMatrix.update (torch, torch)", partial(cm.update, gt_t, pred_t)),
            ("numpy bincount with compaction", partial(numpy_baseline, gt, pred_np, c)),
            ("torch bincount with compaction", partial(torch_compaction, gt_t, pred_t, c)),
        ]
        for label, fn in rows:
            seconds = timeit(fn, args.repeats)
            rates = f"{1e3 * seconds:8.2f} {1 / seconds:9.1f} {pixels / seconds / 1e6:8.1f}"
            print(f"{c:>8} {label:<44} {rates}")


if __name__ == "__main__":
    main()
