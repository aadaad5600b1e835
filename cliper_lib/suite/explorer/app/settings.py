"""The settings `cliper app` hands the page: the opening preset, models, images and classes, carried
in environment variables (so the Solara page module, imported by the server, reads them the same way
in a test's subprocess)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ....config import DEFAULT_PRESET, CLIPerConfig, with_field_options

#: the environment variables `cliper app` sets for the page.
ENV = {
    "preset": "CLIPER_APP_PRESET",
    "profile": "CLIPER_APP_PROFILE",
    "device": "CLIPER_APP_DEVICE",
    "dtype": "CLIPER_APP_DTYPE",
    "refinement": "CLIPER_APP_REFINEMENT",
    "overrides": "CLIPER_APP_SET",
    "images": "CLIPER_APP_IMAGES",
    "classes": "CLIPER_APP_CLASSES",
    "background": "CLIPER_APP_BACKGROUND",
    "out": "CLIPER_APP_OUT",
}


@dataclass
class AppSettings:
    """What the page opens with: the preset (its layers and thresholds), models, images and
    classes."""

    preset: str = DEFAULT_PRESET
    profile: str | None = None  # None: the preset's (paper)
    device: str | None = None
    dtype: str | None = None
    refinement: str | None = None  # None: the preset's
    overrides: dict[str, Any] = field(default_factory=dict)  # `--set KEY=VALUE`, parsed
    # extra images (paths) before the bundled samples
    images: list[str] = field(default_factory=list)
    # None: the first image's suggested classes (empty for your own image)
    classes: str | None = None
    background: str | None = None  # None: the preset's vocabulary minus the classes
    out: str = "outputs/app"

    def config(self) -> CLIPerConfig:
        """The opening config: the preset with the profile, device, dtype, refinement and --set."""
        chosen = {"profile": self.profile, "device": self.device, "dtype": self.dtype}
        chosen["refinement"] = self.refinement
        chosen = {name: value for name, value in chosen.items() if value is not None}
        return CLIPerConfig.from_preset_given(
            self.preset, with_field_options(self.overrides, chosen)
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> AppSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            name: env[var] for name, var in ENV.items() if env.get(var) is not None
        }
        if "images" in values:
            values["images"] = [p for p in values["images"].split(os.pathsep) if p]
        if "overrides" in values:
            values["overrides"] = json.loads(values["overrides"])
        return cls(**values)

    def to_environment(self) -> dict[str, str]:
        values = {
            **self.__dict__,
            "images": os.pathsep.join(self.images),
            "overrides": json.dumps(self.overrides) if self.overrides else None,
        }
        return {ENV[name]: str(value) for name, value in values.items() if value is not None}
