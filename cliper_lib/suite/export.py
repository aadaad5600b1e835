"""Export what the explorer shows: label PNG, overlay PNG, scores JSON and the exact config YAML, in one folder.

The YAML is a complete preset (every config field of the current state) headed by the command that reproduces
the labels: `cliper segment IMAGE --preset <stem>_config.yaml --classes ... --background ...`.
"""
from __future__ import annotations

import base64
import html
import shlex
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import CLIPerConfig
from ..files import atomic_write_json, atomic_write_text
from .viz import save_label_png, save_overlay_png

#: the four files of one export, by kind: the file name is <stem><suffix>.
EXPORT_SUFFIXES = {"labels": "_labels.png", "overlay": "_overlay.png", "scores": "_scores.json",
                   "config": "_config.yaml"}


def reproduce_command(image: str, config_path: Path, classes: Sequence[str], background: Sequence[str],
                      out: str = "reproduced") -> str:
    """The `cliper segment` command line that recomputes an export's labels from its config YAML."""
    return shlex.join(["cliper", "segment", image, "--preset", str(config_path), "--classes", "; ".join(classes),
                       "--background", "; ".join(background), "--out", out])


def export_result(folder: str | Path, stem: str, image: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                  background: Sequence[str], scores: np.ndarray, cfg: CLIPerConfig, image_path: str | None = None,
                  alpha: float = 0.5) -> dict[str, Path]:
    """Write the four files of the current state to `folder`; returns {kind: path} (kinds of EXPORT_SUFFIXES)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / f"{stem}{suffix}" for kind, suffix in EXPORT_SUFFIXES.items()}
    command = reproduce_command(image_path or "<your image>", paths["config"], classes, background)
    save_label_png(paths["labels"], labels)
    save_overlay_png(paths["overlay"], image, labels, classes, alpha=alpha,
                     title=f"{stem}: CLIPer ({cfg.profile})")
    present = [classes[k - 1] for k in np.unique(labels) if 0 < k <= len(classes)]
    atomic_write_json(paths["scores"], {
        "image": image_path, "classes": list(classes), "background": list(background),
        "scores": {name: round(float(s), 6) for name, s in zip(classes, scores)}, "present": present,
        "profile": cfg.profile, "preset": cfg.preset, "refinement": cfg.refinement, "reproduce": command,
    })
    atomic_write_text(paths["config"], f"# CLIPer config exported by the explorer. Reproduce the labels with:\n"
                                       f"#   {command}\n" + cfg.to_yaml())
    return paths


def download_links_html(paths: dict[str, Path]) -> str:
    """Links that download each exported file from the page itself (data URLs: no file server needed)."""
    kinds = {".png": "image/png", ".json": "application/json", ".yaml": "text/yaml"}
    links = []
    for kind, path in paths.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        links.append(f"<a download='{html.escape(path.name)}' href='data:{kinds[path.suffix]};base64,{data}' "
                     f"class='cliper-download'>{html.escape(path.name)}</a>")
    folder = html.escape(str(next(iter(paths.values())).parent)) if paths else ""
    return f"exported to <code>{folder}</code>: " + " · ".join(links)
