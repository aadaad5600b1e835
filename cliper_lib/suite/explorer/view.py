"""The explorer's figures and status line: overlay with a scored legend, class scores, coarse and
refined maps.

Pure functions of what the explorer shows (`state.ExplorerState`); they return `Figure`s not
registered with pyplot (any backend) or HTML text, so the explorer, the app and tests draw the same
things.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..toolkit.viz import heatmap_grid, palette, show_segmentation, side_legend

#: the longest side the page draws a photo at; larger photos are shown downscaled (the result and
#: the export keep full resolution).
DISPLAY_MAX_SIDE = 1200


def display_view(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The photo and its labels as drawn: every k-th pixel when the longest side exceeds
    DISPLAY_MAX_SIDE (labels stay labels: no blending of class ids)."""
    step = -(-max(labels.shape) // DISPLAY_MAX_SIDE)
    return (image, labels) if step <= 1 else (image[::step, ::step], labels[::step, ::step])


def scored_legend(
    classes: Sequence[str], scores: np.ndarray, labels: np.ndarray, threshold: float
) -> list[Patch]:
    """One legend entry per class with its score and the share of the photo it covers: present
    ones in their label colour, absent ones hatched grey."""
    counts = np.bincount(labels.reshape(-1), minlength=len(classes) + 1)
    share = counts / max(labels.size, 1)
    colours = palette(len(classes) + 1) / 255.0
    handles = []
    for k, (name, score) in enumerate(zip(classes, scores, strict=True), start=1):
        if counts[k] > 0:
            handles.append(
                Patch(
                    facecolor=colours[k],
                    edgecolor="black",
                    linewidth=0.5,
                    label=f"{name}  {score:.3f}  {100 * share[k]:.1f}% of the photo",
                )
            )
        else:
            why = "score ≤ threshold" if score <= threshold else "no pixels"
            handles.append(
                Patch(
                    facecolor="white",
                    edgecolor="grey",
                    hatch="///",
                    linewidth=0.5,
                    label=f"{name}  {score:.3f}  absent ({why})",
                )
            )
    return handles


def overlay_figure(state: Any, refinement: str, alpha: float = 0.5) -> Figure:
    """The image with its label colours and a legend listing every class with its score (absent ones
    marked)."""
    h, w = state.labels.shape
    fig = Figure(figsize=(7.5, max(2.5, 5.0 * h / max(w, 1))), layout="constrained")
    ax = fig.add_subplot()
    cfg = state.cfg
    image, labels = display_view(state.result.image, state.labels)
    show_segmentation(
        ax,
        image,
        labels,
        state.classes,
        alpha=alpha,
        legend=False,
        title=f"{state.image_name} (refinement {refinement})",
    )
    ax.set_xlabel(f"{w} × {h} px" + ("" if labels.shape == (h, w) else " (shown downscaled)"))
    scored = scored_legend(state.classes, state.scores, state.labels, cfg.score_threshold)
    side_legend(ax, scored, "class  score  area")
    fig.suptitle(
        f"layers fused {cfg.fuse_layers[0]}-{cfg.fuse_layers[1]}, read {cfg.select_layer}; "
        f"presence > {cfg.score_threshold:.2f}, background cut {cfg.bkg_thre:.3g}",
        fontsize="medium",
    )
    return fig


def scores_figure(classes: Sequence[str], scores: np.ndarray, threshold: float) -> Figure:
    """Horizontal bars of the class scores with the score threshold."""
    fig = Figure(figsize=(4.2, 0.5 + 0.35 * len(classes) + 0.8), layout="constrained")
    ax = fig.add_subplot()
    colours = palette(len(classes) + 1)[1:] / 255.0
    ax.barh(np.arange(len(classes)), scores, color=colours, edgecolor="black", linewidth=0.5)
    ax.axvline(threshold, color="crimson", linestyle="--", label="presence threshold")
    ax.set_yticks(np.arange(len(classes)), labels=classes)
    ax.invert_yaxis()
    ax.set_xlabel("score s = ½·max S_f + ½·max S_c")
    ax.set_ylabel("class")
    ax.legend(loc="lower right", fontsize="small")
    fig.suptitle("class scores (present: score > threshold)")
    return fig


def maps_figure(state: Any, name: str, refinement: str) -> Figure:
    """The coarse map S_c and the refined map S_f of one class, stretched over the image, each with
    a colour bar."""
    c = state.classes.index(name)
    image, _ = display_view(state.result.image, state.labels)
    size = image.shape[:2]
    up = [  # (H0, W0) each
        F.interpolate(
            m[c][None, None].float().cpu(), size=size, mode="bilinear", align_corners=False
        )[0, 0]
        for m in (state.coarse, state.refined)
    ]
    return heatmap_grid(
        torch.stack(up),
        titles=[f"coarse S_c: {name}", f"refined S_f ({refinement}): {name}"],
        ncols=2,
        suptitle=f"class maps of '{name}' (score {state.scores[c]:.3f})",
        image=image,
        colorbar_label="map value",
        panel_size=2.8,
    )


#: what each stage is called on the page.
STAGE_NAMES = {
    "text": "class texts",
    "clip_walk": "CLIP pass",
    "proxy": "proxy attention",
    "fusion": "layer fusion",
    "layer_maps": "layer maps",
    "coarse": "coarse maps",
    "sd_latents": "SD encoding",
    "sd_attention": "SD attention",
    "vfm": "DINO features",
    "refine": "refinement",
    "labels": "labels",
}


def status_html(state: Any, cached: Sequence[str], notices: Sequence[str]) -> str:
    """In plain words: the classes found, what the last move recomputed and cost, what was reused,
    and any notices."""
    done = (
        ", ".join(f"{STAGE_NAMES.get(st, st)} {sec:.2f} s" for st, sec in state.recomputed.items())
        or "nothing (all reused)"
    )
    reused = ", ".join(STAGE_NAMES.get(st, st) for st in cached) or "nothing"
    present = [state.classes[i - 1] for i in np.unique(state.labels) if i > 0]
    notes = "".join(f"<br><i>{html.escape(n)}</i>" for n in notices)
    total = state.compute_seconds + state.render_seconds
    return (
        f"<b>found</b>: {html.escape(', '.join(present) or 'none of the classes')}"
        f" &nbsp;·&nbsp; done in {total:.2f} s"
        f"<br><span class='cliper-detail'><b>recomputed</b>: {html.escape(done)}; "
        f"drawing {state.render_seconds:.2f} s &nbsp;·&nbsp; <b>reused</b>: "
        f"{html.escape(reused)}</span>{notes}"
    )


def busy_html(what: str) -> str:
    """The busy state's status line: a moving bar and what is being done."""
    return f"<span class='cliper-busy-bar'></span><b>{html.escape(what)}</b>"


def figure_output(fig: Figure, dpi: int = 90) -> dict[str, Any]:
    """A Jupyter display_data output holding the figure as PNG (for `Output.outputs`; no kernel
    needed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    title = fig._suptitle.get_text() if fig._suptitle is not None else "figure"
    return {
        "output_type": "display_data",
        "data": {"image/png": data, "text/plain": f"<{title}>"},
        "metadata": {},
    }


def error_html(message: str) -> str:
    """A message in red, beside what caused it (the status line when nothing in particular)."""
    return f"<span class='cliper-message' style='color:#b00'>{html.escape(message)}</span>"


class Panels:
    """The explorer's output panels (overlay, maps, scores) as PNG display data, each redrawn only
    when what it shows changed (the stage keys behind it). `refinement_of(cfg)` names the
    refinement that runs, for the titles."""

    def __init__(
        self,
        outputs: dict[str, Any],
        refinement_of: Callable[[Any], str],
        alpha: float = 0.5,
        dpi: int = 90,
    ):
        self.outputs = outputs
        self.refinement_of = refinement_of
        self.alpha, self.dpi = alpha, dpi
        self.drawn: dict[str, Any] = {}  # panel -> the key of what it shows

    def show(self, panel: str, fig: Figure) -> None:
        self.outputs[panel].outputs = (figure_output(fig, self.dpi),)

    def draw_overlay(self, s: Any) -> None:
        key = (s.result.keys["labels"], self.alpha)
        if self.drawn.get("overlay") == key:
            return
        self.show("overlay", overlay_figure(s, self.refinement_of(s.cfg), self.alpha))
        self.drawn["overlay"] = key

    def draw_scores(self, s: Any) -> None:
        key = (s.result.keys["labels"],)
        if self.drawn.get("scores") == key:
            return
        self.show("scores", scores_figure(s.classes, s.scores, s.cfg.score_threshold))
        self.drawn["scores"] = key

    def draw_maps(self, s: Any, name: str, force: bool = False) -> None:
        """The maps of class `name` (nothing when it is not one of the classes shown)."""
        if name not in s.classes:
            return
        key = (s.result.keys["refine"], name)
        if not force and self.drawn.get("maps") == key:
            return
        self.show("maps", maps_figure(s, name, self.refinement_of(s.cfg)))
        self.drawn["maps"] = key
