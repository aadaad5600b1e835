"""`cliper segment | demo | eval | reproduce | download`: the suite for people who never open Jupyter."""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import DATA_DIR, CLIPerConfig, ConfigError, parse_overrides

SAMPLES_DIR = DATA_DIR / "samples"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="vit-b-16/voc21", help="preset name (see `cliper presets`) or YAML path")
    parser.add_argument("--profile", choices=["paper", "smoke"], default=None,
                        help="paper: real weights (default); smoke: tiny random models, works offline")
    parser.add_argument("--refinement", choices=["sfsa", "mean", "selection", "none"], default=None)
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
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


def sample_classes() -> dict[str, str]:
    """Suggested class names of the bundled sample photos, by file name."""
    import yaml

    entries = yaml.safe_load((SAMPLES_DIR / "samples.yaml").read_text())
    return {name: entry["classes"] for name, entry in entries.items()}


def segment_images(model, images: Sequence[Path], classes: str | None, background: str | None, out: Path,
                   progress: bool = True) -> list[dict[str, Any]]:
    """Segment each image and write <stem>_labels.png, <stem>_overlay.png and <stem>_scores.json to `out`."""
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from .files import atomic_write_json
    from .text import parse_class_names, split_background_line
    from .viz import save_label_png, save_overlay_png

    suggestions = sample_classes()
    bg_words = split_background_line(background) if background is not None else None
    text_cache: dict[str, Any] = {}
    records = []
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(images, desc="segment", unit="image", disable=not progress):
        try:
            with Image.open(path) as pil:
                image = np.asarray(pil.convert("RGB"))
        except Exception as error:  # a broken file is named, and the others still run
            raise ValueError(f"cannot read image {path}: {error}") from error
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
    from .pipeline import CLIPer

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
    images = sorted(SAMPLES_DIR / name for name in sample_classes())
    model = build_model(cfg)
    records = segment_images(model, images, None, None, Path(args.out), not args.quiet)
    for record in records:
        print(f"{Path(record['image']).name}: {', '.join(record['present']) or 'nothing found'}")
    print(f"demo ({cfg.profile} profile): overlays, label maps and scores for {len(records)} images in {args.out}")
    if cfg.profile == "smoke":
        print("note: the smoke profile uses tiny RANDOM models; its masks show the pipeline runs, not real quality.")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .models import PAPER_PRETRAINED, fetch_clip_weights

    cfg = config_from_args(args)
    backbones = args.backbone or [cfg.backbone]
    for backbone in backbones:
        pretrained = PAPER_PRETRAINED.get(backbone, cfg.pretrained) if args.backbone else cfg.pretrained
        path = fetch_clip_weights(backbone, pretrained, allow_download=True)
        print(f"CLIP {backbone} ({pretrained}): {path}")
    if not args.skip_sd:
        from .sd_attention import download_sd_weights

        print(f"Stable Diffusion ({cfg.sd_repo}): {download_sd_weights(cfg.sd_repo)}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import list_presets

    for name in list_presets():
        cfg = CLIPerConfig.from_preset(name)
        paper = f"{cfg.paper_miou:.1f}" if cfg.paper_miou is not None else "-"
        print(f"{name:24s} {cfg.backbone:9s} size {cfg.size:4d}  paper mIoU {paper}")
    return 0


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
    from .evaluate import add_eval_arguments

    add_eval_arguments(p)
    p.set_defaults(func=lambda a: __import__("cliper_lib.evaluate", fromlist=["run_eval"]).run_eval(a))

    p = sub.add_parser("reproduce", help="execute a papermill run plan (papermill_runs/<plan>.yaml)")
    from .reproduce import add_reproduce_arguments

    add_reproduce_arguments(p)
    p.set_defaults(func=lambda a: __import__("cliper_lib.reproduce", fromlist=["run_reproduce"]).run_reproduce(a))

    p = sub.add_parser("download", help="fetch the paper weights into the Hugging Face cache")
    p.add_argument("--backbone", action="append", choices=["ViT-B-16", "ViT-L-14", "ViT-H-14"],
                   help="CLIP backbone(s) to fetch (default: the preset's)")
    p.add_argument("--skip-sd", action="store_true", help="do not fetch Stable Diffusion")
    add_model_arguments(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("presets", help="list the bundled presets")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .models import WeightsMissingError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except WeightsMissingError as error:
        print(f"cliper: {error}", file=sys.stderr)
        return 2
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"cliper: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
