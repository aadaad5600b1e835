"""`cliper reproduce --plan smoke`: every notebook executes headlessly on the tiny models (what CI
runs), each record holds what the notebook ran with, and `make book` renders the executed copies."""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from cliper_lib.config import CLIPerConfig
from cliper_lib.suite.cli.commands import main as cliper_main
from cliper_lib.suite.runs.book import build_book
from cliper_lib.suite.runs.plans import load_plan

SMOKE_BANNER = "Random weights (smoke profile)"


def first_output(path) -> str:
    """The text of the first output of an executed notebook (markdown, stream or plain text)."""
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            return str(data.get("text/markdown") or data.get("text/plain") or output.get("text"))
    return ""


@pytest.mark.slow
def test_smoke_plan_executes_every_notebook(tmp_path):
    plan = load_plan("smoke")
    notebooks = sorted(run.notebook.name for run in plan.runs)
    assert [n[:2] for n in notebooks] == ["00", "01", "02", "03", "04", "05", "06"]

    status = cliper_main(["reproduce", "--plan", "smoke", "--out", str(tmp_path), "--no-progress"])
    assert status == 0

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok"
    for run in plan.runs:
        record = json.loads((tmp_path / f"{run.name}.json").read_text())
        assert record["status"] == "ok", run.name
        assert record["parameters"]["profile"] == "smoke"  # the plan says it, not the machine
        assert record["metrics"], f"{run.name} published no metric"
        # the effective configuration, from the notebook's bookkeeping cell
        assert record["config"], f"{run.name} recorded no configuration (record_config)"
        assert CLIPerConfig.from_dict(record["config"]).profile == "smoke"
        assert record["profile"] == "smoke" and record["seed"] == record["config"]["seed"]
        assert all(record["versions"][k] for k in ("python", "torch", "cliper-suite"))
        assert "commit" in record["git"]
        executed = tmp_path / f"{run.name}.ipynb"
        assert SMOKE_BANNER in first_output(executed), f"{run.name}: no smoke banner first"
    # summary.md: after the table header, exactly one row per run, in plan order,
    # each linking its copy and ok
    lines = (tmp_path / "summary.md").read_text().splitlines()
    rows = lines[lines.index("|---|---|---|---|---|") + 1 :]
    assert len(rows) == len(plan.runs), rows
    for run, row in zip(plan.runs, rows, strict=True):
        assert row.startswith(f"| [{run.name}]({run.name}.ipynb) | ok | "), row

    # `make book` on these copies: a page per notebook, an index linking them in plan order
    index = build_book(tmp_path, tmp_path / "book")
    links = re.findall(r'<a href="([^"]+)\.html">', index.read_text())
    assert links == [run.name for run in plan.runs]
    for run in plan.runs:
        page = (index.parent / f"{run.name}.html").read_text()
        assert f"<title>{run.name}</title>" in page and SMOKE_BANNER in page  # with its outputs
