"""report: the paper's table from the presets, per-class frames,
per-image scores against brute force, examples."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from cliper_lib.eval import report
from cliper_lib.eval.datasets import Sample
from cliper_lib.eval.loop import evaluate
from cliper_lib.eval.metrics import ConfusionMatrix
from cliper_lib.eval.synthetic import SyntheticDataset
from cliper_lib.suite.studies.examples import examples_figure


# --------------------------------------------------------------------------------------------------
# the paper's table
def test_paper_table_holds_design_section_4():
    table = report.paper_table()
    assert list(table.columns) == [
        "VOC21",
        "Context60",
        "Object",
        "VOC20",
        "Context59",
        "Stuff",
        "ADE",
        "City",
        "Avg.",
    ]
    b16, l14 = "ViT-B/16", "ViT-L/14"
    # spot checks against docs/method.md section 5 (with FGC, and without in brackets)
    assert table.loc[(b16, report.PAPER_ROW), "VOC21"] == 66.5
    assert table.loc[(b16, report.PAPER_ROW_NO_FGC), "VOC21"] == 62.1
    assert table.loc[(b16, report.PAPER_ROW), "Object"] == 40.0
    assert table.loc[(l14, report.PAPER_ROW), "VOC20"] == 90.3
    assert table.loc[(l14, report.PAPER_ROW_NO_FGC), "City"] == 37.9
    b16_paper = [66.5, 38.3, 40.0, 85.5, 42.4, 27.6, 21.5, 37.0]  # in BENCHMARK_ORDER
    assert table.loc[(b16, report.PAPER_ROW)].iloc[:8].tolist() == b16_paper
    assert table.loc[(b16, report.PAPER_ROW), "Avg."] == pytest.approx(sum(b16_paper) / 8)
    assert len(table) == 4 and not table.isna().any().any()  # no measured rows asked for
    # FGC helps on every set, as the paper reports
    for bb in (b16, l14):
        assert (table.loc[(bb, report.PAPER_ROW)] > table.loc[(bb, report.PAPER_ROW_NO_FGC)]).all()


def test_paper_table_measured_row_and_extra_backbone():
    table = report.paper_table(
        measured={"vit-b-16/voc21": 12.34, "vit-h-14/voc21": 5.0}, measured_label="ours"
    )
    row = table.loc[("ViT-B/16", "ours")]
    assert row["VOC21"] == 12.34
    assert row.drop("VOC21").isna().all()  # the other sets were not measured; no average of one set
    h14 = table.loc["ViT-H/14"]
    assert h14.loc[report.PAPER_ROW].isna().all()  # no published numbers for H/14
    assert h14.loc["ours", "VOC21"] == 5.0
    with pytest.raises(ValueError, match="not benchmark presets"):
        report.paper_table(measured={"vit-b-16/nope": 1.0})


def test_style_paper_table_renders_highlight_and_dashes():
    table = report.paper_table(measured={"vit-b-16/voc21": 12.34})
    html = report.style_paper_table(
        table, highlight=(("ViT-B/16", "measured"), "VOC21"), caption="cap"
    ).to_html()
    assert (
        "12.3" in html
        and "66.5" in html
        and "–" in html
        and "cap" in html
        and "font-weight: bold" in html
    )


def test_backbone_title_and_short_name():
    assert report.backbone_title("vit-b-16") == "ViT-B/16"
    assert report.backbone_title("vit-l-14") == "ViT-L/14"
    assert report.backbone_title("elsewhere") == "elsewhere"
    assert report.short_name("person with clothes, people, human") == "person with clothes"
    assert report.short_name("bird avian") == "bird avian"


def test_results_frame_from_a_results_record():
    from cliper_lib.config import CLIPerConfig
    from cliper_lib.eval.records import results_record

    dataset = SyntheticDataset(3, classes="voc21", size=(16, 20), seed=0)
    result = evaluate(
        lambda im: np.zeros(im.shape[:2], np.int64), dataset, 21, (255,), progress=False
    )
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", profile="smoke")
    record = results_record(result, cfg, dataset="synthetic", labels=dataset.class_names)
    frame = report.results_frame([record])
    row = frame.loc["vit-b-16/voc21"]
    assert row["images"] == 3 and row["data set"] == "synthetic" and row["profile"] == "smoke"
    assert row["mIoU"] == pytest.approx(result.miou) and row["pAcc"] == pytest.approx(
        result.metrics["pAcc_pct"]
    )
    assert row["paper mIoU"] == 66.5 and row["paper mIoU without FGC"] == 62.1
    assert row["mIoU − paper"] == pytest.approx(result.miou - 66.5)
    assert row["images / s"] > 0


# --------------------------------------------------------------------------------------------------
# per-class frames
def _metrics(gt, pred, num_classes, ignore=(255,)):
    return ConfusionMatrix(num_classes, ignore).update(np.asarray(gt), np.asarray(pred)).compute()


def test_per_class_frame_sorted_absent_last():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array(
        [[0, 1, 1, 1], [2, 3, 3, 0]]
    )  # class 3 only predicted, never in the ground truth
    frame = report.per_class_frame(_metrics(gt, pred, 4), ["background", "a", "b", "c, cee"])
    assert frame["name"].tolist() == [
        "a",
        "background",
        "b",
        "c",
    ]  # IoU 2/3, 1/2, 1/2 (id order), absent
    assert frame.loc[0, "iou"] == pytest.approx(100 * 2 / 3)
    assert frame["present"].tolist() == [True, True, True, False] and math.isnan(
        frame.loc[3, "iou"]
    )
    assert frame.loc[3, "pred_pixels"] == 1  # the ignored pixel predicted 3 is not counted
    with pytest.raises(ValueError, match="class names"):
        report.per_class_frame(_metrics(gt, pred, 4), ["background"])


def test_bars_to_draw_keeps_best_and_worst():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 30, size=(40, 40))
    pred = np.where(rng.random((40, 40)) < 0.5, gt, rng.integers(0, 30, size=(40, 40)))
    gt[:, :2] = 255
    metrics = _metrics(gt, pred, 32)  # classes 30, 31 never in the ground truth
    frame = report.per_class_frame(metrics, [f"k{i}" for i in range(32)])
    everything = report.bars_to_draw(frame, 40)
    assert len(everything) == 30 and set(everything["group"]) == {"IoU per class"}
    assert everything["iou"].is_monotonic_decreasing
    some = report.bars_to_draw(frame, 7)
    assert some["group"].tolist() == ["best classes"] * 3 + ["worst classes"] * 4
    assert (
        some["iou"].tolist()
        == everything["iou"].head(3).tolist() + everything["iou"].tail(4).tolist()
    )


# --------------------------------------------------------------------------------------------------
# per-image scores
def _brute_force(gt, pred, num_classes, ignore):
    ious, correct, scored = [], 0, 0
    gt_classes = {int(v) for v in np.unique(gt) if 0 <= v < num_classes and v not in ignore}
    for c in sorted(gt_classes):
        inter = union = 0
        for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
            if g in ignore or not 0 <= g < num_classes:
                continue
            inter += (g == c) and (p == c)
            union += (g == c) or (p == c)
        ious.append(inter / union)
    for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
        if g in ignore or not 0 <= g < num_classes:
            continue
        scored += 1
        correct += g == p
    return (
        (np.mean(ious) if ious else math.nan),
        (correct / scored if scored else math.nan),
        len(ious),
    )


@pytest.mark.parametrize("seed", range(4))
def test_image_scores_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt = rng.choice([0, 1, 2, 4, 255, 9], size=(9, 11))  # 9 is outside the 5 classes: skipped
    pred = rng.integers(0, 5, size=(9, 11))
    ignore = (255, 0) if seed % 2 else (255,)
    got = report.image_scores(gt, pred, 5, ignore)
    want = _brute_force(gt, pred, 5, set(ignore))
    assert (
        got[0] == pytest.approx(want[0]) and got[1] == pytest.approx(want[1]) and got[2] == want[2]
    )


def test_image_scores_edge_cases():
    gt = np.full((3, 3), 255)
    miou, pacc, n = report.image_scores(gt, np.zeros((3, 3), int), 3, (255,))
    assert math.isnan(miou) and math.isnan(pacc) and n == 0
    assert report.image_scores(np.ones((2, 2)), np.ones((2, 2)), 3, ()) == (1.0, 1.0, 1)
    with pytest.raises(ValueError, match="lie in"):
        report.image_scores(np.ones((2, 2)), np.full((2, 2), 7), 3, ())


def _segment_from_mask(dataset):
    """A segmenter that answers sample i's mask with i·10 % of its pixels set to background (so
    scores fall with i)."""
    masks = [dataset[i].mask for i in range(len(dataset))]
    images = [dataset[i].image for i in range(len(dataset))]

    def segment(image):
        i = next(k for k, im in enumerate(images) if np.array_equal(im, image))
        pred = np.where(masks[i] == 255, 0, masks[i]).copy()
        flat = pred.reshape(-1)
        flat[: int(flat.size * i / 10)] = 0
        return pred

    return segment


def test_per_image_scores_inside_evaluate():
    dataset = SyntheticDataset(7, classes="voc21", size=(32, 40), seed=3)
    segment = _segment_from_mask(dataset)
    plain = evaluate(segment, dataset, 21, (255,), progress=False)
    scorer = report.PerImageScores(dataset, 21, (255,), keep=2)
    wrapped = evaluate(
        segment, dataset, 21, (255,), progress=False, prefetch=2, on_sample=scorer.add
    )
    assert wrapped.confusion == plain.confusion  # the hook changes nothing the metric sees
    frame = scorer.frame()
    assert frame["index"].tolist() == list(range(7)) and frame["name"].tolist() == dataset.names
    for row in frame.itertuples():
        sample = dataset[row.index]
        want = report.image_scores(sample.mask, segment(sample.image), 21, (255,))
        assert row.miou == pytest.approx(100 * want[0]) and row.pacc == pytest.approx(100 * want[1])
    order = frame.sort_values(["miou", "index"], ascending=[False, True])["index"].tolist()
    best, worst = scorer.best(), scorer.worst()
    assert [e.score.index for e in best] == order[:2] and [e.rank for e in best] == [
        "best 1",
        "best 2",
    ]
    assert [e.score.index for e in worst] == order[::-1][:2]
    for e in best + worst:  # the kept maps are the sample's own
        sample = dataset[e.score.index]
        assert np.array_equal(e.image, sample.image) and np.array_equal(e.mask, sample.mask)
        assert np.array_equal(e.pred, segment(sample.image))
    assert len(scorer.examples()) == 4


def test_per_image_scores_ties_and_overlap():
    dataset = SyntheticDataset(3, classes="voc21", size=(16, 16), seed=0)
    scorer = report.PerImageScores(dataset, 21, (255,), keep=2, rank_by="pacc")
    for i in range(3):
        sample = dataset[i]
        scorer.add(i, sample, sample.mask.copy())  # perfect: all tie at 100 %
    assert [e.score.index for e in scorer.best()] == [0, 1]
    assert [e.score.index for e in scorer.worst()] == [0, 1]
    assert [e.score.index for e in scorer.examples()] == [0, 1]  # shown once each


def test_per_image_scores_hook_scores_exactly_one_shard_and_checks_rank_by():
    dataset = SyntheticDataset(7, classes="voc21", size=(16, 16), seed=0)
    segment = _segment_from_mask(dataset)
    scorer = report.PerImageScores(dataset, 21, (255,))
    # rank 1 of 2 without a process group: this shard's samples 1, 3, 5 only, each scored once
    shard = evaluate(
        segment, dataset, 21, (255,), rank=1, world_size=2, progress=False, on_sample=scorer.add
    )
    frame = scorer.frame()
    assert frame["index"].tolist() == [1, 3, 5] and len(scorer.scores) == 3
    assert frame["name"].tolist() == [dataset.names[i] for i in (1, 3, 5)] == shard.names
    for row in frame.itertuples():
        sample = dataset[row.index]
        want = report.image_scores(sample.mask, segment(sample.image), 21, (255,))
        assert row.miou == pytest.approx(100 * want[0]) and row.pacc == pytest.approx(100 * want[1])
        assert row.num_classes == want[2]
    with pytest.raises(ValueError, match="rank_by"):
        report.PerImageScores(dataset, 21, (255,), rank_by="dice")


def test_per_image_scores_skip_unscored_images_from_ranking():
    mask = np.full((4, 4), 255)
    sample = Sample("all-ignored", np.zeros((4, 4, 3), np.uint8), mask)
    scorer = report.PerImageScores([sample], 3, (255,), keep=1)
    scorer.add(0, sample, np.zeros((4, 4), int))
    assert math.isnan(scorer.frame().loc[0, "miou"]) and scorer.examples() == []


def test_examples_figure_panels_and_legends():
    dataset = SyntheticDataset(4, classes="voc21", size=(24, 32), seed=1)
    scorer = report.PerImageScores(dataset, 21, (255,), keep=1)
    for i in range(4):
        sample = dataset[i]
        scorer.add(i, sample, np.roll(sample.mask, i, axis=1))
    fig = examples_figure(scorer.examples(), dataset.classes, title="best and worst")
    axes = fig.axes
    assert len(axes) == 6 and fig._suptitle.get_text() == "best and worst"
    assert axes[0].get_title().startswith("best 1") and axes[3].get_title().startswith("worst 1")
    assert [axes[k].get_title() for k in (1, 2)] == ["ground truth", "prediction"]
    assert axes[1].get_legend() is not None  # the ground truth has classes, so a legend of them
    with pytest.raises(ValueError, match="no examples"):
        examples_figure([], dataset.classes, title="x")
