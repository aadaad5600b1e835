"""cliper_lib.heap: freed heap memory really goes back to the system (glibc), and elsewhere nothing happens."""
from __future__ import annotations

import sys

import pytest

from cliper_lib.heap import release_free_memory


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_freed_heap_pages_are_returned() -> None:
    blocks = [bytearray(64 * 1024) for _ in range(3072)]  # 192 MiB of blocks under glibc's mmap threshold: the heap
    pin = bytearray(64 * 1024)  # allocated last, it keeps the heap's top in use, so glibc cannot trim on its own
    for block in blocks:
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page
    del blocks
    before = resident_mib()
    if not release_free_memory():
        pytest.skip("no malloc_trim here (not glibc)")
    after = resident_mib()
    assert before - after > 96, (before, after)  # most of the 192 MiB
    del pin
