"""`cliper segment | demo | eval | reproduce | download | presets`: the suite for people who never open Jupyter.

Every argument parser of the package is here; the choices come from the config's constants.
"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Any, Sequence

from ..config import (
    BENCHMARKS,
    DTYPES,
    PAPER_PRETRAINED,
    PROFILES,
    REFINEMENTS,
    CLIPerConfig,
    ConfigError,
    list_presets,
    parse_overrides,
)
from ..images import IMAGE_SUFFIXES, ImageReadError, read_image
from .samples import SAMPLES_DIR, suggested_classes_by_image


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="vit-b-16/voc21", help="preset name (see `cliper presets`) or YAML path")
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="paper: real weights (default); smoke: tiny random models, works offline")
    parser.add_argument("--refinement", choices=REFINEMENTS, default=None)
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", choices=DTYPES, default=None)
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override any config field, e.g. --set attention_thr=0.2 (repeatable)")


def config_from_args(args: argparse.Namespace) -> CLIPerConfig:
    overrides = parse_overrides(getattr(args, "overrides", None))
    for name in ("profile", "refinement", "device", "dtype"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return CLIPerConfig.from_preset(args.preset, **overrides)


def expand_images(patterns: Sequence[str]) -> list[Path]:
    """Files, folders (their images) and glob patterns -> sorted unique image paths; a miss is an error."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = [p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif any(ch in pattern for ch in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).suffix.lower() in IMAGE_SUFFIXES]
        else:
            matches = [path] if path.is_file() else []
        if not matches:
            raise FileNotFoundError(f"no image found for {pattern!r}")
        found.extend(matches)
    return list(dict.fromkeys(found))


def segment_images(model, images: Sequence[Path], classes: str | None, background: str | None, out: Path,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Segment each image and write <stem>_labels.png, <stem>_overlay.png and <stem>_scores.json to `out`."""
    from tqdm.auto import tqdm

    from ..files import atomic_write_json
    from ..method.text import parse_class_names, split_background_line
    from .viz import save_label_png, save_overlay_png

    suggestions = suggested_classes_by_image()
    bg_words = split_background_line(background) if background is not None else None
    text_cache: dict[str, Any] = {}
    records = []
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(images, desc="segment", unit="image", disable=not progress):
        try:
            image = read_image(path)
        except ImageReadError as error:
            raise ValueError(str(error)) from error
        names_text = classes or suggestions.get(path.name)
        if names_text is None:
            raise ValueError(f"no --classes given and {path.name} is not a bundled sample with suggested classes")
        if names_text not in text_cache:
            text_cache[names_text] = model.encode_text(parse_class_names(names_text), bg_words)
        text = text_cache[names_text]
        result = model.segment(image, text=text)
        stem = path.stem
        save_label_png(out / f"{stem}_labels.png", result.labels.numpy())
        save_overlay_png(out / f"{stem}_overlay.png", image, result.labels.numpy(), text.names,
                         title=f"{path.name}: CLIPer ({model.cfg.profile})")
        record = {
            "image": str(path), "classes": text.names, "background": text.background,
            "scores": {name: round(float(s), 6) for name, s in zip(text.names, result.scores)},
            "present": result.present_classes(), "profile": model.cfg.profile, "preset": model.cfg.preset,
            "refinement": model.cfg.refinement, "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        }
        atomic_write_json(out / f"{stem}_scores.json", record)
        records.append(record)
    return records


def build_model(cfg: CLIPerConfig):
    from ..weights.models import CLIPer

    return CLIPer.from_config(cfg)


def cmd_segment(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    images = expand_images(args.images)
    model = build_model(cfg)
    records = segment_images(model, images, args.classes, args.background, Path(args.out), not args.quiet)
    for record in records:
        print(f"{record['image']}: {', '.join(record['present']) or 'nothing found'}")
    print(f"wrote {3 * len(records)} files to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    images = sorted(SAMPLES_DIR / name for name in suggested_classes_by_image())
    model = build_model(cfg)
    records = segment_images(model, images, None, None, Path(args.out), not args.quiet)
    for record in records:
        print(f"{Path(record['image']).name}: {', '.join(record['present']) or 'nothing found'}")
    print(f"demo ({cfg.profile} profile): overlays, label maps and scores for {len(records)} images in {args.out}")
    if cfg.profile == "smoke":
        print("note: the smoke profile uses tiny RANDOM models; its masks show the pipeline runs, not real quality.")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from ..weights.clip import fetch_clip_weights

    cfg = config_from_args(args)
    backbones = args.backbone or [cfg.backbone]
    for backbone in backbones:
        pretrained = PAPER_PRETRAINED.get(backbone, cfg.pretrained) if args.backbone else cfg.pretrained
        path = fetch_clip_weights(backbone, pretrained, allow_download=True)
        print(f"CLIP {backbone} ({pretrained}): {path}")
    if not args.skip_sd:
        from ..weights.sd import download_sd_weights

        print(f"Stable Diffusion ({cfg.sd_repo}): {download_sd_weights(cfg.sd_repo)}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name in list_presets():
        cfg = CLIPerConfig.from_preset(name)
        paper = f"{cfg.paper_miou:.1f}" if cfg.paper_miou is not None else "-"
        print(f"{name:24s} {cfg.backbone:9s} size {cfg.size:4d}  paper mIoU {paper}")
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The `cliper eval` options (also `torchrun ... -m cliper_lib eval`)."""
    parser.add_argument("--preset", default="vit-b-16/voc21", help="preset name (e.g. vit-l-14/ade20k) or YAML path")
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="paper: real weights (preset default); smoke: tiny random models, works offline")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (under torchrun: per LOCAL_RANK)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override any config field, e.g. --set attention_thr=0.2 (repeatable)")
    parser.add_argument("--dataset", default=None,
                        help=f"synthetic | folder | a benchmark ({', '.join(BENCHMARKS)}); default: the preset's")
    parser.add_argument("--data-root", default=None,
                        help="folder holding the benchmark folders (default $CLIPER_DATA, else ./datasets); "
                             "the image folder for --dataset folder")
    parser.add_argument("--mask-dir", default=None, help="--dataset folder: label-map PNGs named like the images")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    parser.add_argument("--synthetic-size", type=int, default=96, help="--dataset synthetic: image side in pixels")
    parser.add_argument("--out", default=None,
                        help="results JSON (default outputs/eval/<preset>.json); with --all, a folder")
    parser.add_argument("--table", default=None, help="append the markdown row(s) to this file (else printed only)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file (with --all, a folder) written every --checkpoint-every images")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint (default path: next to --out) if it exists")
    parser.add_argument("--checkpoint-every", type=int, default=50, metavar="N")
    parser.add_argument("--all", action="store_true", help="run the 8 presets of --backbone, render the full table")
    parser.add_argument("--backbone", default="vit-b-16", help="with --all: preset folder (vit-b-16 | vit-l-14)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--batch-size", type=int, default=1, metavar="B",
                        help="B images per CLIP walk, VAE encode and UNet pass (same results; for GPUs)")


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `reproduce` options to a (sub)parser: --plan, --out, --only, --kernel, --log-output."""
    parser.add_argument("--plan", default="smoke", metavar="NAME",
                        help="run plan: a name in papermill_runs/ (smoke, paper) or a path to a .yaml (default: smoke)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for executed notebooks, records and summary (default: papermill_runs/<plan>/)")
    parser.add_argument("--only", action="append", default=None, metavar="NOTEBOOK",
                        help="run only this run/notebook (name, file name or number prefix like 03); repeatable")
    parser.add_argument("--kernel", default=None, metavar="NAME",
                        help="Jupyter kernel to use (default: one that runs this Python interpreter)")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", dest="overrides",
                        help="override a parameter in every notebook that declares it (value parsed as YAML: "
                             "3, 0.5, true, 'text'); repeatable")
    parser.add_argument("--log-output", action="store_true", help="echo notebook output to the log as it runs")
    parser.add_argument("--no-progress", action="store_true", help="hide papermill's per-cell progress bar")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cliper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment your images with any class names")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--classes", help='class names separated by ";" (default: a sample\'s suggested classes)')
    p.add_argument("--background", help="background words that compete in the softmax but are never labels "
                                         "(default: the preset's background vocabulary)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true")
    add_model_arguments(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("demo", help="segment the bundled sample photos with their suggested classes")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--quiet", action="store_true")
    add_model_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="evaluate a preset on a benchmark (or the synthetic set)")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("reproduce", help="execute a papermill run plan (papermill_runs/<plan>.yaml)")
    add_reproduce_arguments(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("download", help="fetch the paper weights into the Hugging Face cache")
    p.add_argument("--backbone", action="append", choices=list(PAPER_PRETRAINED),
                   help="CLIP backbone(s) to fetch (default: the preset's)")
    p.add_argument("--skip-sd", action="store_true", help="do not fetch Stable Diffusion")
    add_model_arguments(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("presets", help="list the bundled presets")
    p.set_defaults(func=cmd_presets)
    return parser


def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval.runner import run_eval

    return run_eval(args)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .papermill import run_reproduce

    return run_reproduce(args)


def main(argv: Sequence[str] | None = None) -> int:
    from ..weights.hub import WeightsMissingError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (WeightsMissingError, ConfigError, FileNotFoundError, ValueError) as error:
        print(f"cliper: {error}", file=sys.stderr)  # one clear line, no traceback
        return 2


if __name__ == "__main__":
    sys.exit(main())
