"""Stops lose nothing (issue 26): SIGTERM and SIGHUP stop `cliper segment` the way Ctrl-C does: a
message, the finished images' outputs kept, no partial (.part) file left, and a rerun that does
only the rest and ends with exactly the files of an uninterrupted run.

The batch runs in a child process on the smoke models; the child pauses while the third image's
files are half written (its temporary files on disk), and the test sends the signal then.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cliper_lib.suite.cli.commands as cli
from cliper_lib.suite.toolkit.outputs import OUTPUT_SUFFIXES

from helpers import photo, save

#: the child: `cliper segment ARGS`, pausing after the temporary files of image STOP_AT are written.
CHILD = textwrap.dedent(
    """
    import sys, time
    import cliper_lib.suite.cli.commands as cli
    import cliper_lib.suite.runs.batch as batch

    stop_at, written = int(sys.argv[1]), []
    real = batch.write_segmentation_files

    def write_then_pause(*args, **kwargs):
        real(*args, **kwargs)
        written.append(1)
        if len(written) == stop_at:
            print("PAUSED", file=sys.stderr, flush=True)
            time.sleep(120)

    batch.write_segmentation_files = write_then_pause
    sys.exit(cli.main(sys.argv[2:]))
    """
)
IMAGES = 5
STOP_AT = 3


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(IMAGES):
        save(folder / f"p{i}.png", photo(24 + 2 * i, 30, seed=i))
    return folder


def segment_argv(photos: Path, out: Path) -> list[str]:
    return ["segment", str(photos), "--classes", "cat, dog", "--out", str(out), "--quiet",
            "--profile", "smoke", "--refinement", "none", "--device", "cpu",
            "--set", "size=32", "--set", "sliding_crop_size=0"]  # fmt: skip


def child_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPER_CACHE": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def stopped_run(photos: Path, out: Path, tmp_path: Path, signum: int) -> tuple[int, str]:
    """Run the batch, pause it with image STOP_AT half written, send `signum`: (status, stderr)."""
    argv = [sys.executable, "-c", CHILD, str(STOP_AT), *segment_argv(photos, out)]
    child = subprocess.Popen(
        argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=child_env(tmp_path)
    )
    try:
        lines = []
        for line in child.stderr:
            lines.append(line)
            if line.startswith("PAUSED"):
                break
        partial = [p.name for p in out.iterdir() if ".part" in p.name]
        assert partial, "the child paused with no temporary file on disk"
        child.send_signal(signum)
        _, rest = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    return child.returncode, "".join(lines) + rest


def outputs(out: Path) -> dict[str, bytes]:
    """Each output file's content; scores JSON without its timings (they differ run to run)."""
    files = {}
    for path in sorted(out.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".json":
            record = json.loads(data)
            record.pop("timings_s")
            data = json.dumps(record, sort_keys=True).encode()
        files[path.name] = data
    return files


def check_stopped(out: Path, status: int, err: str, name: str) -> None:
    """The stop's message and exit status, the finished images' files kept, no partial file."""
    assert status == 128 + getattr(signal, name), err
    assert f"cliper: interrupted ({name})" in err and "Traceback" not in err
    done = STOP_AT - 1
    assert f"stopped after {done} of {IMAGES} image(s)" in err
    assert "run the same command again" in err
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".") or ".part" in n], names
    assert names == sorted(f"p{i}{s}" for i in range(done) for s in OUTPUT_SUFFIXES)


def test_sighup_stops_like_ctrl_c(photos, tmp_path):
    out = tmp_path / "out"
    check_stopped(out, *stopped_run(photos, out, tmp_path, signal.SIGHUP), "SIGHUP")


def test_sigterm_keeps_finished_images_leaves_no_partial_file_and_a_rerun_resumes_exactly(
    photos, tmp_path
):
    out = tmp_path / "out"
    check_stopped(out, *stopped_run(photos, out, tmp_path, signal.SIGTERM), "SIGTERM")
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    printed = run_to_the_end(photos, out, tmp_path)  # the rerun: the same command
    assert f"kept the outputs of {STOP_AT - 1} image(s)" in printed
    assert f"for {IMAGES - STOP_AT + 1} image(s)" in printed
    # the finished images were not redone
    assert kept == {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in kept}

    reference = tmp_path / "reference"
    run_to_the_end(photos, reference, tmp_path)  # one run, never stopped
    assert outputs(out) == outputs(reference)


def run_to_the_end(photos: Path, out: Path, tmp_path: Path) -> str:
    """The batch in a fresh process (as a user reruns it; the overlays are drawn by a matplotlib
    in its initial state, as in the stopped run), never paused: its stdout."""
    argv = [sys.executable, "-c", CHILD, "0", *segment_argv(photos, out)]
    done = subprocess.run(
        argv, capture_output=True, text=True, env=child_env(tmp_path), timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_signal_handlers_come_back_after_a_command(tmp_path, capsys):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    assert cli.main(["segment", str(tmp_path / "none.png"), "--out", str(tmp_path / "o")]) == 2
    assert {s: signal.getsignal(s) for s in before} == before
    capsys.readouterr()
