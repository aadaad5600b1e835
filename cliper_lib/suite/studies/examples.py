"""Notebook 05's figure of an evaluation's best and worst images (`eval.report.PerImageScores`):
image, ground truth and prediction side by side, with each image's scores."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from ...eval.report import Example, short_name
from ..toolkit.viz import show_segmentation


def examples_figure(
    examples: Sequence[Example],
    class_names: Sequence[str],
    title: str,
    alpha: float = 0.5,
    panel: float = 3.0,
) -> Figure:
    """Rows of image | ground truth | prediction (overlays with a legend each), titled with the
    per-image scores.

    `class_names` are the foreground classes (label k = class_names[k - 1], 0 background) as `viz`
    expects. A bare Figure (not registered with pyplot), like the figures of `viz`.
    """
    if not examples:
        raise ValueError("no examples to draw")
    names = [short_name(c) for c in class_names]
    fig = Figure(figsize=(3 * panel + 4.2, panel * len(examples) + 0.8), layout="constrained")
    axes = fig.subplots(len(examples), 3, squeeze=False)
    for row, example in zip(axes, examples, strict=True):
        s = example.score
        row[0].imshow(example.image)
        row[0].grid(False)
        row[0].set(xticks=[], yticks=[], title=f"{example.rank}: {s.name}")
        row[0].set_ylabel(f"mIoU {100 * s.miou:.1f}%\npAcc {100 * s.pacc:.1f}%")
        row[0].set_xlabel(f"{example.image.shape[1]} × {example.image.shape[0]} px")
        show_segmentation(
            row[1], example.image, example.mask, names, title="ground truth", alpha=alpha
        )
        show_segmentation(
            row[2], example.image, example.pred, names, title="prediction", alpha=alpha
        )
    fig.suptitle(title)
    return fig
