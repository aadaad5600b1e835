"""Files: atomic writes (a reader sees the old file or the new one, never half of one), the suite's
cache folder, and a cache of tensors on disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# read the process umask (the only way is to set it) and put it back at once
_UMASK = os.umask(0o22)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and move it into place, else delete
    it."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file must be in the same folder: os.replace is atomic only within one file
    # system.
    fd, tmp = tempfile.mkstemp(
        dir=final.parent, prefix=f".{final.name}.", suffix=final.suffix or ".tmp"
    )
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_group(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths beside each of `paths`; when the block succeeds all are moved into place,
    else none is.

    For outputs that only make sense together (one image's label map, overlay and scores): a failure
    part way (a full disk) leaves none of them, and the temporary files are removed.
    """
    finals = [Path(p) for p in paths]
    temps: list[Path] = []
    placed: list[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                dir=final.parent, prefix=f".{final.name}.", suffix=f".part{final.suffix}"
            )
            os.close(fd)
            temps.append(Path(tmp))
        yield list(temps)
        for tmp in temps:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)
        for tmp, final in zip(temps, finals, strict=True):
            os.replace(tmp, final)
            placed.append(final)
    except BaseException:
        for path in temps + placed:  # placed: a rename failed part way; the group goes as a whole
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise


class TextDecodeError(ValueError):
    """A text file (class list, templates) is not UTF-8; the message names the file and the line."""


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A text file as UTF-8, a byte-order mark dropped (some editors write one, and it would become
    part of the first word); TextDecodeError naming the file and the line of the first byte that is
    not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise TextDecodeError(
            f"{what} {path}, line {line}, is not UTF-8 text (byte 0x{data[error.start]:02x}); "
            "save it as UTF-8"
        ) from None


class OutputPathError(ValueError):
    """An output path cannot be written (a file where a folder is needed, a folder where a file is,
    read-only)."""


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_writable(folder: Path, what: str) -> None:
    """Create and delete a file in `folder` (os.access says yes to root even on a read-only file
    system)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".cliper-write-check.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as error:
        raise OutputPathError(
            f"{what}: cannot write in {folder}: {error.strerror or error}"
        ) from None


def check_output_folder(path: str | os.PathLike, what: str = "output folder") -> None:
    """Before any work: `path` is (or can be created as) a folder we can write in; creates
    nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is an existing file, not a folder")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise OutputPathError(
            f"{what} {path}: {existing} is a file, so no folder can be made under it"
        )
    _probe_writable(existing, f"{what} {path}")


def check_output_file(path: str | os.PathLike, what: str = "output file") -> None:
    """Before any work: `path` is not a folder and its folder is (or can be made) writable; creates
    nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; give a file name")
    check_output_folder(path.parent, f"{what} {path}: its folder")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically; creates parent folders; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON (indented) atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def default_cache_dir() -> Path:
    """The suite's own cache (text embeddings, the smoke tokenizer): CLIPER_CACHE, else
    ~/.cache/cliper."""
    return Path(os.environ.get("CLIPER_CACHE", Path.home() / ".cache" / "cliper"))


class TensorCache:
    """Tensors on disk, one .pt file per key (text embeddings, the SD empty-prompt embedding); a
    folder of None caches nothing. Written atomically; a corrupt file is recomputed, never
    trusted."""

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder is not None else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*parts: Any) -> str:
        """A digest of JSON-able parts (what identifies the weights and the inputs)."""
        return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode()).hexdigest()[:32]

    def lookup(self, key: str) -> Any | None:
        path = self.folder / f"{key}.pt" if self.folder is not None else None
        if path is not None and path.exists():
            import torch  # lazy: the command line and the app import this module without torch

            try:
                value = torch.load(path, weights_only=True)
                self.hits += 1
                return value
            except Exception:  # a corrupt cache file is recomputed, never trusted
                path.unlink(missing_ok=True)
        return None

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        value = self.lookup(key)
        if value is not None:
            return value
        self.misses += 1
        value = compute()
        if self.folder is not None:
            import torch  # lazy, as in lookup

            with atomic_path(self.folder / f"{key}.pt") as tmp:  # a reader never sees half a file
                torch.save(value.cpu(), tmp)
        return value
