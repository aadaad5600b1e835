"""Speed of each CLIPer stage on full-size architectures with random weights (their cost is real,
not their output).

    python benchmarks/bench_pipeline.py                         # ViT-B/16 at 336, CLIP side, CPU
    python benchmarks/bench_pipeline.py --backbone ViT-L-14 --sd --device cuda --dtype float16

Prints a table of median seconds per stage over --repeats runs (after one warm-up) and writes it as
JSON with --out. Weights are random (built from open_clip / diffusers configs), so no download is
needed. Huge pages are requested as the command line does (cliper_lib/heap.py), for this script and
the benchmarks that import it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time

import numpy as np
import torch

from cliper_lib.heap import request_huge_pages

request_huge_pages()  # before any large tensor, as the command line does (cliper_lib/heap.py)


def build_full_size_clip(backbone: str, device: torch.device, dtype: torch.dtype):
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from cliper_lib.method.clip_backbone import ClipBundle

    torch.manual_seed(0)
    model = (
        open_clip.create_model(backbone, pretrained=None, force_quick_gelu=True)
        .eval()
        .to(device, dtype)
    )
    return ClipBundle(
        model=model,
        tokenizer=open_clip.get_tokenizer(backbone),
        name=backbone,
        weights_id="random",
        patch_size=model.visual.conv1.kernel_size[0],
        mean=tuple(OPENAI_DATASET_MEAN),
        std=tuple(OPENAI_DATASET_STD),
    )


def random_text_set(clip, classes: int, device: torch.device | str = "cpu"):
    """`classes` random unit text embeddings ("class 0", ...) and two background words: no text
    tower needed."""
    from cliper_lib.method.text import TextSet

    embed = clip.model.text_projection.shape[1]
    g = torch.Generator().manual_seed(0)
    return TextSet(
        names=[f"class {i}" for i in range(classes)],
        background=["ground", "sky"],
        fg=torch.nn.functional.normalize(torch.randn(classes, embed, generator=g), dim=-1).to(
            device
        ),
        bg=torch.nn.functional.normalize(torch.randn(2, embed, generator=g), dim=-1).to(device),
    )


def segment_with_text(model, image, text, cfg=None):
    """`model.segment` of an image with an encoded text set (`given=`; `text=` in checkouts older
    than the stage results, for the 'before' figures of bench_floor.py --baseline)."""
    if "given" in inspect.signature(model.segment).parameters:
        return model.segment(image, given={"text": text}, cfg=cfg)
    return model.segment(image, text=text, cfg=cfg)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbone", default="ViT-B-16", choices=["ViT-B-16", "ViT-L-14", "ViT-H-14"]
    )
    parser.add_argument("--preset", default=None, help="default: <backbone>/voc21")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--classes", type=int, default=20, help="number of foreground classes")
    parser.add_argument("--image", default="480x640", help="HxW of the test image")
    parser.add_argument(
        "--sd", action="store_true", help="also time the full-size SD-2.1-base UNet step + FGC"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    from cliper_lib.config import CLIPerConfig, resolve_device, resolve_dtype
    from cliper_lib.method.pipeline import CLIPer

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    preset = args.preset or f"{args.backbone.lower()}/voc21"
    cfg = CLIPerConfig.from_preset(
        preset, device=str(device), dtype=args.dtype, refinement="sfsa" if args.sd else "none"
    )
    clip = build_full_size_clip(args.backbone, device, dtype)
    sd = None
    if args.sd:
        from cliper_lib.method.sd_attention import SDSelfAttention
        from cliper_lib.weights.sd import build_random_sd_components

        sd = SDSelfAttention(
            build_random_sd_components(full_size=True, device=device, dtype=dtype, seed=0), cfg
        )
    model = CLIPer(cfg, clip, sd, text_cache_dir=False)
    text = random_text_set(clip, args.classes, device)
    h, w = (int(v) for v in args.image.split("x"))
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)

    per_stage: dict[str, list[float]] = {}
    totals = []
    for run in range(args.repeats + 1):
        sync(device)
        start = time.perf_counter()
        result = model.segment(image, given={"text": text})
        sync(device)
        if run == 0:
            continue  # warm-up
        totals.append(time.perf_counter() - start)
        for stage, seconds in result.timings.items():
            per_stage.setdefault(stage, []).append(seconds)
    rows = {stage: statistics.median(v) for stage, v in per_stage.items()}
    rows["total"] = statistics.median(totals)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    # peak GPU memory over model building and every run (weights + activations): the README's GPU
    # section
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    print(
        f"{args.backbone} preset {preset} ({cfg.size}px, slide {cfg.sliding_crop_size}) "
        f"image {h}x{w}, {args.classes} classes, {args.dtype} on {name}, median of {args.repeats}"
    )
    for stage, seconds in rows.items():
        print(f"  {stage:14s} {seconds * 1000:10.1f} ms")
    if peak_gb is not None:
        print(f"  peak GPU memory {peak_gb:.2f} GiB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"args": vars(args), "device": name, "median_s": rows, "peak_gpu_gib": peak_gb},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
