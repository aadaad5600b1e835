"""The CLIPer explorer: explicit ipywidgets controls over a `StageCache`, so a control recomputes only its stages.

    explorer = Explorer(model, image="chelsea.jpg", classes="cat; sofa; wall")
    display(explorer.widget)                            # in Jupyter / Voila
    explorer.controls["score_threshold"].value = 0.5    # from code: outputs update synchronously
    explorer.state.labels, explorer.state.recomputed    # what it shows, and what that move recomputed

Each control has an observer (`observe(..., names="value")`); no `interact`. Figures are drawn on
`matplotlib.figure.Figure` objects (no pyplot, so any backend, Agg included) and placed in `Output` widgets as
PNG display data, which works with or without a frontend. Which stages each control invalidates:
`tuning.INVALIDATES`, derived from the stage graph that also makes the cache keys.
"""
from __future__ import annotations

import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from ..config import REFINEMENTS, CLIPerConfig
from ..images import content_id, read_image, rgb_array
from ..method.pipeline import CLIPer
from ..method.text import parse_class_names, read_class_file, split_background_line
from .samples import sample_images, suggested_classes
from .tuning import STAGES, StageCache, StageOutputs
from .viz import figure_output, heatmap_grid, overlay, palette, show_segmentation

#: the controls that change the computation (everything but the class shown in the map panel).
COMPUTE_CONTROLS = ("image", "classes", "background", "fuse_layers", "select_layer", "attention_thr",
                    "score_threshold", "bkg_thre", "is_normalize", "sliding", "refinement", "selection_head")
#: crop size used when the sliding window is switched on for a preset without one (the authors' other value).
DEFAULT_CROP = 224


@dataclass
class ExplorerState:
    """What the explorer shows now, and what the last move cost."""

    image_name: str = ""
    cfg: CLIPerConfig | None = None
    classes: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None  # (H0, W0) int64: 0 background, k = classes[k-1]
    coarse: torch.Tensor | None = None  # (C, h, w) S_c
    refined: torch.Tensor | None = None  # (C, s, s) S_f
    scores: np.ndarray | None = None  # (C,)
    overlay: np.ndarray | None = None  # (H0, W0, 3) uint8, the image with the label colours
    outputs: StageOutputs | None = None  # every stage result of the last run
    recomputed: dict[str, float] = field(default_factory=dict)  # stage -> seconds, last move
    compute_seconds: float = 0.0
    render_seconds: float = 0.0
    error: str | None = None


class Explorer:
    """Controls for the image, classes, fused layer range, thresholds, sliding window and refinement; live outputs.

    `controls` maps names to widgets: image, upload, classes, background, fuse_layers, select_layer,
    attention_thr, score_threshold, bkg_thre, is_normalize, sliding, refinement, selection_head, map_class.
    `widget` is the whole layout, `state` the current result, `history` one record per move.
    """

    def __init__(
        self,
        model: CLIPer,
        images: Mapping[str, Any] | None = None,
        image: str | None = None,
        classes: str | Sequence[str] | None = None,
        background: str | Sequence[str] | None = None,
        cfg: CLIPerConfig | None = None,
        cache: StageCache | None = None,
        alpha: float = 0.5,
        raise_errors: bool = False,
        dpi: int = 90,
    ):
        import ipywidgets as W

        self.model = model
        self.cfg = cfg or model.cfg
        self.num_layers = model.clip.num_layers
        self.cfg.check_against_depth(self.num_layers)
        self.cache = cache or StageCache(model)
        self.alpha = alpha
        self.dpi = dpi
        self.raise_errors = raise_errors
        self.state = ExplorerState()
        self.history: list[dict[str, Any]] = []
        self._images: dict[str, Any] = dict(images) if images is not None else dict(sample_images())
        if not self._images:
            raise ValueError("no images: pass `images` (name -> path or array) or add photos to cliper_lib/data/samples")
        self._arrays: dict[str, np.ndarray] = {}
        self._ids: dict[str, str] = {}
        self._suspended = False
        self._drawn: dict[str, Any] = {}  # panel -> the key of what it shows, to skip redundant redraws

        image = image if image is not None else next(iter(self._images))
        if image not in self._images:
            raise ValueError(f"image {image!r} is not one of {', '.join(self._images)}")
        if classes is None:
            classes = suggested_classes(image) or "; ".join(read_class_file(self.cfg.classes).names)
        classes_text = classes if isinstance(classes, str) else "; ".join(classes)
        if background is None:
            background = read_class_file(model.cfg.classes).background
        background_text = background if isinstance(background, str) else ", ".join(background)

        c = self.cfg
        top = self.num_layers - 2
        fuse = (0, top) if c.fuse_layers is None else tuple(c.fuse_layers)
        wide = {"description_width": "initial"}
        slider = dict(continuous_update=False, style=wide, layout=W.Layout(width="340px"))
        has_sd = model.sd is not None
        self._crop = c.sliding_crop_size or DEFAULT_CROP
        self.controls: dict[str, Any] = {
            "image": W.Dropdown(options=list(self._images), value=image, description="image"),
            "upload": W.FileUpload(accept="image/*", multiple=False, description="upload"),
            "classes": W.Text(value=classes_text, description="classes", continuous_update=False,
                              placeholder="cat; sofa; wall (';'-separated)", layout=W.Layout(width="420px")),
            "background": W.Text(value=background_text, description="background", continuous_update=False,
                                 placeholder="background words (commas); empty = none",
                                 layout=W.Layout(width="420px")),
            "fuse_layers": W.IntRangeSlider(value=fuse, min=0, max=top, description="fused layers", **slider),
            "select_layer": W.IntSlider(value=c.select_layer, min=-self.num_layers, max=self.num_layers - 1,
                                        description="select layer", **slider),
            "attention_thr": W.FloatSlider(value=c.attention_thr, min=0.0, max=1.0, step=0.01,
                                           description="attention_thr", **slider),
            "sliding": W.Checkbox(value=c.sliding_crop_size > 0, description=f"sliding window ({self._crop} px)",
                                  indent=False),
            "refinement": W.Dropdown(options=list(REFINEMENTS) if has_sd else ["none"],
                                     value=c.refinement if has_sd else "none", description="refinement",
                                     disabled=not has_sd,
                                     tooltip=None if has_sd else "this model was built without Stable Diffusion"),
            "selection_head": W.IntSlider(value=c.selection_head, min=0,
                                          max=max(c.selection_head, 5 * len(c.sd_layers) - 1),
                                          description="selection head", **slider),
            "score_threshold": W.FloatSlider(value=c.score_threshold, min=0.0, max=1.0, step=0.01,
                                             description="score_threshold", **slider),
            "bkg_thre": W.FloatSlider(value=c.bkg_thre, min=0.0, max=1.0, step=0.001, readout_format=".3f",
                                      description="bkg_thre", **slider),
            "is_normalize": W.Checkbox(value=c.is_normalize, description="min-max normalise maps", indent=False),
            "map_class": W.Dropdown(options=[], description="class map"),
        }
        self.controls["selection_head"].disabled = self.controls["refinement"].value != "selection"
        self.outputs = {name: W.Output(layout=W.Layout(border="1px solid #ddd"))
                        for name in ("overlay", "maps", "scores")}
        self.status = W.HTML(value="")
        self.hint = W.HTML(value="")

        for name in COMPUTE_CONTROLS:
            self.controls[name].observe(lambda change, name=name: self._on_change(name, change), names="value")
        self.controls["upload"].observe(self._on_upload, names="value")
        self.controls["map_class"].observe(self._on_map_class, names="value")

        k = self.controls
        header = W.VBox([W.HBox([k["image"], k["upload"]]), W.HBox([k["classes"], self.hint]), k["background"]])
        fusion_box = W.VBox([W.HTML("<b>early-layer fusion</b>"), k["fuse_layers"], k["select_layer"],
                             k["attention_thr"], k["sliding"]])
        refine_box = W.VBox([W.HTML("<b>fine-grained compensation</b>"), k["refinement"], k["selection_head"]])
        label_box = W.VBox([W.HTML("<b>scores and labels</b>"), k["score_threshold"], k["bkg_thre"],
                            k["is_normalize"]])
        panel = W.VBox([fusion_box, refine_box, label_box], layout=W.Layout(min_width="360px"))
        results = W.VBox([self.outputs["overlay"],
                          W.HBox([W.VBox([k["map_class"], self.outputs["maps"]]), self.outputs["scores"]])])
        self.widget = W.VBox([W.HTML("<h3>CLIPer explorer</h3>"), header, W.HBox([panel, results]), self.status])
        self._show_hint(image)
        self.update("init")

    # --- reading the controls ----------------------------------------------------------------------------------
    def current_config(self) -> CLIPerConfig:
        """The config the controls describe now (the base config with their values)."""
        k = self.controls
        first, last = k["fuse_layers"].value
        return self.cfg.replace(
            fuse_layers=[int(first), int(last)],
            select_layer=int(k["select_layer"].value),
            attention_thr=float(k["attention_thr"].value),
            sliding_crop_size=self._crop if k["sliding"].value else 0,
            refinement=k["refinement"].value,
            selection_head=int(k["selection_head"].value),
            score_threshold=float(k["score_threshold"].value),
            bkg_thre=float(k["bkg_thre"].value),
            is_normalize=bool(k["is_normalize"].value),
        )

    def current_classes(self) -> list[str]:
        return parse_class_names(self.controls["classes"].value)

    def current_background(self) -> list[str]:
        return split_background_line(self.controls["background"].value.replace(";", ","))

    def image_array(self, name: str | None = None) -> np.ndarray:
        """The (H, W, 3) uint8 pixels of an image in the chooser (loaded once)."""
        name = name or self.controls["image"].value
        if name not in self._arrays:
            array = rgb_array(self._images[name])
            self._arrays[name] = array
            self._ids[name] = f"{name}:{content_id(array)}"
        return self._arrays[name]

    # --- observers -----------------------------------------------------------------------------------------------
    def _on_change(self, name: str, change: dict) -> None:
        if self._suspended:
            return
        if name == "refinement":
            self.controls["selection_head"].disabled = change["new"] != "selection"
        if name == "image":
            self._show_hint(change["new"])
        self.update(name)

    def _on_map_class(self, change: dict) -> None:
        if self._suspended or self.state.outputs is None:
            return
        start = time.perf_counter()
        self._draw_maps(force=True)
        self.state.render_seconds = time.perf_counter() - start
        self.state.recomputed = {}
        self._record("map_class", change["new"], {}, 0.0, self.state.render_seconds)

    def _on_upload(self, change: dict) -> None:
        files = change["new"] or ()
        for item in files:
            self.add_image(item["name"], read_image(io.BytesIO(bytes(item["content"])), name=item["name"]))
        if files:
            self.controls["upload"].value = ()  # clear it, so the same file can be uploaded again

    def add_image(self, name: str, image: Any, select: bool = True) -> str:
        """Add an image to the chooser (a name already taken gets a suffix); select it (which recomputes)."""
        base, n = name, 1
        while name in self._images:
            n += 1
            name = f"{Path(base).stem} ({n}){Path(base).suffix}"
        self._images[name] = image
        self._suspended = True
        try:
            self.controls["image"].options = list(self._images)
            self.controls["image"].value = self.state.image_name or name
        finally:
            self._suspended = False
        if select:
            self.controls["image"].value = name
        return name

    def _show_hint(self, image: str) -> None:
        hint = suggested_classes(image)
        self.hint.value = f"<i>suggested for {html.escape(image)}: {html.escape(hint)}</i>" if hint else ""

    # --- the update ------------------------------------------------------------------------------------------------
    def apply(self, name: str, value: Any) -> dict[str, Any]:
        """Set a control from code and return the record of that move (stages recomputed, seconds)."""
        before = len(self.history)
        self.controls[name].value = value
        if len(self.history) == before:  # the value did not change: no observer fired
            return {"control": name, "value": value, "recomputed": {}, "compute_s": 0.0, "render_s": 0.0,
                    "total_s": 0.0, "error": None}
        return self.history[-1]

    def update(self, reason: str = "update") -> dict[str, Any]:
        """Recompute what the controls' values need (cache hits elsewhere) and redraw what changed."""
        state = self.state
        try:
            name = self.controls["image"].value
            image = self.image_array(name)
            cfg = self.current_config()
            classes = self.current_classes()
            start = time.perf_counter()
            out = self.cache.run(image, cfg, classes, self.current_background(), image_id=self._ids[name])
            compute = time.perf_counter() - start
        except Exception as error:  # a bad value typed into a box: say so in the status line, keep the last result
            state.error = f"{type(error).__name__}: {error}"
            self.status.value = f"<span style='color:#b00'>{html.escape(state.error)}</span>"
            record = self._record(reason, self._value_of(reason), {}, 0.0, 0.0)
            if self.raise_errors:
                raise
            return record
        if out.head_maps is not None:  # the real number of SD heads, once known (set quietly: no new move)
            self._suspended = True
            try:
                self.controls["selection_head"].max = max(int(out.head_maps.shape[0]) - 1, 0)
            finally:
                self._suspended = False
        state.error = None
        state.image_name, state.cfg, state.classes, state.outputs = name, cfg, list(out.class_names), out
        state.labels = out.labels.cpu().numpy()
        state.coarse, state.refined = out.coarse, out.refined
        state.scores = out.scores.float().cpu().numpy()
        state.recomputed = dict(out.recomputed)
        state.compute_seconds = compute
        start = time.perf_counter()
        self._sync_class_choice(out.class_names)
        self._draw_overlay()
        self._draw_scores()
        self._draw_maps()
        state.render_seconds = time.perf_counter() - start
        self.status.value = self._status_html()
        return self._record(reason, self._value_of(reason), state.recomputed, compute, state.render_seconds)

    def _value_of(self, name: str) -> Any:
        return self.controls[name].value if name in self.controls else None

    def _record(self, control: str, value: Any, recomputed: dict[str, float], compute: float, render: float):
        record = {"control": control, "value": value, "recomputed": dict(recomputed), "compute_s": compute,
                  "render_s": render, "total_s": compute + render, "error": self.state.error}
        self.history.append(record)
        return record

    def _sync_class_choice(self, names: list[str]) -> None:
        box = self.controls["map_class"]
        if list(box.options) == names:
            return
        self._suspended = True
        try:
            keep = box.value if box.value in names else None
            box.options = names
            if keep is None and names:
                scores = self.state.scores
                keep = names[int(np.argmax(scores))] if scores is not None and len(scores) else names[0]
            box.value = keep
        finally:
            self._suspended = False

    def _status_html(self) -> str:
        s = self.state
        done = ", ".join(f"{stage} {sec:.2f} s" for stage, sec in s.recomputed.items()) or "nothing (all cached)"
        kept = [st for st in STAGES if st in s.outputs.keys and st not in s.recomputed]
        present = [s.classes[i - 1] for i in np.unique(s.labels) if i > 0]
        return (f"<b>recomputed</b>: {html.escape(done)} &nbsp;·&nbsp; compute {s.compute_seconds:.2f} s, "
                f"drawing {s.render_seconds:.2f} s &nbsp;·&nbsp; <b>cached</b>: {', '.join(kept) or '-'}"
                f"<br><b>present</b>: {html.escape(', '.join(present) or 'none')}")

    # --- drawing -----------------------------------------------------------------------------------------------------
    def _show(self, panel: str, fig: Figure) -> None:
        self.outputs[panel].outputs = (figure_output(fig, self.dpi),)

    def _draw_overlay(self) -> None:
        s = self.state
        key = s.outputs.keys["labels"]
        s.overlay = overlay(s.outputs.image, s.labels, alpha=self.alpha)
        if self._drawn.get("overlay") == key:
            return
        h, w = s.labels.shape
        fig = Figure(figsize=(7.5, max(2.5, 5.0 * h / max(w, 1))), layout="constrained")
        ax = fig.add_subplot()
        cfg = s.cfg
        show_segmentation(ax, s.outputs.image, s.labels, s.classes, alpha=self.alpha,
                          title=f"{s.image_name}: labels (score > {cfg.score_threshold:.2f}, bkg_thre "
                                f"{cfg.bkg_thre:.3g}, refinement {self.cache.effective_refinement(cfg)})")
        fig.suptitle(f"fused layers {cfg.fuse_layers[0]}-{cfg.fuse_layers[1]}, select layer {cfg.select_layer}")
        self._show("overlay", fig)
        self._drawn["overlay"] = key

    def _draw_scores(self) -> None:
        s = self.state
        key = (s.outputs.keys["labels"],)
        if self._drawn.get("scores") == key:
            return
        names, scores = s.classes, s.scores
        fig = Figure(figsize=(4.2, 0.5 + 0.35 * len(names) + 0.8), layout="constrained")
        ax = fig.add_subplot()
        colours = palette(len(names) + 1)[1:] / 255.0
        ax.barh(np.arange(len(names)), scores, color=colours, edgecolor="black", linewidth=0.5)
        ax.axvline(s.cfg.score_threshold, color="crimson", linestyle="--", label="score_threshold")
        ax.set_yticks(np.arange(len(names)), labels=names)
        ax.invert_yaxis()
        ax.set_xlabel("score s = ½·max S_f + ½·max S_c")
        ax.set_ylabel("class")
        ax.legend(loc="lower right", fontsize="small")
        fig.suptitle("class scores (present: score > threshold)")
        self._show("scores", fig)
        self._drawn["scores"] = key

    def _draw_maps(self, force: bool = False) -> None:
        s = self.state
        name = self.controls["map_class"].value
        if name not in s.classes:
            return
        key = (s.outputs.keys["refine"], name)
        if not force and self._drawn.get("maps") == key:
            return
        c = s.classes.index(name)
        image = s.outputs.image
        size = image.shape[:2]
        up = [F.interpolate(m[c][None, None].float().cpu(), size=size, mode="bilinear", align_corners=False)[0, 0]
              for m in (s.coarse, s.refined)]  # (H0, W0) each
        kind = self.cache.effective_refinement(s.cfg)
        fig = heatmap_grid(torch.stack(up), titles=[f"coarse S_c: {name}", f"refined S_f ({kind}): {name}"],
                           ncols=2, suptitle=f"class maps of '{name}' (score {s.scores[c]:.3f})", image=image,
                           colorbar_label="map value", panel_size=2.8)
        self._show("maps", fig)
        self._drawn["maps"] = key
