"""Hand the C heap's free pages back to the operating system between the big steps of one image.

glibc's malloc serves blocks below its mmap threshold (which grows to 32 MB as large blocks are freed, so most
tensors of a CPU pass qualify) from a heap that it does not shrink when they are freed: they still count as
resident memory. The VAE encode of one image needs ~0.6 GB of activations on top of the weights, so what the CLIP
side freed just before should really be free. `malloc_trim(0)` returns every free page; it takes milliseconds.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc only (not musl)
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (glibc); False where there is no such call (nothing done)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
