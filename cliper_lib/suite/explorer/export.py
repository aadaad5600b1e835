"""Export what the explorer shows: label PNG, overlay PNG, scores JSON, the exact config YAML and
the photo itself, in a folder of its own per export (`<root>/<date>-<time>-<stem>/`).

The YAML is a complete preset (every config field of the current state) headed by the command that
reproduces the labels from inside that folder, on any machine: `cliper segment <photo> --preset
<stem>_config.yaml --classes ... --background ... --out reproduced`.
"""

from __future__ import annotations

import base64
import hashlib
import html
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
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


def export_folder(root: str | Path, stem: str) -> Path:
    """A new folder for one export: `<root>/<YYYYmmdd-HHMMSS>-<stem>` (a suffix when taken)."""
    root = Path(root)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"
    folder, n = root / base, 1
    while folder.exists():
        n += 1
        folder = root / f"{base}-{n}"
    folder.mkdir(parents=True)
    return folder


def save_photo(folder: Path, stem: str, pixels: np.ndarray, source: Any) -> Path:
    """The photo beside the export: a copy of its file when that file decodes to exactly these
    pixels, else the pixels as a lossless PNG."""
    from PIL import Image

    if isinstance(source, (str, Path)) and Path(source).is_file():
        from ...images import read_image

        if np.array_equal(read_image(source), pixels):
            target = folder / Path(source).name
            shutil.copyfile(source, target)
            return target
    target = folder / f"{stem}.png"
    Image.fromarray(pixels).save(target)
    return target


def export_result(
    folder: str | Path,
    stem: str,
    image: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    background: Sequence[str],
    scores: np.ndarray,
    cfg: CLIPerConfig,
    photo: Path,
    alpha: float = 0.5,
) -> dict[str, Path]:
    """Write the four files of the current state to `folder`, beside the saved `photo`; returns
    {kind: path} (the kinds of EXPORT_SUFFIXES and "photo")."""
    folder = Path(folder)
    paths = {kind: folder / f"{stem}{suffix}" for kind, suffix in EXPORT_SUFFIXES.items()}
    command = reproduce_command(photo.name, Path(paths["config"].name), classes, background)
    present = [classes[k - 1] for k in np.unique(labels) if 0 < k <= len(classes)]
    record = {
        "image": photo.name,
        "image_sha256": hashlib.sha256(photo.read_bytes()).hexdigest(),
        "classes": list(classes),
        "background": list(background),
        "scores": {name: round(float(s), 6) for name, s in zip(classes, scores, strict=True)},
        "present": present,
        "profile": cfg.profile,
        "preset": cfg.preset,
        "refinement": cfg.refinement,
        "reproduce": f"cd {shlex.quote(str(folder))} && {command}",
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
        f"# CLIPer config exported by the explorer, beside the photo {photo.name}.\n"
        f"# Reproduce the labels from this folder (any machine):\n"
        f"#   {command}\n" + cfg.to_yaml(),
    )
    return {**paths, "photo": photo}


#: the largest file the page embeds as a data URL when there is no server to link to (a notebook).
EMBED_LIMIT_BYTES = 2_000_000


def download_links_html(
    paths: dict[str, Path], link_of: Callable[[Path], str] | None = None
) -> str:
    """Download links for the exported files: served URLs (`link_of`), else, in a notebook, data
    URLs for the small files and the path for the large ones."""
    links = []
    for path in paths.values():
        name = html.escape(path.name)
        if link_of is not None:
            href = html.escape(link_of(path), quote=True)
        elif path.stat().st_size <= EMBED_LIMIT_BYTES:
            kind = {".png": "image/png", ".json": "application/json", ".yaml": "text/yaml"}
            mime = kind.get(path.suffix.lower(), "application/octet-stream")
            href = f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
        else:
            links.append(f"<code>{name}</code>")
            continue
        links.append(
            f"<a download='{name}' href='{href}' target='_blank' class='cliper-download'>{name}</a>"
        )
    folder = html.escape(str(next(iter(paths.values())).parent)) if paths else ""
    stamp = html.escape(time.strftime("%H:%M:%S"))
    return f"exported at {stamp} to <code>{folder}</code>: " + " · ".join(links)


def export_state(state: Any, root: str | Path, source: Any, alpha: float = 0.5) -> dict[str, Path]:
    """`export_result` of what the explorer shows (`ExplorerState`) in a new folder under `root`,
    with the photo (`source`: its file, when it has one). {kind: path}."""
    if state.labels is None:
        raise ValueError("nothing to export yet: no result is shown")
    stem = Path(state.image_name).stem
    folder = export_folder(root, stem)
    photo = save_photo(folder, stem, state.result.image, source)
    return export_result(
        folder,
        stem,
        state.result.image,
        state.labels,
        state.classes,
        state.background,
        state.scores,
        state.cfg,
        photo,
        alpha=alpha,
    )
