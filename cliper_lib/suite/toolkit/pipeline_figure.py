"""The picture of the whole pipeline: the stage graph (`method.stages.GRAPH`) drawn left to right,
each box naming the notebook that derives it; committed as docs/pipeline.svg.

    python -m cliper_lib.suite.toolkit.pipeline_figure            # rewrite docs/pipeline.svg
    python -m cliper_lib.suite.toolkit.pipeline_figure --check    # exit 1 if it is out of date

The layout is a small layered drawing: each stage sits in the column right after the stages it
reads and as far right as its readers allow, the boxes of a column are ordered to keep arrows from
crossing, and an arrow that spans several columns bends through free slots of the columns between.
The SVG is byte-for-byte reproducible (no date, fixed ids, text kept as text).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path as CurvePath

from ...method.stages import GRAPH, RUN_INPUTS
from ...provenance import REPO_ROOT

#: where the committed figure lives (README, docs/method.md and notebook 00 show it).
SVG_PATH = REPO_ROOT / "docs" / "pipeline.svg"
#: the notebooks, by number: what each derives.
NOTEBOOKS = {
    "00": "quickstart",
    "01": "CLIP's attention per block",
    "02": "early-layer fusion",
    "03": "SD self-attention",
    "04": "fine-grained compensation",
    "05": "benchmark evaluation",
    "06": "layer tuning",
}
#: the notebook that derives each stage (and where a run's inputs are introduced).
STAGE_NOTEBOOK = {
    "image": "00",
    "classes": "00",
    "background": "02",
    "text": "02",
    "clip_walk": "01",
    "proxy": "02",
    "fusion": "02",
    "layer_maps": "02",
    "coarse": "02",
    "sd_latents": "03",
    "sd_attention": "03",
    "vfm": "04",
    "refine": "04",
    "labels": "04",
}
#: what the notebooks that derive no stage do with the pipeline (the figure's footnote).
BEYOND_STAGES = {
    "05": "scores the labels on a benchmark, beside the paper's table",
    "06": "tunes the fused layers (fusion) live and sweeps them",
}
#: one colour per notebook (colour-blind safe, Okabe-Ito), so a box shows its chapter at a glance.
NOTEBOOK_COLOURS = {
    "00": "#ffffff",
    "01": "#cfe3f3",
    "02": "#9fc9ea",
    "03": "#f6d7a7",
    "04": "#e8b08a",
    "05": "#d5ead0",
    "06": "#e6d4ea",
}
_COLUMN_GAP, _ROW_GAP = 2.2, 1.0  # data units between columns and between slots of a column
_BOX_W, _BOX_H = 1.5, 0.62


@dataclass(frozen=True)
class Edge:
    """An arrow of the graph: `source` is read by `target`; dashed when only some configurations
    read it."""

    source: str
    target: str
    dashed: bool


@dataclass
class Layout:
    """Where everything goes: each node's (column, slot), and each edge's route through the columns
    it spans (the slots of its bends)."""

    position: dict[str, tuple[int, float]]
    routes: dict[Edge, list[tuple[int, float]]]


def graph_edges() -> list[Edge]:
    """Every arrow of GRAPH, in declaration order: what a stage always reads, then what it may."""
    edges = [Edge(need, s.name, False) for s in GRAPH for need in s.needs]
    return edges + [Edge(need, s.name, True) for s in GRAPH for need in s.may_need]


def columns(edges: list[Edge]) -> dict[str, int]:
    """Each node's column: the run's inputs in 0; every stage right after what it reads, then
    moved as far right as its readers allow (so a stage sits next to where it is used)."""
    column = {name: 0 for name in RUN_INPUTS}
    for stage in GRAPH:  # topological order
        column[stage.name] = 1 + max(column[e.source] for e in edges if e.target == stage.name)
    for stage in reversed(GRAPH):
        readers = [column[e.target] for e in edges if e.source == stage.name]
        if readers:
            column[stage.name] = min(readers) - 1
    return column


def layout() -> Layout:
    """Columns, the order within each column (barycentre sweeps over the nodes and the bends of
    long arrows, keeping the order with the fewest crossings), then heights that pull each node
    towards its neighbours, one slot apart at least."""
    edges = graph_edges()
    column = columns(edges)
    # a long arrow gets one bend per column it crosses; bends take part in the ordering
    bends = {
        e: [f"{e.source}>{e.target}@{c}" for c in range(column[e.source] + 1, column[e.target])]
        for e in edges
    }
    col_of = dict(column) | {b: int(b.rsplit("@", 1)[1]) for e in edges for b in bends[e]}
    links = [(a, b) for e in edges for a, b in _pairs([e.source, *bends[e], e.target])]
    order = {c: [n for n in col_of if col_of[n] == c] for c in range(max(col_of.values()) + 1)}
    best = {c: list(names) for c, names in order.items()}
    for _ in range(8):
        _sweep(order, links, forward=True)
        _sweep(order, links, forward=False)
        if _crossings(order, links) < _crossings(best, links):
            best = {c: list(names) for c, names in order.items()}
    slot = _heights(best, links)
    position = {n: (column[n], slot[n]) for n in column}
    routes = {e: [(col_of[b], slot[b]) for b in bends[e]] for e in edges}
    return Layout(position, routes)


def _pairs(chain: list) -> list[tuple]:
    return list(zip(chain, chain[1:], strict=False))


def _sweep(order: dict[int, list[str]], links: list[tuple[str, str]], forward: bool) -> None:
    """Reorder each column by the mean rank of its neighbours in the column before (forward) or
    after; a node without such neighbours keeps its rank; ties keep the current order."""
    cols = sorted(order) if forward else sorted(order, reverse=True)
    pairs = links if forward else [(b, a) for a, b in links]
    for previous, current in _pairs(cols):
        rank = {n: i for i, n in enumerate(order[previous])}
        key = {}
        for i, node in enumerate(order[current]):
            near = [rank[a] for a, b in pairs if b == node and a in rank]
            key[node] = (sum(near) / len(near) if near else i, i)
        order[current] = sorted(order[current], key=key.__getitem__)


def _crossings(order: dict[int, list[str]], links: list[tuple[str, str]]) -> int:
    """How many pairs of links between neighbouring columns cross."""
    rank = {n: i for names in order.values() for i, n in enumerate(names)}
    spans = [(rank[a], rank[b], a) for a, b in links]
    col = {n: c for c, names in order.items() for n in names}
    return sum(
        1
        for i, (a0, b0, s0) in enumerate(spans)
        for a1, b1, s1 in spans[i + 1 :]
        if col[s0] == col[s1] and (a0 - a1) * (b0 - b1) < 0
    )


def _heights(order: dict[int, list[str]], links: list[tuple[str, str]]) -> dict[str, float]:
    """Each node's height in slots: pulled to the mean height of its neighbours, left to right
    and back, keeping the column's order and one slot between boxes; centred on zero."""
    slot = {n: i - (len(names) - 1) / 2 for names in order.values() for i, n in enumerate(names)}
    cols = sorted(order)
    for sweep in (cols, cols[::-1]) * 4 + (cols,):
        for c in sweep:
            wanted = []
            for n in order[c]:
                near = [slot[b] for a, b in links if a == n] + [slot[a] for a, b in links if b == n]
                wanted.append(sum(near) / len(near) if near else slot[n])
            for n, y in zip(order[c], _spaced(wanted), strict=True):
                slot[n] = y
    middle = (max(slot.values()) + min(slot.values())) / 2
    return {n: round(y - middle, 3) for n, y in slot.items()}


def _spaced(wanted: list[float]) -> list[float]:
    """The heights closest (least squares) to `wanted` that keep their order one slot apart: an
    isotonic fit of wanted[i] - i (pool adjacent violators), plus i."""
    blocks: list[list[float]] = []  # [mean, count]
    for i, y in enumerate(wanted):
        blocks.append([y - i, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m0, n0), (m1, n1) = blocks.pop(-2), blocks.pop()
            blocks.append([(m0 * n0 + m1 * n1) / (n0 + n1), n0 + n1])
    fitted = [mean for mean, count in blocks for _ in range(int(count))]
    return [y + i for i, y in enumerate(fitted)]


# --- drawing --------------------------------------------------------------------------------------
def _xy(column: float, slot: float) -> tuple[float, float]:
    return column * _COLUMN_GAP, -slot * _ROW_GAP


def _draw_box(ax, name: str, xy: tuple[float, float], faded: bool) -> None:
    """One node: rounded for what a run is given, square for a stage; its name and notebook."""
    number = STAGE_NOTEBOOK[name]
    given = name in RUN_INPUTS
    box = FancyBboxPatch(
        (xy[0] - _BOX_W / 2, xy[1] - _BOX_H / 2),
        _BOX_W,
        _BOX_H,
        boxstyle="round,pad=0,rounding_size=0.28" if given else "square,pad=0",
        facecolor=NOTEBOOK_COLOURS[number],
        edgecolor="#333333",
        linewidth=1.0,
        alpha=0.3 if faded else 1.0,
    )
    ax.add_patch(box)
    text_colour = "#999999" if faded else "#111111"
    ax.text(
        xy[0],
        xy[1] + 0.1,
        name,
        ha="center",
        va="center",
        fontsize=9.5,
        family="monospace",
        color=text_colour,
    )
    ax.text(
        xy[0],
        xy[1] - 0.17,
        f"notebook {number}",
        ha="center",
        va="center",
        fontsize=7,
        color=text_colour,
    )


def _draw_edge(
    ax,
    start: tuple[float, float],
    bends: list[tuple[float, float]],
    end: tuple[float, float],
    dashed: bool,
) -> None:
    """An arrow from the right side of one box to the left side of another through its bends: a
    smooth curve (cubic pieces, Catmull-Rom slopes at the bends) leaving and entering level."""
    points = [(start[0] + _BOX_W / 2, start[1]), *bends, (end[0] - _BOX_W / 2, end[1])]
    inner = [(c[1] - a[1]) / (c[0] - a[0]) for a, c in zip(points, points[2:], strict=False)]
    slopes = [0.0, *inner, 0.0]
    vertices, codes = [points[0]], [CurvePath.MOVETO]
    for i, ((x0, y0), (x1, y1)) in enumerate(_pairs(points)):
        third = (x1 - x0) / 3
        vertices += [(x0 + third, y0 + slopes[i] * third), (x1 - third, y1 - slopes[i + 1] * third)]
        vertices.append((x1, y1))
        codes += [CurvePath.CURVE4] * 3
    arrow = FancyArrowPatch(
        path=CurvePath(vertices, codes),
        arrowstyle="-|>,head_length=5,head_width=3",
        linestyle=(0, (3, 2)) if dashed else "-",
        color="#555555",
        linewidth=0.9,
        shrinkA=0,
        shrinkB=0,
    )
    ax.add_patch(arrow)


def pipeline_figure(highlight: str | Iterable[str] | None = None) -> Figure:
    """The stage graph as a matplotlib Figure (not registered with pyplot); `highlight`: notebook
    numbers ("02") whose boxes stay bright, the others faded."""
    keep = {highlight} if isinstance(highlight, str) else set(highlight or ())
    unknown = keep - set(NOTEBOOKS)
    if unknown:
        raise ValueError(f"highlight={sorted(unknown)}: notebooks are {', '.join(NOTEBOOKS)}")
    plan = layout()
    points = [*plan.position.values(), *(b for bends in plan.routes.values() for b in bends)]
    xs, ys = zip(*(_xy(*p) for p in points), strict=True)
    fig = Figure(figsize=(12.5, 0.75 * (max(ys) - min(ys)) + 1.6))
    ax = fig.add_axes((0.01, 0.13, 0.98, 0.86))
    ax.set_xlim(min(xs) - _BOX_W / 2 - 0.05, max(xs) + _BOX_W / 2 + 0.05)
    ax.set_ylim(min(ys) - _BOX_H / 2 - 0.05, max(ys) + _BOX_H / 2 + 0.05)
    ax.set_axis_off()
    for edge, bends in plan.routes.items():
        start, end = _xy(*plan.position[edge.source]), _xy(*plan.position[edge.target])
        _draw_edge(ax, start, [_xy(*b) for b in bends], end, edge.dashed)
    for name, where in plan.position.items():
        _draw_box(ax, name, _xy(*where), faded=bool(keep) and STAGE_NOTEBOOK[name] not in keep)
    fig.text(0.01, 0.01, _footnote(), fontsize=7.5, va="bottom", ha="left", color="#333333")
    return fig


def _footnote() -> str:
    chapters = ", ".join(f"{n} {title}" for n, title in NOTEBOOKS.items())
    beyond = "; ".join(f"{n} {what}" for n, what in BEYOND_STAGES.items())
    return (
        "Rounded boxes: what a run is given; square boxes: the stages (cliper_lib.method.stages). "
        "A dashed arrow is read in some configurations only.\n"
        f"Notebooks: {chapters}.\nBeyond the stages: {beyond}."
    )


def pipeline_svg() -> str:
    """The figure as SVG text, the same bytes on every run (no date, fixed ids, text as text)."""
    fig = pipeline_figure()
    buffer = io.StringIO()
    with rc_context({"svg.hashsalt": "cliper-pipeline", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Write docs/pipeline.svg (or --out), or with --check say whether the committed one is
    current."""
    parser = argparse.ArgumentParser(description="Draw the pipeline figure from the stage graph.")
    parser.add_argument("--out", type=Path, default=SVG_PATH, help="SVG file to write or check")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    svg = pipeline_svg()
    if args.check:
        current = args.out.exists() and args.out.read_text(encoding="utf-8") == svg
        print(f"{args.out}: {'up to date' if current else 'out of date (rerun without --check)'}")
        return 0 if current else 1
    args.out.write_text(svg, encoding="utf-8")
    print(f"wrote {args.out} ({len(svg.encode()) // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
