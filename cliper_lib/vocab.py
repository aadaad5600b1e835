"""The words the method reads: the bundled class files (a background line, then one class per line),
the prompt templates, and class names as users type them. Plain text, no model: every layer may use
it."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import DATA_DIR
from .files import read_text

TEMPLATE_FILES = {"cliper": "cliper_templates.txt", "openai": "openai_imagenet_templates.txt"}


@dataclass(frozen=True)
class ClassList:
    """Foreground class lines (label k = names[k-1]) and the background vocabulary (softmax
    competitors only)."""

    names: list[str]
    background: list[str]


def split_background_line(line: str) -> list[str]:
    """'ground, land, grass' -> ['ground', 'land', 'grass']; 'background' -> ['background']."""
    return [word for word in re.split(r"[,\s]+", line.strip()) if word]


def class_file_path(name_or_path: str | os.PathLike) -> Path:
    """A class file by name (cliper_lib/data/classes/<name>.txt) or path."""
    path = Path(name_or_path)
    if path.exists():
        return path
    candidate = DATA_DIR / "classes" / f"{name_or_path}.txt"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in (DATA_DIR / "classes").glob("*.txt"))
    raise FileNotFoundError(
        f"class file {name_or_path!r} not found; bundled class files: {', '.join(known)}"
    )


def read_class_file(name_or_path: str | os.PathLike) -> ClassList:
    """Parse a class file: first line = background vocabulary, then one class (with synonyms) per
    line."""
    path = class_file_path(name_or_path)
    lines = [line.strip() for line in read_text(path, "class file").splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < 2:
        raise ValueError(
            f"class file {name_or_path} needs a background line and at least one class line"
        )
    return ClassList(names=lines[1:], background=split_background_line(lines[0]))


#: how class names typed by a user are separated (the command line's --help says the same).
CLASS_SEPARATORS = (
    "commas, semicolons or new lines; with a ';' in the text, commas stay inside a name "
    "(synonyms on one class line: 'person, people; cat')"
)


def parse_class_names(text: str) -> list[str]:
    """User input -> class names: 'cat, dog' and 'cat; dog' and 'cat\ndog' -> ['cat', 'dog'];
    'person, people; cat' -> ['person, people', 'cat'] (CLASS_SEPARATORS)."""
    separators = r"[;\n]" if ";" in text else r"[,\n]"
    names = [part.strip() for part in re.split(separators, text) if part.strip()]
    if not names:
        raise ValueError("give at least one class name (separate several with ',' or ';')")
    return names


def check_class_names(names: Sequence[str] | str) -> list[str]:
    """Class names stripped (a string is split on ';'); ValueError for a non-text or empty entry
    (dropping it would silently shift every later label id) and for no names at all."""
    if isinstance(names, str):
        return parse_class_names(names)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"class name #{i + 1} is {name!r}: class names must be text")
    stripped = [name.strip() for name in names]
    if not any(stripped):
        raise ValueError("give at least one class name")
    if "" in stripped:
        raise ValueError(
            f"class name #{stripped.index('') + 1} is empty: it would shift every later label id"
        )
    return stripped


def load_templates(name_or_path: str) -> list[str]:
    """Prompt templates with a '{}' placeholder: 'cliper' (15), 'openai' (80), or a file path."""
    path = Path(name_or_path)
    if not path.exists():
        if name_or_path not in TEMPLATE_FILES:
            raise ValueError(
                f"unknown template set {name_or_path!r}; "
                f"use one of {list(TEMPLATE_FILES)} or a path"
            )
        path = DATA_DIR / "templates" / TEMPLATE_FILES[name_or_path]
    templates = [line.strip() for line in read_text(path, "template file").splitlines()]
    templates = [t for t in templates if t]
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates without a '{{}}' placeholder in {path}: {bad[:3]}")
    return templates
