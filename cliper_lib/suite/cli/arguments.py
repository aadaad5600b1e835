"""Every argument parser of the package: one function per group of options, shared by the commands
that take them (`cliper eval` and `torchrun ... -m cliper_lib eval` alike); the choices come from
the config's constants."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from ...config import (
    BENCHMARKS,
    DEFAULT_PRESET,
    DTYPES,
    LAST_LAYER_ATTENTIONS,
    PAPER_PRETRAINED,
    PRECISIONS,
    PROFILES,
    REFINEMENTS,
    VFM_MODELS,
    accepted,
)
from ...vocab import CLASS_SEPARATORS


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """--set KEY=VALUE (repeatable): any config field."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set attention_thr=0.2 (repeatable); each value "
        "is read by its field's type: numbers, true/false (yes/no, on/off, 1/0), lists as [2, 9] "
        "or 2,9, none; a wrong value is refused with what the field accepts",
    )


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """--precision NAME: a named pair of dtype and sd_dtype."""
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=None,
        help="a named setting of dtype and sd_dtype: mixed = CLIP float32, VAE + UNet bfloat16 "
        "(on a CPU with bfloat16 units about 2x faster, coarse maps unchanged); bfloat16 = "
        "everything bfloat16; float16 ones for a GPU (default: float32)",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model a command builds: --preset, --profile, --refinement, --last-layer-attention,
    --device, --dtype, --precision, --set."""
    parser.add_argument(
        "--preset", default=DEFAULT_PRESET, help="preset name (see `cliper presets`) or YAML path"
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="paper: real weights (default); smoke: tiny random models, works offline",
    )
    parser.add_argument("--refinement", choices=REFINEMENTS, default=None)
    parser.add_argument("--last-layer-attention", choices=LAST_LAYER_ATTENTIONS, default=None)
    parser.add_argument("--device", default=None, help=accepted("device"))
    parser.add_argument("--dtype", choices=DTYPES, default=None)
    add_precision_argument(parser)
    add_set_argument(parser)


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """`cliper segment`: images, classes, background words, output folder, and the model."""
    parser.add_argument(
        "images",
        nargs="+",
        help="image files, folders or glob patterns (an existing path is always that file, "
        "whatever its name; a pattern expands only when no such path exists)",
    )
    parser.add_argument(
        "--classes",
        help=f"class names separated by {CLASS_SEPARATORS} (default: a sample's suggested classes)",
    )
    parser.add_argument(
        "--background",
        help="background words that compete in the softmax but are never labels, separated "
        "like --classes, or 'auto' (default: the preset's vocabulary minus your classes)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (never read as input; a rerun keeps images already done with the "
        "same settings)",
    )
    parser.add_argument(
        "--score-maps",
        action="store_true",
        help="also write <name>_score_maps.npy: each class's score-scaled map at full "
        "resolution, float32 (classes x height x width x 4 bytes: 14 GB for 24 MP and 150 "
        "classes), streamed to disk; read it with numpy.load(path, mmap_mode='r')",
    )
    parser.add_argument("--quiet", action="store_true")
    add_model_arguments(parser)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """`cliper demo`: the output folder and the model."""
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--quiet", action="store_true")
    add_model_arguments(parser)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The `cliper eval` options (also `torchrun ... -m cliper_lib eval`)."""
    parser.add_argument(
        "--preset", default=DEFAULT_PRESET, help="preset name (e.g. vit-l-14/ade20k) or YAML path"
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="paper: real weights (preset default); smoke: tiny random models, works offline",
    )
    parser.add_argument(
        "--device", default=None, help=f"{accepted('device')} (under torchrun: per LOCAL_RANK)"
    )
    add_precision_argument(parser)
    add_set_argument(parser)
    add_eval_data_arguments(parser)
    add_eval_output_arguments(parser)
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


def add_eval_data_arguments(parser: argparse.ArgumentParser) -> None:
    """What `cliper eval` scores: --dataset, --data-root, --mask-dir, --limit, --synthetic-size."""
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


def add_eval_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where `cliper eval` writes: --out, --table, and its checkpoints (--checkpoint, --resume,
    --checkpoint-every)."""
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


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `reproduce` options to a (sub)parser: --plan, --out, --only, --kernel, --set,
    --log-output, --no-progress."""
    parser.add_argument(
        "--plan",
        default="smoke",
        metavar="NAME",
        help="run plan: a name in papermill_runs/ (smoke, paper) or a path to a .yaml "
        "(default: smoke)",
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


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """`cliper download`: which backbones, SD or not, which VFMs, and the model settings."""
    parser.add_argument(
        "--backbone",
        action="append",
        choices=list(PAPER_PRETRAINED),
        help="CLIP backbone(s) to fetch (default: the preset's)",
    )
    parser.add_argument("--skip-sd", action="store_true", help="do not fetch Stable Diffusion")
    parser.add_argument(
        "--vfm",
        action="append",
        choices=list(VFM_MODELS),
        help="DINO / DINOv2 model(s) to fetch (default: those the config uses)",
    )
    add_model_arguments(parser)


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """`cliper app`: the opening state (images, preset, models, classes), the export folder and the
    server (port, host, idle culling, browser)."""
    parser.add_argument(
        "images",
        nargs="*",
        help="images to open with (first one shown), before the bundled samples",
    )
    parser.add_argument(
        "--preset", default=DEFAULT_PRESET, help="preset name or YAML path: the opening state"
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="paper: real weights (default); smoke: tiny random",
    )
    parser.add_argument(
        "--refinement",
        choices=REFINEMENTS,
        default=None,
        help="none: CLIP only, no Stable Diffusion to load",
    )
    parser.add_argument("--device", default=None, help=accepted("device"))
    parser.add_argument("--dtype", choices=DTYPES, default=None)
    add_precision_argument(parser)
    add_set_argument(parser)
    parser.add_argument(
        "--classes",
        default=None,
        help="separated by ';', ',' or new lines (default: the first image's suggested classes)",
    )
    parser.add_argument(
        "--background",
        default=None,
        help="words separated by ';' or ',', or auto (default: preset's minus classes)",
    )
    parser.add_argument(
        "--out", default="outputs/app", help="folder the export button writes to (one per export)"
    )
    add_server_arguments(parser)


def port_number(text: str) -> int:
    """--port: an integer in 1..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range (1-65535)")
    return port


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """`cliper app`'s server: --port, --host, --cull-idle-after, --no-browser."""
    parser.add_argument(
        "--port",
        type=port_number,
        default=None,
        help="1-65535; in use: the app says so and stops (default: a free port)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0 shares it on the network)",
    )
    parser.add_argument(
        "--cull-idle-after",
        type=int,
        default=60,
        metavar="SECONDS",
        help="forget a visit (its photos and results) this long after its page went away without "
        "closing; a closed tab is forgotten at once",
    )
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")


def add_debug_argument(
    parser: argparse.ArgumentParser, commands: Iterable[argparse.ArgumentParser]
) -> None:
    """--debug before the command, and also after it (SUPPRESS keeps a --debug given before it)."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    for sub in commands:
        sub.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
