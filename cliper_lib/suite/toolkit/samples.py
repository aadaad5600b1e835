"""The bundled sample photos (cliper_lib/data/samples) and the class names its samples.yaml suggests
for each."""

from __future__ import annotations

from pathlib import Path

import yaml

from ...config import DATA_DIR
from ...images import is_image_file

SAMPLES_DIR = DATA_DIR / "samples"


def sample_images(folder: str | Path | None = None) -> dict[str, Path]:
    """The photos in a folder (default: the bundled samples), file name -> path, sorted by name."""
    folder = Path(folder) if folder is not None else SAMPLES_DIR
    return {p.name: p for p in sorted(folder.iterdir()) if is_image_file(p)}


def suggested_classes_by_image(folder: str | Path | None = None) -> dict[str, str]:
    """{file name: ';'-separated class names} from the folder's samples.yaml ({} when there is
    none)."""
    path = (Path(folder) if folder is not None else SAMPLES_DIR) / "samples.yaml"
    if not path.exists():
        return {}
    entries = yaml.safe_load(path.read_text()) or {}
    return {
        name: entry["classes"]
        for name, entry in entries.items()
        if isinstance(entry, dict) and entry.get("classes")
    }


def suggested_classes(name: str, folder: str | Path | None = None) -> str | None:
    """The class names suggested for one sample photo (by file name or stem), if any."""
    suggestions = suggested_classes_by_image(folder)
    if name in suggestions:
        return suggestions[name]
    return next((classes for file, classes in suggestions.items() if Path(file).stem == name), None)


def sample_path(name_or_path: str | Path) -> Path:
    """A bundled sample photo by file name or stem (`chelsea.jpg`, `chelsea`), or any existing image
    path.

    Relative paths are tried from the current directory; the error lists the bundled names.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    samples = sample_images()
    name = path.name
    if name in samples:
        return samples[name]
    by_stem = {p.stem: p for p in samples.values()}
    if name in by_stem:
        return by_stem[name]
    raise FileNotFoundError(
        f"{str(name_or_path)!r} is neither an image file nor a bundled sample "
        f"({', '.join(samples)} in {SAMPLES_DIR})"
    )
