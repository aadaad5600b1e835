"""Streaming confusion matrix and the authors' segmentation metrics (mIoU, mAcc, pAcc).

Conventions (docs/method.md 3.12): a pixel is skipped when its ground truth is in `ignore_labels` or
outside [0, num_classes); every class mean (mIoU, mAcc) runs over the classes that have ground-truth
pixels in the whole split, so a class that is only ever predicted (never present) does not pull the
mean down. Counts are int64, so sums over shards, checkpoints and ranks are exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))  # shares memory, no copy
    raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")


class ConfusionMatrix:
    """A (num_classes x num_classes) int64 count of (ground truth row, prediction column) pixel
    pairs."""

    def __init__(self, num_classes: int, ignore_labels: Iterable[int] = (255,)) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_labels = tuple(sorted({int(v) for v in ignore_labels}))
        # (gt, pred)
        self.matrix = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64)
        # Pixels whose gt is outside [0, num_classes) and not an ignore label: skipped like the
        # authors do, but counted, since a non-zero count usually means the class file and the
        # annotations disagree.
        self.unexpected_pixels = 0
        # Ignore labels inside [0, C) are dropped by zeroing their rows after each update: the same
        # as skipping those pixels, without a per-pixel membership test.
        self._ignored_rows = torch.tensor(
            [v for v in self.ignore_labels if 0 <= v < self.num_classes], dtype=torch.long
        )
        self._ignore_values = torch.tensor(self.ignore_labels, dtype=torch.int64)

    # ------------------------------------------------------------------------------------------
    def update(self, gt: ArrayLike, pred: ArrayLike) -> ConfusionMatrix:
        """Add one label-map pair (same shape; numpy or torch, any integer dtype, any device)."""
        gt_t, pred_t = _as_tensor(gt), _as_tensor(pred)
        if gt_t.shape != pred_t.shape:
            raise ValueError(
                f"ground truth {tuple(gt_t.shape)} and prediction {tuple(pred_t.shape)} "
                "differ in shape"
            )
        if gt_t.is_floating_point() or pred_t.is_floating_point():
            raise TypeError("label maps must hold integers (got a floating point map)")
        if gt_t.numel() == 0:
            return self
        c = self.num_classes
        if pred_t.device.type == "cpu" and gt_t.device.type == "cpu":
            counts, outside = self._counts_numpy(gt_t.numpy(), pred_t.numpy())
        else:
            counts, outside = self._counts_torch(gt_t, pred_t)
        self.matrix += counts[: c * c].view(c, c)  # (gt, pred)
        if len(self._ignored_rows):
            self.matrix[self._ignored_rows] = 0
        if outside is not None:
            self.unexpected_pixels += int((~torch.isin(outside, self._ignore_values)).sum().item())
        return self

    def _counts_numpy(
        self, gt: np.ndarray, pred: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # numpy's bincount is ~2-4x faster than torch's on CPU for one 512x512 map
        # (benchmarks/bench_metrics.py).
        c = self.num_classes
        g = gt.reshape(-1).astype(np.int64, copy=False)
        p = pred.reshape(-1).astype(np.int64, copy=False)
        lo, hi = int(p.min()), int(p.max())
        if lo < 0 or hi >= c:
            raise ValueError(f"prediction labels must lie in [0, {c}); got values in [{lo}, {hi}]")
        # one comparison: negatives wrap around to huge unsigned values
        valid = g.view(np.uint64) < c
        # Invalid pixels go to one extra bin past the matrix instead of being compacted out (faster
        # than g[valid]).
        index = np.where(valid, g * c + p, c * c)
        counts = np.bincount(index, minlength=c * c + 1)
        outside = None if counts[c * c] == 0 else torch.from_numpy(g[~valid])
        return torch.from_numpy(counts), outside

    def _counts_torch(
        self, gt: torch.Tensor, pred: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # On an accelerator: count where the prediction lives, move only the C*C counts back.
        c = self.num_classes
        device = pred.device if pred.device.type != "cpu" else gt.device
        g = gt.to(device=device, dtype=torch.int64).reshape(-1)
        p = pred.to(device=device, dtype=torch.int64).reshape(-1)
        lo, hi = (int(v) for v in torch.aminmax(p))
        if lo < 0 or hi >= c:
            raise ValueError(f"prediction labels must lie in [0, {c}); got values in [{lo}, {hi}]")
        valid = (g >= 0) & (g < c)
        counts = torch.bincount(torch.where(valid, g * c + p, c * c), minlength=c * c + 1).cpu()
        outside = None if counts[c * c] == 0 else g[~valid].cpu()
        return counts, outside

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix with the same classes and ignore labels into this one (in place)."""
        if (other.num_classes, other.ignore_labels) != (self.num_classes, self.ignore_labels):
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix ignoring {other.ignore_labels} "
                f"into a {self.num_classes}-class one ignoring {self.ignore_labels}"
            )
        self.matrix += other.matrix
        self.unexpected_pixels += other.unexpected_pixels
        return self

    def all_reduce(self, group: Any = None) -> ConfusionMatrix:
        """Sum the counts of every torch.distributed rank into each rank (in place); no-op when not
        initialised.

        Call it once per evaluation: a second call would add the already summed counts again.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors. int64 keeps the sum exact.
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend(group) == "nccl"
            else "cpu"
        )
        flat = torch.cat(
            [self.matrix.reshape(-1), torch.tensor([self.unexpected_pixels], dtype=torch.int64)]
        )
        flat = flat.to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat = flat.cpu()
        self.matrix = flat[:-1].view(self.num_classes, self.num_classes).clone()
        self.unexpected_pixels = int(flat[-1].item())
        return self

    def reset(self) -> None:
        """Zero all counts."""
        self.matrix.zero_()
        self.unexpected_pixels = 0

    def copy(self) -> ConfusionMatrix:
        """An independent copy."""
        out = ConfusionMatrix(self.num_classes, self.ignore_labels)
        return out.merge(self)

    # ------------------------------------------------------------------------------------------
    def compute(self) -> dict[str, Any]:
        """mIoU, mAcc, pAcc (fractions and percentages) and per-class IoU/accuracy (NaN for absent
        classes)."""
        m = self.matrix.to(torch.float64)
        tp = torch.diagonal(m)
        gt_pixels = m.sum(dim=1)
        pred_pixels = m.sum(dim=0)
        union = gt_pixels + pred_pixels - tp
        present = gt_pixels > 0  # classes with ground truth somewhere in the split
        nan = torch.full_like(tp, math.nan)
        iou = torch.where(present, tp / union.clamp(min=1), nan)
        acc = torch.where(present, tp / gt_pixels.clamp(min=1), nan)
        total = float(gt_pixels.sum())
        miou = float(iou[present].mean()) if present.any() else math.nan
        macc = float(acc[present].mean()) if present.any() else math.nan
        pacc = float(tp.sum()) / total if total else math.nan
        return {
            "mIoU": miou,
            "mAcc": macc,
            "pAcc": pacc,
            "mIoU_pct": 100.0 * miou,
            "mAcc_pct": 100.0 * macc,
            "pAcc_pct": 100.0 * pacc,
            "iou": iou.tolist(),
            "acc": acc.tolist(),
            "present": present.tolist(),
            "gt_pixels": self.matrix.sum(dim=1).tolist(),
            "pred_pixels": self.matrix.sum(dim=0).tolist(),
            "num_pixels": int(self.matrix.sum()),
            "num_classes_present": int(present.sum()),
            "unexpected_pixels": self.unexpected_pixels,
        }

    def miou(self) -> float:
        """The mean IoU over present classes as a fraction (NaN before any pixel)."""
        return self.compute()["mIoU"]

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot (exact integers)."""
        return {
            "num_classes": self.num_classes,
            "ignore_labels": list(self.ignore_labels),
            "matrix": self.matrix.tolist(),
            "unexpected_pixels": self.unexpected_pixels,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ConfusionMatrix:
        """Rebuild a matrix from `state_dict()` output."""
        out = cls(int(state["num_classes"]), state["ignore_labels"])
        matrix = torch.tensor(state["matrix"], dtype=torch.int64)
        if matrix.shape != out.matrix.shape:
            raise ValueError(
                f"saved matrix has shape {tuple(matrix.shape)}, expected {tuple(out.matrix.shape)}"
            )
        out.matrix = matrix
        out.unexpected_pixels = int(state.get("unexpected_pixels", 0))
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        return (
            self.num_classes == other.num_classes
            and self.ignore_labels == other.ignore_labels
            and torch.equal(self.matrix, other.matrix)
            and self.unexpected_pixels == other.unexpected_pixels
        )

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_labels={self.ignore_labels}, "
            f"pixels={int(self.matrix.sum())})"
        )
