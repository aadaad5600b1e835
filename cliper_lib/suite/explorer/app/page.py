"""The app page: settings from the environment `cliper app` sets, models loaded once per kernel, the
explorer.

app.ipynb is three one-line cells (`AppPage`): the explorer's controls at once (from the config
alone, disabled while the models load), then the live controls once the models are loaded (once per
kernel), and only then the first result (Voila renders progressively, cell by cell). A model that
cannot be built (paper weights missing offline, a bad preset) shows the same one-line message the
CLI prints, never a traceback. Torch is imported only once the controls show.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as W
from IPython.display import display

from ....config import CLIPerConfig, ConfigError
from ....images import ImageReadError, read_image
from ....vocab import read_class_file
from ....weights.hub import WeightsMissingError
from ...toolkit.samples import sample_images, suggested_classes
from ..controls import (
    build_controls,
    build_layout,
    build_outputs,
    planned_refinements,
    vision_depth,
)
from .settings import AppSettings

#: the errors that show as the CLI's one-line message (weights missing offline, a bad preset or
#: image).
PAGE_ERRORS = (WeightsMissingError, ConfigError, ImageReadError, FileNotFoundError, ValueError)

_MODELS: dict[tuple, Any] = {}  # one model per (preset, profile, device, dtype) per kernel


def load_model(settings: AppSettings):
    """The model the settings name, built once per kernel."""
    from ....weights.models import CLIPer  # torch: only after the controls show

    cfg = CLIPerConfig.from_preset(
        settings.preset, profile=settings.profile, device=settings.device, dtype=settings.dtype
    )
    key = (settings.preset, cfg.profile, cfg.device, cfg.dtype)
    if key not in _MODELS:
        _MODELS[key] = CLIPer.from_config(cfg)
    return _MODELS[key]


@dataclass
class Opening:
    """What the explorer opens on: its images (given ones first, then the bundled samples), the
    first image, its classes and background words. Config and files only, so the page can draw the
    controls before any model."""

    cfg: Any  # CLIPerConfig
    images: dict[str, Any]
    image: str
    classes: str
    background: str | None

    @classmethod
    def from_settings(cls, settings: AppSettings) -> Opening:
        cfg = CLIPerConfig.from_preset(
            settings.preset, profile=settings.profile, device=settings.device, dtype=settings.dtype
        )
        images: dict[str, Any] = {Path(p).name: Path(p) for p in settings.images}
        for path in settings.images:
            # an unreadable file fails here, with its name, before the page is built
            read_image(path)
        images.update({name: path for name, path in sample_images().items() if name not in images})
        first = next(iter(images))
        classes = (
            settings.classes if settings.classes is not None else (suggested_classes(first) or "")
        )
        return cls(cfg, images, first, classes, settings.background)

    def background_text(self) -> str:
        """The background box's opening text, as `Explorer` fills it (the preset's vocabulary when
        unset)."""
        words = (
            read_class_file(self.cfg.classes).background
            if self.background is None
            else self.background
        )
        return words if isinstance(words, str) else "; ".join(words)


def preview_widget(opening: Opening, message: str) -> Any:
    """The explorer's layout with its controls in the opening state, all disabled, and `message` as
    status: drawn from the config alone (the layer count from `vision_depth`), before torch is
    imported."""
    depth = vision_depth(opening.cfg)
    opening.cfg.check_against_depth(depth)
    controls = build_controls(
        opening.cfg,
        depth,
        list(opening.images),
        opening.image,
        opening.classes,
        opening.background_text(),
        planned_refinements(opening.cfg),
    )
    for box in controls.values():
        box.disabled = True
    outputs = build_outputs()
    buttons = {
        "reset": W.Button(description="reset", disabled=True),
        "export": W.Button(description="export", icon="download", disabled=True),
    }
    return build_layout(controls, outputs, buttons, W.HTML(), W.HTML(), W.HTML(value=message))


def build_explorer(settings: AppSettings, defer: bool = True, opening: Opening | None = None):
    """The explorer on the settings' images (given ones first, then the bundled samples), in the
    preset's state."""
    from ..widgets import Explorer  # torch: only after the controls show

    opening = opening or Opening.from_settings(settings)
    model = load_model(settings)
    return Explorer(
        model,
        images=opening.images,
        image=opening.image,
        classes=opening.classes,
        background=settings.background,
        export_dir=settings.out,
        defer=defer,
    )


def error_html(error: BaseException) -> str:
    return (
        f"<div class='cliper-error' style='color:#b00;font-family:monospace;white-space:pre-wrap'>"
        f"cliper: {html.escape(str(error))}</div>"
    )


class AppPage:
    """The page in three steps, one notebook cell each, so Voila shows each as soon as it is done.

    `AppPage()` displays the controls at once in the preset's state, disabled and marked "loading
    the models…" (the config alone draws them: no torch yet); `load()` builds the models (once per
    kernel) and puts the live, enabled explorer in their place (or the CLI's one-line message when
    they cannot be built); `first_result()` computes what the explorer shows. The page gets the CSS
    class `cliper-ready` once live.
    """

    def __init__(self, settings: AppSettings | None = None):
        self.settings = settings or AppSettings.from_environment()
        self.explorer = None
        self.error: str | None = None
        self.opening: Opening | None = None
        loading = (
            f"<i>loading the models ({html.escape(self.settings.preset)}, profile "
            f"{html.escape(self.settings.profile or 'paper')})…</i>"
        )
        try:
            self.opening = Opening.from_settings(self.settings)
            shown = preview_widget(self.opening, loading)
        except PAGE_ERRORS as error:
            self.error = str(error)
            shown = W.HTML(error_html(error))  # the CLI's message, no traceback
        self.widget = W.VBox([shown])
        self.widget.add_class("cliper-app")
        display(self.widget)

    def load(self) -> None:
        if self.error is not None:
            return
        try:
            self.explorer = build_explorer(self.settings, defer=True, opening=self.opening)
        except PAGE_ERRORS as error:
            self.error = str(error)
            self.widget.children = [W.HTML(error_html(error))]  # the CLI's message, no traceback
            return
        self.widget.children = [self.explorer.widget]
        self.widget.add_class("cliper-ready")
        self.explorer.status.value = "<i>computing the first result…</i>"

    def first_result(self) -> None:
        """Compute and draw the opening result (or ask for classes when there are none yet)."""
        if self.explorer is None:
            return
        if self.explorer.controls["classes"].value.strip():
            self.explorer.update("init")
        else:
            self.explorer.status.value = (
                "<b>type the classes to look for</b> (';'-separated), then press Enter"
            )
