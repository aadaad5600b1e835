r"""Per-image cost of the refinement: a DINO/DINOv2 refinement next to SD's (a script, not a test).

    python benchmarks/bench_vfm.py                     # dino-b8 and SD sfsa, CPU, 480x640
    python benchmarks/bench_vfm.py --vfm dino-b8 dinov2-b14 --no-sd --device cuda \
        --out results/vfm.json
    python benchmarks/bench_vfm.py --no-sd --authors   # the VFM input as the authors' code makes it

For each refinement, the stages that belong to it on one image: the affinity source (SD: VAE
encoding plus one UNet step with the self-attention captured, stages `sd_latents` and `sd_attention`
timed as one, `sd_attention`; VFM: one ViT pass over the photo, `vfm`) and `refine` (S_f from a
given coarse map, with the head maps kept: the path of a run that keeps them), as the method runs
them. Full-size architectures with random weights (built from configs: SD-2.1-base, DINO ViT-S/B,
DINOv2-S/B/L/g), so the cost is real and the output is not; nothing is downloaded. Median of
--repeats after one warm-up; the affinity stage's output size and, on CUDA, the peak memory of the
stages are reported too. The VFMs run before SD so that the process's peak RSS after each is
meaningful. --authors sizes the VFM input and resizes its position embeddings as the authors' code
does (vfm_grid_rounding=floor, vfm_position_resize=scale-factor: the presets' setting) instead of
the config defaults; the floor grid has up to one row and column of tokens fewer.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    stages: dict[str, Callable[[], torch.Tensor]], device: torch.device, repeats: int
) -> dict:
    """Median seconds of each stage (run in order, each fed by the previous), peak CUDA MiB, output
    MiB."""
    times: dict[str, list[float]] = {name: [] for name in stages}
    outputs: dict[str, torch.Tensor] = {}
    peak = None
    for run in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        for name, stage in stages.items():
            sync(device)
            start = time.perf_counter()
            outputs[name] = stage()
            sync(device)
            if run:  # run 0 is the warm-up
                times[name].append(time.perf_counter() - start)
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        affinity = outputs[next(iter(stages))]
        affinity_mib = affinity.numel() * affinity.element_size() / 2**20
    median = {name: statistics.median(v) for name, v in times.items()}
    return {
        "median_s": median,
        "total_s": sum(median.values()),
        "affinity_output_mib": round(affinity_mib, 1),
        "peak_cuda_mib": None if peak is None else round(peak, 1),
        "max_rss_mib_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--vfm", nargs="+", default=["dino-b8"], help="VFM refinements to time (config.VFM_MODELS)"
    )
    parser.add_argument(
        "--no-sd", action="store_true", help="skip SD (it needs ~4 GB and ~15 s an image on CPU)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--image", default="480x640", help="HxW of the test image")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument(
        "--grid", default="21x28", help="h x w of the coarse map (CLIP's patch grid)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument(
        "--authors",
        action="store_true",
        help="VFM input as the authors' code makes it (floor grid, scale-factor positions)",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cliper_lib.config import CLIPerConfig, resolve_device, resolve_dtype
    from cliper_lib.heap import request_huge_pages
    from cliper_lib.method.pipeline import Schedule
    from cliper_lib.method.refine import refine_sfsa
    from cliper_lib.vfm import VFMInput, refine_with_features, refinement_features
    from cliper_lib.weights.vfm import build_random_vfm

    request_huge_pages()  # before any large tensor, as the command line does (cliper_lib/heap.py)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    band = Schedule.for_device(device).chain_band  # as CLIPer runs SFSA on this device
    h, w = (int(v) for v in args.image.split("x"))
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    gh, gw = (int(v) for v in args.grid.split("x"))
    # S_c (C, h, w)
    coarse = torch.rand(args.classes, gh, gw, generator=torch.Generator().manual_seed(0)).to(device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    results: dict[str, dict] = {}
    how = VFMInput("floor", "scale-factor") if args.authors else VFMInput()

    for vfm_name in args.vfm:
        encoder = build_random_vfm(vfm_name, seed=0, full_size=True, device=device, dtype=dtype)
        params = sum(p.numel() for p in encoder.model.parameters()) / 1e6
        state: dict[str, torch.Tensor] = {}

        def vfm_stage(encoder=encoder, state=state) -> torch.Tensor:  # (fh, fw, D), kept for refine
            state["features"] = refinement_features(encoder, image, how)
            return state["features"]

        stages = {
            "vfm": vfm_stage,
            "refine": lambda state=state: refine_with_features(coarse, state["features"]),
        }
        results[vfm_name] = {"params_M": round(params, 1), **measure(stages, device, args.repeats)}
        results[vfm_name]["grid"] = list(state["features"].shape[:2])
        del encoder, state
    if not args.no_sd:
        from cliper_lib.method.sd_attention import SDSelfAttention
        from cliper_lib.weights.sd import build_random_sd_components

        cfg = CLIPerConfig(device=str(device), dtype=args.dtype, refinement="sfsa")
        sd = SDSelfAttention(
            build_random_sd_components(full_size=True, device=device, dtype=dtype, seed=0), cfg
        )
        params = sum(p.numel() for p in sd.components.unet.parameters()) / 1e6
        maps: dict[str, torch.Tensor] = {}

        def sd_stage() -> torch.Tensor:  # (m, T, T), kept for refine
            maps["head"] = sd(image, cfg)
            return maps["head"]

        stages = {
            "sd_attention": sd_stage,
            "refine": lambda: refine_sfsa(
                coarse, maps["head"], cfg.effective_sd_attention_thr, band
            ),
        }
        results["sd-sfsa"] = {
            "params_M (UNet)": round(params, 1),
            **measure(stages, device, args.repeats),
        }
        results["sd-sfsa"]["grid"] = [int(maps["head"].shape[-1] ** 0.5)] * 2

    print(
        f"refinement cost per image: {h}x{w} image, coarse {gh}x{gw}, {args.classes} classes, "
        f"{args.dtype} on {name}, median of {args.repeats}, VFM input {how}"
    )
    for key, r in results.items():
        stages = "  ".join(f"{s} {t * 1000:8.1f} ms" for s, t in r["median_s"].items())
        print(
            f"  {key:12s} grid {r['grid'][0]}x{r['grid'][1]}  {stages}  "
            f"total {r['total_s'] * 1000:8.1f} ms  "
            f"affinity output {r['affinity_output_mib']} MiB  peak CUDA {r['peak_cuda_mib']} MiB  "
            f"max RSS so far {r['max_rss_mib_so_far']:.0f} MiB"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "device": name,
                    "load_average_1_5_15_min": os.getloadavg(),
                    "results": results,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
