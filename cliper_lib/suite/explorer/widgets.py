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

import contextlib
import html
import io
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np

from ...config import CLIPerConfig
from ...images import ImageReadError, content_id, read_image, rgb_array
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
    build_gallery,
    build_layout,
    build_outputs,
    runnable_refinements,
)
from .export import download_links_html, export_state
from .moves import COMPUTE_CONTROLS, move_record
from .state import ExplorerState
from .view import Panels, busy_html, error_html, status_html

#: the boxes whose bad input gets its message beside them (others: in the status line).
NOTED = ("upload", "classes", "background")


class Explorer:
    """Controls for the image, classes, fused layer range, thresholds, sliding window and
    refinement; live outputs.

    `controls` maps names to widgets: image, upload, classes, keep_classes, background,
    fuse_layers, select_layer, attention_thr, score_threshold, bkg_thre, is_normalize, sliding,
    refinement, selection_head, opacity, show_labels, map_class; `buttons` holds reset (back to the
    opening state) and export (`export()`). `widget` is the whole layout, `state` the current
    result, `history` one record per move. `defer=True` builds the controls without the first run
    (call `update()` once the page shows them). Background words follow
    `background.resolve_vocabulary`.

    While a result is computed every control is disabled and the status line says so
    (`busy`); `compute_lock`, shared by explorers over one model (the app's visits), makes their
    model calls take turns. A new photo opens with its default classes unless "keep" is ticked.
    Bad input is reported beside the box it came from, in words, and the last result is kept.
    `link_of(path)` gives an exported file's download URL (else small files are embedded).
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
        compute_lock: threading.Lock | None = None,
        link_of: Callable[[Path], str] | None = None,
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
        self.compute_lock = compute_lock
        self.link_of = link_of
        self.busy = False
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

    def default_classes(self, image: str) -> str:
        """The classes a photo opens with: its suggested ones, else the preset's."""
        return suggested_classes(image) or "; ".join(read_class_file(self.cfg.classes).names)

    def _opening_texts(
        self,
        image: str,
        classes: str | Sequence[str] | None,
        background: str | Sequence[str] | None,
    ) -> tuple[str, str]:
        """The classes and background boxes' opening text: as given, else the image's suggested
        classes (or the preset's) and the preset's background words."""
        if classes is None:
            classes = self.default_classes(image)
        classes_text = classes if isinstance(classes, str) else "; ".join(classes)
        if background is None:
            background = read_class_file(self.cfg.classes).background
        background_text = background if isinstance(background, str) else "; ".join(background)
        return classes_text, background_text

    def _build_widgets(self, image: str, classes_text: str, background_text: str) -> None:
        """The controls, outputs, status line, hint, messages, gallery and buttons, wired to their
        observers, and the layout holding them (`widget`)."""
        self._crop = self.cfg.sliding_crop_size or DEFAULT_CROP
        self.controls = build_controls(
            self.cfg,
            self.num_layers,
            list(self._images),
            image,
            classes_text,
            background_text,
            runnable_refinements(self.model, self.cfg),
            alpha=self.alpha,
        )
        self.outputs = build_outputs()
        self.panels = Panels(self.outputs, self.cache.effective_refinement, self.alpha, self.dpi)
        self.status = W.HTML(value="")
        self.hint = W.HTML(value="")
        self.notes = {name: W.HTML(value="") for name in NOTED}
        self.buttons = build_buttons()
        self.exported = W.HTML(value="")
        self.buttons["reset"].on_click(lambda _: self.reset())
        self.buttons["export"].on_click(lambda _: self._export_clicked())
        samples = {n: p for n, p in sample_images().items() if self._images.get(n) == p}
        gallery, self.gallery = build_gallery(samples) if samples else (None, {})
        for name, button in self.gallery.items():
            button.on_click(lambda _, name=name: self._open(name))

        for name in COMPUTE_CONTROLS:
            self.controls[name].observe(
                lambda change, name=name: self._on_change(name, change), names="value"
            )
        self.controls["upload"].observe(self._on_upload, names="value")
        self.controls["map_class"].observe(self._on_map_class, names="value")
        for name in ("opacity", "show_labels"):
            self.controls[name].observe(self._on_look, names="value")

        self.widget = build_layout(
            self.controls,
            self.outputs,
            self.buttons,
            self.hint,
            self.exported,
            self.status,
            self.notes,
            gallery,
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
            self._new_photo(change["new"])
        self.update(name)

    def _new_photo(self, image: str) -> None:
        """A new photo shown: its hint, and its default classes unless the visitor keeps theirs."""
        self._show_hint(image)
        if not self.controls["keep_classes"].value:
            self._set_quietly("classes", self.default_classes(image))

    def _open(self, name: str) -> None:
        """Show a photo of the chooser (the gallery's buttons)."""
        self.controls["image"].value = name

    def _on_look(self, change: dict) -> None:
        """Opacity or labels on/off: redraw the overlay only (nothing is recomputed)."""
        k = self.controls
        self.panels.alpha = float(k["opacity"].value) if k["show_labels"].value else 0.0
        k["opacity"].disabled = not k["show_labels"].value
        if self.state.result is not None and not self._suspended:
            self.panels.draw_overlay(self.state)

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
        if not files:
            return
        self._set_quietly("upload", ())  # cleared, so the same file can be uploaded again
        for item in files:
            self.receive_file(item["name"], bytes(item["content"]))

    def receive_file(self, name: str, content: bytes) -> str | None:
        """An uploaded (dropped, pasted) file: added and shown when it is a photo; else a message
        beside the upload button. The added name, or None."""
        self.notes["upload"].value = ""
        try:
            pixels = read_image(io.BytesIO(content), name=name)
        except ImageReadError as error:
            self.notes["upload"].value = error_html(
                f"{name} is not a photo this app can open (JPEG, PNG, WebP, TIFF…): "
                f"{str(error).split(': ', 1)[-1]}"
            )
            return None
        return self.add_image(name, on_white(content, pixels))

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

    def _set_quietly(self, name: str, value: Any) -> None:
        """Set a control without it counting as a move."""
        self._suspended = True
        try:
            self.controls[name].value = value
        finally:
            self._suspended = False

    # --- the busy state ---------------------------------------------------------------------------
    def _interactive(self) -> list[Any]:
        return [*self.controls.values(), *self.buttons.values(), *self.gallery.values()]

    @contextlib.contextmanager
    def busy_state(self, what: str) -> Iterator[None]:
        """Every control disabled and `what` in the status line with a moving bar, until done
        (nested uses are one busy state)."""
        if self.busy:
            yield
            return
        boxes = self._interactive()
        was = [box.disabled for box in boxes]
        self.busy = True
        # the page applies these in order: controls off and the line written before the page is
        # marked busy, the mark gone before the controls come back
        for box in boxes:
            box.disabled = True
        self.status.value = busy_html(what)
        self.widget.add_class("cliper-busy")
        try:
            yield
        finally:
            self.widget.remove_class("cliper-busy")
            for box, disabled in zip(boxes, was, strict=True):
                box.disabled = disabled
            self.busy = False

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This explorer's turn at the model (at once when nobody else computes)."""
        lock = self.compute_lock
        if lock is None:
            yield
            return
        if not lock.acquire(blocking=False):
            self.status.value = busy_html("waiting: another visitor's result is being computed…")
            lock.acquire()
        try:
            self.status.value = busy_html("computing the result…")
            yield
        finally:
            lock.release()

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
        changed; every control disabled meanwhile."""
        with self.busy_state("computing the result…"):
            return self._update(reason)

    def _update(self, reason: str) -> dict[str, Any]:
        state = self.state
        try:
            name = self.controls["image"].value
            image = self.image_array(name)
            cfg = self.current_config()
            vocab = self.vocabulary()
            with self._turn():
                start = time.perf_counter()
                out = self.cache.run(
                    image, cfg, vocab.classes, vocab.background, image_id=self._ids[name]
                )
                compute = time.perf_counter() - start
        # a bad value typed into a box: say so beside it, keep the last result
        except Exception as error:
            if self.raise_errors:
                raise
            return self._failed(reason, error)
        for note in self.notes.values():
            note.value = ""
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
        self._draw()
        return self._record(
            reason, self._value_of(reason), state.recomputed, compute, state.render_seconds
        )

    def _failed(self, reason: str, error: Exception) -> dict[str, Any]:
        """Say what went wrong beside the box that caused it (else in the status line), in
        words; the last result stays."""
        message = (
            str(error) if isinstance(error, ValueError) else f"{error} ({type(error).__name__})"
        )
        self.state.error = message
        where = reason if reason in self.notes else None
        if where is not None:
            self.notes[where].value = error_html(f"not applied: {message}")
        shown = (
            f"not applied: see the message beside {where}" if where else f"not applied: {message}"
        )
        self.status.value = error_html(shown)
        return self._record(reason, self._value_of(reason), {}, 0.0, 0.0)

    def _draw(self) -> None:
        """Redraw what the new result changed, then the status line."""
        state = self.state
        start = time.perf_counter()
        self._sync_class_choice(state.classes)
        state.overlay = overlay(state.result.image, state.labels, alpha=self.alpha)
        self.panels.draw_overlay(state)
        self.panels.draw_scores(state)
        self.panels.draw_maps(state, self.controls["map_class"].value)
        state.render_seconds = time.perf_counter() - start
        self.status.value = self._status_html()

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
        self._show_hint(self.controls["image"].value)
        return self.update("reset")

    def export(self, folder: str | Path | None = None) -> dict[str, Path]:
        """Write the label PNG, overlay PNG, scores JSON, config YAML and the photo of what is
        shown into a new folder under `folder` (default: export_dir); {kind: path}."""
        source = self._images.get(self.state.image_name)
        return export_state(self.state, folder or self.export_dir, source, self.alpha)

    def _export_clicked(self) -> None:
        try:
            with self.busy_state("exporting…"):
                paths = self.export()
            self.exported.value = download_links_html(paths, self.link_of)
        except Exception as error:  # a full disk or no result yet: say so beside the button
            self.exported.value = error_html(f"not exported: {error}")
        self.status.value = self._status_html() if self.state.result is not None else ""


def on_white(content: bytes, pixels: np.ndarray) -> np.ndarray:
    """The photo's pixels composited on white where the file is transparent (an alpha channel or a
    transparent palette colour); `pixels` as read when it has none."""
    from PIL import Image

    with Image.open(io.BytesIO(content)) as im:
        if "A" not in im.getbands() and "transparency" not in im.info:
            return pixels
        rgba = np.asarray(im.convert("RGBA"))
    if rgba.shape[:2] != pixels.shape[:2]:  # turned by its EXIF orientation: keep it as read
        return pixels
    alpha = rgba[:, :, 3:].astype(np.float32) / 255.0
    white = 255.0 * (1.0 - alpha)
    return np.clip(np.rint(pixels.astype(np.float32) * alpha + white), 0, 255).astype(np.uint8)
