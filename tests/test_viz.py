"""viz: palette, label PNG round trip, overlays, and the figure helpers drawing headless."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless, whatever the environment says

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from cliper_lib.suite.toolkit import viz


def _image(h: int = 24, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _labels(h: int = 24, w: int = 32, n: int = 4) -> np.ndarray:
    lab = np.zeros((h, w), dtype=np.int64)
    lab[: h // 2, : w // 2] = 1
    lab[h // 2 :, w // 2 :] = n - 1
    lab[0, -1] = 2
    return lab


@pytest.mark.parametrize("n", [1, 21, 256, 1000])
def test_palette_distinct_black_background(n):
    pal = viz.palette(n)
    assert pal.shape == (n, 3) and pal.dtype == np.uint8
    assert tuple(pal[0]) == (0, 0, 0)
    assert len({tuple(c) for c in pal}) == n  # every class its own colour


def test_palette_is_voc_like():
    # the first VOC colours (aeroplane, bicycle, bird, boat) as everyone's tools draw them
    assert viz.palette(5)[1:].tolist() == [[128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]


def test_colorize_and_overlay_shapes():
    img, lab = _image(), _labels()
    col = viz.colorize_labels(torch.from_numpy(lab))  # tensors are accepted too
    assert col.shape == (24, 32, 3) and col.dtype == np.uint8
    assert (col[lab == 0] == 0).all()
    out = viz.overlay(img, lab, alpha=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[lab == 0] == img[lab == 0]).all()  # background keeps the photo
    assert (viz.overlay(img, lab, alpha=1.0)[lab == 1] == viz.palette(2)[1]).all()
    assert (viz.overlay(img, lab, alpha=0.0) == img).all()
    with pytest.raises(ValueError, match="same height and width"):
        viz.overlay(img, lab[:-1])
    with pytest.raises(ValueError, match=">= 0"):
        viz.colorize_labels(-lab - 1)


def test_label_png_round_trips_exact_ids(tmp_path):
    lab = np.arange(24 * 32).reshape(24, 32) % 256  # every id 0..255
    path = viz.save_label_png(tmp_path / "sub" / "dir" / "labels.png", lab)  # parents are created
    with Image.open(path) as img:
        assert img.mode == "P"
        assert np.array_equal(np.asarray(img), lab)
        assert img.getpalette()[3:6] == [128, 0, 0]
    assert np.array_equal(viz.load_label_png(path), lab)
    assert [p.name for p in path.parent.iterdir()] == [
        "labels.png"
    ]  # no temporary file left behind
    big = viz.save_label_png(
        tmp_path / "big.png", lab + 300
    )  # ids over 255: a 16-bit PNG (issue 10)
    assert Image.open(big).mode == "I;16" and np.array_equal(viz.load_label_png(big), lab + 300)
    with pytest.raises(ValueError, match="0..65535"):
        viz.save_label_png(tmp_path / "huge.png", lab + 65536)


def test_overlay_png_with_legend(tmp_path):
    img, lab = _image(60, 80), _labels(60, 80, n=4)
    path = viz.save_overlay_png(
        tmp_path / "out" / "overlay.png", img, lab, ["cat", "sofa", "floor"], title="t"
    )
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > 80
    handles = viz.legend_handles(lab, ["cat", "sofa", "floor"])
    assert [h.get_label() for h in handles] == ["cat", "sofa", "floor"]
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # readable like any other output


def test_show_segmentation_titles_and_legend():
    fig = Figure()
    ax = fig.add_subplot()
    viz.show_segmentation(ax, _image(), _labels(n=2), ["cat"], title="a cat")  # ids 0, 1 and 2
    assert ax.get_title() == "a cat"
    # only the classes present, in id order; an id beyond the names still gets an entry
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cat", "class 2"]


def test_heatmap_and_attention_grids(tmp_path):
    maps = np.random.default_rng(1).random((5, 6, 8)).astype(np.float32)
    fig = viz.heatmap_grid(
        maps, [f"layer {i}" for i in range(5)], ncols=3, suptitle="per layer", image=_image()
    )
    assert isinstance(fig, Figure) and fig.get_suptitle() == "per layer"
    titled = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titled == [f"layer {i}" for i in range(5)]
    fig.savefig(tmp_path / "grid.png")
    with pytest.raises(ValueError, match="titles"):
        viz.heatmap_grid(maps, ["only one"])

    h, w = 3, 4
    att = torch.rand(2, 1 + h * w, 1 + h * w).softmax(-1)  # (heads, N, N) with a CLS token
    fig = viz.attention_grid(att, _image(), (h, w), queries=[(0, 0), (2, 3), 5])
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [
        "query patch (0, 0)",
        "query patch (2, 3)",
        "query patch (1, 1)",
    ]
    fig.savefig(tmp_path / "att.png")
    with pytest.raises(ValueError, match="tokens"):
        viz.attention_grid(att[:, :5, :5], _image(), (h, w), queries=[0])


def test_set_theme_once():
    viz.set_theme()
    viz.set_theme()  # second call is a no-op
    assert viz._THEME_SET


def test_mark_patch_outlines_the_right_pixels():
    from matplotlib.figure import Figure

    from cliper_lib.suite.toolkit.viz import mark_patch

    ax = Figure().add_subplot()
    mark_patch(ax, (1, 2), (4, 8), (100, 400))  # patches of 25 x 50 px
    (rect,) = ax.patches
    assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (
        100.0,
        25.0,
        50.0,
        25.0,
    )


def test_colourbars_of_nearly_flat_maps_read_as_plain_numbers():
    flat = np.full((6, 8), 0.14936, np.float32)
    flat[0, 0] += 1e-6  # the refined map of a smoke run: one value plus rounding noise
    ramp = np.linspace(0.0, 1.0, 48, dtype=np.float32).reshape(6, 8)
    fig = viz.heatmap_grid(np.stack([flat, ramp]), ["refined", "coarse"], ncols=2)
    fig.canvas.draw()
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2
    for bar in bars:
        assert bar.yaxis.get_offset_text().get_text() == ""  # no '1e-6+1.4936e-1'
        labels = [
            t.get_text().replace("\u2212", "-") for t in bar.get_yticklabels() if t.get_text()
        ]
        assert labels
        [
            float(text) for text in labels
        ]  # every tick is a plain number (float() raises on '1e-6+1.49e-1')
    flat_labels = [
        float(t.get_text().replace("\u2212", "-"))
        for t in bars[0].get_yticklabels()
        if t.get_text()
    ]
    assert all(abs(v - 0.14936) < 1e-3 for v in flat_labels)  # the ticks say the map's value
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "nearly flat" in titles[0] and "nearly flat" not in titles[1]


# --- the notebooks' figures and teaching helpers (cliper_lib.suite.studies) -----------------------
def test_sinkhorn_rounds_table_follows_the_rounds_by_hand():
    """Row k: B = k + 1 alternating column/row normalisations of A, and the finished attention's
    distance from the first output's, recomputed with plain tensor operations."""
    from cliper_lib.method import fusion
    from cliper_lib.suite.studies.figures import sinkhorn_rounds_table

    torch.manual_seed(0)
    summed = torch.softmax(torch.randn(1, 2, 5, 5), -1) * 3  # a sum of 3 attentions
    table = sinkhorn_rounds_table(summed, 4)
    balanced, first = summed, None
    for k in range(4):
        balanced = balanced / balanced.sum(-2, keepdim=True)
        balanced = balanced / balanced.sum(-1, keepdim=True)
        fused = fusion.finish_fused_attention(balanced)
        first = fused if first is None else first
        row = table.iloc[k]
        assert row["rounds"] == k + 1
        assert row.iloc[1] == pytest.approx(float((balanced.sum(-2) - 1).abs().max()), abs=1e-7)
        assert row.iloc[2] == pytest.approx(float((fused - first).norm() / first.norm()), abs=1e-7)
    assert table.iloc[0, 2] == 0.0 and table.iloc[-1, 1] < table.iloc[0, 1]  # the rounds converge


def test_notebook_figures_draw_headless():
    import pandas as pd

    from cliper_lib.suite.studies import figures

    image = _image()
    fig = figures.marked_heatmaps(torch.rand(3, 4, 4), ["a", "b", "c"], image, [(1, 2)], [(4, 4)])
    marked = [p for ax in fig.axes[:3] for p in ax.patches]
    assert len(marked) == 3 and all(p.get_edgecolor()[:3] == (0.0, 1.0, 1.0) for p in marked)
    boxes = [(0, 16, 0, 16), (0, 16, 16, 32), (8, 24, 8, 24)]
    crops = figures.crops_figure(image, boxes, "crops")
    assert len(crops.axes[0].patches) == 3 and [t.get_text() for t in crops.axes[0].texts] == [
        "crop 0", "crop 1", "crop 2",
    ]  # fmt: skip
    labels = {"ref": _labels(), "other": np.zeros((24, 32), dtype=np.int64)}
    grid = figures.label_maps_figure(image, labels, ["a", "b", "c"], "ref", "labels", ncols=2)
    agree = float((labels["other"] == labels["ref"]).mean())
    assert grid.axes[1].get_title() == f"other: {agree:.0%} agree"
    cost = pd.DataFrame({"order": ["ltr", "rtl"], "time (s)": [2.0, 0.5], "multiply-adds": [8, 2]})
    bars = figures.cost_bars(cost, "cost")
    assert bars.axes[0].get_title().endswith("= 4") and bars.axes[0].get_yscale() == "log"
    for built in (fig, crops, grid, bars):
        assert isinstance(built, Figure)


def test_teaching_helpers(capsys):
    from cliper_lib.config import CLIPerConfig
    from cliper_lib.suite.studies.teaching import PASS_MARK, answered, passed, shown_config

    assert not answered(1, ...) and "Not answered yet" in capsys.readouterr().out
    assert answered(0, False, None)  # any value but the placeholder counts as an answer
    passed("9.9", "why")
    assert capsys.readouterr().out == f"{PASS_MARK} 9.9: correct. why\n"
    paper = CLIPerConfig.from_preset("vit-b-16/voc21", profile="paper")
    smoke = CLIPerConfig.from_preset("vit-b-16/voc21", profile="smoke")
    assert shown_config(paper, "paper") is paper
    shown = shown_config(smoke, "smoke")
    assert shown.score_threshold == 0.0 and shown.replace(score_threshold=0.7) == smoke
