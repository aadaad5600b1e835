"""`make book`: a plan folder's executed notebooks rendered as HTML pages with an index. (The smoke
plan's own copies are rendered by tests/test_smoke_plan.py, right after it executes them.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

from cliper_lib.suite.runs import book


def _executed(path: Path, title: str, printed: str) -> None:
    """A notebook as the runner leaves it: a heading, and a code cell with its output."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {title}"),
        nbformat.v4.new_code_cell(
            "print(6 * 7)",
            execution_count=1,
            outputs=[nbformat.v4.new_output("stream", name="stdout", text=printed)],
        ),
    ]
    nbformat.write(nb, path)


def _records(*rows: tuple[str, str]) -> list[dict]:
    return [
        {"name": name, "status": status, "profile": "smoke", "seed": 0, "duration_s": 1.5}
        for name, status in rows
    ]


def test_pages_and_an_index_in_plan_order(tmp_path):
    plan = tmp_path / "smoke"
    plan.mkdir()
    _executed(plan / "10_first.ipynb", "The first notebook", "printed 42\n")
    _executed(plan / "20_second.ipynb", "The second notebook", "printed 43\n")
    _executed(plan / "30_extra.ipynb", "Not in the summary", "printed 44\n")
    summary = {
        "plan": "smoke",
        "description": "A <small> plan",
        "status": "failed",
        "git": {"commit": "0123456789abcdef"},
        "records": _records(("20_second", "failed"), ("10_first", "ok"), ("40_later", "not run")),
    }
    (plan / "summary.json").write_text(json.dumps(summary))
    index = book.build_book(plan, tmp_path / "site")

    site = index.parent
    for stem, heading, printed in (
        ("10_first", "The first notebook", "printed 42"),
        ("20_second", "The second notebook", "printed 43"),
        ("30_extra", "Not in the summary", "printed 44"),
    ):
        page = (site / f"{stem}.html").read_text()
        assert heading in page and printed in page  # the notebook's prose and its output
    page = index.read_text()
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td>", page)
    assert rows == [
        ('<a href="20_second.html">20_second</a>', "failed"),
        ('<a href="10_first.html">10_first</a>', "ok"),
        ("40_later", "not run"),  # no copy, no link
        ('<a href="30_extra.html">30_extra</a>', ""),  # a copy the summary does not know: last
    ]
    assert "A &lt;small&gt; plan" in page and "<code>0123456789ab</code>" in page
    assert '<img src="pipeline.svg"' in page and (site / "pipeline.svg").exists()


def test_without_a_summary_every_copy_is_listed(tmp_path):
    _executed(tmp_path / "00_only.ipynb", "Only", "x\n")
    index = book.build_book(tmp_path, tmp_path / "site")
    assert '<a href="00_only.html">00_only</a>' in index.read_text()


def test_an_empty_folder_says_to_run_the_plan(tmp_path, capsys):
    (tmp_path / "smoke").mkdir()
    assert book.main([str(tmp_path / "smoke"), "--out", str(tmp_path / "site")]) == 2
    assert "run the plan first (`cliper reproduce --plan smoke`)" in capsys.readouterr().err
    assert not (tmp_path / "site").exists()
