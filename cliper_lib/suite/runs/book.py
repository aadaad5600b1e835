"""`make book`: the executed notebooks of a plan's folder rendered as a static HTML site, with an
index page (one row per run, from the plan's summary) and the pipeline figure.

    python -m cliper_lib.suite.runs.book papermill_runs/smoke --out outputs/book/smoke

nbconvert (it comes with the notebooks extra) renders each executed copy as it is, outputs
included; nothing is re-executed.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from ...files import atomic_write_text
from ...provenance import REPO_ROOT

#: the picture of the pipeline the index shows (docs/pipeline.svg, generated from the stage graph).
FIGURE = REPO_ROOT / "docs" / "pipeline.svg"


class BookError(RuntimeError):
    """The folder holds no executed notebooks, or nbconvert is missing; the message says what to
    do."""


def build_book(plan_dir: str | Path, out_dir: str | Path) -> Path:
    """Render every executed notebook of `plan_dir` into `out_dir`/<run>.html and write
    `out_dir`/index.html; return the index's path."""
    plan_dir, out_dir = Path(plan_dir), Path(out_dir)
    copies = sorted(plan_dir.glob("*.ipynb"))
    if not copies:
        raise BookError(
            f"{plan_dir} holds no executed notebooks: run the plan first "
            f"(`cliper reproduce --plan {plan_dir.name}`)"
        )
    exporter = _html_exporter()
    out_dir.mkdir(parents=True, exist_ok=True)
    for copy in copies:
        body, _ = exporter.from_filename(str(copy))
        atomic_write_text(out_dir / f"{copy.stem}.html", body)
    if FIGURE.exists():
        shutil.copyfile(FIGURE, out_dir / FIGURE.name)
    index = out_dir / "index.html"
    atomic_write_text(index, index_page(plan_dir, _summary(plan_dir), [c.stem for c in copies]))
    return index


def _html_exporter() -> Any:
    try:  # nbconvert comes with the notebooks extra, not the core install
        from nbconvert import HTMLExporter
    except ImportError as error:
        raise BookError(
            f"rendering notebooks needs nbconvert: pip install 'cliper-suite[notebooks]'; {error}"
        ) from None
    return HTMLExporter(template_name="lab")


def _summary(plan_dir: Path) -> dict[str, Any]:
    """The plan's summary.json, or a stand-in naming the folder when there is none."""
    try:
        return json.loads((plan_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"plan": plan_dir.name, "records": []}


def index_page(plan_dir: Path, summary: dict[str, Any], rendered: list[str]) -> str:
    """The index: the plan, its commit and status, the pipeline figure, and one row per run
    (runs the summary does not know come last)."""
    records = list(summary.get("records") or [])
    known = {r.get("name") for r in records}
    records += [{"name": name} for name in rendered if name not in known]
    rows = "\n".join(_row(r, r.get("name") in rendered) for r in records)
    plan = html.escape(str(summary.get("plan") or plan_dir.name))
    commit = html.escape(str((summary.get("git") or {}).get("commit") or "unknown")[:12])
    figure = f'<p><img src="{FIGURE.name}" alt="the pipeline" width="100%"></p>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CLIPer notebooks: plan {plan}</title>
<style>body {{font-family: sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em}}
table {{border-collapse: collapse}} td, th {{border: 1px solid #ccc; padding: 0.3em 0.6em}}</style>
</head><body>
<h1>CLIPer notebooks, executed by plan <code>{plan}</code></h1>
<p>{html.escape(str(summary.get("description") or ""))}</p>
<p>Status {html.escape(str(summary.get("status") or "unknown"))}; commit <code>{commit}</code>;
finished {html.escape(str(summary.get("finished") or "unknown"))}.</p>
{figure if FIGURE.exists() else ""}
<table><tr><th>notebook</th><th>status</th><th>profile</th><th>seed</th><th>seconds</th></tr>
{rows}
</table></body></html>
"""


def _row(record: dict[str, Any], rendered: bool) -> str:
    """One run of the index: its page (when rendered), status, profile, seed and duration."""
    name = html.escape(str(record.get("name")))
    link = f'<a href="{name}.html">{name}</a>' if rendered else name
    cells = [record.get(k) for k in ("status", "profile", "seed", "duration_s")]
    text = "".join(f"<td>{html.escape('' if c is None else str(c))}</td>" for c in cells)
    return f"<tr><td>{link}</td>{text}</tr>"


def main(argv: list[str] | None = None) -> int:
    """Build the book of a plan folder; 0 on success, 2 when there is nothing to render."""
    parser = argparse.ArgumentParser(description="Render a plan's executed notebooks as HTML.")
    parser.add_argument("plan_dir", type=Path, help="a plan's folder, e.g. papermill_runs/smoke")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/book/<plan>")
    args = parser.parse_args(argv)
    out = args.out or REPO_ROOT / "outputs" / "book" / args.plan_dir.name
    try:
        index = build_book(args.plan_dir, out)
    except BookError as error:
        print(f"book: {error}", file=sys.stderr)
        return 2
    print(f"book: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
