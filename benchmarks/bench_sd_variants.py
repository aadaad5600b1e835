r"""The SD passes (VAE encode, UNet to the last captured layer) under each way of reducing their
cost on a CPU, interleaved: float32 and bfloat16 weights, each in default and channels-last memory
format, and bfloat16 autocast over float32 weights.

    python benchmarks/bench_sd_variants.py --variants fp32 fp32cl bf16 bf16cl ac accl --rounds 2 \
        --out benchmarks/results/sd_variants_cpu.json

Full-size random SD-2.1-base weights, the chelsea photo at 512 × 512. Prints one line per variant
and round (VAE s, UNet s, load average), then per variant the medians and the errors against the
first variant: latents (max |a-b| / max |b|) and head maps (max abs). One float32 and one bfloat16
copy of the weights are held; a memory-format variant converts its copy in place before it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image

from cliper_lib.config import DATA_DIR, CLIPerConfig
from cliper_lib.heap import request_huge_pages
from cliper_lib.method import sd_attention
from cliper_lib.method.sd_attention import AttentionStore, SDSelfAttention
from cliper_lib.weights.sd import build_random_sd_components, drop_vae_decoder, move_components

VARIANTS = ("fp32", "fp32cl", "bf16", "bf16cl", "ac", "accl")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    request_huge_pages()
    torch.set_grad_enabled(False)
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", profile="paper")
    base = build_random_sd_components(seed=0, full_size=True, lean=True)
    drop_vae_decoder(base.vae)
    with Image.open(DATA_DIR / "samples" / "chelsea.jpg") as image:
        photo = np.asarray(image.convert("RGB"))
    extractors = {torch.float32: SDSelfAttention(base, cfg)}
    if any(v.startswith("bf16") for v in args.variants):
        bf16 = move_components(copy.deepcopy(base), "cpu", torch.bfloat16)
        extractors[torch.bfloat16] = SDSelfAttention(bf16, cfg)

    def run(variant: str):
        sd = extractors[torch.bfloat16 if variant.startswith("bf16") else torch.float32]
        layout = torch.channels_last if variant.endswith("cl") else torch.contiguous_format
        for module in (sd.components.unet, sd.components.vae):
            module.to(memory_format=layout)
        autocast = variant.startswith("ac")
        context = (
            torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        )
        start = time.perf_counter()
        # the variant's layout for the VAE too, whatever the stage's own choice (vae_memory_format)
        with context, mock.patch.object(sd_attention, "vae_memory_format", lambda _: layout):
            latents = sd.encode(sd.preprocess(photo, cfg).contiguous(memory_format=layout))
        middle = time.perf_counter()
        with context:
            store = AttentionStore()
            sd.capture(latents.float().to(sd.dtype), store, cfg)
        end = time.perf_counter()
        maps = torch.cat([store[path][0] for path in cfg.sd_layers])
        return middle - start, end - middle, latents.float(), maps

    for variant in args.variants:
        run(variant)  # warm-up
    times = {v: [] for v in args.variants}
    outputs = {}
    for _ in range(args.rounds):
        for variant in args.variants:
            vae_s, unet_s, latents, maps = run(variant)
            times[variant].append((vae_s, unet_s))
            outputs.setdefault(variant, (latents, maps))
            print(variant, round(vae_s, 2), round(unet_s, 2), os.getloadavg()[0], flush=True)
    latents0, maps0 = outputs[args.variants[0]]
    rows = []
    for variant in args.variants:
        latents, maps = outputs[variant]
        row = {
            "variant": variant,
            "vae_median_s": statistics.median(t[0] for t in times[variant]),
            "unet_median_s": statistics.median(t[1] for t in times[variant]),
            "latents_max_rel_err": float((latents - latents0).abs().max() / latents0.abs().max()),
            "head_maps_max_abs_err": float((maps - maps0).abs().max()),
        }
        print(json.dumps(row))
        rows.append({**row, "all_s": times[variant]})
    if args.out:
        record = {"threads": torch.get_num_threads(), "loadavg": os.getloadavg(), "rows": rows}
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
