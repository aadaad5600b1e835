r"""Where `segment`'s resident memory peaks: the largest RSS seen in each step of each image.

    flock /tmp/cliper-heavy.lock python benchmarks/trace_rss.py [--slides 336 0 336 0] \
        [--out trace.json]

Full-size random weights (ViT-B/16 + SD-2.1-base shapes, float32, the VOC21 preset, 20 classes),
built as bench_floor.py builds them. A thread samples the process's resident size (/proc/self/statm)
every half millisecond and files each sample under the step running at the time: the VAE encode, the
CLIP walk (image, crops), fusion, the UNet pass (inside the streamed refinement), or "other" (the
rest of `segment`). The steps are told apart by wrapping the library's own entry points for the
length of this script; nothing in the library changes. Linux only.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import build_full_size_clip, random_text_set  # noqa: E402


def resident_gb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1024**3


class Tracer:
    """The largest resident size per step; `step` is the step running now."""

    def __init__(self) -> None:
        self.step, self.peaks = "other", {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            rss, step = resident_gb(), self.step
            if rss > self.peaks.get(step, 0.0):
                self.peaks[step] = rss
            time.sleep(0.0005)

    def wrap(self, owner, name: str, step: str) -> None:
        """Label the time spent in owner.name (a function or method) as `step`."""
        original = getattr(owner, name)

        def labelled(*args, **kwargs):
            outer, self.step = self.step, step
            try:
                return original(*args, **kwargs)
            finally:
                self.step = outer

        setattr(owner, name, labelled)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photo", default="chelsea", help="a name in data/samples")
    parser.add_argument(
        "--slides", nargs="+", type=int, default=[336, 0, 336, 0], help="one image per value"
    )
    parser.add_argument("--out", default=None, help="write the peaks as JSON here")
    args = parser.parse_args()

    from PIL import Image

    from cliper_lib.config import DATA_DIR, CLIPerConfig
    from cliper_lib.method import fusion, pipeline, sd_attention
    from cliper_lib.weights.sd import build_random_sd_components, drop_vae_decoder

    torch.set_grad_enabled(False)
    tracer = Tracer()
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", device="cpu", dtype="float32")
    clip = build_full_size_clip("ViT-B-16", torch.device("cpu"), torch.float32)
    components = build_random_sd_components(seed=0, full_size=True, lean=True)
    drop_vae_decoder(components.vae)
    model = pipeline.CLIPer(
        cfg, clip, sd_attention.SDSelfAttention(components, cfg), text_cache_dir=False
    )
    after_build = resident_gb()
    tracer.wrap(sd_attention.SDSelfAttention, "encode", "vae encode")
    tracer.wrap(sd_attention, "run_until_captured", "unet pass")
    tracer.wrap(pipeline, "walk_layers", "clip walk")
    tracer.wrap(fusion, "walk_layers", "clip walk (crops)")
    tracer.wrap(fusion, "fuse_layers", "fusion")
    text = random_text_set(clip, 20)
    with Image.open(DATA_DIR / "samples" / f"{args.photo}.jpg") as image:
        photo = np.asarray(image.convert("RGB"))
    rows = []
    print(f"after building the models: {after_build:.3f} GB resident")
    for slide in args.slides:
        tracer.peaks, before = {}, resident_gb()
        model.segment(photo, given={"text": text}, cfg=cfg.replace(sliding_crop_size=slide))
        row = {
            "slide": slide,
            "resident_before_gb": before,
            "resident_after_gb": resident_gb(),
            "peak_by_step_gb": dict(sorted(tracer.peaks.items(), key=lambda kv: -kv[1])),
        }
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"after_building_models_gb": after_build, "images": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
