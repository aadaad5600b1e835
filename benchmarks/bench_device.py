"""Throughput and peak memory of batched evaluation (`cliper eval --batch-size B`) by backbone,
precision setting (bench_precision.SETTINGS: float32, mixed, bfloat16, mixed-float16, float16) and
batch.

    # on a GPU
    python benchmarks/bench_device.py --device cuda --out outputs/device_check/batching.json
    # CPU, tiny models
    python benchmarks/bench_device.py --tiny --out /tmp/batching.json

Full-size random weights (ViT-B/16 or ViT-L/14 + SD-2.1-base shapes, VOC21 preset of the
backbone, 20 classes), --images synthetic photos of one size (so the CLIP half batches fully),
segmented B at a time with `cliper_lib.eval.batching.segment_batch` after one warm-up batch. Per
row: images/s and the peak memory: GPU memory allocated by torch on CUDA, the process's peak
resident memory on a CPU. `--tiny` runs the same loop on the smoke profile's tiny random models,
which checks the script, not the speed.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import build_full_size_clip  # noqa: E402
from bench_precision import SETTINGS  # noqa: E402


def build_model(backbone: str, setting: str, device: torch.device, tiny: bool):
    from cliper_lib.config import CLIPerConfig
    from cliper_lib.method.pipeline import CLIPer
    from cliper_lib.method.sd_attention import SDSelfAttention
    from cliper_lib.weights.models import CLIPer as LoadedCLIPer
    from cliper_lib.weights.sd import build_random_sd_components, drop_vae_decoder, sd_dtype_of

    dtype, sd_dtype = SETTINGS[setting]
    cfg = CLIPerConfig.from_preset(
        f"{backbone.lower()}/voc21",
        device=str(device),
        dtype=dtype,
        sd_dtype=sd_dtype,
        **({"profile": "smoke"} if tiny else {}),
    )
    if tiny:
        return LoadedCLIPer.from_config(cfg, text_cache_dir=False)
    clip = build_full_size_clip(backbone, device, getattr(torch, dtype))
    sd = build_random_sd_components(
        seed=0, full_size=True, device=device, dtype=sd_dtype_of(cfg), lean=True
    )
    drop_vae_decoder(sd.vae)
    return CLIPer(cfg, clip, SDSelfAttention(sd, cfg), text_cache_dir=False)


def measure(model, images: list[np.ndarray], batch: int, text, device: torch.device) -> dict:
    from cliper_lib.eval.batching import segment_batch

    segment_batch(model, images[:batch], text)  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for first in range(0, len(images), batch):
        segment_batch(model, images[first : first + batch], text)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ) / 1024**3
    return {
        "images_per_s": len(images) / seconds,
        "seconds": seconds,
        ("peak_gpu_gb" if device.type == "cuda" else "peak_rss_gb"): peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbones", nargs="+", default=["ViT-B-16", "ViT-L-14"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--images", type=int, default=16, help="images timed per row")
    parser.add_argument(
        "--image-size", default="375x500", help="HxW of the synthetic photos (VOC's usual size)"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny random models on the CPU: checks the script"
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    if args.tiny:
        args.device = "cpu"
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    h, w = (int(v) for v in args.image_size.split("x"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.images)]
    rows = []
    for backbone in args.backbones:
        for setting in args.settings:
            model = build_model(backbone, setting, device, args.tiny)
            text = model.encode_text([f"class {i}" for i in range(20)], ["ground", "sky"])
            for batch in args.batches:
                dtype, sd_dtype = SETTINGS[setting]
                row = {"backbone": backbone, "setting": setting, "dtype": dtype, "batch": batch}
                row["sd_dtype"] = sd_dtype or dtype
                try:
                    row.update(measure(model, images, batch, text, device))
                except torch.OutOfMemoryError as error:
                    row["error"] = f"out of memory: {str(error).splitlines()[0]}"
                rows.append(row)
                print(json.dumps(row), flush=True)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    record = {
        "device": name,
        "tiny": args.tiny,
        "image_size": [h, w],
        "images": args.images,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
