"""Headless reproduction: run a plan of notebooks with papermill, record parameters, versions and metrics.

`run_plan` executes the notebooks of a plan (`plans.load_plan`) in order, each in its own folder as working
directory (as Jupyter does), into `<out_dir>/<run>.ipynb`, writes `<out_dir>/<run>.json` (parameters, package
versions, git commit, device, times, published metrics) and a summary (`summary.md`, `summary.json`). The first
failing notebook stops the plan with `NotebookFailed`; the partial summary is still written. Papermill is
imported only when a plan runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import provenance
from ..config import ConfigError, parse_overrides
from ..files import atomic_write_json, atomic_write_text
from .notebook import METRICS_ENV, OUTPUT_DIR_ENV, RUN_NAME_ENV
from .plans import PLAN_DIR, Plan, PlanError, Run, _resolve_parameters, _select, load_plan
from .run_links import regenerate_note, repo_relative, run_cell

#: the kernel spec registered for this interpreter when no usable one exists.
FALLBACK_KERNEL = "cliper-suite"


class KernelError(RuntimeError):
    """No Jupyter kernel runs this interpreter, or the named kernel does not exist."""


class NotebookFailed(RuntimeError):
    """A notebook of a plan raised; names the notebook, the cell and the error, and where the executed copy is."""

    def __init__(
        self,
        notebook: str,
        output: str,
        cell_index: int | None,
        exec_count: int | None,
        ename: str,
        evalue: str,
        source: str = "",
    ) -> None:
        self.notebook, self.output = notebook, output
        self.cell_index, self.exec_count = cell_index, exec_count
        self.ename, self.evalue, self.source = ename, evalue, source
        count = f" (execution count {exec_count})" if exec_count is not None else ""
        where = (
            "outside any cell (the kernel did not start, or died)"
            if cell_index is None
            else (f"in cell {cell_index}{count} of the executed copy")
        )
        first_line = next((ln for ln in source.splitlines() if ln.strip()), "")
        super().__init__(
            f"notebook {notebook} failed {where}: {ename}: {evalue}"
            + (f"\n  cell starts: {first_line[:120]}" if first_line else "")
            + f"\n  executed copy (with the traceback): {output}"
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _runs_this_python(argv: Sequence[str]) -> bool:
    """Whether a kernel command line starts this interpreter (jupyter_client maps bare `python` to it)."""
    exe = argv[0] if argv else ""
    if exe in {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}:
        return True
    # no realpath: a venv's python is a symlink to the system one, which has other site-packages
    return os.path.normpath(os.path.abspath(exe)) == os.path.normpath(
        os.path.abspath(sys.executable)
    )


def ensure_kernel(kernel_name: str | None = None, install_prefix: str | None = None) -> str:
    """Name of a kernel spec to run notebooks with: the one given, else one that runs this very interpreter.

    Without a name, `python3` is used when it starts sys.executable; otherwise a spec `cliper-suite` for
    sys.executable is registered under `install_prefix` (default sys.prefix, i.e. inside the venv).
    """
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
    try:
        from ipykernel.kernelspec import install
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
            f"registered kernel {FALLBACK_KERNEL!r} but Jupyter resolves it to {spec.argv[0]} (another spec of "
            f"that name shadows it); pass --kernel NAME for a kernel that runs {sys.executable}"
        )
    return FALLBACK_KERNEL


# --------------------------------------------------------------------------------------------------
# records
@dataclass
class RunRecord:
    """What one notebook run left behind; also the content of <out_dir>/<name>.json."""

    name: str
    notebook: str  # source notebook, relative to the repo root where possible
    output: str  # executed copy
    status: str  # ok | failed | not run (a previous notebook failed) | skipped (not selected, no earlier record)
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    started: str | None = None
    finished: str | None = None
    duration_s: float | None = None
    error: dict[str, Any] | None = None
    kernel: str | None = None
    cwd: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    git: dict[str, Any] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)
    plan: str | None = None
    reused: bool = (
        False  # true when taken from an earlier invocation (the run was not selected this time)
    )


@dataclass
class Summary:
    """Outcome of `run_plan`: one record per planned run, in plan order, and where it was all written."""

    plan: str
    description: str
    out_dir: Path
    status: str  # ok | failed | interrupted
    records: list[RunRecord]
    started: str
    finished: str
    git: dict[str, Any]
    device: dict[str, Any]
    versions: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """Published metrics by run name."""
        return {r.name: r.metrics for r in self.records}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = _rel(self.out_dir)
        return d

    def to_markdown(self) -> str:
        """The summary table (one row per run) with a header naming plan, commit and device."""
        commit = self.git.get("commit") or "unknown"
        changed = self.git.get("changed") or []
        dirty = (
            f" plus uncommitted changes to {', '.join(changed) or 'tracked files'}"
            if self.git.get("dirty")
            else ""
        )
        note = regenerate_note(self.out_dir, self.plan)
        lines = [
            f"# Plan `{self.plan}`: {self.status}",
            "",
            *([self.description.strip(), ""] if self.description.strip() else []),
            f"- started {self.started}, finished {self.finished}",
            f"- commit `{commit[:12]}`{dirty}; device {self.device.get('type')} ({self.device.get('name')})",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items() if v),
            *([note] if note else []),
            "",
            "| run | status | duration (s) | parameters | metrics |",
            "|---|---|---|---|---|",
        ]
        for r in self.records:
            dur = f"{r.duration_s:.1f}" if r.duration_s is not None else ""
            status = r.status
            if r.error:
                status += f": {r.error.get('ename')} in cell {r.error.get('cell_index')}"
            if r.reused:
                status += f" (earlier run, {r.finished})"
            name = run_cell(
                self.out_dir, r.name, r.notebook
            )  # links that resolve where the summary is read
            lines.append(
                f"| {name} | {status} | {dur} | {_cell(r.parameters)} | {_cell(r.metrics)} |"
            )
        return "\n".join(lines) + "\n"


def _cell(values: Mapping[str, Any]) -> str:
    """key=value pairs for a markdown table cell (pipes escaped, floats shortened)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
        return text if len(text) <= 60 else text[:57] + "..."

    return "<br>".join(f"{k}={fmt(v)}" for k, v in values.items()).replace("|", "\\|")


def _rel(path: Path) -> str:
    return repo_relative(path)  # records stay valid on another machine / checkout


def _previous_record(path: Path) -> RunRecord | None:
    """The record an earlier invocation left for a run, so `--only` does not erase the other rows."""
    try:
        data = json.loads(path.read_text())
        known = {f for f in RunRecord.__dataclass_fields__}
        rec = RunRecord(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None
    rec.reused = True
    return rec


def _write_summary(summary: Summary) -> None:
    atomic_write_json(summary.out_dir / "summary.json", summary.to_dict())
    atomic_write_text(summary.out_dir / "summary.md", summary.to_markdown())


@contextlib.contextmanager
def _environ(updates: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (the kernel subprocess inherits them), then restore."""
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
    """Execute a plan's notebooks in order; write executed copies, per-run JSON and the summary; return it.

    `overrides` replace plan defaults (and win over runs' own parameters) in every notebook that declares them.
    Raises PlanError before anything runs if the plan is malformed or a selected notebook is missing, and
    NotebookFailed (after writing the partial summary) when a notebook raises.
    """
    plan = load_plan(
        plan_name_or_path
    )  # first: outside a checkout this says the notebooks are not installed
    try:
        import papermill
        from papermill.exceptions import PapermillExecutionError
    except ImportError as error:
        raise PlanError(
            "running notebooks needs the notebooks extra: pip install 'cliper-suite[notebooks]' "
            f"(or `make setup` in the checkout); {error}"
        ) from None
    selected = _select(plan, only)
    # check everything before the first kernel starts: a typo should not cost a long run
    missing = [str(r.notebook) for r in selected if not r.notebook.exists()]
    if missing:
        raise PlanError(
            f"plan {plan.name!r}: notebook(s) not found: {', '.join(missing)} (--only runs a subset)"
        )
    for r in selected:  # an override beats a run's own value too: it is the caller's last word
        r.parameters = {k: v for k, v in r.parameters.items() if k not in (overrides or {})}
    params = {
        r.name: _resolve_parameters(r, {**plan.defaults, **(overrides or {})}) for r in selected
    }
    unused = sorted(k for k in overrides or {} if not any(k in p for p in params.values()))
    if unused:
        raise PlanError(
            f"override(s) {unused} match no parameter of the selected notebooks (a typo?)"
        )
    kernel = ensure_kernel(kernel_name)

    out = Path(out_dir) if out_dir is not None else PLAN_DIR / plan.name
    out.mkdir(parents=True, exist_ok=True)
    versions, git, device = (
        provenance.package_versions(),
        provenance.git_state(),
        provenance.device_info(),
    )
    git["changed"] = (
        (provenance.changed_files() or []) if git.get("dirty") else []
    )  # exactly what differed
    summary = Summary(
        plan=plan.name,
        description=plan.description,
        out_dir=out,
        status="ok",
        records=[],
        started=_now(),
        finished=_now(),
        git=git,
        device=device,
        versions=versions,
    )
    records: dict[str, RunRecord] = {}
    for r in plan.runs:  # rows for runs not selected this time keep their earlier result, if any
        if r not in selected:
            records[r.name] = _previous_record(out / f"{r.name}.json") or RunRecord(
                name=r.name,
                notebook=_rel(r.notebook),
                output=_rel(out / f"{r.name}.ipynb"),
                status="skipped",
            )

    failure: NotebookFailed | None = None
    finished_loop = False
    try:
        for i, run in enumerate(selected):
            if failure is not None:
                records[run.name] = RunRecord(
                    name=run.name,
                    notebook=_rel(run.notebook),
                    output=_rel(out / f"{run.name}.ipynb"),
                    status="not run",
                )
                continue
            print(
                f"[{plan.name} {i + 1}/{len(selected)}] {_rel(run.notebook)}",
                file=sys.stderr,
                flush=True,
            )
            rec, failure = _execute(
                run,
                params[run.name],
                out,
                kernel,
                plan,
                log_output,
                progress_bar,
                papermill,
                PapermillExecutionError,
            )
            rec.versions, rec.git, rec.device = versions, git, device
            records[run.name] = rec
            atomic_write_json(out / f"{run.name}.json", asdict(rec))
        finished_loop = True
    finally:
        # written even when interrupted, so a long plan always leaves an account of what happened
        summary.records = [
            records.get(r.name)
            or RunRecord(
                name=r.name,
                notebook=_rel(r.notebook),
                output=_rel(out / f"{r.name}.ipynb"),
                status="not run",
            )
            for r in plan.runs
        ]
        summary.finished = _now()
        failed_here = any(records.get(r.name) and records[r.name].status != "ok" for r in selected)
        summary.status = (
            "failed" if failed_here or failure else "ok" if finished_loop else "interrupted"
        )
        _write_summary(summary)
    if failure is not None:
        raise failure
    return summary


def _running_cell(executed: Path) -> tuple[int | None, str]:
    """Index and source of the last cell that started in the executed copy (None if none did)."""
    try:
        nb = json.loads(executed.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, ""
    # papermill marks every cell "completed" on the way out, but only cells that ran have a start time
    started = [
        i
        for i, c in enumerate(nb.get("cells", []))
        if (c.get("metadata", {}).get("papermill") or {}).get("start_time")
    ]
    if not started:
        return None, ""
    src = nb["cells"][started[-1]].get("source", "")
    return started[-1], "".join(src) if isinstance(src, list) else src


def _execute(
    run: Run,
    params: dict[str, Any],
    out: Path,
    kernel: str,
    plan: Plan,
    log_output: bool,
    progress_bar: bool,
    papermill: Any,
    exec_error: type,
) -> tuple[RunRecord, NotebookFailed | None]:
    """Run one notebook; return its record and, if it raised, the NotebookFailed to stop the plan with."""
    executed = out / f"{run.name}.ipynb"
    metrics_file = out / f".{run.name}.metrics.json"
    metrics_file.unlink(
        missing_ok=True
    )  # a stale file would leak an earlier run's metrics into this one
    files_dir = out / "work" / run.name
    rec = RunRecord(
        name=run.name,
        notebook=_rel(run.notebook),
        output=_rel(executed),
        status="ok",
        parameters=params,
        kernel=kernel,
        cwd=_rel(run.notebook.parent),
        plan=plan.name,
    )
    env = {
        METRICS_ENV: str(metrics_file.resolve()),
        OUTPUT_DIR_ENV: str(files_dir.resolve()),
        RUN_NAME_ENV: f"{plan.name}/{run.name}",
    }
    failure: NotebookFailed | None = None
    rec.started, t0 = _now(), time.perf_counter()
    try:
        with _environ(env):
            papermill.execute_notebook(
                str(run.notebook),
                str(executed),
                parameters=params,
                kernel_name=kernel,
                cwd=str(
                    run.notebook.parent
                ),  # the notebook's folder, as in an interactive Jupyter session
                progress_bar=progress_bar,
                log_output=log_output,
                start_timeout=plan.start_timeout,
                execution_timeout=plan.cell_timeout,
            )
    except exec_error as exc:
        failure = NotebookFailed(
            _rel(run.notebook),
            str(executed),
            exc.cell_index,
            exc.exec_count,
            exc.ename,
            exc.evalue,
            exc.source or "",
        )
    except (
        Exception
    ) as exc:  # cell timeout, dead kernel, kernel that never started: no traceback from a cell
        cell, source = _running_cell(executed)
        failure = NotebookFailed(
            _rel(run.notebook),
            str(executed),
            cell,
            None,
            type(exc).__name__,
            str(exc).strip() or repr(exc),
            source,
        )
    finally:
        rec.duration_s = round(time.perf_counter() - t0, 3)
        rec.finished = _now()
        if metrics_file.exists():
            with contextlib.suppress(ValueError, OSError):
                rec.metrics = json.loads(metrics_file.read_text())
            metrics_file.unlink(missing_ok=True)
    if failure is not None:
        rec.status = "failed"
        rec.error = {
            "cell_index": failure.cell_index,
            "exec_count": failure.exec_count,
            "ename": failure.ename,
            "evalue": failure.evalue,
            "source": failure.source[:2000],
        }
    return rec, failure


def run_reproduce(args: Any) -> int:
    """Run the plan named by parsed arguments; print where the summary is; 0 on success, 1 failed, 2 bad plan."""
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
    print(
        f"reproduce: plan {summary.plan!r} {summary.status}; summary in {summary.out_dir / 'summary.md'}"
    )
    return 0 if summary.ok else 1
