"""Files: atomic writes (a reader sees the old file or the new one, never half of one) and the suite's cache folder."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

_UMASK = os.umask(0o22)  # read the process umask (the only way is to set it) and put it back at once
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and move it into place, else delete it."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file must be in the same folder: os.replace is atomic only within one file system.
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=final.suffix or ".tmp")
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


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically; creates parent folders; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON (indented) atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def default_cache_dir() -> Path:
    """The suite's own cache (text embeddings, the smoke tokenizer): CLIPER_CACHE, else ~/.cache/cliper."""
    return Path(os.environ.get("CLIPER_CACHE", Path.home() / ".cache" / "cliper"))
