r"""How time and peak memory grow with image size, class count and the sliding window.

    python benchmarks/bench_scaling.py --out benchmarks/results/scaling.json \
        --plot benchmarks/results/scaling.png

Two parts, on synthetic photos (seeded noise) of 0.25 to 24 MP:
  labels  the labels stage alone (`label_map`: scores, tiled upsampling, the label map) for every
          size × class count (2 to 1,000), from random S_f (C, 64, 64) and S_c (C, 21, 28);
  segment the whole `segment` (float32, VOC21 preset) on full-size random weights (ViT-B/16 +
          SD-2.1-base shapes) or, with --models smoke, on the tiny smoke models, at a few points:
          sizes at 2 and 150 classes, class counts at 1 MP, slide on (336) and off (0).
Peak memory is the process's peak resident set (VmHWM) during each point alone: free heap pages go
back to the system (malloc_trim) and the kernel's high-water mark is reset (`/proc/self/clear_refs`)
before it, so a point's peak includes the models and what the process holds, as a user's would.
Time is one run per point after a warm-up (each row records the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cliper_lib.heap import release_free_memory

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import build_full_size_clip, random_text_set, segment_with_text  # noqa: E402

MEGAPIXELS = [0.25, 1, 4, 12, 24]
CLASSES = [2, 20, 150, 1000]


def reset_peak() -> None:
    """Start a new resident-set high-water mark for this process (Linux 4.0+)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def image_size(megapixels: float) -> tuple[int, int]:
    """(H, W) of a 3:4 photo of about `megapixels`."""
    height = round((megapixels * 1e6 * 3 / 4) ** 0.5)
    return height, round(height * 4 / 3)


def measure(fn) -> dict:
    release_free_memory()  # what earlier points freed leaves the resident set first
    reset_peak()
    start = time.perf_counter()
    fn()
    return {"seconds": time.perf_counter() - start, "peak_rss_gb": peak_gb()}


def labels_points(megapixels: list[float], classes: list[int], max_values: float) -> list[dict]:
    """The labels stage alone over sizes × class counts (up to `max_values` classes × pixels)."""
    from cliper_lib.config import CLIPerConfig
    from cliper_lib.method.labels import label_map

    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", device="cpu")
    g = torch.Generator().manual_seed(0)
    rows = []
    for count in classes:
        refined = torch.rand(count, 64, 64, generator=g)
        coarse = torch.rand(count, 21, 28, generator=g)
        label_map(refined, coarse, (64, 85), cfg)  # warm-up
        for mp in megapixels:
            if count * mp * 1e6 > max_values:
                continue
            size = image_size(mp)
            row = {"part": "labels", "megapixels": mp, "size": size, "classes": count}
            row.update(measure(lambda r=refined, c=coarse, s=size: label_map(r, c, s, cfg)))
            row["loadavg"] = os.getloadavg()[0]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def segment_points() -> list[tuple[float, int, int]]:
    """(megapixels, classes, slide) of the whole-`segment` points."""
    points = [(mp, 2, 336) for mp in MEGAPIXELS]
    points += [(0.25, 150, 336), (24, 150, 336), (1, 20, 336)]
    return points + [(0.25, 2, 0), (24, 2, 0)]


def build_model(models: str):
    """float32 CLIPer on full-size random weights, or on the smoke profile's tiny ones."""
    from cliper_lib.config import CLIPerConfig
    from cliper_lib.method.pipeline import CLIPer
    from cliper_lib.method.sd_attention import SDSelfAttention
    from cliper_lib.weights.models import CLIPer as LoadedCLIPer
    from cliper_lib.weights.sd import build_random_sd_components

    if models == "smoke":
        cfg = CLIPerConfig.from_preset("vit-b-16/voc21", profile="smoke", device="cpu")
        return LoadedCLIPer.from_config(cfg, text_cache_dir=False)
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", device="cpu")
    clip = build_full_size_clip("ViT-B-16", torch.device("cpu"), torch.float32)
    sd = build_random_sd_components(seed=0, full_size=True, lean=True)
    sd.vae.decoder = sd.vae.post_quant_conv = None
    return CLIPer(cfg, clip, SDSelfAttention(sd, cfg), text_cache_dir=False)


def segment_rows(points, models: str) -> list[dict]:
    model = build_model(models)
    cfg, clip = model.cfg, model.clip
    rng = np.random.default_rng(0)
    texts = {count: random_text_set(clip, count) for count in {p[1] for p in points}}
    warm = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    segment_with_text(model, warm, texts[points[0][1]], cfg)
    rows = []
    for mp, count, slide in points:
        photo = rng.integers(0, 256, (*image_size(mp), 3), dtype=np.uint8)
        run_cfg = cfg.replace(sliding_crop_size=slide)
        kept = {}

        def run(photo=photo, count=count, run_cfg=run_cfg, kept=kept):
            kept["result"] = segment_with_text(model, photo, texts[count], run_cfg)

        row = {"part": "segment", "megapixels": mp, "size": photo.shape[:2], "classes": count}
        row.update(slide=slide, models=models)
        row.update(measure(run))
        row["stages_s"] = kept.pop("result").timings
        row["loadavg"] = os.getloadavg()[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame(rows)
    frame["classes"] = frame["classes"].astype(str)  # categories, not a colour scale
    labels = frame[frame.part == "labels"]
    segment = frame[frame.part == "segment"]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    sns.lineplot(labels, x="megapixels", y="seconds", hue="classes", marker="o", ax=axes[0])
    axes[0].set(title="labels stage: time", xlabel="image (MP)", ylabel="s", xscale="log")
    axes[0].set(yscale="log")
    sns.lineplot(labels, x="megapixels", y="peak_rss_gb", hue="classes", marker="o", ax=axes[1])
    axes[1].set(title="labels stage: process peak RSS", xlabel="image (MP)", ylabel="GB")
    axes[1].set(xscale="log")
    if len(segment):
        pairs = zip(segment.classes, segment.slide, strict=True)
        names = [f"{c} classes, slide {int(s)}" for c, s in pairs]
        shown = segment.assign(setting=names)
        models = "full-size random" if segment.models.iloc[0] == "full" else "tiny smoke"
        for ax, column, what, unit in ((axes[2], "peak_rss_gb", "peak RSS", "GB"),
                                       (axes[3], "seconds", "time", "s")):  # fmt: skip
            sns.lineplot(shown, x="megapixels", y=column, hue="setting", marker="o", ax=ax)
            ax.set(title=f"segment ({models} models): {what}", xlabel="image (MP)")
            ax.set(ylabel=unit, xscale="log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megapixels", nargs="+", type=float, default=MEGAPIXELS)
    parser.add_argument("--classes", nargs="+", type=int, default=CLASSES)
    parser.add_argument(
        "--max-values",
        type=float,
        default=2e9,
        help="labels part: skip points of more classes × pixels (time: the machine is shared)",
    )
    parser.add_argument("--labels-only", action="store_true", help="skip the `segment` points")
    parser.add_argument(
        "--models",
        choices=["full", "smoke"],
        default="full",
        help="the `segment` points' models: full-size random weights, or the tiny smoke ones",
    )
    parser.add_argument(
        "--segment-points",
        choices=["all", "ends"],
        default="all",
        help="ends: only 0.25 MP × 2 classes and 24 MP × 150 classes (slide 336)",
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument(
        "--replot", action="store_true", help="only draw --plot from the rows already in --out"
    )
    parser.add_argument("--plot", default=None, help="PNG file to draw (seaborn)")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(Path(args.out).read_text())["rows"], Path(args.plot))
        return
    from cliper_lib.heap import request_huge_pages

    request_huge_pages()  # as the command line does at start
    torch.set_grad_enabled(False)
    rows = labels_points(args.megapixels, args.classes, args.max_values)
    if not args.labels_only:
        points = (
            segment_points() if args.segment_points == "all" else [(0.25, 2, 336), (24, 150, 336)]
        )
        rows += segment_rows(points, args.models)
    record = {
        "setup": {
            "threads": torch.get_num_threads(),
            "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE"),
            "machine": "2-core CPU: the load average of each row says how busy it was",
        },
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    if args.plot:
        plot(rows, Path(args.plot))


if __name__ == "__main__":
    main()
