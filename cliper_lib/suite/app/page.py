"""The app page: settings from the environment `cliper app` sets, models loaded once per kernel, the explorer.

app.ipynb is three one-line cells (`AppPage`): a placeholder at once, then the explorer's controls once the
models are loaded (once per kernel), and only then the first result, so the controls show before the result
does (Voila renders progressively, cell by cell). A model that cannot be built (paper weights missing offline, a bad preset) shows the same one-line
message the CLI prints, never a traceback.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

#: the environment variables `cliper app` sets for the page (the kernel inherits the server's environment).
ENV = {"preset": "CLIPER_APP_PRESET", "profile": "CLIPER_APP_PROFILE", "device": "CLIPER_APP_DEVICE",
       "dtype": "CLIPER_APP_DTYPE", "images": "CLIPER_APP_IMAGES", "classes": "CLIPER_APP_CLASSES",
       "background": "CLIPER_APP_BACKGROUND", "out": "CLIPER_APP_OUT"}


@dataclass
class AppSettings:
    """What the page opens with: the preset (its layers and thresholds), models, images and classes."""

    preset: str = "vit-b-16/voc21"
    profile: str | None = None  # None: the preset's (paper)
    device: str | None = None
    dtype: str | None = None
    images: list[str] = field(default_factory=list)  # extra images (paths) before the bundled samples
    classes: str | None = None  # None: the first image's suggested classes (empty for your own image)
    background: str | None = None  # None: the preset's vocabulary minus the classes
    out: str = "outputs/app"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "AppSettings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {name: env[var] for name, var in ENV.items() if env.get(var) is not None}
        if "images" in values:
            values["images"] = [p for p in values["images"].split(os.pathsep) if p]
        return cls(**values)

    def to_environment(self) -> dict[str, str]:
        values = {**self.__dict__, "images": os.pathsep.join(self.images)}
        return {ENV[name]: str(value) for name, value in values.items() if value is not None}


_MODELS: dict[tuple, Any] = {}  # one model per (preset, profile, device, dtype) per kernel


def load_model(settings: AppSettings):
    """The model the settings name, built once per kernel."""
    from ...config import CLIPerConfig
    from ...weights.models import CLIPer

    cfg = CLIPerConfig.from_preset(settings.preset, profile=settings.profile, device=settings.device,
                                   dtype=settings.dtype)
    key = (settings.preset, cfg.profile, cfg.device, cfg.dtype)
    if key not in _MODELS:
        _MODELS[key] = CLIPer.from_config(cfg)
    return _MODELS[key]


def build_explorer(settings: AppSettings, defer: bool = True):
    """The explorer on the settings' images (given ones first, then the bundled samples), in the preset's state."""
    from ...images import read_image
    from ..samples import sample_images, suggested_classes
    from ..widgets import Explorer

    model = load_model(settings)
    images: dict[str, Any] = {Path(p).name: Path(p) for p in settings.images}
    for path in settings.images:
        read_image(path)  # an unreadable file fails here, with its name, before the page is built
    images.update({name: path for name, path in sample_images().items() if name not in images})
    first = next(iter(images))
    classes = settings.classes if settings.classes is not None else (suggested_classes(first) or "")
    return Explorer(model, images=images, image=first, classes=classes, background=settings.background,
                    export_dir=settings.out, defer=defer)


def error_html(error: BaseException) -> str:
    return (f"<div class='cliper-error' style='color:#b00;font-family:monospace;white-space:pre-wrap'>"
            f"cliper: {html.escape(str(error))}</div>")


class AppPage:
    """The page in three steps, one notebook cell each, so Voila shows each as soon as it is done.

    `AppPage()` displays a placeholder, `load()` puts the controls in its place once the models are loaded (or
    the CLI's one-line message when they cannot be built), `first_result()` computes what the explorer shows.
    """

    def __init__(self, settings: AppSettings | None = None):
        import ipywidgets as W
        from IPython.display import display

        self.settings = settings or AppSettings.from_environment()
        self.explorer = None
        self.error: str | None = None
        self.widget = W.VBox([W.HTML(f"<i>loading the models ({html.escape(self.settings.preset)}, profile "
                                     f"{html.escape(self.settings.profile or 'paper')})…</i>")])
        self.widget.add_class("cliper-app")
        display(self.widget)

    def load(self) -> None:
        import ipywidgets as W

        from ...config import ConfigError
        from ...images import ImageReadError
        from ...weights.hub import WeightsMissingError

        try:
            self.explorer = build_explorer(self.settings, defer=True)
        except (WeightsMissingError, ConfigError, ImageReadError, FileNotFoundError, ValueError) as error:
            self.error = str(error)
            self.widget.children = [W.HTML(error_html(error))]  # the CLI's message, no traceback
            return
        self.widget.children = [self.explorer.widget]
        self.explorer.status.value = "<i>computing the first result…</i>"

    def first_result(self) -> None:
        """Compute and draw the opening result (or ask for classes when there are none yet)."""
        if self.explorer is None:
            return
        if self.explorer.controls["classes"].value.strip():
            self.explorer.update("init")
        else:
            self.explorer.status.value = "<b>type the classes to look for</b> (';'-separated), then press Enter"
