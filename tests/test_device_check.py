"""benchmarks/device_check.sh in its CPU mode (TINY=1): the batching benchmark's logic,
not its speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_device_check_tiny_mode_writes_a_row_per_setting_and_batch(tmp_path) -> None:
    env = {
        **os.environ,
        "TINY": "1",
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
    }  # the venv need not be on PATH
    done = subprocess.run(
        ["bash", "benchmarks/device_check.sh"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "batching.json").read_text())
    assert record["tiny"] is True and record["device"] == "cpu"
    combos = {(row["backbone"], row["setting"], row["batch"]) for row in record["rows"]}
    assert combos == {
        ("ViT-B-16", setting, batch) for setting in ("float32", "mixed") for batch in (1, 2)
    }
    precisions = {(row["setting"], row["dtype"], row["sd_dtype"]) for row in record["rows"]}
    assert precisions == {("float32", "float32", "float32"), ("mixed", "float32", "bfloat16")}
    for row in record["rows"]:
        assert "error" not in row and row["images_per_s"] > 0 and row["peak_rss_gb"] > 0
