"""Run plans: which notebooks a reproduction executes, with which parameters
(papermill_runs/<name>.yaml).

A plan (format in papermill_runs/README.md) lists notebooks and the parameters injected into each;
parameters are checked against each notebook's own `parameters` cell before anything runs.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...provenance import IN_CHECKOUT, REPO_ROOT
from .notebook import repo_path

PLAN_DIR = REPO_ROOT / "papermill_runs"
_PLAN_KEYS = {"name", "description", "defaults", "runs", "cell_timeout", "start_timeout"}
_RUN_KEYS = {"notebook", "name", "parameters", "description"}


class PlanError(ValueError):
    """A run plan is malformed, names a missing notebook, or injects a parameter a notebook does not
    declare."""


@dataclass
class Run:
    """One notebook execution of a plan."""

    notebook: Path  # absolute path of the source notebook
    name: str  # output stem: <out_dir>/<name>.ipynb and .json
    # the run's own parameters (beat the defaults)
    parameters: dict[str, Any] = field(default_factory=dict)
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
    if not IN_CHECKOUT:
        raise PlanError(
            f"`cliper reproduce --plan {plan}` needs a checkout of the repository: the notebooks "
            f"and the run plans (papermill_runs/) are not part of the installed package. Clone the "
            f"repository and run it there (`make setup`, then `.venv/bin/cliper reproduce`), or "
            f"pass a plan .yaml whose notebook paths are absolute"
        )
    named = PLAN_DIR / f"{plan}.yaml"
    if named.exists():
        return named
    known = ", ".join(sorted(q.stem for q in PLAN_DIR.glob("*.yaml"))) or "none"
    raise PlanError(
        f"no run plan named {plan!r} in {PLAN_DIR} (available: {known}); "
        f"or pass a path to a .yaml file"
    )


def load_plan(plan: str | os.PathLike | Mapping[str, Any]) -> Plan:
    """Parse and check a plan given by name (papermill_runs/<name>.yaml), path, or an already-loaded
    mapping."""
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
        raise PlanError(
            f"{where}: `runs` must be a non-empty list of {{notebook: ..., parameters: {{...}}}}"
        )
    runs: list[Run] = []
    for i, entry in enumerate(entries):
        runs.append(_parse_run(entry, i, where, runs))
    cell_timeout = raw.get("cell_timeout")
    if cell_timeout is not None and (not isinstance(cell_timeout, int) or cell_timeout <= 0):
        raise PlanError(f"{where}: cell_timeout must be a positive number of seconds")
    return Plan(
        name=name,
        path=path,
        description=str(raw.get("description") or ""),
        defaults=dict(defaults),
        runs=runs,
        cell_timeout=cell_timeout,
        start_timeout=int(raw.get("start_timeout") or 120),
    )


def _parse_run(entry: Any, i: int, where: str, earlier: Sequence[Run]) -> Run:
    """Entry `i` of a plan's `runs` (a notebook path, or a mapping), checked against the runs before
    it (names must differ)."""
    if isinstance(entry, str):
        entry = {"notebook": entry}
    if not isinstance(entry, dict) or "notebook" not in entry:
        raise PlanError(f"{where}: runs[{i}] needs a `notebook` path")
    bad = set(entry) - _RUN_KEYS
    if bad:
        raise PlanError(
            f"{where}: runs[{i}] has unknown key(s) {sorted(bad)}; allowed: {sorted(_RUN_KEYS)}"
        )
    params = entry.get("parameters") or {}
    if not isinstance(params, dict):
        raise PlanError(f"{where}: runs[{i}].parameters must be a mapping")
    nb = repo_path(entry["notebook"])
    run_name = str(entry.get("name") or nb.stem)
    if "/" in run_name or run_name in {"summary", ""}:
        raise PlanError(f"{where}: runs[{i}] has an unusable name {run_name!r}")
    if any(r.name == run_name for r in earlier):
        raise PlanError(
            f"{where}: two runs are named {run_name!r}; give repeated notebooks a distinct `name`"
        )
    return Run(
        notebook=nb,
        name=run_name,
        parameters=dict(params),
        description=str(entry.get("description") or ""),
    )


def select_runs(plan: Plan, only: str | Sequence[str] | None) -> list[Run]:
    """The runs of `plan` picked by `only` (a run name, notebook file name, or numeric prefix such
    as '03', or a list of them), in plan order; all of them when `only` is empty. PlanError for a
    name that matches no run."""
    if not only:
        return list(plan.runs)
    wanted = [only] if isinstance(only, str) else list(only)
    chosen: list[Run] = []
    for w in wanted:
        w_stem = Path(w).stem if w.endswith(".ipynb") else Path(w).name
        hits = [
            r
            for r in plan.runs
            if w_stem in (r.name, r.notebook.stem) or r.notebook.stem.startswith(w_stem + "_")
        ]
        if not hits:
            raise PlanError(
                f"--only {w!r} matches no run of plan {plan.name!r}; runs: "
                + ", ".join(r.name for r in plan.runs)
            )
        chosen += [r for r in hits if r not in chosen]
    return [r for r in plan.runs if r in chosen]  # keep plan order


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, where: str) -> Any:
    """Replace ${NAME} in string values by the environment variable NAME; an unset one is a
    PlanError."""
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            if m.group(1) not in os.environ:
                raise PlanError(
                    f"{where} uses ${{{m.group(1)}}}, but that environment variable is not set "
                    f"(set it, or override the parameter with --set)"
                )
            return os.environ[m.group(1)]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, list):
        return [_expand_env(v, where) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(v, where) for k, v in value.items()}
    return value


def notebook_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """Names and default values declared in a notebook's `parameters` cell (parsed with ast, never
    run)."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"cannot read notebook {path}: {exc}") from exc
    cells = [
        c for c in nb.get("cells", []) if "parameters" in c.get("metadata", {}).get("tags", [])
    ]
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
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign) and node.value is not None
            else []
        )
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    out[t.id] = ast.literal_eval(node.value)
                except ValueError:
                    # declared, but not a plain literal (the hygiene test flags that)
                    out[t.id] = None
    return out


def resolve_parameters(run: Run, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters to inject into a run's notebook: the `defaults` it declares, then the run's
    own (which it must declare), with ${NAME} environment references expanded. PlanError for a
    missing notebook, an undeclared parameter or an unset variable."""
    if not run.notebook.exists():
        raise PlanError(f"planned notebook {run.notebook} does not exist")
    # our own parse, not papermill's line regex, which skips any line with a second '=' (even in a
    # comment)
    declared = notebook_parameters(run.notebook)
    undeclared = sorted(set(run.parameters) - set(declared))
    if undeclared:
        raise PlanError(
            f"run {run.name!r} sets {undeclared}, which {run.notebook.name} does not declare in "
            f"its parameters cell (declared: {', '.join(declared) or 'none'})"
        )
    # a plan-wide default only reaches notebooks that declare it, so e.g. `data_root` can sit in
    # defaults
    params = {k: v for k, v in defaults.items() if k in declared}
    params.update(run.parameters)
    # expanded only for what is injected: an unset variable matters only to notebooks that use it
    return {k: _expand_env(v, f"parameter {k!r} of run {run.name!r}") for k, v in params.items()}
