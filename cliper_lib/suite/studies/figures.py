"""The notebooks' figures that are more than one call: each takes the table or tensors a notebook
computed and returns a `matplotlib.figure.Figure` (not registered with pyplot, so it displays once
as a cell's last expression and works headless). Each docstring names the notebook using it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..toolkit.viz import heatmap_grid, mark_patch, show_segmentation


def _figure(ncols: int, size: tuple[float, float], title: str) -> tuple[Figure, np.ndarray]:
    """A titled figure with one row of `ncols` axes."""
    fig = Figure(figsize=size, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, ncols, squeeze=False)).reshape(-1)
    fig.suptitle(title)
    return fig, axes


def marked_heatmaps(
    maps: Any,
    titles: Sequence[str],
    image: np.ndarray,
    queries: Sequence[tuple[int, int]],
    grids: Sequence[tuple[int, int]],
    **options: Any,
) -> Figure:
    """Notebooks 01-04: `heatmap_grid` over the image, panel k marking query patch queries[k] of
    the grid grids[k] with a cyan square (one query or grid for all panels is repeated)."""
    fig = heatmap_grid(maps, titles, image=image, **({"cmap": "inferno"} | options))
    count = len(titles)
    queries = list(queries) * (count // len(queries))
    grids = list(grids) * (count // len(grids))
    for ax, query, grid in zip(fig.axes[:count], queries, grids, strict=True):
        mark_patch(ax, query, grid, image.shape[:2])  # panels come first, colour bars after
    return fig


# --- notebook 01: locality per block --------------------------------------------------------------
def locality_curves(
    table: pd.DataFrame, per_block: pd.DataFrame, references: Mapping[str, float], title: str
) -> Figure:
    """Notebook 01: distance, entropy and CLS attention per block; dots are heads, the line their
    mean; `references` maps a column to its uniform-attention value (drawn dashed)."""
    measures = {
        "mean_attention_distance": "mean attention distance (px)",
        "attention_entropy": "attention entropy (nats)",
        "cls_attention": "attention paid to CLS",
    }
    fig, axes = _figure(3, (15, 4.2), title)
    for ax, (column, label) in zip(axes, measures.items(), strict=True):
        sns.scatterplot(
            data=table, x="layer", y=column, hue="head", palette="viridis", ax=ax, legend=False
        )
        sns.lineplot(data=per_block, x="layer", y=column, ax=ax, color="black", marker="o")
        if column in references:
            ax.axhline(references[column], color="tab:red", ls="--", label="uniform attention")
            ax.legend(loc="best", fontsize="small")
        ax.set(xlabel="block", ylabel=label, title=label, xticks=per_block["layer"])
    return fig


def similarity_curves(per_block: pd.DataFrame, title: str) -> Figure:
    """Notebook 01: mean cosine similarity of the block inputs' patch tokens, 4-neighbours against
    all pairs."""
    names = {"neighbour_similarity": "4-neighbours", "token_similarity": "all pairs"}
    long = per_block[["layer", *names]].melt(id_vars="layer", var_name="pairs", value_name="cosine")
    long["pairs"] = long["pairs"].map(names)
    fig, (ax,) = _figure(1, (6.5, 4.2), title)
    sns.lineplot(data=long, x="layer", y="cosine", hue="pairs", marker="o", ax=ax)
    ax.set(xlabel="block i (input tokens X_i)", ylabel="mean cosine similarity")
    ax.set_xticks(per_block["layer"])
    return fig


# --- notebook 02: Sinkhorn rounds, crops, label maps ----------------------------------------------
def sinkhorn_rounds_table(summed: torch.Tensor, num_outputs: int) -> pd.DataFrame:
    """Notebook 02: per output k, how far Ă_k = (R∘C)^(k+1)(A) is from doubly stochastic and how far
    the fused attention Â_k has moved from Â_0."""
    from ...method import fusion

    balanced, records, first = summed, [], None
    for k in range(num_outputs):
        balanced = fusion.sinkhorn_round(balanced)
        fused = fusion.finish_fused_attention(balanced)
        first = fused if first is None else first
        records.append(
            {
                "rounds": k + 1,
                "max |column sum − 1| of Ă_k": float((balanced.sum(-2) - 1).abs().max()),
                "‖Â_k − Â_0‖ / ‖Â_0‖": float((fused - first).norm() / first.norm()),
            }
        )
    return pd.DataFrame(records)


def rounds_figure(rounds: pd.DataFrame, title: str) -> Figure:
    """Notebook 02: the columns of `sinkhorn_rounds_table` against the number of rounds."""
    fig, axes = _figure(2, (11, 3.8), title)
    for ax, column in zip(axes, rounds.columns[1:], strict=True):
        sns.lineplot(data=rounds, x="rounds", y=column, marker="o", ax=ax)
        ax.set(title=column, xlabel="Sinkhorn rounds (output k sees k + 1)", ylabel=column)
        ax.set_xticks(rounds["rounds"])
    axes[0].set_yscale("log")
    return fig


def crops_figure(picture: np.ndarray, boxes: Sequence[Sequence[int]], title: str) -> Figure:
    """Notebook 02: the sliding window's crops (y1, y2, x1, x2) outlined on the preprocessed input,
    each numbered in the order the window visits them."""
    fig, (ax,) = _figure(1, (7, 5), title)
    ax.imshow(picture)
    ax.grid(False)
    colours = sns.color_palette("bright", len(boxes))
    for k, ((y1, y2, x1, x2), colour) in enumerate(zip(boxes, colours, strict=True)):
        inset = 3 * k  # nested outlines stay apart where crops share an edge
        ax.add_patch(
            Rectangle(
                (x1 + inset, y1 + inset),
                x2 - x1 - 2 * inset,
                y2 - y1 - 2 * inset,
                fill=False,
                edgecolor=colour,
                linewidth=2.5,
            )
        )
        ax.text(x1 + 8 + inset, y1 + 24 + inset, f"crop {k}", color=colour, fontweight="bold")
    ax.set(xlabel="x (input px)", ylabel="y (input px)")
    return fig


def label_maps_figure(
    image: Any,
    labels: Mapping[str, Any],
    class_names: Sequence[str],
    reference: str,
    title: str,
    ncols: int = 4,
) -> Figure:
    """Notebooks 02 and 04: one overlay per variant, titled with the share of pixels whose label
    agrees with the `reference` variant's."""
    nrows = -(-len(labels) // ncols)
    fig = Figure(figsize=(5 * ncols, 3.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    ref = torch.as_tensor(labels[reference])
    for ax, (name, lab) in zip(axes, labels.items(), strict=False):
        agree = float((torch.as_tensor(lab) == ref).float().mean())
        show_segmentation(ax, image, lab, class_names, title=f"{name}: {agree:.0%} agree")
    for ax in axes[len(labels) :]:
        ax.axis("off")
    fig.suptitle(title)
    return fig


# --- notebook 03: pictures and SD locality --------------------------------------------------------
def pictures_row(pictures: Mapping[str, np.ndarray], title: str) -> Figure:
    """Notebook 03: (H, W, 3) pictures side by side, each titled."""
    fig, axes = _figure(len(pictures), (3.3 * len(pictures), 3.7), title)
    for ax, (name, picture) in zip(axes, pictures.items(), strict=True):
        ax.imshow(picture)
        ax.grid(False)
        ax.set(title=name, xlabel="x (SD px)", ylabel="y (SD px)")
    return fig


def sd_locality_bars(locality: pd.DataFrame, title: str) -> Figure:
    """Notebook 03: per layer and timestep index, the head-mean distance and entropy (whiskers: the
    head range), with the uniform-attention references."""
    order = list(dict.fromkeys(locality["label"]))
    measures = ["mean attention distance (SD px)", "normalised entropy"]
    fig, axes = _figure(2, (14, 4.6), title)
    for ax, y in zip(axes, measures, strict=True):
        sns.barplot(
            data=locality,
            x="label",
            y=y,
            hue="timestep index",
            order=order,
            errorbar=("pi", 100),
            palette="crest",
            ax=ax,
        )
        ax.set(title=f"{y} per layer", xlabel="layer (upN.attnK, token grid)", ylabel=y)
        ax.set_ylim(0, 1.3 * ax.get_ylim()[1])  # room for the legend above the bars
    uniform = locality.drop_duplicates("label").set_index("label").loc[order]
    axes[0].scatter(
        range(len(order)),
        uniform["uniform distance (SD px)"],
        marker="_",
        s=900,
        color="black",
        zorder=3,
        label="uniform attention",
    )
    axes[1].axhline(1.0, color="black", lw=1, ls="--", label="uniform attention")
    for ax in axes:
        ax.legend(title="timestep index", fontsize="small", loc="upper center", ncol=4)
    return fig


# --- notebook 04: thresholds and the chain's cost -------------------------------------------------
def threshold_histogram(values: torch.Tensor, threshold: float, title: str) -> Figure:
    """Notebook 04: the distribution of a head map's entries after the column step (a fixed-seed
    sample of at most 200 000), with the threshold τ."""
    flat = values.flatten()
    order = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))
    sample = flat[order[:200_000].to(flat.device)].float().cpu().numpy()
    zeroed = float((flat < threshold).float().mean())
    fig, (ax,) = _figure(1, (8, 3.8), title)
    sns.histplot(sample, bins=60, ax=ax, label=f"entries of Ã (sample of {len(sample):,})")
    ax.axvline(threshold, color="crimson", ls="--", label=f"τ = {threshold}: {zeroed:.1%} zeroed")
    ax.set(yscale="log", xlabel="Ã = A / column max", ylabel="count")
    ax.legend()
    return fig


def threshold_sweep_figure(sweep: pd.DataFrame, preset_thr: float, title: str) -> Figure:
    """Notebook 04: what τ removes from the SD maps, and how S_f and the labels move, for each knob
    of the threshold sweep."""
    fig, axes = _figure(3, (16, 4.3), title)
    sd_rows = sweep[sweep["knob"] == "sd_attention_thr"]
    for y, marker in (("zeroed share of SD maps", "o"), ("emptied rows", "s")):
        sns.lineplot(data=sd_rows, x="threshold", y=y, marker=marker, ax=axes[0], label=y)
    axes[0].set(title="what τ removes from the SD maps", xlabel="τ", ylabel="share")
    for ax, y in zip(
        axes[1:], ["relative change of S_f", "label agreement with preset"], strict=True
    ):
        sns.lineplot(data=sweep, x="threshold", y=y, hue="knob", style="knob", markers=True, ax=ax)
        ax.set(title=f"{y} vs the threshold", xlabel="threshold value", ylabel=y)
    for ax in axes:
        ax.axvline(
            preset_thr, color="grey", ls=":", lw=1, label=f"preset attention_thr {preset_thr}"
        )
        ax.legend(fontsize="small")
    return fig


def cost_bars(cost: pd.DataFrame, title: str) -> Figure:
    """Notebook 04: time and multiply-adds of the chain's two evaluation orders, on log axes."""
    fig, axes = _figure(2, (12, 4), title)
    for ax, y in zip(axes, ["time (s)", "multiply-adds"], strict=True):
        sns.barplot(data=cost, x="order", y=y, hue="order", legend=False, ax=ax)
        ratio = cost[y].iloc[0] / cost[y].iloc[1]
        ax.set(yscale="log", title=f"{y}: left to right ÷ right to left = {ratio:.3g}")
        ax.set(xlabel="evaluation order", ylabel=f"{y} (log scale)")
        ax.set_ylim(cost[y].min() / 10, cost[y].max() * 3)  # bars on a log axis need a floor
    return fig


# --- notebook 05: per-class and per-image scores --------------------------------------------------
def per_class_bars(bars: pd.DataFrame, miou: float, paper_miou: float | None, title: str) -> Figure:
    """Notebook 05: IoU per class (best first), our mIoU dashed and the paper's dotted."""
    fig = Figure(figsize=(9, 0.3 * len(bars) + 2.0), layout="constrained")
    ax = fig.subplots()
    sns.barplot(data=bars, x="iou", y="name", hue="group", dodge=False, ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.1f", padding=2, fontsize="small")
    ax.axvline(miou, color="black", ls="--", label=f"mIoU {miou:.1f}")
    if paper_miou is not None:
        ax.axvline(paper_miou, color="tab:red", ls=":", label=f"paper mIoU {paper_miou:.1f}")
    ax.set(xlim=(0, 100), xlabel="IoU (%)", ylabel="class", title=title)
    ax.legend(loc="lower right", title="")
    return fig


def per_image_histogram(images: pd.DataFrame, column: str, split_value: float, name: str) -> Figure:
    """Notebook 05: the per-image score's histogram, its mean and the split's pooled value."""
    fig, (ax,) = _figure(1, (8, 3.6), f"per-image {name} of {len(images)} images")
    sns.histplot(data=images, x=column, bins=20, binrange=(0, 100), ax=ax, label="images")
    mean = images[column].mean()
    ax.axvline(mean, color="tab:orange", ls="--", label=f"mean over images {mean:.1f}")
    ax.axvline(split_value, color="black", ls=":", label=f"the split's {name} {split_value:.1f}")
    ax.set(xlim=(0, 100), xlabel=f"per-image {name} (%)", ylabel="images")
    ax.legend()
    return fig


# --- notebook 06: explorer moves and the layer-range sweep ----------------------------------------
def move_time_bars(timings: pd.DataFrame, title: str) -> Figure:
    """Notebook 06: mean seconds per kind of explorer move, split by the stages it recomputed."""
    shown = timings[timings.groupby("stage")["seconds"].transform("sum") > 0]
    fig, (ax,) = _figure(1, (10, 4.5), title)
    sns.barplot(data=shown, x="move", y="seconds", hue="stage", errorbar=None, ax=ax)
    ax.set(xlabel="kind of move", ylabel="seconds (mean over moves of that kind)")
    ax.legend(title="stage", bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


def layer_sweep_figure(sweep: pd.DataFrame, title: str) -> Figure:
    """Notebook 06: mIoU of every fused range [first, last] as a heat map, and by range length."""
    grid = sweep.pivot(index="first", columns="last", values="miou") * 100
    fig, axes = _figure(2, (12, 4.5), title)
    sns.heatmap(grid, annot=len(grid) <= 8, fmt=".1f", cmap="viridis", ax=axes[0],
                cbar_kws={"label": "mIoU (%)"})  # fmt: skip
    axes[0].grid(False)
    axes[0].set(title="fused layer range [first, last]", xlabel="last fused block",
                ylabel="first fused block")  # fmt: skip
    sns.barplot(data=sweep.assign(miou_pct=sweep.miou * 100), x="num_fused", y="miou_pct",
                errorbar=("pi", 100), color="tab:blue", ax=axes[1])  # fmt: skip
    axes[1].set(title="by number of fused blocks (bar: mean, line: min-max)",
                xlabel="blocks fused", ylabel="mIoU (%)")  # fmt: skip
    return fig
