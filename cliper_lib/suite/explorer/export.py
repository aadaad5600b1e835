"""Export what the explorer shows: label PNG, overlay PNG, scores JSON and the exact config YAML, in
one folder.

The YAML is a complete preset (every config field of the current state) headed by the command that
reproduces the labels: `cliper segment IMAGE --preset <stem>_config.yaml --classes ... --background
...`.
"""

from __future__ import annotations

import base64
import html
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...config import CLIPerConfig
from ...files import atomic_write_text
from ..toolkit.outputs import OUTPUT_SUFFIXES, write_segmentation_files

#: the four files of one export, by kind (<stem><suffix>): `cliper segment`'s three and the config
#: reproducing them.
EXPORT_SUFFIXES = {
    **dict(zip(("labels", "overlay", "scores"), OUTPUT_SUFFIXES, strict=True)),
    "config": "_config.yaml",
}


def reproduce_command(
    image: str,
    config_path: Path,
    classes: Sequence[str],
    background: Sequence[str],
    out: str = "reproduced",
) -> str:
    """The `cliper segment` command line that recomputes an export's labels from its config YAML."""
    return shlex.join(
        [
            "cliper",
            "segment",
            image,
            "--preset",
            str(config_path),
            "--classes",
            "; ".join(classes),
            "--background",
            "; ".join(background),
            "--out",
            out,
        ]
    )


def export_result(
    folder: str | Path,
    stem: str,
    image: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    background: Sequence[str],
    scores: np.ndarray,
    cfg: CLIPerConfig,
    image_path: str | None = None,
    alpha: float = 0.5,
) -> dict[str, Path]:
    """Write the four files of the current state to `folder`; returns {kind: path} (the kinds of
    EXPORT_SUFFIXES)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / f"{stem}{suffix}" for kind, suffix in EXPORT_SUFFIXES.items()}
    command = reproduce_command(image_path or "<your image>", paths["config"], classes, background)
    present = [classes[k - 1] for k in np.unique(labels) if 0 < k <= len(classes)]
    record = {
        "image": image_path,
        "classes": list(classes),
        "background": list(background),
        "scores": {name: round(float(s), 6) for name, s in zip(classes, scores, strict=True)},
        "present": present,
        "profile": cfg.profile,
        "preset": cfg.preset,
        "refinement": cfg.refinement,
        "reproduce": command,
    }
    write_segmentation_files(
        [paths[kind] for kind in ("labels", "overlay", "scores")],
        image,
        labels,
        classes,
        record,
        title=f"{stem}: CLIPer ({cfg.profile})",
        alpha=alpha,
    )
    atomic_write_text(
        paths["config"],
        f"# CLIPer config exported by the explorer. Reproduce the labels with:\n"
        f"#   {command}\n" + cfg.to_yaml(),
    )
    return paths


def download_links_html(paths: dict[str, Path]) -> str:
    """Links that download each exported file from the page itself (data URLs: no file server
    needed)."""
    kinds = {".png": "image/png", ".json": "application/json", ".yaml": "text/yaml"}
    links = []
    for path in paths.values():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        links.append(
            f"<a download='{html.escape(path.name)}' "
            f"href='data:{kinds[path.suffix]};base64,{data}' "
            f"class='cliper-download'>{html.escape(path.name)}</a>"
        )
    folder = html.escape(str(next(iter(paths.values())).parent)) if paths else ""
    return f"exported to <code>{folder}</code>: " + " · ".join(links)


def export_state(
    state: Any, folder: str | Path, source: Any, alpha: float = 0.5
) -> dict[str, Path]:
    """`export_result` of what the explorer shows (`ExplorerState`), named after its image; the
    command names `source`, the image's file, when it has one. {kind: path}."""
    if state.labels is None:
        raise ValueError("nothing to export yet: no result is shown")
    image_path = (
        str(Path(source).resolve()) if isinstance(source, (str, Path)) else state.image_name
    )
    return export_result(
        folder,
        Path(state.image_name).stem,
        state.result.image,
        state.labels,
        state.classes,
        state.background,
        state.scores,
        state.cfg,
        image_path=image_path,
        alpha=alpha,
    )
