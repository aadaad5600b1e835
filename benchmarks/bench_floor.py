r"""How close `segment` is to the work the method cannot avoid (the floor), and the process's peak
memory.

    flock /tmp/cliper-heavy.lock python benchmarks/bench_floor.py \
        --out benchmarks/results/floor_cpu.json

Full-size random weights (ViT-B/16 + SD-2.1-base shapes), float32, the VOC21 preset, 20 classes.
Per photo and sliding window (0 and 336): the total `segment` time, and the floor, each part timed
alone:
  CLIP walk (preprocess + the first L-1 blocks of the image and its crops), VAE encode (resize +
  encoder), UNet up to the last captured self-attention, with diffusers' own attention processors (a
  hook ends the pass).
Also, per photo, the capture pass of the UNet run to the end (as before this change) against the
early-exit pass (`unet_early_exit_speedup`), and the peak resident memory (`peak_rss_gb`,
ru_maxrss). `--baseline` runs the plain `segment` of whatever `cliper_lib` is on the path with every
SD component kept (text encoder, VAE decoder): run it with PYTHONPATH pointing at an older checkout
for the "before" figures.
Each part is timed --repeats times, in rounds (`segment`, then each floor part, once per round);
`total_over_floor` divides the medians, `total_over_floor_best` the fastest runs (the least
disturbed on a shared machine), `total_over_floor_paired` is the median of the rounds' own ratios,
and `all_times_s` keeps every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import build_full_size_clip, random_text_set, segment_with_text  # noqa: E402


class _Stop(Exception):
    pass


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def timed(fn, repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def unet_to_layer_stock(sd, noisy, timestep, layers) -> None:
    """The UNet with its own processors, ended by a hook right after the last of `layers` it
    runs."""
    from cliper_lib.method.sd_attention import resolve_self_attention

    modules = [resolve_self_attention(sd.components.unet, path) for path in layers]
    remaining = set(map(id, modules))

    def hook(module, args, output):
        remaining.discard(id(module))
        if not remaining:
            raise _Stop

    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        sd.components.unet(
            noisy, timestep, encoder_hidden_states=sd._empty_embedding, return_dict=False
        )
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--photos", nargs="+", default=["chelsea", "coffee"], help="names in data/samples"
    )
    parser.add_argument("--slides", nargs="+", type=int, default=[0, 336])
    parser.add_argument(
        "--repeats", type=int, default=1, help="median of this many timings of each part"
    )
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="keep every SD component and time `segment` only (the 'before' figures)",
    )
    parser.add_argument(
        "--segment-only",
        action="store_true",
        help="time `segment` only (lean components): the peak memory of segmenting alone",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    from PIL import Image

    from cliper_lib.config import DATA_DIR, CLIPerConfig
    from cliper_lib.method.pipeline import CLIPer
    from cliper_lib.method.sd_attention import (
        AttentionStore,
        SDSelfAttention,
        capture_self_attention,
    )

    if not args.baseline:
        from cliper_lib.method.sd_attention import run_until_captured
    from cliper_lib.weights.sd import build_random_sd_components

    torch.set_grad_enabled(False)
    device, dtype = torch.device("cpu"), torch.float32
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", device="cpu", dtype="float32")
    clip = build_full_size_clip("ViT-B-16", device, dtype)
    # lean: the cached empty-prompt embedding, no VAE decoder
    lean = {} if args.baseline else {"lean": True}
    components = build_random_sd_components(seed=0, full_size=True, **lean)
    if not args.baseline:
        from cliper_lib.weights.sd import drop_vae_decoder

        drop_vae_decoder(components.vae)
    sd = SDSelfAttention(components, cfg)
    if sd._empty_embedding is None:  # an older checkout: its extractor encodes "" on first use
        sd._empty_embedding = sd.empty_prompt_embedding()
    model = CLIPer(cfg, clip, sd, text_cache_dir=False)
    text = random_text_set(clip, args.classes)
    photos = {}
    for name in args.photos:
        with Image.open(DATA_DIR / "samples" / f"{name}.jpg") as image:
            photos[name] = np.asarray(image.convert("RGB"))
    rss_models = peak_rss_gb()
    # warm-up
    segment_with_text(model, photos[args.photos[0]], text, cfg.replace(sliding_crop_size=0))

    unet, context = sd.components.unet, sd._empty_embedding
    latest: dict[str, torch.Tensor] = {}  # the UNet part's input, from each round's VAE encode
    rows = []
    for name, photo in photos.items():
        for slide in args.slides:
            run_cfg = cfg.replace(sliding_crop_size=slide)

            def segment(photo=photo, run_cfg=run_cfg):
                return segment_with_text(model, photo, text, run_cfg)

            if args.baseline or args.segment_only:
                total, result = timed(segment, args.repeats)
            else:
                timestep = sd.timestep(cfg=run_cfg)

                def unet_part(timestep=timestep, run_cfg=run_cfg) -> None:
                    unet_to_layer_stock(sd, latest["noisy"], timestep, run_cfg.sd_layers)

                parts = {
                    "total": segment,
                    "clip_walk": lambda photo=photo, run_cfg=run_cfg: model.clip_features(
                        photo, run_cfg
                    ),
                    "vae_encode": lambda photo=photo, run_cfg=run_cfg: sd.encode(
                        sd.preprocess(photo, run_cfg)
                    ),
                    "unet_to_last_layer": unet_part,
                }
                # Interleaved: each round times `segment` and then each floor part once, so a slow
                # stretch of the shared machine lands on both sides of a round's ratio instead of on
                # one side's block of repeats.
                rounds = []
                for _ in range(args.repeats):
                    rounds.append({})
                    for part, fn in parts.items():
                        rounds[-1][part], value = timed(fn, 1)
                        if part == "total":
                            result = value  # the stage timings of the last `segment`
                        elif part == "vae_encode":
                            # the UNet part's input, from the latents just encoded
                            latest["noisy"] = sd.add_noise(value, timestep, run_cfg)
                all_times = {part: [r[part] for r in rounds] for part in parts}
                total = statistics.median(all_times["total"])
            row = {
                "photo": name,
                "shape": list(photo.shape[:2]),
                "slide": slide,
                "total_s": total,
                "stages_s": result.timings,
            }
            if not (args.baseline or args.segment_only):
                clip_s, vae_s, unet_s = (statistics.median(all_times[p]) for p in list(parts)[1:])
                floor = clip_s + vae_s + unet_s
                # the fastest of each: the least disturbed run of every part, the same estimator on
                # both sides
                best = {part: min(times) for part, times in all_times.items()}
                best_floor = best["clip_walk"] + best["vae_encode"] + best["unet_to_last_layer"]
                paired = [
                    r["total"] / (r["clip_walk"] + r["vae_encode"] + r["unet_to_last_layer"])
                    for r in rounds
                ]
                row.update(
                    floor_s=floor,
                    clip_walk_s=clip_s,
                    vae_encode_s=vae_s,
                    unet_to_last_layer_s=unet_s,
                    total_over_floor=total / floor,
                    total_over_floor_best=best["total"] / best_floor,
                    total_over_floor_paired=statistics.median(paired),
                    all_times_s=all_times,
                )
                # the UNet does not depend on the window: once per photo
                if slide == args.slides[0]:
                    noisy, layers = latest["noisy"], run_cfg.sd_layers

                    def full_pass(noisy=noisy, timestep=timestep, layers=layers) -> None:
                        with capture_self_attention(unet, layers, AttentionStore()):
                            unet(noisy, timestep, encoder_hidden_states=context)

                    def early_exit(noisy=noisy, timestep=timestep, layers=layers) -> None:
                        run_until_captured(
                            unet,
                            layers,
                            AttentionStore(),
                            noisy,
                            timestep,
                            encoder_hidden_states=context,
                        )

                    full_s, _ = timed(full_pass, args.repeats)
                    early_s, _ = timed(early_exit, args.repeats)
                    row.update(
                        unet_capture_full_pass_s=full_s,
                        unet_capture_early_exit_s=early_s,
                        unet_early_exit_speedup=full_s / early_s,
                    )
            rows.append(row)
            print(json.dumps(row), flush=True)

    summary = {
        "peak_rss_gb": peak_rss_gb(),
        "rss_after_building_models_gb": rss_models,
        "mean_total_s": statistics.mean(r["total_s"] for r in rows),
    }
    if not (args.baseline or args.segment_only):
        speedups = [r["unet_early_exit_speedup"] for r in rows if "unet_early_exit_speedup" in r]
        summary.update(
            total_over_floor_ratio=max(r["total_over_floor"] for r in rows),
            total_over_floor_ratio_mean=statistics.mean(r["total_over_floor"] for r in rows),
            total_over_floor_best_ratio=max(r["total_over_floor_best"] for r in rows),
            total_over_floor_best_ratio_mean=statistics.mean(
                r["total_over_floor_best"] for r in rows
            ),
            total_over_floor_paired_ratio=max(r["total_over_floor_paired"] for r in rows),
            total_over_floor_paired_ratio_mean=statistics.mean(
                r["total_over_floor_paired"] for r in rows
            ),
            unet_early_exit_speedup=statistics.mean(speedups),
        )
    out = {
        "setup": {
            "clip": "ViT-B-16 random",
            "sd": "SD-2.1-base shapes random",
            "dtype": "float32",
            "preset": "vit-b-16/voc21",
            "classes": args.classes,
            "baseline": args.baseline,
            "segment_only": args.segment_only,
            # requested by bench_pipeline (cliper_lib/heap.py), unless the user set it
            "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE"),
            "threads": torch.get_num_threads(),
            "machine": "shared 2-core CPU (indicative timings)",
        },
        "rows": rows,
        **summary,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
