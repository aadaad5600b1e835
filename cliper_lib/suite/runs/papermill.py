"""Headless reproduction: run a plan of notebooks with papermill, record parameters, versions and
metrics.

`run_plan` executes the notebooks of a plan (`plans.load_plan`) in order, each in its own folder as
working directory (as Jupyter does), into `<out_dir>/<run>.ipynb`, writes `<out_dir>/<run>.json`
(parameters, the configuration the notebook recorded, package versions, git commit, device, times,
published metrics: `records.RunRecord`) and a summary (`summary.md`, `summary.json`:
`records.Summary`). The first failing notebook stops the plan with `NotebookFailed`; the partial
summary is still written. Papermill and Jupyter are
imported only when a plan runs (they come with the notebooks extra, not the core install).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...config import ConfigError, parse_overrides
from ...files import atomic_write_json
from .execute import NotebookFailed, execute_run
from .plans import PLAN_DIR, Plan, PlanError, Run, load_plan, resolve_parameters, select_runs
from .records import RunRecord, Summary, now, placeholder_record, previous_record, write_summary
from .run_links import repo_relative

#: the kernel spec registered for this interpreter when no usable one exists.
FALLBACK_KERNEL = "cliper-suite"


class KernelError(RuntimeError):
    """No Jupyter kernel runs this interpreter, or the named kernel does not exist."""


def _runs_this_python(argv: Sequence[str]) -> bool:
    """Whether a kernel command line starts this interpreter (jupyter_client maps bare `python` to
    it)."""
    exe = argv[0] if argv else ""
    if exe in {
        "python",
        f"python{sys.version_info[0]}",
        "python{}.{}".format(*sys.version_info[:2]),
    }:
        return True
    # no realpath: a venv's python is a symlink to the system one, which has other site-packages
    return os.path.normpath(os.path.abspath(exe)) == os.path.normpath(
        os.path.abspath(sys.executable)
    )


def ensure_kernel(kernel_name: str | None = None, install_prefix: str | None = None) -> str:
    """Name of a kernel spec to run notebooks with: the one given, else one that runs this very
    interpreter.

    Without a name, `python3` is used when it starts sys.executable; otherwise a spec `cliper-suite`
    for sys.executable is registered under `install_prefix` (default sys.prefix, i.e. inside the
    venv).
    """
    # Jupyter comes with the notebooks extra, not the core install
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    if kernel_name:
        try:
            ksm.get_kernel_spec(kernel_name)
        except NoSuchKernel:
            known = ", ".join(sorted(ksm.find_kernel_specs())) or "none"
            raise KernelError(
                f"no Jupyter kernel named {kernel_name!r} (available: {known})"
            ) from None
        return kernel_name
    for candidate in ("python3", FALLBACK_KERNEL):
        try:
            if _runs_this_python(ksm.get_kernel_spec(candidate).argv):
                return candidate
        except NoSuchKernel:
            pass
    return _install_fallback_kernel(install_prefix)


def _install_fallback_kernel(install_prefix: str | None) -> str:
    """Register the `cliper-suite` kernel spec for this interpreter under `install_prefix` (default
    sys.prefix); KernelError when ipykernel is missing or another spec of that name shadows it."""
    from jupyter_client.kernelspec import KernelSpecManager  # the notebooks extra, as above

    try:
        from ipykernel.kernelspec import install  # the notebooks extra: said clearly when missing
    except ImportError as exc:
        raise KernelError(
            "ipykernel is not installed in this environment: pip install -e '.[notebooks]'"
        ) from exc
    install(
        kernel_name=FALLBACK_KERNEL,
        display_name=f"Python (cliper suite, {sys.prefix})",
        prefix=install_prefix or sys.prefix,
    )
    spec = KernelSpecManager().get_kernel_spec(FALLBACK_KERNEL)
    if not _runs_this_python(spec.argv):
        raise KernelError(
            f"registered kernel {FALLBACK_KERNEL!r} but Jupyter resolves it to {spec.argv[0]} "
            f"(another spec of that name shadows it); pass --kernel NAME for a kernel that runs "
            f"{sys.executable}"
        )
    return FALLBACK_KERNEL


# --------------------------------------------------------------------------------------------------
# the runner
def run_plan(
    plan_name_or_path: str | os.PathLike | Mapping[str, Any],
    out_dir: str | os.PathLike | None = None,
    kernel_name: str | None = None,
    log_output: bool = False,
    only: str | Sequence[str] | None = None,
    progress_bar: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> Summary:
    """Execute a plan's notebooks in order; write executed copies, per-run JSON and the summary;
    return it.

    `overrides` replace plan defaults (and win over runs' own parameters) in every notebook that
    declares them. Raises PlanError before anything runs if the plan is malformed or a selected
    notebook is missing, and NotebookFailed (after writing the partial summary) when a notebook
    raises.
    """
    # first: outside a checkout this says the notebooks are not installed
    plan = load_plan(plan_name_or_path)
    papermill, exec_error = _import_papermill()
    selected = select_runs(plan, only)
    params = _checked_parameters(plan, selected, overrides or {})
    kernel = ensure_kernel(kernel_name)

    out = Path(out_dir) if out_dir is not None else PLAN_DIR / plan.name
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary.start(plan, out)
    records: dict[str, RunRecord] = {}
    for r in plan.runs:  # rows for runs not selected this time keep their earlier result, if any
        if r not in selected:
            previous = previous_record(out / f"{r.name}.json")
            records[r.name] = previous or placeholder_record(r, out, "skipped")

    failure: NotebookFailed | None = None
    finished_loop = False
    try:
        for i, run in enumerate(selected):
            if failure is not None:
                records[run.name] = placeholder_record(run, out, "not run")
                continue
            where = f"[{plan.name} {i + 1}/{len(selected)}] {repo_relative(run.notebook)}"
            print(where, file=sys.stderr, flush=True)
            options = (kernel, plan, log_output, progress_bar, papermill, exec_error)
            rec, failure = execute_run(run, params[run.name], out, *options)
            rec.versions, rec.git, rec.device = summary.versions, summary.git, summary.device
            records[run.name] = rec
            atomic_write_json(out / f"{run.name}.json", asdict(rec))
        finished_loop = True
    finally:
        # written even when interrupted, so a long plan always leaves an account of what happened
        _close_summary(summary, plan, selected, records, failure, finished_loop)
    if failure is not None:
        raise failure
    return summary


def _import_papermill() -> tuple[Any, type]:
    """The papermill module and its PapermillExecutionError; PlanError saying which extra to install
    when it is missing."""
    try:  # papermill comes with the notebooks extra, not the core install
        import papermill
        from papermill.exceptions import PapermillExecutionError
    except ImportError as error:
        raise PlanError(
            "running notebooks needs the notebooks extra: pip install 'cliper-suite[notebooks]' "
            f"(or `make setup` in the checkout); {error}"
        ) from None
    return papermill, PapermillExecutionError


def _checked_parameters(
    plan: Plan, selected: Sequence[Run], overrides: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each selected run's parameters (by run name), all checked before the first kernel starts: a
    typo should not cost a long run. PlanError for a missing notebook, an undeclared parameter or an
    override no selected notebook declares."""
    missing = [str(r.notebook) for r in selected if not r.notebook.exists()]
    if missing:
        raise PlanError(
            f"plan {plan.name!r}: notebook(s) not found: {', '.join(missing)} "
            f"(--only runs a subset)"
        )
    for r in selected:  # an override beats a run's own value too: it is the caller's last word
        r.parameters = {k: v for k, v in r.parameters.items() if k not in overrides}
    params = {r.name: resolve_parameters(r, {**plan.defaults, **overrides}) for r in selected}
    unused = sorted(k for k in overrides if not any(k in p for p in params.values()))
    if unused:
        raise PlanError(
            f"override(s) {unused} match no parameter of the selected notebooks (a typo?)"
        )
    return params


def _close_summary(
    summary: Summary,
    plan: Plan,
    selected: Sequence[Run],
    records: Mapping[str, RunRecord],
    failure: NotebookFailed | None,
    finished_loop: bool,
) -> None:
    """Put every planned run's record in the summary (in plan order), set its status and write
    it."""
    out = summary.out_dir
    summary.records = [
        records.get(r.name) or placeholder_record(r, out, "not run") for r in plan.runs
    ]
    summary.finished = now()
    failed_here = any(records.get(r.name) and records[r.name].status != "ok" for r in selected)
    summary.status = (
        "failed" if failed_here or failure else "ok" if finished_loop else "interrupted"
    )
    write_summary(summary)


def run_reproduce(args: Any) -> int:
    """Run the plan named by parsed arguments; print where the summary is; 0 on success, 1 failed,
    2 bad plan."""
    try:
        overrides = parse_overrides(getattr(args, "overrides", None) or [], what="parameter")
        summary = run_plan(
            args.plan,
            out_dir=args.out,
            kernel_name=args.kernel,
            log_output=args.log_output,
            only=args.only,
            progress_bar=not getattr(args, "no_progress", False),
            overrides=overrides,
        )
    except NotebookFailed as exc:
        print(f"reproduce: {exc}", file=sys.stderr)
        return 1
    except (PlanError, KernelError, ConfigError) as exc:
        print(f"reproduce: {exc}", file=sys.stderr)
        return 2
    summary_file = summary.out_dir / "summary.md"
    print(f"reproduce: plan {summary.plan!r} {summary.status}; summary in {summary_file}")
    return 0 if summary.ok else 1
