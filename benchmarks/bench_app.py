"""First paint, first result and moves of `cliper app`, at 800×600 and 12 MP, and the server's
memory, in a real browser (Playwright on the system Chromium).

    python benchmarks/bench_app.py                       # smoke profile, CPU
    python benchmarks/bench_app.py --repeats 3 --out outputs/bench_app.json

Starts `cliper app --profile smoke --no-browser` and opens it in headless Chromium (1366×768).
First paint: seconds from the request to the page, to the controls (drawn from the config,
disabled), to the live controls (models loaded: `ready`), to the first result. Then, for a photo of
each size: the first result after it is uploaded (every image stage), a threshold move (labels
only) and a layer-range move (fusion onward), medians over --repeats, each until the new overlay is
on the page. Memory: the server's process tree (psutil) after the first visit, and after five
reloads and three more tabs; beside it, what one model load costs in a fresh process (what every
visit cost when each visit was a Voila kernel). The machine's load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cliper_lib.suite.explorer.app.drive import (
    AppDriver,
    AppServer,
    browser_unavailable,
    chromium,
    new_page,
    tree_rss,
)

SIZES = {"800x600": (600, 800), "12MP": (3000, 4000)}
GB = 1024**3


def photo(path: Path, height: int, width: int, seed: int) -> Path:
    """A smooth random photo (compresses like a real one, unlike noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 50 + 1, width // 50 + 1, 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(path, quality=90)
    return path


def one_model_rss(profile: str, device: str) -> int:
    """Resident bytes of a fresh process that has loaded the models once."""
    code = (
        "import psutil; from cliper_lib.suite.explorer.app.page import load_model, AppSettings; "
        f"load_model(AppSettings(profile={profile!r}, device={device!r})); "
        "print(psutil.Process().memory_info().rss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def moves(app: AppDriver, path: Path, repeats: int) -> dict[str, float]:
    """Median seconds of: the upload's first result, a threshold step, a layer-range step."""
    first = app.upload(path)
    timed: dict[str, list[float]] = {"threshold": [], "layer range": []}
    for i in range(repeats):
        sign = -1 if i % 2 == 0 else +1
        timed["threshold"].append(app.move_slider("score_threshold", sign))
        timed["layer range"].append(app.move_layer_range_start(-sign))
    return {"first result": first, **{k: statistics.median(v) for k, v in timed.items()}}


def memory(app: AppDriver, browser, pid: int) -> dict[str, float]:
    """The server's memory after the first visit, then after five reloads and three more tabs."""
    after_first = tree_rss(pid)
    for _ in range(5):
        app.page.reload()
        app.open()
    tabs = [AppDriver(new_page(browser, 1366, 768), app.url) for _ in range(3)]
    for tab in tabs:
        tab.open()
    after_tabs = tree_rss(pid)
    for tab in tabs:
        tab.page.close()
    return {"first visit": after_first / GB, "5 reloads + 3 tabs": after_tabs / GB}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="smoke", choices=["smoke", "paper"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="steps of each move per photo")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    reason = browser_unavailable()
    if reason:
        print(f"bench_app: {reason}", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="bench-app-"))
    photos = {
        name: photo(folder / f"{name}.jpg", h, w, i)
        for i, (name, (h, w)) in enumerate(SIZES.items())
    }
    load_before = os.getloadavg()
    server = AppServer(
        ["--profile", args.profile, "--device", args.device, "--out", str(folder / "exports")],
        log=folder / "server.log",
    )
    with server, chromium() as browser:
        app = AppDriver(new_page(browser, 1366, 768), server.url, timeout_s=900)
        paint = app.open()
        timed = {name: moves(app, path, args.repeats) for name, path in photos.items()}
        rss = memory(app, browser, server.process.pid)
    rss["one model load (fresh process)"] = one_model_rss(args.profile, args.device) / GB
    result = {
        "profile": args.profile,
        "device": args.device,
        "repeats": args.repeats,
        "loadavg_before_after": [round(x, 2) for x in (*load_before, *os.getloadavg())],
        "cpus": os.cpu_count(),
        "first_paint_s": {k: round(v, 2) for k, v in paint.items()},
        "moves_s": {n: {k: round(v, 3) for k, v in m.items()} for n, m in timed.items()},
        "memory_gb": {k: round(v, 2) for k, v in rss.items()},
    }
    print(f"load average (1, 5, 15 min) before and after: {result['loadavg_before_after']}")
    print("first paint: " + ", ".join(f"{k} {v:.1f} s" for k, v in paint.items()))
    for name, seconds in result["moves_s"].items():
        print(f"{name:>8s}: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))
    print("memory: " + ", ".join(f"{k} {v:.2f} GB" for k, v in result["memory_gb"].items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
