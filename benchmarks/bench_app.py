"""First paint and per-move times of `cliper app`, in a real browser
(Playwright on the system Chromium).

    python benchmarks/bench_app.py                       # smoke profile, CPU, 3 rounds of moves
    python benchmarks/bench_app.py --repeats 5 --out outputs/bench_app.json

Starts `cliper app --profile smoke --no-browser` and opens it in headless Chromium. First paint:
seconds from the request to the page, to the controls (drawn from the config, disabled), to the live
controls (the models loaded: `ready`), and to the first result. Moves (median over --repeats, each
until the new overlay is on the page): threshold (score_threshold one step: labels only), layer
range (the lower handle of the fused-layer slider one step: fusion onward), class change (a new
class list: text onward), upload (a new 480×640 image: every image stage, SD included). The page's
own status line says what each move recomputed; those seconds are printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cliper_lib.suite.explorer.app.drive import (
    AppDriver,
    AppServer,
    browser_unavailable,
    chromium,
    new_page,
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="smoke", choices=["smoke", "paper"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of moves (each kind once per round)"
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    reason = browser_unavailable()
    if reason:
        print(f"bench_app: {reason}", file=sys.stderr)
        return 2

    folder = Path(tempfile.mkdtemp(prefix="bench-app-"))
    rng = np.random.default_rng(0)
    uploads = []
    for i in range(args.repeats):
        path = folder / f"upload{i}.png"
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(path)
        uploads.append(path)
    start = time.perf_counter()
    server = AppServer(
        ["--profile", args.profile, "--device", args.device, "--out", str(folder / "exports")],
        log=folder / "server.log",
    )
    with server, chromium() as browser:
        app = AppDriver(new_page(browser), server.url)
        paint = app.open()
        moves: dict[str, list[float]] = {
            "threshold": [],
            "layer range": [],
            "class change": [],
            "upload": [],
        }
        statuses: dict[str, str] = {}
        classes = ["person; flag; spacesuit; rocket", "person; flag", "cat; sofa; wall"]
        for i in range(args.repeats):
            moves["threshold"].append(app.move_slider("score_threshold", -1 if i % 2 == 0 else +1))
            statuses["threshold"] = app.status()
            moves["layer range"].append(app.move_layer_range_start(+1 if i % 2 == 0 else -1))
            statuses["layer range"] = app.status()
            moves["class change"].append(app.type_text("classes", classes[i % len(classes)]))
            statuses["class change"] = app.status()
            moves["upload"].append(app.upload(uploads[i]))
            statuses["upload"] = app.status()
    result = {
        "profile": args.profile,
        "device": args.device,
        "repeats": args.repeats,
        "server_listening_s": round(server.started_s, 2),
        "first_paint_s": {k: round(v, 2) for k, v in paint.items()},
        "move_median_s": {k: round(statistics.median(v), 3) for k, v in moves.items()},
        "move_all_s": {k: [round(x, 3) for x in v] for k, v in moves.items()},
        "last_status": {k: v.splitlines()[0] for k, v in statuses.items()},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(f"server listening after {result['server_listening_s']} s")
    print(
        "first paint (from the request): " + ", ".join(f"{k} {v:.1f} s" for k, v in paint.items())
    )
    for kind, seconds in result["move_median_s"].items():
        status = result["last_status"][kind]
        print(f"{kind:>13s}: median {seconds:.2f} s over {args.repeats}  | {status}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
