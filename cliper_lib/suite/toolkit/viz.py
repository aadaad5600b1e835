"""Plots for segmentation results and attention maps: palettes, overlays, label PNGs, heatmap and
attention grids.

Conventions: a label map is (H, W) integers with 0 = background and k = class_names[k - 1] (the
convention of `CLIPer.segment`); images are (H, W, 3) uint8. Functions that build whole figures
return a `matplotlib.figure.Figure` that is not registered with pyplot, so they work headless (Agg),
never leak open figures in loops, and display once in Jupyter when they are a cell's last expression
(or via `display(fig)`). Only numpy, matplotlib and PIL are needed; seaborn is imported by
`set_theme` alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from PIL import Image

from ...files import atomic_path
from ...images import rgb_array
from .colorbars import plain_ticks, widen_flat_scale

__all__ = [
    "palette",
    "colorize_labels",
    "overlay",
    "save_label_png",
    "load_label_png",
    "save_overlay_png",
    "show_segmentation",
    "legend_handles",
    "heatmap_grid",
    "attention_grid",
    "set_theme",
]

_THEME_SET = False


# --- conversions and atomic writes ----------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    """A numpy view of a numpy array, a torch tensor (any device) or a PIL image."""
    if hasattr(x, "detach"):  # torch tensor: avoid importing torch just to test the type
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_labels(labels: Any) -> np.ndarray:
    """(H, W) int64 label map; negative ids are rejected because they have no colour."""
    lab = _to_numpy(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be a 2-D (H, W) map of class ids, got shape {lab.shape}")
    if lab.dtype.kind not in "iub":
        if lab.dtype.kind == "f" and np.all(np.mod(lab, 1) == 0):
            lab = lab.astype(np.int64)
        else:
            raise ValueError(f"labels must hold integer class ids, got dtype {lab.dtype}")
    lab = lab.astype(np.int64, copy=False)
    if lab.size and lab.min() < 0:
        raise ValueError(f"labels must be >= 0 (0 = background), found {lab.min()}")
    return lab


# --- colours --------------------------------------------------------------------------------------
def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours, PASCAL VOC style: index 0 is black (background), all n colours
    distinct."""
    if n < 0:
        raise ValueError(f"palette size must be >= 0, got {n}")
    if n > 1 << 24:
        raise ValueError(f"at most 2**24 distinct RGB colours exist, asked for {n}")
    ids = np.arange(n, dtype=np.int64)
    out = np.zeros((n, 3), dtype=np.int64)
    # VOC scheme: bits 0,1,2 of the id go to the top bit of R,G,B, bits 3,4,5 to the next bit, and
    # so on. Each id bit lands on its own colour bit, so the map is injective (distinct colours for
    # any n <= 2**24), and small ids get strong, well separated colours.
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            out[:, channel] |= bit << (7 - shift)
    return out.astype(np.uint8)


def colorize_labels(labels: Any, n_colors: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 image of a label map in the `palette` colours (0 = black)."""
    lab = _as_labels(labels)
    n = max(int(lab.max()) + 1 if lab.size else 1, n_colors or 0, 256)
    return palette(n)[lab]


def overlay(image: Any, labels: Any, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 blend of the image and the label colours; background (0) pixels keep the
    image."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = rgb_array(image, floats=True)
    lab = _as_labels(labels)
    if lab.shape != img.shape[:2]:
        raise ValueError(
            f"labels {lab.shape} and image {img.shape[:2]} must have the same height and width"
        )
    colours = colorize_labels(lab).astype(np.float32)
    blended = (1.0 - alpha) * img.astype(np.float32) + alpha * colours
    # blending background with black would only darken the photo; leave it untouched instead
    out = np.where((lab > 0)[:, :, None], blended, img.astype(np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _class_name(k: int, class_names: Sequence[str]) -> str:
    if k == 0:
        return "background"
    if k <= len(class_names):
        return str(class_names[k - 1])
    return "ignore" if k == 255 else f"class {k}"


def legend_handles(
    labels: Any, class_names: Sequence[str], include_background: bool = False
) -> list[Patch]:
    """Legend patches (palette colour + name) for the classes present in a label map, in id
    order."""
    lab = _as_labels(labels)
    present = [int(k) for k in np.unique(lab) if include_background or k != 0]
    colours = palette(max(present + [0]) + 1) / 255.0
    style = dict(edgecolor="black", linewidth=0.5)
    return [
        Patch(facecolor=colours[k], label=_class_name(k, class_names), **style) for k in present
    ]


# --- files ----------------------------------------------------------------------------------------
def save_label_png(path: str | os.PathLike, labels: Any, num_labels: int | None = None) -> Path:
    """Write a label map as a PNG whose pixel values are the class ids; returns the path.

    Palette mode (P, ids 0..255) when the labels fit, else 16-bit greyscale (I;16, ids up to 65535).
    `num_labels` (classes + background) picks the mode from the class list, so a run's files do not
    change format with what happens to be predicted.
    """
    lab = _as_labels(labels)
    top = max(num_labels or 0, int(lab.max()) + 1 if lab.size else 0)
    if top > 65536 or (lab.size and lab.min() < 0):
        raise ValueError(
            f"a label PNG holds ids 0..65535; this map has ids {lab.min()} .. {lab.max()}"
        )
    if top > 256:
        img = Image.fromarray(lab.astype(np.uint16))  # mode I;16
    else:
        img = Image.fromarray(lab.astype(np.uint8), mode="P")
        img.putpalette(palette(256).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG written by `save_label_png` back into (H, W) int64 class ids (no palette
    lookup)."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I;16", "I"):
            raise ValueError(
                f"{path}: expected a palette (P) or greyscale (L, I;16) PNG of class ids, got mode "
                f"{img.mode}"
            )
        return np.asarray(img).astype(np.int64)


def save_overlay_png(
    path: str | os.PathLike,
    image: Any,
    labels: Any,
    class_names: Sequence[str],
    alpha: float = 0.5,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Write the image with its label overlay and a legend of the classes present (headless);
    returns the path."""
    img = rgb_array(image, floats=True)
    h, w = img.shape[:2]
    # size the canvas to the image plus a strip for the legend, so pixels are not resampled much
    fig = Figure(
        figsize=(max(w / dpi, 3.0) + 2.2, max(h / dpi, 2.5) + 0.5), dpi=dpi, layout="constrained"
    )
    ax = fig.add_subplot()
    show_segmentation(ax, img, labels, class_names, title or Path(path).stem, alpha=alpha)
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return Path(path)


def side_legend(ax: Axes, handles: Sequence[Any], title: str) -> None:
    """A small legend outside the axes, to the right of their top edge."""
    ax.legend(
        handles=handles,
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        fontsize="small",
        title_fontsize="small",
    )


# --- axes and figures for notebooks ---------------------------------------------------------------
def show_segmentation(
    ax: Axes,
    image: Any,
    labels: Any,
    class_names: Sequence[str],
    title: str,
    alpha: float = 0.5,
    legend: bool = True,
) -> Axes:
    """Draw the overlay on `ax`, titled, with a legend of the classes present beside it."""
    ax.imshow(overlay(image, labels, alpha=alpha))
    ax.grid(False)  # a seaborn grid style would draw lines across the image
    ax.set_title(title)
    ax.set(xticks=[], yticks=[])
    h, w = _as_labels(labels).shape
    ax.set_xlabel(f"{w} × {h} px")
    if legend:
        handles = legend_handles(labels, class_names)
        if handles:
            side_legend(ax, handles, "classes")
        else:
            ax.text(1.02, 1.0, "no class found", transform=ax.transAxes, va="top", fontsize="small")
    return ax


def _grid(n: int, ncols: int, panel: float, title: str) -> tuple[Figure, np.ndarray]:
    """A titled figure with at least n panels in rows of ncols; unused panels are hidden."""
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(panel * ncols + 0.6, panel * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    for ax in axes:
        ax.grid(False)  # a seaborn grid style would draw lines across the images
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes


def heatmap_grid(
    maps: Any,
    titles: Sequence[str],
    ncols: int = 4,
    suptitle: str = "heatmaps",
    image: Any | None = None,
    cmap: str = "viridis",
    alpha: float = 0.6,
    shared_scale: bool = False,
    colorbar_label: str = "value",
    panel_size: float = 2.6,
) -> Figure:
    """A grid of K heatmaps (K, h, w), each titled; optionally drawn over `image`, stretched to its
    size."""
    arr = _to_numpy(maps).astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"maps must be (K, h, w), got shape {arr.shape}")
    if len(titles) != arr.shape[0]:
        raise ValueError(f"{arr.shape[0]} maps but {len(titles)} titles")
    img = rgb_array(image, floats=True) if image is not None else None
    vmin, vmax = (
        (float(np.nanmin(arr)), float(np.nanmax(arr)))
        if shared_scale and arr.size
        else (None, None)
    )
    fig, axes = _grid(arr.shape[0], ncols, panel_size, suptitle)
    for ax, m, t in zip(axes, arr, titles, strict=False):
        if img is not None:
            h, w = img.shape[:2]
            ax.imshow(img)
            # extent stretches the low-resolution map over the image without resampling it ourselves
            im = ax.imshow(
                m,
                cmap=cmap,
                alpha=alpha,
                extent=(0, w, h, 0),
                interpolation="bilinear",
                vmin=vmin,
                vmax=vmax,
            )
        else:
            im = ax.imshow(m, cmap=cmap, interpolation="nearest", vmin=vmin, vmax=vmax)
        flat = not shared_scale and widen_flat_scale(im)
        ax.set_title(
            str(t) + (f"\n(nearly flat: spread {float(np.ptp(m)):.1e})" if flat else ""),
            fontsize="small",
        )
        ax.set(xticks=[], yticks=[])
        if not shared_scale:
            plain_ticks(fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=colorbar_label))
    if shared_scale:
        plain_ticks(
            fig.colorbar(im, ax=list(axes[: arr.shape[0]]), shrink=0.8, label=colorbar_label)
        )
    return fig


def mark_patch(
    ax: Axes, patch: tuple[int, int], grid: tuple[int, int], image_size: tuple[int, int]
) -> None:
    """Outline patch (row, col) of an h × w grid drawn over an image of image_size (H, W) pixels, in
    cyan."""
    (r, c), (h, w), (H, W) = patch, grid, image_size
    ax.add_patch(
        Rectangle((c * W / w, r * H / h), W / w, H / h, fill=False, edgecolor="cyan", linewidth=1.5)
    )


def attention_grid(
    attention: Any,
    image: Any,
    grid_hw: tuple[int, int],
    queries: Sequence[tuple[int, int] | int],
    ncols: int = 4,
    head: int | None = None,
    suptitle: str = "attention of query patches",
    cmap: str = "inferno",
    alpha: float = 0.6,
    panel_size: float = 2.8,
) -> Figure:
    """For each query patch (row, col) or flat index, the attention it pays to every patch, over the
    image.

    `attention` is (N, N) or (heads, N, N) over tokens, with N = h*w patches or 1 + h*w (a leading
    CLS token, dropped here). Heads are averaged unless `head` picks one. The query patch is marked
    with a cyan square.
    """
    att = _to_numpy(attention).astype(np.float32)
    h, w = grid_hw
    if att.ndim == 3:
        att = att.mean(axis=0) if head is None else att[head]  # (N, N)
    if att.ndim != 2 or att.shape[0] != att.shape[1]:
        raise ValueError(
            f"attention must be (N, N) or (heads, N, N), got shape {_to_numpy(attention).shape}"
        )
    n = att.shape[0]
    if n == h * w + 1:
        # drop the CLS row and column: only patch-to-patch attention has a place in the image
        att = att[1:, 1:]
    elif n != h * w:
        raise ValueError(
            f"attention has {n} tokens; grid {h}x{w} needs {h * w} (or {h * w + 1} with CLS)"
        )
    img = rgb_array(image, floats=True)
    H, W = img.shape[:2]
    flat = [q if isinstance(q, (int, np.integer)) else int(q[0]) * w + int(q[1]) for q in queries]
    for q in flat:
        if not 0 <= q < h * w:
            raise ValueError(f"query patch {q} is outside the {h}x{w} grid")
    fig, axes = _grid(
        len(flat), ncols, panel_size, suptitle + ("" if head is None else f" (head {head})")
    )
    for ax, q in zip(axes, flat, strict=False):
        r, c = divmod(q, w)
        ax.imshow(img)
        im = ax.imshow(  # (h, w): one value per key patch
            att[q].reshape(h, w),
            cmap=cmap,
            alpha=alpha,
            extent=(0, W, H, 0),
            interpolation="nearest",
        )
        mark_patch(ax, (r, c), (h, w), (H, W))
        ax.set_title(f"query patch ({r}, {c})", fontsize="small")
        ax.set(xticks=[], yticks=[])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="attention")
    return fig


def set_theme(**kwargs: Any) -> None:
    """Apply the seaborn theme once per process (later calls are no-ops unless kwargs change it)."""
    global _THEME_SET
    if _THEME_SET and not kwargs:
        return
    import seaborn as sns  # imported here: the rest of the module must not need seaborn

    sns.set_theme(**({"context": "notebook", "style": "whitegrid"} | kwargs))
    _THEME_SET = True
