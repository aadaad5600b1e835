"""cliper_lib.heap: freed heap memory really goes back to the system (glibc), and elsewhere nothing
happens; huge pages only when asked for, never by importing the package."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cliper_lib.heap import (
    HUGE_PAGES_VARIABLE,
    THP_MODE_FILE,
    release_free_memory,
    request_huge_pages,
)


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_freed_heap_pages_are_returned() -> None:
    # 192 MiB of blocks under glibc's mmap threshold: the heap
    blocks = [bytearray(64 * 1024) for _ in range(3072)]
    # allocated last, it keeps the heap's top in use, so glibc cannot trim on its own
    pin = bytearray(64 * 1024)
    for block in blocks:
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page
    del blocks
    before = resident_mib()
    if not release_free_memory():
        pytest.skip("no malloc_trim here (not glibc)")
    after = resident_mib()
    assert before - after > 96, (before, after)  # most of the 192 MiB
    del pin


def huge_page_faults(env: dict[str, str], request: bool = True) -> int:
    """Minor page faults of filling a fresh 64 MiB tensor in a new process that imported cliper_lib
    first and (`request`) then called request_huge_pages()."""
    code = (
        "import resource, cliper_lib, cliper_lib.heap, torch\n"
        + ("cliper_lib.heap.request_huge_pages()\n" if request else "")
        + "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "torch.empty(16 * 2**20).fill_(1.0)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(
    not THP_MODE_FILE.exists() or "[never]" in THP_MODE_FILE.read_text(),
    reason="no transparent huge pages here",
)
def test_requesting_huge_pages_gives_large_tensors_huge_pages_unless_the_user_said_no() -> None:
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_VARIABLE}
    on = huge_page_faults(env)
    off = huge_page_faults({**env, HUGE_PAGES_VARIABLE: "0"})
    assert off >= 16384 - 100, off  # one fault per 4 KiB page of the 64 MiB
    assert on < off / 8, (on, off)  # 2 MiB pages: 32 of them (the kernel may still split some)
    not_asked = huge_page_faults(env, request=False)  # importing alone changes nothing
    assert not_asked >= 16384 - 100, not_asked


def test_importing_cliper_lib_does_not_request_huge_pages() -> None:
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_VARIABLE}
    code = (
        "import os, cliper_lib, cliper_lib.heap\n"
        "from cliper_lib import CLIPer, CLIPerConfig\n"
        f"print(os.environ.get({HUGE_PAGES_VARIABLE!r}, 'unset'))\n"
        "cliper_lib.heap.request_huge_pages()\n"
        f"print(os.environ.get({HUGE_PAGES_VARIABLE!r}, 'unset'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    imported, requested = done.stdout.split()
    assert imported == "unset"
    available = THP_MODE_FILE.exists() and "[never]" not in THP_MODE_FILE.read_text()
    assert requested == ("1" if available and sys.platform.startswith("linux") else "unset")


def test_huge_pages_are_not_requested_where_the_kernel_has_none(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(HUGE_PAGES_VARIABLE, raising=False)
    never = tmp_path / "enabled"
    never.write_text("always madvise [never]\n")
    assert request_huge_pages(never) is False
    assert HUGE_PAGES_VARIABLE not in os.environ
    assert request_huge_pages(tmp_path / "missing") is False
    monkeypatch.setenv(HUGE_PAGES_VARIABLE, "0")  # the user's choice stands
    assert request_huge_pages() is False and os.environ[HUGE_PAGES_VARIABLE] == "0"


def reuse_faults(env: dict[str, str], keep: bool) -> tuple[int, str]:
    """Page faults of a 64 MiB tensor, allocated and filled after others of its size were freed,
    in a fresh process that first (`keep`) called keep_freed_memory(); and what
    release_free_memory then returned."""
    code = (
        "import resource, torch, cliper_lib.heap as heap\n"
        + ("print(heap.keep_freed_memory())\n" if keep else "print(None)\n")
        # allocated, touched, freed, a few times: the heap settles (grows to its size) first
        + "for _ in range(3): torch.empty(16 * 2**20).fill_(1.0)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "torch.empty(16 * 2**20).fill_(2.0)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "print(heap.release_free_memory())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    kept, faults, released = done.stdout.split()
    return int(faults), f"{kept} {released}"


def cli_allocator_env() -> dict[str, str]:
    """This process's environment as the `cliper` executable sets it: huge pages requested, glibc's
    allocator variables unset."""
    from cliper_lib.heap import ALLOCATOR_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARIABLES}
    return {**env, HUGE_PAGES_VARIABLE: "1"}


no_huge_pages = pytest.mark.skipif(
    not THP_MODE_FILE.exists() or "[never]" in THP_MODE_FILE.read_text(),
    reason="no transparent huge pages here (the executable's setting)",
)


@no_huge_pages
def test_keeping_freed_memory_reuses_its_pages_without_faults() -> None:
    env = cli_allocator_env()
    plain, plain_said = reuse_faults(env, keep=False)
    kept, kept_said = reuse_faults(env, keep=True)
    if kept_said.startswith("False"):
        pytest.skip("no glibc mallopt here")
    # mapped afresh each time: measured 545 faults (2 MiB pages and their edges), 0-1 when kept
    assert plain >= 200, plain
    assert kept < plain / 10, (kept, plain)
    assert plain_said == "None True" and kept_said == "True False"  # kept: never trimmed


@no_huge_pages
def test_the_users_own_allocator_settings_are_left_alone() -> None:
    env = {**cli_allocator_env(), "MALLOC_TRIM_THRESHOLD_": "131072"}
    faults, said = reuse_faults(env, keep=True)
    assert said == "False True"  # not kept; trimming as the user asked
    assert faults >= 200, faults


def test_the_cliper_executable_keeps_freed_memory_and_main_alone_does_not(monkeypatch) -> None:
    import cliper_lib.suite.cli.commands as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 0)
    with pytest.raises(SystemExit) as stop:
        cli.run()
    assert stop.value.code == 0 and calls == ["kept", "main"]


@no_huge_pages
def test_the_methods_results_are_the_same_bits_with_freed_memory_kept(
    smoke_model, cat_image, tmp_path
) -> None:
    """The full method on the smoke models in a process set as the executable sets it (huge pages,
    freed memory kept), against this process's (glibc's defaults): the same bits."""
    out = tmp_path / "kept.pt"
    code = (
        "import sys, numpy as np, torch\n"
        "from PIL import Image\n"
        "import cliper_lib.heap as heap\n"
        "assert heap.keep_freed_memory()\n"
        "from cliper_lib import CLIPer, CLIPerConfig\n"
        "from cliper_lib.config import DATA_DIR\n"
        "cfg = CLIPerConfig.from_preset('vit-b-16/voc21', profile='smoke', device='cpu')\n"
        "model = CLIPer.from_config(cfg, text_cache_dir=False)\n"
        "with Image.open(DATA_DIR / 'samples' / 'chelsea.jpg') as image:\n"
        "    photo = np.asarray(image.convert('RGB'))\n"
        "for _ in range(2):  # the second run on reused pages\n"
        "    result = model.segment(photo, classes=['cat', 'grass', 'wall'])\n"
        "torch.save({'refined': result.refined, 'labels': result.labels}, sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(out)], env=cli_allocator_env(), check=True)
    kept = torch.load(out)
    reference = smoke_model.segment(cat_image, classes=["cat", "grass", "wall"])
    assert torch.equal(kept["refined"], reference.refined)
    assert torch.equal(kept["labels"], reference.labels)
