"""`cliper segment | demo | eval | reproduce | download | presets | app`: the suite for people who never open Jupyter.

Every argument parser of the package is here; the choices come from the config's constants.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import (
    BENCHMARKS,
    DTYPES,
    LAST_LAYER_ATTENTIONS,
    PAPER_PRETRAINED,
    PROFILES,
    REFINEMENTS,
    VFM_MODELS,
    CLIPerConfig,
    ConfigError,
    list_presets,
    parse_overrides,
)
from .batch import expand_images, report_failures, run_batch, segment_images  # noqa: F401 (re-exported)
from .samples import SAMPLES_DIR, suggested_classes_by_image


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", default="vit-b-16/voc21", help="preset name (see `cliper presets`) or YAML path"
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="paper: real weights (default); smoke: tiny random models, works offline",
    )
    parser.add_argument("--refinement", choices=REFINEMENTS, default=None)
    parser.add_argument("--last-layer-attention", choices=LAST_LAYER_ATTENTIONS, default=None)
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", choices=DTYPES, default=None)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set attention_thr=0.2 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> CLIPerConfig:
    overrides = parse_overrides(getattr(args, "overrides", None))
    for name in ("profile", "refinement", "last_layer_attention", "device", "dtype"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return CLIPerConfig.from_preset(args.preset, **overrides)


def build_model(cfg: CLIPerConfig):
    from ..weights.models import CLIPer

    return CLIPer.from_config(cfg)


def cmd_segment(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    images = expand_images(args.images)
    result = run_batch(
        cfg, images, args.classes, args.background, Path(args.out), build_model, not args.quiet
    )
    for record in result.records:
        print(f"{record['image']}: {', '.join(record['present']) or 'nothing found'}")
    print(f"wrote {len(result.written)} files for {len(result.records)} image(s) to {args.out}")
    return report_failures(result, len(images))


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    images = sorted(SAMPLES_DIR / name for name in suggested_classes_by_image())
    result = run_batch(cfg, images, None, None, Path(args.out), build_model, not args.quiet)
    records = result.records
    for record in records:
        print(f"{Path(record['image']).name}: {', '.join(record['present']) or 'nothing found'}")
    print(
        f"demo ({cfg.profile} profile): overlays, label maps and scores for {len(records)} images in {args.out}"
    )
    if cfg.profile == "smoke":
        print(
            "note: the smoke profile uses tiny RANDOM models; its masks show the pipeline runs, not real quality."
        )
    return report_failures(result, len(images))


def cmd_download(args: argparse.Namespace) -> int:
    from ..weights.inventory import download_weights

    for line in download_weights(config_from_args(args), args.backbone, args.skip_sd, args.vfm):
        print(line)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name in list_presets():
        cfg = CLIPerConfig.from_preset(name)
        paper = f"{cfg.paper_miou:.1f}" if cfg.paper_miou is not None else "-"
        print(f"{name:24s} {cfg.backbone:9s} size {cfg.size:4d}  paper mIoU {paper}")
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The `cliper eval` options (also `torchrun ... -m cliper_lib eval`)."""
    parser.add_argument(
        "--preset", default="vit-b-16/voc21", help="preset name (e.g. vit-l-14/ade20k) or YAML path"
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="paper: real weights (preset default); smoke: tiny random models, works offline",
    )
    parser.add_argument(
        "--device", default=None, help="auto | cpu | cuda | cuda:N (under torchrun: per LOCAL_RANK)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set attention_thr=0.2 (repeatable)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help=f"synthetic | folder | a benchmark ({', '.join(BENCHMARKS)}); default: the preset's",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder holding the benchmark folders (default $CLIPER_DATA, else ./datasets); "
        "the image folder for --dataset folder",
    )
    parser.add_argument(
        "--mask-dir", default=None, help="--dataset folder: label-map PNGs named like the images"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    parser.add_argument(
        "--synthetic-size", type=int, default=96, help="--dataset synthetic: image side in pixels"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="results JSON (default outputs/eval/<preset>.json); with --all, a folder",
    )
    parser.add_argument(
        "--table", default=None, help="append the markdown row(s) to this file (else printed only)"
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file (with --all, a folder) written every --checkpoint-every images",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint (default path: next to --out) if it exists",
    )
    parser.add_argument("--checkpoint-every", type=int, default=50, metavar="N")
    parser.add_argument(
        "--all", action="store_true", help="run the 8 presets of --backbone, render the full table"
    )
    parser.add_argument(
        "--backbone", default="vit-b-16", help="with --all: preset folder (vit-b-16 | vit-l-14)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="B",
        help="B images per CLIP walk, VAE encode and UNet pass (same results; for GPUs)",
    )


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `reproduce` options to a (sub)parser: --plan, --out, --only, --kernel, --log-output."""
    parser.add_argument(
        "--plan",
        default="smoke",
        metavar="NAME",
        help="run plan: a name in papermill_runs/ (smoke, paper) or a path to a .yaml (default: smoke)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for executed notebooks, records and summary (default: papermill_runs/<plan>/)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NOTEBOOK",
        help="run only this run/notebook (name, file name or number prefix like 03); repeatable",
    )
    parser.add_argument(
        "--kernel",
        default=None,
        metavar="NAME",
        help="Jupyter kernel to use (default: one that runs this Python interpreter)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a parameter in every notebook that declares it (value parsed as YAML: "
        "3, 0.5, true, 'text'); repeatable",
    )
    parser.add_argument(
        "--log-output", action="store_true", help="echo notebook output to the log as it runs"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide papermill's per-cell progress bar"
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cliper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment your images with any class names")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument(
        "--classes", help='class names separated by ";" (default: a sample\'s suggested classes)'
    )
    p.add_argument(
        "--background",
        help="background words that compete in the softmax but are never labels, "
        "';'-separated like --classes, or 'auto' (default: the preset's "
        "vocabulary minus your classes)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true")
    add_model_arguments(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "demo", help="segment the bundled sample photos with their suggested classes"
    )
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--quiet", action="store_true")
    add_model_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="evaluate a preset on a benchmark (or the synthetic set)")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "reproduce", help="execute a papermill run plan (papermill_runs/<plan>.yaml)"
    )
    add_reproduce_arguments(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("download", help="fetch the paper weights into the Hugging Face cache")
    p.add_argument(
        "--backbone",
        action="append",
        choices=list(PAPER_PRETRAINED),
        help="CLIP backbone(s) to fetch (default: the preset's)",
    )
    p.add_argument("--skip-sd", action="store_true", help="do not fetch Stable Diffusion")
    p.add_argument(
        "--vfm",
        action="append",
        choices=list(VFM_MODELS),
        help="DINO / DINOv2 model(s) to fetch (default: those the config uses)",
    )
    add_model_arguments(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("presets", help="list the bundled presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser(
        "app", help="the explorer as a web app (Voila): upload, classes, sliders, export"
    )
    p.add_argument(
        "images",
        nargs="*",
        help="images to open with (first one shown), before the bundled samples",
    )
    p.add_argument(
        "--preset", default="vit-b-16/voc21", help="preset name or YAML path: the opening state"
    )
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="paper: real weights (default); smoke: tiny random",
    )
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", choices=DTYPES, default=None)
    p.add_argument(
        "--classes",
        default=None,
        help="';'-separated (default: the first image's suggested classes)",
    )
    p.add_argument(
        "--background",
        default=None,
        help="';'-separated words or auto (default: preset's minus classes)",
    )
    p.add_argument("--out", default="outputs/app", help="folder the export button writes to")
    p.add_argument("--port", type=int, default=None, help="default: a free port")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0 shares it on the network)",
    )
    p.add_argument(
        "--cull-idle-after",
        type=int,
        default=600,
        metavar="SECONDS",
        help="shut down a visit's kernel (and free its models) after this long idle with no page open",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(func=cmd_app)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    for p in (
        sub.choices.values()
    ):  # also accepted after the command; SUPPRESS keeps a --debug given before it
        p.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def cmd_app(args: argparse.Namespace) -> int:
    from .app.server import app_settings, serve

    CLIPerConfig.from_preset(
        args.preset, profile=args.profile, device=args.device, dtype=args.dtype
    )  # fail early
    images = expand_images(args.images) if args.images else []
    settings = app_settings(
        args.preset,
        args.profile,
        args.device,
        args.dtype,
        images,
        args.classes,
        args.background,
        args.out,
    )
    serve(settings, args.port, not args.no_browser, args.host, args.cull_idle_after)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval.runner import run_eval

    return run_eval(args)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .papermill import run_reproduce

    return run_reproduce(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; every failure ends in one clear message on stderr and a non-zero exit (2 for input the
    user can fix, 1 for anything else, 130 for Ctrl-C); the traceback only with --debug."""
    from ..weights.hub import WeightsMissingError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("cliper: interrupted", file=sys.stderr)
        return 130
    except (WeightsMissingError, ConfigError, FileNotFoundError, ValueError) as error:
        if args.debug:
            raise
        print(f"cliper: {error}", file=sys.stderr)  # one clear line, no traceback
        return 2
    except Exception as error:  # noqa: BLE001 - the last line of defence of a command-line tool
        if args.debug:
            raise
        print(
            f"cliper: {type(error).__name__}: {error} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
