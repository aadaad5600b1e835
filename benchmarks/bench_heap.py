r"""What keeping freed memory for reuse (`cliper_lib.heap.keep_freed_memory`, which the `cliper`
executable sets at start) buys a float32 `segment` on a CPU, and what it costs in memory.

    python benchmarks/bench_heap.py --pairs 2 --out benchmarks/results/heap_cpu.json

Full-size random weights (ViT-B/16 + SD-2.1-base shapes), VOC21 preset, 20 classes, chelsea at
slide 336, huge pages requested (as the executable does). Each setting runs in a fresh process (the
allocator's policy is the process's), `--runs` segments after a warm-up; the two processes alternate
`--pairs` times. Per process: the segments' seconds, the kernel (system) time per segment, the peak
resident memory, and a digest of the refined maps, scores and labels (the same bits either way).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = ("default", "kept")


def one_process(setting: str, runs: int) -> dict:
    """In this process: the allocator as `setting` says, then `runs` timed segments."""
    import numpy as np
    import torch
    from PIL import Image

    from cliper_lib.config import DATA_DIR
    from cliper_lib.heap import keep_freed_memory, request_huge_pages

    kept = keep_freed_memory() if setting == "kept" else False
    request_huge_pages()
    torch.set_grad_enabled(False)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import random_text_set, segment_with_text
    from bench_precision import build_models

    with Image.open(DATA_DIR / "samples" / "chelsea.jpg") as image:
        photo = np.asarray(image.convert("RGB"))
    cfg, model = build_models(["float32"])["float32"]
    text = random_text_set(model.clip, 20)
    run_cfg = cfg.replace(sliding_crop_size=336)
    segment_with_text(model, photo, text, run_cfg)  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        result = segment_with_text(model, photo, text, run_cfg)
        seconds.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    digest = hashlib.sha256()
    for part in (result.refined, result.scores, result.labels):
        digest.update(part.contiguous().numpy().tobytes())
    return {
        "setting": setting,
        "kept": kept,
        "seconds": seconds,
        "system_s_per_segment": (after.ru_stime - before.ru_stime) / runs,
        "peak_rss_gib": after.ru_maxrss / 1024**2,
        "digest": digest.hexdigest()[:16],
        "loadavg": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", choices=SETTINGS, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_process(args.one, args.runs)))
        return
    rows = []
    for _ in range(args.pairs):
        for setting in SETTINGS:
            command = [sys.executable, __file__, "--one", setting, "--runs", str(args.runs)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for setting in SETTINGS:
        mine = [r for r in rows if r["setting"] == setting]
        summary[setting] = {
            "median_s": statistics.median(s for r in mine for s in r["seconds"]),
            "system_s_per_segment": statistics.median(r["system_s_per_segment"] for r in mine),
            "peak_rss_gib": max(r["peak_rss_gib"] for r in mine),
        }
    summary["speedup"] = summary["default"]["median_s"] / summary["kept"]["median_s"]
    summary["same_bits"] = len({r["digest"] for r in rows}) == 1
    print(json.dumps(summary, indent=1))
    if args.out:
        record = {"rows": rows, "summary": summary, "threads": os.cpu_count()}
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
