"""The CLIPer explorer: explicit ipywidgets controls over a `StageCache`, so a control recomputes
only its stages.

    explorer = Explorer(model, image="chelsea.jpg", classes="cat; sofa; wall")
    display(explorer.widget)                            # in Jupyter / Voila
    explorer.controls["score_threshold"].value = 0.5    # from code: outputs update synchronously
    explorer.state.labels, explorer.state.recomputed    # what it shows, what that move recomputed

Each control has an observer (`observe(..., names="value")`); no `interact`. Figures are drawn on
`matplotlib.figure.Figure` objects (no pyplot, so any backend, Agg included) and placed in `Output`
widgets as PNG display data, which works with or without a frontend. Which stages each control
invalidates: `moves.INVALIDATES`, derived from the stage graph that also makes the cache keys.
"""

from __future__ import annotations

import html
import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np

from ...config import CLIPerConfig
from ...images import content_id, read_image, rgb_array
from ...method.pipeline import CLIPer
from ...method.stages import STAGES
from ...vocab import read_class_file
from ..toolkit.background import Vocabulary, resolve_vocabulary
from ..toolkit.samples import sample_images, suggested_classes
from ..toolkit.stage_cache import StageCache
from ..toolkit.viz import overlay
from .controls import (
    DEFAULT_CROP,
    build_buttons,
    build_controls,
    build_layout,
    build_outputs,
    runnable_refinements,
)
from .export import download_links_html, export_state
from .moves import COMPUTE_CONTROLS, move_record
from .state import ExplorerState
from .view import Panels, error_html, status_html


class Explorer:
    """Controls for the image, classes, fused layer range, thresholds, sliding window and
    refinement; live outputs.

    `controls` maps names to widgets: image, upload, classes, background, fuse_layers, select_layer,
    attention_thr, score_threshold, bkg_thre, is_normalize, sliding, refinement, selection_head,
    map_class; `buttons` holds reset (back to the opening state) and export (`export()`). `widget`
    is the whole layout, `state` the current result, `history` one record per move. `defer=True`
    builds the controls without the first run (call `update()` once the page shows them). Background
    words follow `background.resolve_vocabulary`.
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
        export_dir: str | Path = "outputs/explorer",
        defer: bool = False,
    ):
        self.model = model
        self.cfg = cfg or model.cfg
        self.num_layers = model.clip.num_layers
        self.cfg.check_against_depth(self.num_layers)
        self.cache = cache or StageCache(model)
        self.alpha = alpha
        self.dpi = dpi
        self.raise_errors = raise_errors
        self.export_dir = Path(export_dir)
        self.state = ExplorerState()
        self.history: list[dict[str, Any]] = []
        self._images: dict[str, Any] = dict(images) if images is not None else dict(sample_images())
        if not self._images:
            raise ValueError(
                "no images: pass `images` (name -> path or array) or add photos to "
                "cliper_lib/data/samples"
            )
        self._arrays: dict[str, np.ndarray] = {}
        self._ids: dict[str, str] = {}
        self._suspended = False

        image = image if image is not None else next(iter(self._images))
        if image not in self._images:
            raise ValueError(f"image {image!r} is not one of {', '.join(self._images)}")
        self._build_widgets(image, *self._opening_texts(image, classes, background))
        self._opening = {
            name: box.value for name, box in self.controls.items() if name in COMPUTE_CONTROLS
        }
        self._show_hint(image)
        if not defer:
            self.update("init")

    def _opening_texts(
        self,
        image: str,
        classes: str | Sequence[str] | None,
        background: str | Sequence[str] | None,
    ) -> tuple[str, str]:
        """The classes and background boxes' opening text: as given, else the image's suggested
        classes (or the preset's) and the preset's background words."""
        if classes is None:
            classes = suggested_classes(image) or "; ".join(read_class_file(self.cfg.classes).names)
        classes_text = classes if isinstance(classes, str) else "; ".join(classes)
        if background is None:
            background = read_class_file(self.cfg.classes).background
        background_text = background if isinstance(background, str) else "; ".join(background)
        return classes_text, background_text

    def _build_widgets(self, image: str, classes_text: str, background_text: str) -> None:
        """The controls, outputs, status line, hint and buttons, wired to their observers, and the
        layout holding them (`widget`)."""
        self._crop = self.cfg.sliding_crop_size or DEFAULT_CROP
        self.controls = build_controls(
            self.cfg,
            self.num_layers,
            list(self._images),
            image,
            classes_text,
            background_text,
            runnable_refinements(self.model, self.cfg),
        )
        self.outputs = build_outputs()
        self.panels = Panels(self.outputs, self.cache.effective_refinement, self.alpha, self.dpi)
        self.status = W.HTML(value="")
        self.hint = W.HTML(value="")
        self.buttons = build_buttons()
        self.exported = W.HTML(value="")
        self.buttons["reset"].on_click(lambda _: self.reset())
        self.buttons["export"].on_click(lambda _: self._export_clicked())

        for name in COMPUTE_CONTROLS:
            self.controls[name].observe(
                lambda change, name=name: self._on_change(name, change), names="value"
            )
        self.controls["upload"].observe(self._on_upload, names="value")
        self.controls["map_class"].observe(self._on_map_class, names="value")

        self.widget = build_layout(
            self.controls, self.outputs, self.buttons, self.hint, self.exported, self.status
        )

    # --- reading the controls ---------------------------------------------------------------------
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

    def vocabulary(self) -> Vocabulary:
        """The classes and background words the boxes describe, after the rules of `background`."""
        return resolve_vocabulary(
            self.model, self.controls["classes"].value, self.controls["background"].value, self.cfg
        )

    def current_classes(self) -> list[str]:
        return self.vocabulary().classes

    def current_background(self) -> list[str]:
        return self.vocabulary().background

    def image_array(self, name: str | None = None) -> np.ndarray:
        """The (H, W, 3) uint8 pixels of an image in the chooser (loaded once)."""
        name = name or self.controls["image"].value
        if name not in self._arrays:
            array = rgb_array(self._images[name])
            self._arrays[name] = array
            self._ids[name] = f"{name}:{content_id(array)}"
        return self._arrays[name]

    # --- observers --------------------------------------------------------------------------------
    def _on_change(self, name: str, change: dict) -> None:
        if self._suspended:
            return
        if name == "refinement":
            self.controls["selection_head"].disabled = change["new"] != "selection"
        if name == "image":
            self._show_hint(change["new"])
        self.update(name)

    def _on_map_class(self, change: dict) -> None:
        if self._suspended or self.state.result is None:
            return
        start = time.perf_counter()
        self.panels.draw_maps(self.state, self.controls["map_class"].value, force=True)
        self.state.render_seconds = time.perf_counter() - start
        self.state.recomputed = {}
        self._record("map_class", change["new"], {}, 0.0, self.state.render_seconds)

    def _on_upload(self, change: dict) -> None:
        files = change["new"] or ()
        for item in files:
            self.add_image(
                item["name"], read_image(io.BytesIO(bytes(item["content"])), name=item["name"])
            )
        if files:
            self.controls["upload"].value = ()  # clear it, so the same file can be uploaded again

    def add_image(self, name: str, image: Any, select: bool = True) -> str:
        """Add an image to the chooser (a name already taken gets a suffix); select it (which
        recomputes)."""
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
        self.hint.value = (
            f"<i>suggested for {html.escape(image)}: {html.escape(hint)}</i>" if hint else ""
        )

    # --- the update -------------------------------------------------------------------------------
    def apply(self, name: str, value: Any) -> dict[str, Any]:
        """Set a control from code and return the record of that move (stages recomputed,
        seconds)."""
        before = len(self.history)
        self.controls[name].value = value
        if len(self.history) == before:  # the value did not change: no observer fired
            return move_record(name, value, {}, 0.0, 0.0, None)
        return self.history[-1]

    def update(self, reason: str = "update") -> dict[str, Any]:
        """Recompute what the controls' values need (cache hits elsewhere) and redraw what
        changed."""
        state = self.state
        try:
            name = self.controls["image"].value
            image = self.image_array(name)
            cfg = self.current_config()
            vocab = self.vocabulary()
            start = time.perf_counter()
            out = self.cache.run(
                image, cfg, vocab.classes, vocab.background, image_id=self._ids[name]
            )
            compute = time.perf_counter() - start
        # a bad value typed into a box: say so in the status line, keep the last result
        except Exception as error:
            state.error = f"{type(error).__name__}: {error}"
            self.status.value = error_html(state.error)
            record = self._record(reason, self._value_of(reason), {}, 0.0, 0.0)
            if self.raise_errors:
                raise
            return record
        # the real number of SD heads, once known (set quietly: no new move)
        if out.head_maps is not None:
            self._suspended = True
            try:
                self.controls["selection_head"].max = max(int(out.head_maps.shape[0]) - 1, 0)
            finally:
                self._suspended = False
        state.error = None
        state.image_name, state.cfg, state.classes, state.result = (
            name,
            cfg,
            list(out.class_names),
            out,
        )
        state.background, state.notices = list(out.text.background), list(vocab.notices)
        state.recomputed = dict(out.timings)
        state.compute_seconds = compute
        start = time.perf_counter()
        self._sync_class_choice(out.class_names)
        state.overlay = overlay(state.result.image, state.labels, alpha=self.alpha)
        self.panels.draw_overlay(state)
        self.panels.draw_scores(state)
        self.panels.draw_maps(state, self.controls["map_class"].value)
        state.render_seconds = time.perf_counter() - start
        self.status.value = self._status_html()
        return self._record(
            reason, self._value_of(reason), state.recomputed, compute, state.render_seconds
        )

    def _value_of(self, name: str) -> Any:
        return self.controls[name].value if name in self.controls else None

    def _record(
        self, control: str, value: Any, recomputed: dict[str, float], compute: float, render: float
    ):
        record = move_record(control, value, recomputed, compute, render, self.state.error)
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
                keep = (
                    names[int(np.argmax(scores))]
                    if scores is not None and len(scores)
                    else names[0]
                )
            box.value = keep
        finally:
            self._suspended = False

    def _status_html(self) -> str:
        s = self.state
        kept = [st for st in STAGES if st in s.result.keys and st not in s.recomputed]
        return status_html(s, kept, s.notices)

    # --- reset and export -------------------------------------------------------------------------
    def reset(self) -> dict[str, Any]:
        """Every control back to its opening value (the preset's state), in one move."""
        self._suspended = True
        try:
            for name, value in self._opening.items():
                self.controls[name].value = value
            self.controls["selection_head"].disabled = (
                self.controls["refinement"].value != "selection"
            )
        finally:
            self._suspended = False
        return self.update("reset")

    def export(self, folder: str | Path | None = None) -> dict[str, Path]:
        """Write the label PNG, overlay PNG, scores JSON and config YAML of what is shown; {kind:
        path}."""
        source = self._images.get(self.state.image_name)
        return export_state(self.state, folder or self.export_dir, source, self.alpha)

    def _export_clicked(self) -> None:
        try:
            self.exported.value = download_links_html(self.export())
        except Exception as error:  # a full disk or no result yet: say so beside the button
            self.exported.value = error_html(f"{type(error).__name__}: {error}")
