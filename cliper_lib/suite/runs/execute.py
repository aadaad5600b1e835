"""One notebook of a plan, executed by papermill: its environment (where it publishes metrics and
writes files), its record, and the `NotebookFailed` that stops the plan when it raises."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .notebook import METRICS_ENV, OUTPUT_DIR_ENV, RECORD_ENV, RUN_NAME_ENV
from .plans import Plan, Run
from .records import RunRecord, now
from .run_links import repo_relative


class NotebookFailed(RuntimeError):
    """A notebook of a plan raised; names the notebook, the cell and the error, and where the
    executed copy is."""

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


@contextlib.contextmanager
def _environ(updates: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (the kernel subprocess inherits them), then
    restore."""
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


def _running_cell(executed: Path) -> tuple[int | None, str]:
    """Index and source of the last cell that started in the executed copy (None if none did)."""
    try:
        nb = json.loads(executed.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, ""
    # papermill marks every cell "completed" on the way out, but only cells that ran have a start
    # time
    started = [
        i
        for i, c in enumerate(nb.get("cells", []))
        if (c.get("metadata", {}).get("papermill") or {}).get("start_time")
    ]
    if not started:
        return None, ""
    src = nb["cells"][started[-1]].get("source", "")
    return started[-1], "".join(src) if isinstance(src, list) else src


def execute_run(
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
    """Run one notebook of `plan` with papermill (the module, given: it is imported only when a plan
    runs) into <out>/<run>.ipynb; return its record and, if it raised (`exec_error`: papermill's
    PapermillExecutionError, or anything else), the NotebookFailed to stop the plan with."""
    executed = out / f"{run.name}.ipynb"
    metrics_file = out / f".{run.name}.metrics.json"
    record_file = out / f".{run.name}.record.json"
    # a stale file would leak an earlier run's metrics or configuration into this one
    metrics_file.unlink(missing_ok=True)
    record_file.unlink(missing_ok=True)
    rec = RunRecord(
        name=run.name,
        notebook=repo_relative(run.notebook),
        output=repo_relative(executed),
        status="ok",
        parameters=params,
        kernel=kernel,
        cwd=repo_relative(run.notebook.parent),
        plan=plan.name,
    )
    env = run_environment(run, plan, out, metrics_file, record_file)
    failure: NotebookFailed | None = None
    rec.started, t0 = now(), time.perf_counter()
    try:
        with _environ(env):
            papermill.execute_notebook(
                str(run.notebook),
                str(executed),
                parameters=params,
                kernel_name=kernel,
                # the notebook's folder, as in an interactive Jupyter session
                cwd=str(run.notebook.parent),
                progress_bar=progress_bar,
                log_output=log_output,
                start_timeout=plan.start_timeout,
                execution_timeout=plan.cell_timeout,
            )
    except exec_error as exc:
        failure = _failed_in_cell(rec.notebook, executed, exc)
    except Exception as exc:  # cell timeout, dead kernel, kernel that never started: no traceback
        failure = _failed_outside_cells(rec.notebook, executed, exc)
    finally:
        rec.duration_s = round(time.perf_counter() - t0, 3)
        rec.finished = now()
        rec.metrics = _take_json(metrics_file) or rec.metrics
        _take_configuration(rec, record_file)
    if failure is not None:
        _mark_failed(rec, failure)
    return rec, failure


def run_environment(
    run: Run, plan: Plan, out: Path, metrics_file: Path, record_file: Path
) -> dict[str, str]:
    """The environment a run's kernel inherits: where `publish` writes its metrics and
    `record_config` its configuration, the folder for its files (<out>/work/<run>), and
    "<plan>/<run>"."""
    return {
        METRICS_ENV: str(metrics_file.resolve()),
        RECORD_ENV: str(record_file.resolve()),
        OUTPUT_DIR_ENV: str((out / "work" / run.name).resolve()),
        RUN_NAME_ENV: f"{plan.name}/{run.name}",
    }


def _failed_in_cell(notebook: str, executed: Path, exc: Any) -> NotebookFailed:
    """The failure of a run whose cell raised (papermill's PapermillExecutionError)."""
    return NotebookFailed(
        notebook,
        str(executed),
        exc.cell_index,
        exc.exec_count,
        exc.ename,
        exc.evalue,
        exc.source or "",
    )


def _failed_outside_cells(notebook: str, executed: Path, exc: Exception) -> NotebookFailed:
    """The failure of a run that raised no cell error: named after the last cell that started."""
    cell, source = _running_cell(executed)
    message = str(exc).strip() or repr(exc)
    return NotebookFailed(notebook, str(executed), cell, None, type(exc).__name__, message, source)


def _take_json(path: Path) -> dict[str, Any]:
    """The JSON object a notebook left in `path` (then removed); {} when there is none."""
    values: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            values = json.loads(path.read_text())
        path.unlink(missing_ok=True)
    return values if isinstance(values, dict) else {}


def _take_configuration(rec: RunRecord, record_file: Path) -> None:
    """Fill the record's configuration, seed and profile from what `record_config` wrote; without
    it, the profile is the injected parameter (plans pass it explicitly)."""
    recorded = _take_json(record_file)
    for name in ("config", "derived", "seed", "profile", "profile_requested"):
        setattr(rec, name, recorded.get(name))
    if rec.profile is None:
        rec.profile = rec.parameters.get("profile")


def _mark_failed(rec: RunRecord, failure: NotebookFailed) -> None:
    rec.status = "failed"
    rec.error = {
        "cell_index": failure.cell_index,
        "exec_count": failure.exec_count,
        "ename": failure.ename,
        "evalue": failure.evalue,
        "source": failure.source[:2000],
    }
