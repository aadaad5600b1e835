"""reproduce: run plans on tiny temporary notebooks; records, summary, failure handling,
publish, CLI glue."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from cliper_lib import provenance
from cliper_lib.suite.cli.arguments import add_reproduce_arguments
from cliper_lib.suite.runs import notebook, papermill, plans
from cliper_lib.suite.runs.papermill import NotebookFailed
from cliper_lib.suite.runs.plans import PlanError


def _notebook(path: Path, parameters: str, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# test"),
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        *(nbformat.v4.new_code_cell(c) for c in cells),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("nbs")
    return {
        "metric": _notebook(
            d / "10_metric.ipynb",
            'profile: str = "smoke"  # smoke|paper\nx: int = 1  # squared and published',
            "import os, sys\nfrom cliper_lib.suite.runs.notebook import publish, output_dir\n"
            "publish('x_squared', x * x)\npublish('profile', profile)\n"
            "publish('python', sys.executable)\npublish('cwd', os.getcwd())\n"
            "publish('files', str(output_dir('10_metric')))",
        ),
        "fail": _notebook(
            d / "20_fail.ipynb",
            'profile: str = "smoke"  # smoke|paper',
            "from cliper_lib.suite.runs.notebook import publish\npublish('before_failure', 1.5)",
            "raise ZeroDivisionError('planned failure')",
        ),
        "slow": _notebook(
            d / "30_slow.ipynb",
            'profile: str = "smoke"  # smoke|paper',
            "import time\ntime.sleep(60)",
        ),
    }


def _plan(tmp_path: Path, runs: list[dict], **extra) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tmpplan",
                "defaults": {"profile": "paper", "unused": 7},
                "runs": runs,
                **extra,
            }
        )
    )
    return path


def test_run_plan_records_everything(tmp_path, notebooks):
    plan = _plan(tmp_path, [{"notebook": str(notebooks["metric"]), "parameters": {"x": 3}}])
    out = tmp_path / "out"
    summary = papermill.run_plan(plan, out_dir=out, progress_bar=False)
    assert summary.ok and summary.plan == "tmpplan"

    executed = nbformat.read(out / "10_metric.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    rec = json.loads((out / "10_metric.json").read_text())
    assert rec["status"] == "ok"
    assert rec["parameters"] == {
        "profile": "paper",
        "x": 3,
    }  # `unused` is declared nowhere: not injected
    m = rec["metrics"]
    assert m["x_squared"] == 9 and m["profile"] == "paper"
    assert m["python"] == sys.executable  # the kernel runs this very interpreter
    assert Path(m["cwd"]) == notebooks["metric"].parent  # cwd = the notebook's folder
    assert Path(m["files"]) == (out / "work" / "10_metric").resolve()
    assert {"torch", "open_clip_torch", "diffusers", "papermill", "python"} <= set(rec["versions"])
    assert set(rec["git"]) == {"commit", "dirty", "changed"} and rec["device"]["type"] in (
        "cpu",
        "cuda",
    )
    assert rec["started"] <= rec["finished"] and rec["duration_s"] > 0
    # this notebook records no configuration: the record says so, and keeps the injected profile
    assert rec["config"] is None and rec["seed"] is None and rec["profile"] == "paper"

    data = json.loads((out / "summary.json").read_text())
    assert data["status"] == "ok" and data["records"][0]["metrics"]["x_squared"] == 9
    md = (out / "summary.md").read_text()
    assert "10_metric" in md and "x_squared=9" in md
    assert not list(out.glob(".*"))  # no temporary or metrics files left behind


def test_failing_notebook_stops_plan(tmp_path, notebooks):
    plan = _plan(
        tmp_path,
        [
            {"notebook": str(notebooks["metric"])},
            {"notebook": str(notebooks["fail"])},
            {"notebook": str(notebooks["metric"]), "name": "metric_again"},
        ],
    )
    out = tmp_path / "out"
    with pytest.raises(NotebookFailed) as info:
        papermill.run_plan(plan, out_dir=out, progress_bar=False)
    err = info.value
    assert (
        "20_fail.ipynb" in str(err)
        and "ZeroDivisionError" in str(err)
        and "planned failure" in str(err)
    )
    assert err.cell_index == 4  # markdown, parameters, injected parameters, publish, raise
    assert "cell 4" in str(err) and "raise ZeroDivisionError" in str(err)

    data = json.loads((out / "summary.json").read_text())
    assert data["status"] == "failed"
    assert [r["status"] for r in data["records"]] == ["ok", "failed", "not run"]
    failed = json.loads((out / "20_fail.json").read_text())
    assert failed["error"]["ename"] == "ZeroDivisionError" and failed["error"]["cell_index"] == 4
    assert failed["metrics"] == {
        "before_failure": 1.5
    }  # what was published before the failure is kept
    assert (out / "20_fail.ipynb").exists() and not (out / "metric_again.ipynb").exists()
    assert "failed: ZeroDivisionError in cell 4" in (out / "summary.md").read_text()


def test_cell_timeout_names_the_cell(tmp_path, notebooks):
    plan = _plan(tmp_path, [{"notebook": str(notebooks["slow"])}], cell_timeout=2)
    with pytest.raises(
        NotebookFailed, match=r"30_slow.ipynb failed in cell 3 .*CellTimeoutError"
    ) as info:
        papermill.run_plan(plan, out_dir=tmp_path / "out", progress_bar=False)
    assert "time.sleep(60)" in info.value.source


def test_plan_errors_before_anything_runs(tmp_path, notebooks):
    out = tmp_path / "out"
    missing = tmp_path / "99_not_written.ipynb"
    plan = _plan(tmp_path, [{"notebook": str(notebooks["metric"])}, {"notebook": str(missing)}])
    with pytest.raises(PlanError, match="99_not_written.ipynb"):
        papermill.run_plan(plan, out_dir=out)
    assert not out.exists()  # checked before the first notebook ran

    typo = _plan(tmp_path, [{"notebook": str(notebooks["metric"]), "parameters": {"y": 1}}])
    with pytest.raises(PlanError, match=r"does not declare.*declared: profile, x"):
        papermill.run_plan(typo, out_dir=out)
    with pytest.raises(PlanError, match="no run plan named"):
        papermill.run_plan("no-such-plan")
    with pytest.raises(PlanError, match="unknown key"):
        plans.load_plan({"runs": [{"notebook": "a.ipynb"}], "defualts": {}, "name": "x"})
    with pytest.raises(PlanError, match="same|named"):
        plans.load_plan({"name": "x", "runs": [{"notebook": "a.ipynb"}, {"notebook": "b/a.ipynb"}]})
    env = _plan(
        tmp_path,
        [{"notebook": str(notebooks["metric"]), "parameters": {"profile": "${CLIPER_UNSET_X}"}}],
    )
    with pytest.raises(PlanError, match="CLIPER_UNSET_X"):
        papermill.run_plan(env, out_dir=out)
    with pytest.raises(PlanError, match="matches no run"):
        papermill.run_plan(plan, out_dir=out, only="42")


def test_shipped_plans_parse():
    for name in ("smoke", "paper"):
        plan = plans.load_plan(name)
        assert plan.defaults["profile"] == name
        assert [r.name[:2] for r in plan.runs] == ["00", "01", "02", "03", "04", "05", "06"]
        assert plan.runs[0].notebook == provenance.REPO_ROOT / "notebooks" / "00_quickstart.ipynb"


def test_publish_outside_and_inside_runner(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(notebook.METRICS_ENV, raising=False)
    np = pytest.importorskip("numpy")
    notebook.publish("a", np.float32(0.5))
    assert notebook.published()["a"] == 0.5 and "[metric] a = 0.5" in capsys.readouterr().out
    target = tmp_path / "m" / "metrics.json"
    monkeypatch.setenv(notebook.METRICS_ENV, str(target))
    notebook.publish("n", 3)
    notebook.publish("d", {"cat": np.int64(2), "nan": float("nan")})
    notebook.publish("n", 4)  # republishing replaces
    assert json.loads(target.read_text()) == {"n": 4, "d": {"cat": 2, "nan": "nan"}}
    with pytest.raises(TypeError, match="not a number"):
        notebook.publish("bad", object())


def test_cli_glue(tmp_path, notebooks, capsys):
    parser = add_reproduce_arguments(argparse.ArgumentParser())
    plan = _plan(
        tmp_path, [{"notebook": str(notebooks["metric"])}, {"notebook": str(notebooks["fail"])}]
    )
    out = tmp_path / "cli"
    args = parser.parse_args(
        ["--plan", str(plan), "--out", str(out), "--only", "10", "--set", "x=5", "--no-progress"]
    )
    assert papermill.run_reproduce(args) == 0
    assert json.loads((out / "10_metric.json").read_text())["metrics"]["x_squared"] == 25
    records = json.loads((out / "summary.json").read_text())["records"]
    assert [r["status"] for r in records] == ["ok", "skipped"]

    bad = parser.parse_args(["--plan", str(tmp_path / "nope.yaml")])
    assert papermill.run_reproduce(bad) == 2
    assert "does not exist" in capsys.readouterr().err
    typo = parser.parse_args(
        ["--plan", str(plan), "--out", str(out), "--only", "10", "--set", "z=1"]
    )
    assert papermill.run_reproduce(typo) == 2
    assert "match no parameter" in capsys.readouterr().err


def test_kernel_runs_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager

    name = papermill.ensure_kernel()
    argv = KernelSpecManager().get_kernel_spec(name).argv
    assert papermill._runs_this_python(argv)
    with pytest.raises(papermill.KernelError, match="no Jupyter kernel named"):
        papermill.ensure_kernel("no-such-kernel")


def test_kernel_registered_when_python3_runs_another_interpreter(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    shadow = tmp_path / "shadow" / "kernels" / "python3"
    shadow.mkdir(parents=True)
    (shadow / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    "/elsewhere/bin/python",
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "another python",
                "language": "python",
            }
        )
    )
    prefix = tmp_path / "prefix"
    # JUPYTER_PATH outranks every other kernel folder: the shadow python3 wins,
    # and the prefix is searched
    monkeypatch.setenv(
        "JUPYTER_PATH",
        os.pathsep.join([str(tmp_path / "shadow"), str(prefix / "share" / "jupyter")]),
    )
    assert not papermill._runs_this_python(KernelSpecManager().get_kernel_spec("python3").argv)
    name = papermill.ensure_kernel(install_prefix=str(prefix))
    assert name == papermill.FALLBACK_KERNEL
    spec = KernelSpecManager().get_kernel_spec(name)
    assert spec.argv[0] == sys.executable
    assert (prefix / "share" / "jupyter" / "kernels" / name / "kernel.json").exists()
