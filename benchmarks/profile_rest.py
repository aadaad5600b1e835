r"""Profile the per-image work besides the three network passes: fusion (cumulative rounds), crops,
layer maps, coarse map, labels; on full-size random ViT-B/16 weights, float32, the VOC21 preset, 20
classes.

    flock /tmp/cliper-heavy.lock python benchmarks/profile_rest.py [--slide 336] \
        [--photo chelsea] [--torch-profile]

Prints the median seconds of each CLIP-side stage of `segment` (over --repeats) and, with
--torch-profile, the torch profiler's table of the operators that take the most CPU time in
`fusion` and `layer_maps` (on a walk that keeps every layer's attention, as a run that keeps the
walk does).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import build_full_size_clip, random_text_set  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photo", default="chelsea")
    parser.add_argument("--slide", type=int, default=336)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-profile", action="store_true")
    args = parser.parse_args()

    from PIL import Image

    from cliper_lib.config import DATA_DIR, CLIPerConfig
    from cliper_lib.method.pipeline import CLIPer

    torch.set_grad_enabled(False)
    cfg = CLIPerConfig.from_preset(
        "vit-b-16/voc21", device="cpu", refinement="none", sliding_crop_size=args.slide
    )
    clip = build_full_size_clip("ViT-B-16", torch.device("cpu"), torch.float32)
    model = CLIPer(cfg, clip, None, text_cache_dir=False)
    text = random_text_set(clip, args.classes)
    with Image.open(DATA_DIR / "samples" / f"{args.photo}.jpg") as image:
        photo = np.asarray(image.convert("RGB"))
    features = model.clip_features(photo)
    timings: dict[str, list[float]] = {}
    for _ in range(args.repeats + 1):
        result = model.segment(photo, given={"text": text})
        for stage, seconds in result.timings.items():
            timings.setdefault(stage, []).append(seconds)
    print(
        f"{args.photo} {photo.shape[:2]} slide {args.slide}: median of {args.repeats} "
        "(after a warm-up)"
    )
    for stage, values in timings.items():
        print(f"  {stage:12s} {statistics.median(values[1:]) * 1000:9.1f} ms")
    if args.torch_profile:
        from torch.profiler import ProfilerActivity, profile

        fused = model.fusion(features)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            fused = model.fusion(features)
            model.layer_maps(features, fused, text)
            print(f"fusion + layer_maps under the profiler: {time.perf_counter() - start:.2f} s")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
