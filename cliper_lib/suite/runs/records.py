"""What a run plan leaves behind: one `RunRecord` per notebook (<out_dir>/<run>.json) and the plan's
`Summary` (summary.json, and summary.md: a table with one row per run). Paths in them are relative
to the repository (`run_links.repo_relative`), so records stay valid on another machine or checkout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ... import provenance
from ...files import atomic_write_json, atomic_write_text
from .plans import Plan, Run
from .run_links import regenerate_note, repo_relative, run_cell


def now() -> str:
    """The current UTC time, ISO 8601 to the second (the records' timestamps)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """What one notebook run left behind; also the content of <out_dir>/<name>.json."""

    name: str
    notebook: str  # source notebook, relative to the repo root where possible
    output: str  # executed copy
    # ok | failed | not run (a previous notebook failed) | skipped (not selected, no earlier record)
    status: str
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # what the notebook ran with (`notebook.record_config`): every config field, the values
    # derived from them, the seed, the resolved profile and, if it differs, the one asked for
    config: dict[str, Any] | None = None
    derived: dict[str, Any] | None = None
    seed: int | None = None
    profile: str | None = None
    profile_requested: str | None = None
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
    # true when taken from an earlier invocation (the run was not selected this time)
    reused: bool = False


def placeholder_record(run: Run, out: Path, status: str) -> RunRecord:
    """The record of a run that did not execute this time (`status`: "skipped" or "not run")."""
    return RunRecord(
        name=run.name,
        notebook=repo_relative(run.notebook),
        output=repo_relative(out / f"{run.name}.ipynb"),
        status=status,
    )


@dataclass
class Summary:
    """Outcome of `run_plan`: one record per planned run, in plan order, and where it was all
    written."""

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

    @classmethod
    def start(cls, plan: Plan, out_dir: Path) -> Summary:
        """A summary opened now: status ok, no records yet, this machine's versions, commit (with
        exactly which files differ from it) and device."""
        versions = provenance.package_versions()
        git, device = provenance.git_state(), provenance.device_info()
        git["changed"] = (provenance.changed_files() or []) if git.get("dirty") else []
        return cls(
            plan=plan.name,
            description=plan.description,
            out_dir=out_dir,
            status="ok",
            records=[],
            started=now(),
            finished=now(),
            git=git,
            device=device,
            versions=versions,
        )

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """Published metrics by run name."""
        return {r.name: r.metrics for r in self.records}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = repo_relative(self.out_dir)
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
        device = f"{self.device.get('type')} ({self.device.get('name')})"
        lines = [
            f"# Plan `{self.plan}`: {self.status}",
            "",
            *([self.description.strip(), ""] if self.description.strip() else []),
            f"- started {self.started}, finished {self.finished}",
            f"- commit `{commit[:12]}`{dirty}; device {device}",
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
            # links that resolve where the summary is read
            name = run_cell(self.out_dir, r.name, r.notebook)
            lines.append(
                f"| {name} | {status} | {dur} | {table_cell(r.parameters)} "
                f"| {table_cell(r.metrics)} |"
            )
        return "\n".join(lines) + "\n"


def table_cell(values: Mapping[str, Any]) -> str:
    """key=value pairs for a markdown table cell (pipes escaped, floats shortened)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
        return text if len(text) <= 60 else text[:57] + "..."

    return "<br>".join(f"{k}={fmt(v)}" for k, v in values.items()).replace("|", "\\|")


def previous_record(path: Path) -> RunRecord | None:
    """The record an earlier invocation left for a run, so `--only` does not erase the other
    rows."""
    try:
        data = json.loads(path.read_text())
        known = {f for f in RunRecord.__dataclass_fields__}
        rec = RunRecord(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None
    rec.reused = True
    return rec


def write_summary(summary: Summary) -> None:
    """summary.json and summary.md in the summary's folder."""
    atomic_write_json(summary.out_dir / "summary.json", summary.to_dict())
    atomic_write_text(summary.out_dir / "summary.md", summary.to_markdown())
