r"""Reduced precision per pass on a CPU: each named setting against float32, speed and agreement.

    python benchmarks/bench_precision.py --out benchmarks/results/cpu_precision.json

Full-size random weights (ViT-B/16 + SD-2.1-base shapes), the VOC21 preset, 20 classes, a sample
photo. The settings (docs/method.md, precision):
  float32   dtype=float32                     (the default)
  mixed     dtype=float32, sd_dtype=bfloat16  (CLIP side float32, VAE + UNet bfloat16)
  bfloat16  dtype=bfloat16                    (everything bfloat16)
Timed in interleaved rounds (each round: every setting's `segment`, then its passes alone: CLIP
walk, VAE encode, UNet to the last captured layer), so a busy stretch of a shared machine lands on
every setting of a round; `speedup` is the median of the rounds' own ratios (float32 time /
setting's time). Agreement against float32's result: max abs and max relative error (max |a-b| /
max |b|) of the coarse maps, the refined maps and the scores, and the share of equal labels. The
load average (os.getloadavg) is recorded before and after each round.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_floor import peak_rss_gb, unet_to_layer_stock  # noqa: E402
from bench_pipeline import build_full_size_clip, random_text_set, segment_with_text  # noqa: E402

from cliper_lib.config import PRECISIONS  # noqa: E402

#: name -> (dtype, sd_dtype): the named settings (docs/method.md 3.15, `--precision`); the last two
#: are for a GPU (bench_device.py), where float16 has fast kernels
SETTINGS = {name: (fields["dtype"], fields["sd_dtype"]) for name, fields in PRECISIONS.items()}
CPU_SETTINGS = ["float32", "mixed", "bfloat16"]


def cpu_name() -> str:
    """The CPU's model name and its bfloat16 units, from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    units = [flag for flag in ("avx512_bf16", "amx_bf16") if f" {flag}" in info]
    return f"{name} ({', '.join(units) or 'no bfloat16 units'})"


def errors(ours: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """max abs and max relative error (max |a - b| / max |b|)."""
    diff = (ours.float() - reference.float()).abs().max().item()
    return {"max_abs_err": diff, "max_rel_err": diff / reference.float().abs().max().item()}


def build_models(names: list[str]) -> dict:
    """One CLIPer per setting; settings share the weights of a dtype (one copy per dtype)."""
    from cliper_lib.config import CLIPerConfig
    from cliper_lib.method.pipeline import CLIPer
    from cliper_lib.method.sd_attention import SDSelfAttention
    from cliper_lib.weights.sd import build_random_sd_components, move_components, sd_dtype_of

    clips, sds, models = {}, {}, {}
    base_sd = build_random_sd_components(seed=0, full_size=True, lean=True)
    base_sd.vae.decoder = base_sd.vae.post_quant_conv = None
    for name in names:
        dtype, sd_dtype = SETTINGS[name]
        cfg = CLIPerConfig.from_preset(
            "vit-b-16/voc21", device="cpu", dtype=dtype, sd_dtype=sd_dtype
        )
        torch_dtype = getattr(torch, dtype)
        if torch_dtype not in clips:
            clips[torch_dtype] = build_full_size_clip("ViT-B-16", torch.device("cpu"), torch_dtype)
        sd_torch_dtype = sd_dtype_of(cfg)
        if sd_torch_dtype not in sds:
            sds[sd_torch_dtype] = (
                base_sd
                if sd_torch_dtype == torch.float32
                else move_components(copy.deepcopy(base_sd), "cpu", sd_torch_dtype)
            )
        sd = SDSelfAttention(sds[sd_torch_dtype], cfg)
        models[name] = (cfg, CLIPer(cfg, clips[torch_dtype], sd, text_cache_dir=False))
    return models


def time_round(models: dict, photo: np.ndarray, text, slide: int) -> tuple[dict, dict]:
    """One round: per setting, `segment` and each pass alone; (seconds, results)."""
    seconds, results = {}, {}
    for name, (cfg, model) in models.items():
        run_cfg = cfg.replace(sliding_crop_size=slide)
        sd = model.sd
        times = {}
        start = time.perf_counter()
        results[name] = segment_with_text(model, photo, text, run_cfg)
        times["segment"] = time.perf_counter() - start
        start = time.perf_counter()
        model.clip_features(photo, run_cfg)
        times["clip_walk"] = time.perf_counter() - start
        start = time.perf_counter()
        latents = sd.encode(sd.preprocess(photo, run_cfg))
        times["vae_encode"] = time.perf_counter() - start
        timestep = sd.timestep(cfg=run_cfg)
        noisy = sd.add_noise(latents, timestep, run_cfg)
        start = time.perf_counter()
        unet_to_layer_stock(sd, noisy, timestep, run_cfg.sd_layers)
        times["unet_to_last_layer"] = time.perf_counter() - start
        seconds[name] = times
        print(name, {k: round(v, 2) for k, v in times.items()}, flush=True)
    return seconds, results


def agreement(result, reference) -> dict:
    """The setting's coarse maps, refined maps and scores against float32's, and equal labels."""
    out = {
        part: errors(getattr(result, part), getattr(reference, part))
        for part in ("coarse", "refined", "scores")
    }
    out["label_agreement"] = (result.labels == reference.labels).float().mean().item()
    return out


def summarise(rounds: list[dict], names: list[str]) -> dict:
    """Per setting and part: median seconds, and the median of the rounds' float32 / setting."""
    parts = list(rounds[0]["float32"])
    summary = {}
    for name in names:
        row = {}
        for part in parts:
            times = [r[name][part] for r in rounds]
            ratios = [r["float32"][part] / r[name][part] for r in rounds]
            row[part] = {
                "median_s": statistics.median(times),
                "all_s": times,
                "speedup": statistics.median(ratios),
            }
        summary[name] = row
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=CPU_SETTINGS, choices=list(SETTINGS))
    parser.add_argument("--photo", default="chelsea", help="a name in data/samples")
    parser.add_argument("--slides", nargs="+", type=int, default=[336])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.settings[0] != "float32":
        parser.error("--settings: float32 first (every ratio is against it)")

    from PIL import Image

    from cliper_lib.config import DATA_DIR
    from cliper_lib.heap import keep_freed_memory, request_huge_pages

    kept = keep_freed_memory()  # the allocator as the `cliper` executable sets it
    request_huge_pages()
    torch.set_grad_enabled(False)
    with Image.open(DATA_DIR / "samples" / f"{args.photo}.jpg") as image:
        photo = np.asarray(image.convert("RGB"))
    models = build_models(args.settings)
    text = random_text_set(models["float32"][1].clip, args.classes)
    rows = []
    for slide in args.slides:
        for cfg, model in models.values():  # warm-up: `segment` once
            segment_with_text(model, photo, text, cfg.replace(sliding_crop_size=slide))
        rounds, load = [], []
        for _ in range(args.rounds):
            load.append(os.getloadavg())
            seconds, results = time_round(models, photo, text, slide)
            rounds.append(seconds)
        load.append(os.getloadavg())
        summary = summarise(rounds, args.settings)
        for name in args.settings:
            summary[name]["agreement"] = agreement(results[name], results["float32"])
        rows.append({"slide": slide, "settings": summary, "loadavg": load})
        print(json.dumps(rows[-1], indent=1), flush=True)
    record = {
        "setup": {
            "clip": "ViT-B-16 random",
            "sd": "SD-2.1-base shapes random",
            "preset": "vit-b-16/voc21",
            "photo": [args.photo, list(photo.shape[:2])],
            "classes": args.classes,
            "settings": {name: SETTINGS[name] for name in args.settings},
            "threads": torch.get_num_threads(),
            "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE"),
            "freed_memory_kept": kept,
            "cpu_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(),
            "cpu": cpu_name(),
            "machine": "2-core CPU: compare ratios; the load average says how busy it was",
        },
        "rows": rows,
        "peak_rss_gb": peak_rss_gb(),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
