"""The app page of one visit: settings from the environment `cliper app` sets, the models loaded
once per server and shared by every visit, the explorer.

A page opens in three steps (`AppPage`): the explorer's controls at once (from the config alone,
disabled while the models load), then the live controls once the models are loaded (the first
visit loads them; later ones find them), and only then the first result. A model that cannot be
built (paper weights missing offline, a bad preset) shows the CLI's one-line message and the
commands that get out of it, never a traceback. Torch is imported only once the controls show.
"""

from __future__ import annotations

import html
import shlex
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as W

from ....config import ConfigError
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

_MODELS: dict[tuple, Any] = {}  # one model per (preset, config) per server process
_LOADING = threading.Lock()  # two first visits load the models once
#: model calls take turns: one computation at a time, whichever visit asks.
COMPUTE_LOCK = threading.Lock()


def load_model(settings: AppSettings):
    """The model the settings name, built once per process and shared by every visit."""
    from ....weights.models import CLIPer  # torch: only after the controls show

    cfg = settings.config()
    key = (settings.preset, cfg.to_yaml())
    with _LOADING:
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
        cfg = settings.config()
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
    from ..controls import build_buttons

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
    buttons = build_buttons()
    for box in [*controls.values(), *buttons.values()]:
        box.disabled = True
    notes = {name: W.HTML() for name in ("upload", "classes", "background")}
    return build_layout(
        controls, build_outputs(), buttons, W.HTML(), W.HTML(), W.HTML(value=message), notes
    )


def offline_commands(settings: AppSettings) -> list[str]:
    """The commands that get a page whose models cannot load going (each accepted by `cliper`)."""
    preset = ["--preset", settings.preset]
    return [
        shlex.join(["cliper", "download", *preset]),
        shlex.join(["cliper", "app", *preset, "--refinement", "none"]),
        shlex.join(
            ["cliper", "app", *preset, "--set", "pretrained=/path/to/clip.pt"]
            + ["--set", "sd_repo=/path/to/diffusers-folder"]
        ),
        shlex.join(["cliper", "app", *preset, "--profile", "smoke"]),
    ]


#: the config fields `cliper app` has an option of its own for (others: `--set field=value`).
APP_OPTIONS = ("profile", "refinement", "device", "dtype")


def app_spelling(field: str, value: str) -> str:
    """A config change as `cliper app` options (what the CLI's offline report suggests, here)."""
    return f"--{field} {value}" if field in APP_OPTIONS else f"--set {field}={value}"


def page_message(error: BaseException, settings: AppSettings | None) -> str:
    """The CLI's message for `error`, its suggestions spelled as `cliper app` options and its
    preset placeholder filled in."""
    message = str(error)
    if getattr(error, "missing", None):  # an offline report: imports torch, needed only here
        from ....weights.inventory import respelled

        message = respelled(error, app_spelling)
    if settings is not None:
        message = message.replace("--preset NAME", shlex.join(["--preset", settings.preset]))
    return message


def error_html(error: BaseException, settings: AppSettings | None = None) -> str:
    """The CLI's message (no traceback); for missing weights, the commands that get out of it."""
    commands = ""
    if isinstance(error, WeightsMissingError) and settings is not None:
        items = "".join(
            f"<li><code class='cliper-command'>{html.escape(c)}</code></li>"
            for c in offline_commands(settings)
        )
        commands = (
            "<p><b>Fetch the weights on a machine with internet, point the app at local files, "
            f"run without Stable Diffusion, or try the tiny random models:</b></p><ul>{items}</ul>"
        )
    return (
        f"<div class='cliper-error' style='color:#b00;font-family:monospace;white-space:pre-wrap'>"
        f"cliper: {html.escape(page_message(error, settings))}</div>{commands}"
    )


class AppPage:
    """One visit's page in three steps, so the visitor sees each as soon as it is done.

    `AppPage()` builds the controls at once in the preset's state, disabled and marked "loading
    the models…" (the config alone draws them: no torch yet); `load()` gets the models (loaded once
    per server) and puts the live, enabled explorer in their place (or the CLI's one-line message
    when they cannot be built); `first_result()` computes what the explorer shows. The page gets the
    CSS class `cliper-ready` once live. `link_of` turns an exported file into its download URL.
    """

    def __init__(self, settings: AppSettings | None = None, link_of=None):
        self.settings = settings or AppSettings.from_environment()
        self.link_of = link_of
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
            shown = W.HTML(error_html(error, self.settings))  # the CLI's message, no traceback
        self.widget = W.VBox([shown])
        self.widget.add_class("cliper-app")

    def load(self) -> None:
        if self.error is not None:
            return
        from ..widgets import Explorer  # torch: only after the controls show

        try:
            model = load_model(self.settings)
            opening = self.opening
            self.explorer = Explorer(
                model,
                images=opening.images,
                image=opening.image,
                classes=opening.classes,
                background=self.settings.background,
                cfg=opening.cfg,
                export_dir=self.settings.out,
                defer=True,
                compute_lock=COMPUTE_LOCK,
                link_of=self.link_of,
            )
        except PAGE_ERRORS as error:
            self.error = str(error)
            self.widget.children = [W.HTML(error_html(error, self.settings))]
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
                "<b>type the classes to look for</b> (separated by ';', ',' or new lines), "
                "then press Enter"
            )
