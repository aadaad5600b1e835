"""`cliper segment | demo | eval | reproduce | download | presets | app`: the suite for people who
never open Jupyter.

A command that needs torch, the models or matplotlib imports them when it runs, so `cliper --help`
stays fast; the options are in `arguments`.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ...config import (
    CLIPerConfig,
    ConfigError,
    device_problem,
    list_presets,
    parse_field_overrides,
    parse_overrides,
    with_field_options,
    with_precision,
)
from ...heap import keep_freed_memory, request_huge_pages
from ...weights.hub import WeightsMissingError
from ..explorer.app.server import app_settings, serve
from ..runs.papermill import run_reproduce
from ..runs.plans import PlanError, load_plan, select_runs
from ..toolkit.samples import SAMPLES_DIR, suggested_classes_by_image
from .arguments import (
    add_app_arguments,
    add_debug_argument,
    add_demo_arguments,
    add_download_arguments,
    add_eval_arguments,
    add_reproduce_arguments,
    add_segment_arguments,
)

#: the options that set one config field each (an option's dest is its field's name).
FIELD_OPTIONS = ("profile", "refinement", "last_layer_attention", "device", "dtype")


def config_from_args(args: argparse.Namespace) -> CLIPerConfig:
    """The config of --preset, --set and the field options (one field given twice with different
    values is refused)."""
    overrides = parse_field_overrides(getattr(args, "overrides", None))
    options = {name: getattr(args, name, None) for name in FIELD_OPTIONS}
    given = with_precision(with_field_options(overrides, options), getattr(args, "precision", None))
    return CLIPerConfig.from_preset_given(args.preset, given)


def build_model(cfg: CLIPerConfig):
    from ...weights.models import CLIPer  # torch and the models: only when a command runs

    return CLIPer.from_config(cfg)


def cmd_segment(args: argparse.Namespace) -> int:
    from ..runs.batch import expand_images, report_failures, run_batch  # torch, matplotlib

    cfg = config_from_args(args)
    images = expand_images(args.images, out=Path(args.out))
    result = run_batch(
        cfg,
        images,
        args.classes,
        args.background,
        Path(args.out),
        build_model,
        not args.quiet,
        score_maps=args.score_maps,
    )
    for record in result.records:
        print(f"{record['image']}: {', '.join(record['present']) or 'nothing found'}")
    done = len(result.records) - len(result.kept)
    print(f"wrote {len(result.written)} files for {done} image(s) to {args.out}")
    if result.kept:
        kept = len(result.kept)
        print(f"kept the outputs of {kept} image(s) an earlier run did with the same settings")
    return report_failures(result, len(images))


def cmd_demo(args: argparse.Namespace) -> int:
    from ..runs.batch import report_failures, run_batch  # torch, matplotlib

    cfg = config_from_args(args)
    images = sorted(SAMPLES_DIR / name for name in suggested_classes_by_image())
    result = run_batch(cfg, images, None, None, Path(args.out), build_model, not args.quiet)
    records = result.records
    for record in records:
        print(f"{Path(record['image']).name}: {', '.join(record['present']) or 'nothing found'}")
    print(
        f"demo ({cfg.profile} profile): overlays, label maps and scores for {len(records)} images "
        f"in {args.out}"
    )
    if cfg.profile == "smoke":
        print(
            "note: the smoke profile uses tiny RANDOM models; its masks show the pipeline runs, "
            "not real quality."
        )
    return report_failures(result, len(images))


def cmd_download(args: argparse.Namespace) -> int:
    from ...weights.inventory import download_weights  # torch and the hub client

    for line in download_weights(config_from_args(args), args.backbone, args.skip_sd, args.vfm):
        print(line)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name in list_presets():
        cfg = CLIPerConfig.from_preset(name)
        paper = f"{cfg.paper_miou:.1f}" if cfg.paper_miou is not None else "-"
        print(f"{name:24s} {cfg.backbone:9s} size {cfg.size:4d}  paper mIoU {paper}")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from ...weights.models import check_before_loading  # torch
    from ..runs.batch import expand_images  # torch, matplotlib

    # fail early, before the server starts: the config, the device, the class file, the cache
    check_before_loading(config_from_args(args))
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
        refinement=getattr(args, "refinement", None),
        overrides=with_precision(
            parse_field_overrides(getattr(args, "overrides", None)), args.precision
        ),
    )
    serve(settings, args.port, not args.no_browser, args.host, args.cull_idle_after)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ...eval.runner import run_eval  # torch and the models

    return run_eval(args)


def plan_device_problem(args: argparse.Namespace) -> str | None:
    """A device the plan's notebooks would ask for and this machine lacks, said before any kernel
    starts and in `reproduce`'s own terms (it has --set, no --device); None when fine, or when the
    plan itself is wrong (run_reproduce says that)."""
    try:
        plan = load_plan(args.plan)
        overrides = parse_overrides(args.overrides)
        runs = select_runs(plan, args.only)
    except (PlanError, ConfigError):
        return None
    for run in runs:
        device = overrides.get("device", run.parameters.get("device", plan.defaults.get("device")))
        if isinstance(device, str) and device != "auto":
            try:
                problem = device_problem(device)
            except ConfigError as error:
                problem = str(error)
            if problem:
                return f"plan {plan.name!r}: {problem}; run it with --set device=cpu (or auto)"
    return None


def cmd_reproduce(args: argparse.Namespace) -> int:
    problem = plan_device_problem(args)
    if problem is not None:
        print(f"reproduce: {problem}", file=sys.stderr)
        return 2
    return run_reproduce(args)


#: each command: (its help line, the function adding its options, the function running it).
COMMANDS = {
    "segment": ("segment your images with any class names", add_segment_arguments, cmd_segment),
    "demo": (
        "segment the bundled sample photos with their suggested classes",
        add_demo_arguments,
        cmd_demo,
    ),
    "eval": (
        "evaluate a preset on a benchmark (or the synthetic set)",
        add_eval_arguments,
        cmd_eval,
    ),
    "reproduce": (
        "execute a papermill run plan (papermill_runs/<plan>.yaml)",
        add_reproduce_arguments,
        cmd_reproduce,
    ),
    "download": (
        "fetch the paper weights into the Hugging Face cache",
        add_download_arguments,
        cmd_download,
    ),
    "presets": ("list the bundled presets", None, cmd_presets),
    "app": (
        "the explorer as a web app (Solara): upload, classes, sliders, export",
        add_app_arguments,
        cmd_app,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cliper", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_line, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_line)
        if add_arguments is not None:
            add_arguments(command)
        command.set_defaults(func=run, parser=command)  # parser: messages name its options
    add_debug_argument(parser, sub.choices.values())
    return parser


#: the signals that stop a command the way Ctrl-C (SIGINT) does.
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


@contextlib.contextmanager
def stops_as_interrupts() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP raise KeyboardInterrupt (naming the signal) as
    Ctrl-C does, so a stop keeps finished outputs and removes partial ones; the previous handlers
    come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {
        name: signal.signal(getattr(signal, name), stop)
        for name in STOP_SIGNALS
        if hasattr(signal, name)  # Windows has no SIGHUP
    }
    try:
        yield
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def run() -> None:
    """The `cliper` executable (and `python -m cliper_lib`): the allocator set for a process that
    segments image after image (`heap.keep_freed_memory`), then `main`. Tests call `main` itself."""
    keep_freed_memory()
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; every failure ends in one clear message on stderr and a non-zero exit (2 for
    input the user can fix, 1 for anything else, 130 for Ctrl-C); the traceback only with
    --debug."""
    args = build_parser().parse_args(argv)
    request_huge_pages()  # before any large tensor: PyTorch reads the setting at its first one
    try:
        with stops_as_interrupts():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as stop:
        if args.debug:
            raise
        name = stop.args[0] if stop.args and stop.args[0] in STOP_SIGNALS else "SIGINT"
        print(f"cliper: interrupted ({name})", file=sys.stderr)
        return 128 + signal.Signals[name].value
    except (WeightsMissingError, ConfigError, FileNotFoundError, ValueError) as error:
        if args.debug:
            raise
        from ...weights.inventory import option_spelling, respelled  # torch: only on this path

        message = respelled(error, option_spelling(args.parser))  # this command's own options
        print(f"cliper: {message}", file=sys.stderr)  # one clear line, no traceback
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
