"""The package's shape: layers that import only downwards (import-linter, configured in
pyproject.toml), a small method package, and no module too long to read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cliper_lib

PACKAGE = Path(cliper_lib.__file__).parent
ROOT = PACKAGE.parent
PYPROJECT = ROOT / "pyproject.toml"
pytest.importorskip("importlinter")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the project's contracts on the `cliper_lib` found in `package_parent`."""
    env_path = str(package_parent)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from importlinter.cli import lint_imports_command; "
        "lint_imports_command(['--config', sys.argv[2], '--no-cache'])"
    )
    return subprocess.run(
        [sys.executable, "-c", code, env_path, str(PYPROJECT)],
        capture_output=True,
        text=True,
        cwd=package_parent,
    )


def test_the_layers_import_only_downwards():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module,line",
    [
        # method -> suite
        ("method/labels.py", "from ..suite.toolkit import viz  # an upward import\n"),
        (
            "eval/metrics.py",
            "from ..weights import hub  # an upward import\n",
        ),  # eval -> weights is fine ...
        ("config.py", "from .method import stages  # an upward import\n"),  # the bottom -> method
        ("vfm/affinity.py", "from ..method import stages  # an upward import\n"),  # vfm -> method
        # in the suite: the toolkit -> a room, a room -> another room, a room -> the command line
        ("suite/toolkit/viz.py", "from ..runs import batch  # an upward import\n"),
        ("suite/runs/batch.py", "from ..explorer import export  # a sibling room\n"),
        ("suite/studies/analysis.py", "from ..cli import commands  # an upward import\n"),
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path, module, line):
    copy = tmp_path / "cliper_lib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "presets"))
    target = copy / module
    target.write_text(line + target.read_text())
    result = lint_imports(tmp_path)
    if module.startswith("eval/"):  # ... a downward import: still kept
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr


def test_no_function_is_over_sixty_lines():
    """The line cap on method/ is withdrawn (readability decides, ruff breaks lines); what stays is
    that every function reads in one screen."""
    import ast

    long = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long[f"{path.relative_to(PACKAGE).as_posix()}:{node.name}"] = length
    assert not long, f"functions over 60 lines: {long}"


def module_imports(package_parent: Path) -> dict[str, set[str]]:
    """Each module of the `cliper_lib` found in `package_parent` -> the modules of the package it
    imports (grimp, in a subprocess so that it reads that copy; imports inside functions count)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import grimp; "
        "g = grimp.build_graph('cliper_lib', cache_dir=None); "
        "print(json.dumps({m: sorted(g.find_modules_directly_imported_by(m)) for m in g.modules}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(package_parent)],
        capture_output=True,
        text=True,
        cwd=package_parent,
    )
    assert result.returncode == 0, result.stderr
    return {module: set(imported) for module, imported in json.loads(result.stdout).items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of a module graph: each strongly connected component (Tarjan) of more than
    one module, or a module importing itself, as a sorted list of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]  # iterative DFS: no recursion limit
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    cycles.append(sorted(component))
    return cycles


def test_no_import_cycle():
    assert import_cycles(module_imports(ROOT)) == []


def test_an_import_cycle_is_found(tmp_path):
    copy = tmp_path / "cliper_lib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "presets"))
    target = copy / "suite" / "toolkit" / "samples.py"  # samples -> outputs -> viz -> samples
    target.write_text(target.read_text() + "\nfrom .outputs import OUTPUT_SUFFIXES  # a cycle\n")
    viz = copy / "suite" / "toolkit" / "viz.py"
    viz.write_text(viz.read_text() + "\nfrom .samples import SAMPLES_DIR  # a cycle\n")
    assert import_cycles(module_imports(tmp_path)) == [
        [
            "cliper_lib.suite.toolkit.outputs",
            "cliper_lib.suite.toolkit.samples",
            "cliper_lib.suite.toolkit.viz",
        ]
    ]
