"""Seconds and peak memory (VmHWM) to load full-size SD-2.1-base weights (random, saved once to a
local folder) the way the paper profile does (`load_sd_components` on a diffusers folder), each load
in a fresh process; and what it printed.

    # ~5.2 GB on disk, ~6 GB RAM to build
    python benchmarks/bench_weight_loading.py --folder /tmp/sd21-random

Run it with and without `accelerate` installed to see what diffusers' low-memory loading saves:
without it, diffusers first initialises every module randomly and then copies the weights in
(slower, about twice the memory while loading).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, warnings, io, contextlib, logging
def hwm_gb():
    # this process's peak resident memory (VmHWM starts afresh at exec, unlike ru_maxrss)
    with open("/proc/self/status") as status:
        line = next(row for row in status if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20
err = io.StringIO()
handler = logging.StreamHandler(err); logging.getLogger().addHandler(handler)
with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(err):
    warnings.simplefilter("always")
    import torch
    from cliper_lib.config import CLIPerConfig
    from cliper_lib.weights.sd import load_sd_components
    torch.set_num_threads(2)
    before = hwm_gb()
    t0 = time.perf_counter()
    sd = load_sd_components(CLIPerConfig(profile="paper", sd_repo=sys.argv[1]))
    seconds = time.perf_counter() - t0
    loaded = hwm_gb()
    # weights may still be lazily mapped from the files: read every one once
    t0 = time.perf_counter()
    with torch.no_grad():
        for module in (sd.unet, sd.vae, sd.text_encoder):
            for tensor in module.state_dict().values():
                tensor.float().sum()
    touch = time.perf_counter() - t0
peak = hwm_gb()
try:
    import accelerate; acc = accelerate.__version__
except ImportError:
    acc = None
lines = [str(w.message).splitlines()[0] for w in caught]
lines += [line for line in err.getvalue().splitlines() if line.strip()]
print(json.dumps({"accelerate": acc, "load_s": round(seconds, 2), "first_read_s": round(touch, 2),
                  "peak_rss_after_load_gb": round(loaded, 2), "peak_rss_gb": round(peak, 2),
                  "rss_before_load_gb": round(before, 2), "printed": sorted(set(lines))[:8]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--folder", default="/tmp/cliper-sd21-random", help="where the random SD folder lives"
    )
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    folder = Path(args.folder)
    if not (folder / "model_index.json").exists():
        from cliper_lib.weights.sd import build_random_sd_components, save_sd_folder

        print(f"writing full-size random SD-2.1-base weights to {folder} ...", file=sys.stderr)
        save_sd_folder(build_random_sd_components(seed=0, full_size=True), folder)
    for _ in range(args.repeats):
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True
        )
        if res.returncode:
            sys.exit(res.stderr[-3000:])
        print(json.dumps(json.loads(res.stdout.strip().splitlines()[-1])))


if __name__ == "__main__":
    main()
