"""Hand the C heap's free pages back to the operating system between the big steps of one image.

glibc's malloc serves blocks below its mmap threshold (which grows to 32 MB as large blocks are
freed, so most tensors of a CPU pass qualify) from a heap that it does not shrink when they are
freed: they still count as resident memory. The VAE encode of one image needs about 0.6 GB of
activations on top of the weights, so what the CLIP side freed just before should really be free.
`malloc_trim(0)` returns every free page.

Blocks above the threshold are mapped fresh on every allocation, and each 4 KiB page faults in on
first touch. `request_huge_pages` asks PyTorch's CPU allocator for 2 MiB transparent huge pages
instead (512 times fewer faults, the same bits). `keep_freed_memory` goes further for a process
that segments one image after another: every block comes from the heap and freed pages are never
given back, so the next image reuses them without a fault or the kernel zeroing them (float32
`segment` 1.15 times faster, the same bits, about 0.8 GiB more held). Nothing here runs on import:
the `cliper` executable calls them at start (benchmarks/README.md has the measurements).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from pathlib import Path

#: PyTorch reads it once, at its first CPU allocation of 2 MiB or more (not at import): 1 = large
#: blocks 2 MiB-aligned, with madvise(MADV_HUGEPAGE). A value the user set is kept (0 turns it off).
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _find_glibc() -> tuple[Callable[[int], int], Callable[[int, int], int]] | None:
    """glibc's malloc_trim and mallopt, or None (not Linux, or another C library such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM, _MALLOPT = _find_glibc() or (None, None)
#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
#: where a user sets glibc's allocator themselves; `keep_freed_memory` then leaves it alone
ALLOCATOR_VARIABLES = (
    "GLIBC_TUNABLES",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)
#: the process keeps its freed memory (set once, by `keep_freed_memory`): trimming is then skipped
_keeping_freed_memory = False


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (glibc); False (nothing done) where it cannot, or
    where the process keeps its freed memory for reuse (`keep_freed_memory`)."""
    if _MALLOC_TRIM is None or _keeping_freed_memory:
        return False
    _MALLOC_TRIM(0)
    return True


def keep_freed_memory() -> bool:
    """Serve every block from glibc's heap and never return freed pages; True if set.

    For a process that runs the method again and again (the command line, the app): each pass's
    activations reuse the pages the last one freed, instead of mapping fresh ones that fault in
    and are zeroed by the kernel (2-3 s of a float32 `segment` on a CPU). The values computed are
    the same bit for bit; the process holds its high-water mark (about 0.8 GiB more than it
    would). Left alone where the user set glibc's allocator (ALLOCATOR_VARIABLES) or where glibc
    is absent.
    """
    global _keeping_freed_memory
    if _MALLOPT is None or any(name in os.environ for name in ALLOCATOR_VARIABLES):
        return False
    if _MALLOPT(M_MMAP_MAX, 0) != 1 or _MALLOPT(M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        return False
    _keeping_freed_memory = True
    return True


def request_huge_pages(mode_file: Path = THP_MODE_FILE) -> bool:
    """Set THP_MEM_ALLOC_ENABLE=1 unless the user set it or the kernel lacks huge pages; True if on.

    Call it before the first tensor of 2 MiB or more (PyTorch reads the setting then, once). It
    changes where large tensors live in memory, not their values.
    """
    if HUGE_PAGES_VARIABLE not in os.environ:
        try:
            available = sys.platform.startswith("linux") and "[never]" not in mode_file.read_text()
        except OSError:
            available = False
        if not available:
            return False
        os.environ[HUGE_PAGES_VARIABLE] = "1"
    return os.environ[HUGE_PAGES_VARIABLE] == "1"
