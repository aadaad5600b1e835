"""Headless reproduction: run a plan of notebooks with papermill, record parameters, versions and metrics.

A run plan (papermill_runs/<name>.yaml, format in papermill_runs/README.md) lists notebooks and the
parameters injected into each. `run_plan` executes them in order, each in its own folder as working
directory (as Jupyter does), into `<out_dir>/<run>.ipynb`, writes `<out_dir>/<run>.json` (parameters,
package versions, git commit, device, times, published metrics) and a summary (`summary.md`, `summary.json`).
The first failing notebook stops the plan with `NotebookFailed`; the partial summary is still written.

Inside a notebook, `publish(name, value)` records a metric: under the runner it lands in the file named by
$CLIPER_METRICS_FILE (set per notebook; the kernel inherits the environment), otherwise it is kept in memory.
This module imports papermill only when a plan runs, so notebooks can import `publish` without it.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from . import provenance
from .files import atomic_write_json, atomic_write_text

__all__ = [
    "METRICS_ENV",
    "OUTPUT_DIR_ENV",
    "RUN_NAME_ENV",
    "REPO_ROOT",
    "PLAN_DIR",
    "PlanError",
    "KernelError",
    "NotebookFailed",
    "Run",
    "Plan",
    "RunRecord",
    "Summary",
    "publish",
    "published",
    "repo_path",
    "output_dir",
    "load_plan",
    "notebook_parameters",
    "ensure_kernel",
    "run_plan",
    "add_reproduce_arguments",
    "run_reproduce",
    "main",
]

#: env var naming the JSON file `publish` appends to; set by the runner for each notebook.
METRICS_ENV = "CLIPER_METRICS_FILE"
#: env var naming the folder a notebook should write its files to (figures, PNGs); see `output_dir`.
OUTPUT_DIR_ENV = "CLIPER_OUTPUT_DIR"
#: env var holding "<plan>/<run>" while a notebook runs under the runner.
RUN_NAME_ENV = "CLIPER_RUN"
REPO_ROOT = Path(__file__).resolve().parent.parent
PLAN_DIR = REPO_ROOT / "papermill_runs"
#: packages whose versions go into every record.
VERSIONED_PACKAGES = ("cliper-suite", "torch", "open_clip_torch", "diffusers", "transformers", "numpy",
                      "papermill", "nbclient", "ipykernel")
#: the kernel spec registered for this interpreter when no usable one exists.
FALLBACK_KERNEL = "cliper-suite"

_PLAN_KEYS = {"name", "description", "defaults", "runs", "cell_timeout", "start_timeout"}
_RUN_KEYS = {"notebook", "name", "parameters", "description"}
_PUBLISHED: dict[str, Any] = {}


class PlanError(ValueError):
    """A run plan is malformed, names a missing notebook, or injects a parameter a notebook does not declare."""


class KernelError(RuntimeError):
    """No Jupyter kernel runs this interpreter, or the named kernel does not exist."""


class NotebookFailed(RuntimeError):
    """A notebook of a plan raised; names the notebook, the cell and the error, and where the executed copy is."""

    def __init__(self, notebook: str, output: str, cell_index: int | None, exec_count: int | None,
                 ename: str, evalue: str, source: str = "") -> None:
        self.notebook, self.output = notebook, output
        self.cell_index, self.exec_count = cell_index, exec_count
        self.ename, self.evalue, self.source = ename, evalue, source
        count = f" (execution count {exec_count})" if exec_count is not None else ""
        where = "outside any cell (the kernel did not start, or died)" if cell_index is None else (
            f"in cell {cell_index}{count} of the executed copy")
        first_line = next((ln for ln in source.splitlines() if ln.strip()), "")
        super().__init__(
            f"notebook {notebook} failed {where}: {ename}: {evalue}"
            + (f"\n  cell starts: {first_line[:120]}" if first_line else "")
            + f"\n  executed copy (with the traceback): {output}"
        )


# --------------------------------------------------------------------------------------------------
# helpers shared with notebooks
def _jsonable(value: Any, name: str) -> Any:
    """Plain JSON values from Python, numpy or torch scalars/containers; anything else is a TypeError."""
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar / 0-d array
        value = value.item()
    if hasattr(value, "tolist") and hasattr(value, "shape"):  # numpy array
        value = value.tolist()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf; keep them readable
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{name}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"metric {name!r}: {type(value).__name__} is not a number, string, list or dict")


def _write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data)


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def publish(name: str, value: float | int | str | dict | list) -> None:
    """Record a metric of the running notebook (file under the runner, memory otherwise) and print it."""
    if not isinstance(name, str) or not name:
        raise ValueError("metric name must be a non-empty string")
    clean = _jsonable(value, name)
    _PUBLISHED[name] = clean
    target = os.environ.get(METRICS_ENV)
    if target:
        path = Path(target)
        metrics = json.loads(path.read_text()) if path.exists() else {}
        metrics[name] = clean  # publishing a name again replaces its value
        _write_json(path, metrics)
    print(f"[metric] {name} = {clean!r}")  # returns None, so a last-line publish does not echo the value again


def published() -> dict[str, Any]:
    """The metrics published in this process so far (a copy)."""
    return dict(_PUBLISHED)


def repo_path(path: str | os.PathLike) -> Path:
    """An absolute path: absolute paths stay, relative ones are taken from the repository root (not the cwd)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def output_dir(name: str) -> Path:
    """Folder for a notebook's files: the runner's per-run folder, else outputs/<name> in the repo; created."""
    folder = Path(os.environ.get(OUTPUT_DIR_ENV) or REPO_ROOT / "outputs" / name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --------------------------------------------------------------------------------------------------
# plans
@dataclass
class Run:
    """One notebook execution of a plan."""

    notebook: Path  # absolute path of the source notebook
    name: str  # output stem: <out_dir>/<name>.ipynb and .json
    parameters: dict[str, Any] = field(default_factory=dict)  # the run's own parameters (beat the defaults)
    description: str = ""


@dataclass
class Plan:
    """A parsed run plan."""

    name: str
    path: Path | None
    description: str
    defaults: dict[str, Any]
    runs: list[Run]
    cell_timeout: int | None = None  # seconds a single cell may run (None: no limit)
    start_timeout: int = 120  # seconds to wait for a kernel to start


def _plan_path(plan: str | os.PathLike) -> Path:
    p = Path(plan)
    if p.suffix in (".yaml", ".yml"):
        if p.exists():
            return p.resolve()
        if repo_path(p).exists():
            return repo_path(p)
        raise PlanError(f"run plan file {plan} does not exist")
    named = PLAN_DIR / f"{plan}.yaml"
    if named.exists():
        return named
    known = ", ".join(sorted(q.stem for q in PLAN_DIR.glob("*.yaml"))) or "none"
    raise PlanError(f"no run plan named {plan!r} in {PLAN_DIR} (available: {known}); or pass a path to a .yaml file")


def load_plan(plan: str | os.PathLike | Mapping[str, Any]) -> Plan:
    """Parse and check a plan given by name (papermill_runs/<name>.yaml), path, or an already-loaded mapping."""
    path: Path | None = None
    if isinstance(plan, Mapping):
        raw: Any = dict(plan)
    else:
        path = _plan_path(plan)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise PlanError(f"{path}: not valid YAML: {exc}") from exc
    where = str(path) if path else "plan"
    if not isinstance(raw, dict):
        raise PlanError(f"{where}: a plan is a mapping with at least `runs`")
    unknown = set(raw) - _PLAN_KEYS
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_PLAN_KEYS)}")
    name = str(raw.get("name") or (path.stem if path else ""))
    if not name or "/" in name or name.startswith("."):
        raise PlanError(f"{where}: `name` must be a plain folder name, got {name!r}")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise PlanError(f"{where}: `defaults` must be a mapping of parameter names to values")
    entries = raw.get("runs")
    if not isinstance(entries, list) or not entries:
        raise PlanError(f"{where}: `runs` must be a non-empty list of {{notebook: ..., parameters: {{...}}}}")
    runs: list[Run] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"notebook": entry}
        if not isinstance(entry, dict) or "notebook" not in entry:
            raise PlanError(f"{where}: runs[{i}] needs a `notebook` path")
        bad = set(entry) - _RUN_KEYS
        if bad:
            raise PlanError(f"{where}: runs[{i}] has unknown key(s) {sorted(bad)}; allowed: {sorted(_RUN_KEYS)}")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise PlanError(f"{where}: runs[{i}].parameters must be a mapping")
        nb = repo_path(entry["notebook"])
        run_name = str(entry.get("name") or nb.stem)
        if "/" in run_name or run_name in {"summary", ""}:
            raise PlanError(f"{where}: runs[{i}] has an unusable name {run_name!r}")
        if any(r.name == run_name for r in runs):
            raise PlanError(f"{where}: two runs are named {run_name!r}; give repeated notebooks a distinct `name`")
        runs.append(Run(notebook=nb, name=run_name, parameters=dict(params),
                        description=str(entry.get("description") or "")))
    cell_timeout = raw.get("cell_timeout")
    if cell_timeout is not None and (not isinstance(cell_timeout, int) or cell_timeout <= 0):
        raise PlanError(f"{where}: cell_timeout must be a positive number of seconds")
    return Plan(name=name, path=path, description=str(raw.get("description") or ""), defaults=dict(defaults),
                runs=runs, cell_timeout=cell_timeout, start_timeout=int(raw.get("start_timeout") or 120))


def _select(plan: Plan, only: str | Sequence[str] | None) -> list[Run]:
    """The runs picked by `only` (run name, notebook file name, or numeric prefix such as '03')."""
    if not only:
        return list(plan.runs)
    wanted = [only] if isinstance(only, str) else list(only)
    chosen: list[Run] = []
    for w in wanted:
        w_stem = Path(w).stem if w.endswith(".ipynb") else Path(w).name
        hits = [r for r in plan.runs
                if w_stem in (r.name, r.notebook.stem) or r.notebook.stem.startswith(w_stem + "_")]
        if not hits:
            raise PlanError(f"--only {w!r} matches no run of plan {plan.name!r}; runs: "
                            + ", ".join(r.name for r in plan.runs))
        chosen += [r for r in hits if r not in chosen]
    return [r for r in plan.runs if r in chosen]  # keep plan order


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, where: str) -> Any:
    """Replace ${NAME} in string values by the environment variable NAME; an unset one is a PlanError."""
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(1) not in os.environ:
                raise PlanError(f"{where} uses ${{{m.group(1)}}}, but that environment variable is not set "
                                f"(set it, or override the parameter with --set)")
            return os.environ[m.group(1)]
        return _ENV_REF.sub(sub, value)
    if isinstance(value, list):
        return [_expand_env(v, where) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(v, where) for k, v in value.items()}
    return value


def notebook_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """Names and default values declared in a notebook's `parameters` cell (parsed with ast, never run)."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"cannot read notebook {path}: {exc}") from exc
    cells = [c for c in nb.get("cells", []) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        return {}
    source = cells[0].get("source", "")
    source = "".join(source) if isinstance(source, list) else source
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise PlanError(f"the parameters cell of {path} is not valid Python: {exc}") from exc
    out: dict[str, Any] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value is not None else []
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    out[t.id] = ast.literal_eval(node.value)
                except ValueError:
                    out[t.id] = None  # declared, but not a plain literal (the hygiene test flags that)
    return out


def _resolve_parameters(run: Run, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters to inject: defaults the notebook declares, then the run's own (which it must declare)."""
    if not run.notebook.exists():
        raise PlanError(f"planned notebook {run.notebook} does not exist")
    # our own parse, not papermill's line regex, which skips any line with a second '=' (even in a comment)
    declared = notebook_parameters(run.notebook)
    undeclared = sorted(set(run.parameters) - set(declared))
    if undeclared:
        raise PlanError(
            f"run {run.name!r} sets {undeclared}, which {run.notebook.name} does not declare in its parameters "
            f"cell (declared: {', '.join(declared) or 'none'})"
        )
    # a plan-wide default only reaches notebooks that declare it, so e.g. `data_root` can sit in defaults
    params = {k: v for k, v in defaults.items() if k in declared}
    params.update(run.parameters)
    # expanded only for what is injected, so an unset variable matters only to notebooks that use it
    return {k: _expand_env(v, f"parameter {k!r} of run {run.name!r}") for k, v in params.items()}


# --------------------------------------------------------------------------------------------------
# environment facts
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide the numbers (None where not installed), and Python's."""
    return provenance.package_versions({pkg: pkg for pkg in VERSIONED_PACKAGES})


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the repository (None values when git or the repo is unavailable)."""
    return provenance.git_state(root)


def device_info() -> dict[str, Any]:
    """cpu/cuda and the accelerator name, probed in a child process so the runner never holds a CUDA context."""
    probe = (
        "import json, platform\n"
        "try:\n"
        "    import torch\n"
        "    ok = torch.cuda.is_available()\n"
        "    d = {'type': 'cuda', 'name': torch.cuda.get_device_name(0), 'count': torch.cuda.device_count()} "
        "if ok else {'type': 'cpu', 'name': platform.processor() or platform.machine(), 'count': 0}\n"
        "except Exception as e:\n"
        "    d = {'type': 'cpu', 'name': platform.machine(), 'count': 0, 'note': repr(e)}\n"
        "print(json.dumps(d))\n"
    )
    try:
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except Exception as exc:  # the record is still worth writing without it
        return {"type": "unknown", "name": None, "count": 0, "note": repr(exc)}


def _runs_this_python(argv: Sequence[str]) -> bool:
    """Whether a kernel command line starts this interpreter (jupyter_client maps bare `python` to it)."""
    exe = argv[0] if argv else ""
    if exe in {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}:
        return True
    # no realpath: a venv's python is a symlink to the system one, which has other site-packages
    return os.path.normpath(os.path.abspath(exe)) == os.path.normpath(os.path.abspath(sys.executable))


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
            raise KernelError(f"no Jupyter kernel named {kernel_name!r} (available: {known})") from None
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
        raise KernelError("ipykernel is not installed in this environment: pip install -e '.[notebooks]'") from exc
    install(kernel_name=FALLBACK_KERNEL, display_name=f"Python (cliper suite, {sys.prefix})",
            prefix=install_prefix or sys.prefix)
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
    reused: bool = False  # true when taken from an earlier invocation (the run was not selected this time)


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
        d["out_dir"] = str(self.out_dir)
        return d

    def to_markdown(self) -> str:
        """The summary table (one row per run) with a header naming plan, commit and device."""
        commit = self.git.get("commit") or "unknown"
        dirty = " (uncommitted changes)" if self.git.get("dirty") else ""
        lines = [
            f"# Plan `{self.plan}`: {self.status}",
            "",
            *( [self.description.strip(), ""] if self.description.strip() else [] ),
            f"- started {self.started}, finished {self.finished}",
            f"- commit `{commit[:12]}`{dirty}; device {self.device.get('type')} ({self.device.get('name')})",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items() if v),
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
            # link only copies that exist (a relative link: the summary sits beside them)
            name = f"[{r.name}]({Path(r.output).name})" if Path(r.output).exists() else r.name
            lines.append(f"| {name} | {status} | {dur} | {_cell(r.parameters)} | {_cell(r.metrics)} |")
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
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


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
    _write_json(summary.out_dir / "summary.json", summary.to_dict())
    _write_text(summary.out_dir / "summary.md", summary.to_markdown())


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
    import papermill
    from papermill.exceptions import PapermillExecutionError

    plan = load_plan(plan_name_or_path)
    selected = _select(plan, only)
    # check everything before the first kernel starts: a typo should not cost a long run
    missing = [str(r.notebook) for r in selected if not r.notebook.exists()]
    if missing:
        raise PlanError(f"plan {plan.name!r}: notebook(s) not found: {', '.join(missing)} (--only runs a subset)")
    for r in selected:  # an override beats a run's own value too: it is the caller's last word
        r.parameters = {k: v for k, v in r.parameters.items() if k not in (overrides or {})}
    params = {r.name: _resolve_parameters(r, {**plan.defaults, **(overrides or {})}) for r in selected}
    unused = sorted(k for k in overrides or {} if not any(k in p for p in params.values()))
    if unused:
        raise PlanError(f"override(s) {unused} match no parameter of the selected notebooks (a typo?)")
    kernel = ensure_kernel(kernel_name)

    out = Path(out_dir) if out_dir is not None else PLAN_DIR / plan.name
    out.mkdir(parents=True, exist_ok=True)
    versions, git, device = package_versions(), git_state(), device_info()
    summary = Summary(plan=plan.name, description=plan.description, out_dir=out, status="ok", records=[],
                      started=_now(), finished=_now(), git=git, device=device, versions=versions)
    records: dict[str, RunRecord] = {}
    for r in plan.runs:  # rows for runs not selected this time keep their earlier result, if any
        if r not in selected:
            records[r.name] = _previous_record(out / f"{r.name}.json") or RunRecord(
                name=r.name, notebook=_rel(r.notebook), output=str(out / f"{r.name}.ipynb"), status="skipped")

    failure: NotebookFailed | None = None
    finished_loop = False
    try:
        for i, run in enumerate(selected):
            if failure is not None:
                records[run.name] = RunRecord(name=run.name, notebook=_rel(run.notebook),
                                              output=str(out / f"{run.name}.ipynb"), status="not run")
                continue
            print(f"[{plan.name} {i + 1}/{len(selected)}] {_rel(run.notebook)}", file=sys.stderr, flush=True)
            rec, failure = _execute(run, params[run.name], out, kernel, plan, log_output, progress_bar,
                                    papermill, PapermillExecutionError)
            rec.versions, rec.git, rec.device = versions, git, device
            records[run.name] = rec
            _write_json(out / f"{run.name}.json", asdict(rec))
        finished_loop = True
    finally:
        # written even when interrupted, so a long plan always leaves an account of what happened
        summary.records = [records.get(r.name) or RunRecord(
            name=r.name, notebook=_rel(r.notebook), output=str(out / f"{r.name}.ipynb"), status="not run")
            for r in plan.runs]
        summary.finished = _now()
        failed_here = any(records.get(r.name) and records[r.name].status != "ok" for r in selected)
        summary.status = "failed" if failed_here or failure else "ok" if finished_loop else "interrupted"
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
    started = [i for i, c in enumerate(nb.get("cells", []))
               if (c.get("metadata", {}).get("papermill") or {}).get("start_time")]
    if not started:
        return None, ""
    src = nb["cells"][started[-1]].get("source", "")
    return started[-1], "".join(src) if isinstance(src, list) else src


def _execute(run: Run, params: dict[str, Any], out: Path, kernel: str, plan: Plan, log_output: bool,
             progress_bar: bool, papermill: Any, exec_error: type) -> tuple[RunRecord, NotebookFailed | None]:
    """Run one notebook; return its record and, if it raised, the NotebookFailed to stop the plan with."""
    executed = out / f"{run.name}.ipynb"
    metrics_file = out / f".{run.name}.metrics.json"
    metrics_file.unlink(missing_ok=True)  # a stale file would leak an earlier run's metrics into this one
    files_dir = out / "work" / run.name
    rec = RunRecord(name=run.name, notebook=_rel(run.notebook), output=str(executed), status="ok",
                    parameters=params, kernel=kernel, cwd=str(run.notebook.parent), plan=plan.name)
    env = {METRICS_ENV: str(metrics_file.resolve()), OUTPUT_DIR_ENV: str(files_dir.resolve()),
           RUN_NAME_ENV: f"{plan.name}/{run.name}"}
    failure: NotebookFailed | None = None
    rec.started, t0 = _now(), time.perf_counter()
    try:
        with _environ(env):
            papermill.execute_notebook(
                str(run.notebook), str(executed), parameters=params, kernel_name=kernel,
                cwd=str(run.notebook.parent),  # the notebook's folder, as in an interactive Jupyter session
                progress_bar=progress_bar, log_output=log_output, start_timeout=plan.start_timeout,
                execution_timeout=plan.cell_timeout,
            )
    except exec_error as exc:
        failure = NotebookFailed(_rel(run.notebook), str(executed), exc.cell_index, exc.exec_count,
                                 exc.ename, exc.evalue, exc.source or "")
    except Exception as exc:  # cell timeout, dead kernel, kernel that never started: no traceback from a cell
        cell, source = _running_cell(executed)
        failure = NotebookFailed(_rel(run.notebook), str(executed), cell, None, type(exc).__name__,
                                 str(exc).strip() or repr(exc), source)
    finally:
        rec.duration_s = round(time.perf_counter() - t0, 3)
        rec.finished = _now()
        if metrics_file.exists():
            with contextlib.suppress(ValueError, OSError):
                rec.metrics = json.loads(metrics_file.read_text())
            metrics_file.unlink(missing_ok=True)
    if failure is not None:
        rec.status = "failed"
        rec.error = {"cell_index": failure.cell_index, "exec_count": failure.exec_count, "ename": failure.ename,
                     "evalue": failure.evalue, "source": failure.source[:2000]}
    return rec, failure


# --------------------------------------------------------------------------------------------------
# command line
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


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE strings to a dict, values read as YAML scalars so numbers and booleans keep their type."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise PlanError(f"--set {item!r}: expected KEY=VALUE with KEY a parameter name")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def run_reproduce(args: argparse.Namespace) -> int:
    """Run the plan named by parsed arguments; print where the summary is; 0 on success, 1 failed, 2 bad plan."""
    try:
        overrides = _parse_overrides(getattr(args, "overrides", None) or [])
        summary = run_plan(args.plan, out_dir=args.out, kernel_name=args.kernel, log_output=args.log_output,
                           only=args.only, progress_bar=not getattr(args, "no_progress", False),
                           overrides=overrides)
    except NotebookFailed as exc:
        print(f"reproduce: {exc}", file=sys.stderr)
        return 1
    except (PlanError, KernelError) as exc:
        print(f"reproduce: {exc}", file=sys.stderr)
        return 2
    print(f"reproduce: plan {summary.plan!r} {summary.status}; summary in {summary.out_dir / 'summary.md'}")
    return 0 if summary.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cliper_lib.reproduce --plan smoke`: the same as `cliper reproduce`."""
    parser = argparse.ArgumentParser(prog="python -m cliper_lib.reproduce", description=main.__doc__)
    add_reproduce_arguments(parser)
    return run_reproduce(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
