"""The package's shape: layers that import only downwards (import-linter, configured in pyproject.toml), a small
method package, and no module too long to read."""

from __future__ import annotations

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
        "import sys; sys.path.insert(0, sys.argv[1]); from importlinter.cli import lint_imports_command; "
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
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module,line",
    [
        ("method/labels.py", "from ..suite import viz  # an upward import\n"),  # method -> suite
        (
            "eval/metrics.py",
            "from ..weights import hub  # an upward import\n",
        ),  # eval -> weights is fine ...
        ("config.py", "from .method import stages  # an upward import\n"),  # the bottom -> method
        ("vfm/affinity.py", "from ..method import stages  # an upward import\n"),  # vfm -> method
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


def test_method_is_small_and_no_module_is_long():
    lines = {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    method = sum(n for name, n in lines.items() if name.startswith("method/"))
    assert method <= 1600, f"cliper_lib/method/ has {method} lines"
    long = {name: n for name, n in lines.items() if n > 400}
    assert not long, f"modules over 400 lines: {long}"
