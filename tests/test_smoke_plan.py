"""`cliper reproduce --plan smoke`: every notebook executes headlessly on the tiny models
(what CI runs)."""

from __future__ import annotations

import json

import pytest

from cliper_lib.suite.cli.commands import main as cliper_main
from cliper_lib.suite.runs.plans import load_plan


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
        assert record["parameters"]["profile"] == "smoke"
        assert record["metrics"], f"{run.name} published no metric"
        assert (tmp_path / f"{run.name}.ipynb").exists()
    # summary.md: after the table header, exactly one row per run, in plan order,
    # each linking its copy and ok
    lines = (tmp_path / "summary.md").read_text().splitlines()
    rows = lines[lines.index("|---|---|---|---|---|") + 1 :]
    assert len(rows) == len(plan.runs), rows
    for run, row in zip(plan.runs, rows, strict=True):
        assert row.startswith(f"| [{run.name}]({run.name}.ipynb) | ok | "), row
