r"""SFSA refinement: explicit left-to-right product vs the library's right-to-left chain (a script,
not a test).

    python benchmarks/bench_refine.py [--device auto|cpu|cuda] [--tokens 1024 4096] [--heads 10] \
        [--classes 21]

S_f = A_1 A_2 ... A_m S with m head maps (T x T) and a coarse map S (T x C). Left to right forms the
T x T product (m-1 matrix-matrix products, O(m T^3)); right to left keeps a T x C running result (m
matrix-panel products, O(m T^2 C)). The paper's setting is T = 4096 (64 x 64 latent tokens), m = 10
(2 layers x 5 heads), C = 21 (VOC). On two CPU threads the explicit product at T = 4096 takes ~10 s
a call (chain: ~0.1 s), so the CPU default stops at 2304 (48^2); pass --tokens 4096 for the paper's
size. Both sides get the same already-normalised maps: this times the product only.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch

from cliper_lib.heap import request_huge_pages
from cliper_lib.method.refine import chain_apply, normalize_head_maps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(
    fn: Callable[[], torch.Tensor], device: torch.device, repeats: int
) -> tuple[float, torch.Tensor]:
    """Best wall time of `repeats` calls after one warm-up (the minimum is the cost on a shared
    machine)."""
    out = fn()  # warm-up: allocator growth, CUDA context, BLAS thread pools
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def explicit_product(maps: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """(A_1 A_2 ... A_m) S, forming the (T, T) product first: the authors'
    `reduce(matmul, maps)`."""
    return functools.reduce(torch.matmul, maps.unbind(0)) @ S  # (T, T) @ (T, C) -> (T, C)


def random_head_maps(m: int, T: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """m attention-like maps (softmax rows), normalised as the method does: (m, T, T)."""
    maps = torch.empty(m, T, T, device=device, dtype=dtype)
    for k in range(m):  # one head at a time: the softmax temporary stays one (T, T) buffer
        maps[k] = torch.randn(T, T, device=device, dtype=dtype).mul_(3).softmax(dim=-1)
    return normalize_head_maps(maps, attention_thr=0.1)


def time_one_size(
    T: int, m: int, C: int, device: torch.device, dtype: torch.dtype, repeats: int
) -> str:
    """One table row: both evaluations of the chain at T tokens."""
    torch.manual_seed(0)
    maps = random_head_maps(m, T, device, dtype)  # (m, T, T)
    S = torch.rand(T, C, device=device, dtype=dtype)  # (T, C)
    slow, reference = best_time(lambda: explicit_product(maps, S), device, repeats)
    fast, result = best_time(lambda: chain_apply(maps, S), device, repeats)
    rel = ((result - reference).abs().max() / reference.abs().max()).item()
    mib = maps.numel() * maps.element_size() / 2**20
    return (
        f"{T:>6} {mib:>9.0f} {slow * 1e3:>17.2f} {fast * 1e3:>17.2f} {slow / fast:>8.1f}x "
        f"{rel:>13.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--tokens",
        type=int,
        nargs="+",
        default=None,
        help="token counts T (square numbers); default 1024 4096 on cuda, 256 1024 2304 on cpu",
    )
    parser.add_argument(
        "--heads", type=int, default=10, help="m, the number of head maps in the chain"
    )
    parser.add_argument("--classes", type=int, default=21, help="C, the number of classes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    args = parser.parse_args()
    request_huge_pages()  # before any large tensor, as the command line does (cliper_lib/heap.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    dtype = getattr(torch, args.dtype)
    tokens = args.tokens or ([1024, 4096] if device.type == "cuda" else [256, 1024, 2304])
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(
        f"device: {name}, m = {args.heads}, C = {args.classes}, {args.dtype}, "
        f"best of {args.repeats}"
    )
    columns = ("T", "maps MiB", "left-to-right ms", "right-to-left ms", "speed-up", "max rel diff")
    header = " ".join(f"{c:>{w}}" for c, w in zip(columns, (6, 9, 17, 17, 9, 13), strict=True))
    print(header)
    print("-" * len(header))
    for T in tokens:
        print(time_one_size(T, args.heads, args.classes, device, dtype, args.repeats))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the maps of this size are freed on return


if __name__ == "__main__":
    main()
