"""ConfusionMatrix and the mIoU/mAcc/pAcc conventions,
checked against independent counts and torchmetrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cliper_lib.eval.metrics import ConfusionMatrix


def random_pair(
    rng: np.random.Generator, c: int, shape=(37, 53), gt_classes=None, ignore=(255,), p_ignore=0.1
):
    """A random (gt, pred) pair: gt drawn from `gt_classes` (so some classes are absent),
    some pixels ignored."""
    gt_classes = np.arange(c) if gt_classes is None else np.asarray(gt_classes)
    gt = rng.choice(gt_classes, size=shape).astype(np.int64)
    drop = rng.random(shape) < p_ignore
    gt[drop] = rng.choice(np.asarray(ignore), size=int(drop.sum()))
    pred = rng.integers(0, c, size=shape).astype(np.int64)
    # Make predictions agree often enough for IoUs far from 0.
    agree = (rng.random(shape) < 0.5) & (gt >= 0) & (gt < c)
    pred[agree] = gt[agree]
    return gt, pred


def brute_force(pairs, c: int, ignore) -> dict:
    """Per-class counts with plain loops over classes: an implementation independent of bincount."""
    tp = np.zeros(c, dtype=np.int64)
    fp = np.zeros(c, dtype=np.int64)
    fn = np.zeros(c, dtype=np.int64)
    for gt, pred in pairs:
        keep = (gt >= 0) & (gt < c) & ~np.isin(gt, list(ignore))
        g, p = gt[keep], pred[keep]
        for k in range(c):
            tp[k] += np.sum((g == k) & (p == k))
            fp[k] += np.sum((g != k) & (p == k))
            fn[k] += np.sum((g == k) & (p != k))
    present = (tp + fn) > 0
    iou = np.where(present, tp / np.maximum(tp + fp + fn, 1), np.nan)
    acc = np.where(present, tp / np.maximum(tp + fn, 1), np.nan)
    return {
        "iou": iou,
        "acc": acc,
        "present": present,
        "mIoU": float(np.mean(iou[present])),
        "mAcc": float(np.mean(acc[present])),
        "pAcc": float(tp.sum() / (tp + fn).sum()),
    }


@pytest.mark.parametrize(
    "c, ignore", [(21, (255,)), (21, (0, 255)), (172, (0, 255)), (5, (1, 255, -1))]
)
def test_matches_brute_force_with_ignored_pixels_and_absent_classes(c, ignore):
    rng = np.random.default_rng(c + len(ignore))
    gt_classes = rng.choice(
        c, size=max(2, c // 2), replace=False
    )  # about half the classes never in gt
    pairs = [random_pair(rng, c, gt_classes=gt_classes, ignore=ignore) for _ in range(4)]
    cm = ConfusionMatrix(c, ignore)
    for gt, pred in pairs:
        cm.update(gt, pred)
    got = cm.compute()
    want = brute_force(pairs, c, ignore)

    assert got["present"] == want["present"].tolist()
    # Predicted-but-absent classes exist (pred covers all classes) and are excluded, not counted as
    # IoU 0.
    assert any(not p and n > 0 for p, n in zip(got["present"], got["pred_pixels"], strict=True))
    np.testing.assert_allclose(
        np.array(got["iou"]), want["iou"], rtol=0, atol=1e-12, equal_nan=True
    )
    np.testing.assert_allclose(
        np.array(got["acc"]), want["acc"], rtol=0, atol=1e-12, equal_nan=True
    )
    assert got["mIoU"] == pytest.approx(want["mIoU"], abs=1e-12)
    assert got["mAcc"] == pytest.approx(want["mAcc"], abs=1e-12)
    assert got["pAcc"] == pytest.approx(want["pAcc"], abs=1e-12)
    assert got["mIoU_pct"] == pytest.approx(100 * want["mIoU"], abs=1e-10)
    for k in ignore:
        if 0 <= k < c:
            assert not got["present"][k] and cm.matrix[k].sum() == 0


def test_matches_torchmetrics():
    from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

    c, ignore = 21, (0, 255)
    rng = np.random.default_rng(7)
    pairs = [random_pair(rng, c, gt_classes=range(0, 15), ignore=ignore) for _ in range(3)]
    cm = ConfusionMatrix(c, ignore)
    tm_cm = MulticlassConfusionMatrix(num_classes=c, ignore_index=255)
    tm_iou = MulticlassJaccardIndex(num_classes=c, average=None, ignore_index=255)
    for gt, pred in pairs:
        cm.update(torch.from_numpy(gt), torch.from_numpy(pred))
        # torchmetrics takes one ignore index: fold every ignored label into 255.
        target = torch.from_numpy(np.where(np.isin(gt, ignore), 255, gt))
        tm_cm.update(torch.from_numpy(pred), target)
        tm_iou.update(torch.from_numpy(pred), target)
    assert torch.equal(
        cm.matrix, tm_cm.compute().to(torch.int64)
    )  # rows gt, columns prediction, exact
    present = torch.tensor(cm.compute()["present"])
    ours = torch.tensor(cm.compute()["iou"], dtype=torch.float64)
    theirs = tm_iou.compute().to(torch.float64)
    torch.testing.assert_close(ours[present], theirs[present], rtol=0, atol=1e-6)
    assert cm.compute()["mIoU"] == pytest.approx(float(theirs[present].mean()), abs=1e-6)


def test_hand_computed_example():
    # gt:   [0 0 1 1 255]   pred: [0 1 1 1 2]   -> class 2 is predicted only on an ignored pixel.
    cm = ConfusionMatrix(3, (255,))
    cm.update(np.array([[0, 0, 1, 1, 255]]), np.array([[0, 1, 1, 1, 2]]))
    out = cm.compute()
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert out["iou"][0] == pytest.approx(1 / 2) and out["iou"][1] == pytest.approx(2 / 3)
    assert math.isnan(out["iou"][2]) and out["present"] == [True, True, False]
    assert out["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert out["mAcc"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["pAcc"] == pytest.approx(3 / 4)
    assert out["num_pixels"] == 4 and out["num_classes_present"] == 2


def test_streaming_numpy_torch_and_dtypes_agree():
    rng = np.random.default_rng(3)
    c = 172  # 171 * 172 overflows uint8 and int16: the update must widen first
    gt, pred = random_pair(rng, c, shape=(64, 48), ignore=(0, 255))
    whole = ConfusionMatrix(c, (0, 255)).update(gt.astype(np.uint8), pred.astype(np.uint8))
    torch_in = ConfusionMatrix(c, (0, 255)).update(
        torch.from_numpy(gt).to(torch.int32), torch.from_numpy(pred)
    )
    streamed = ConfusionMatrix(c, (0, 255))
    for rows in np.array_split(np.arange(64), 5):  # the same pixels in 5 pieces
        streamed.update(gt[rows], pred[rows])
    assert whole == torch_in == streamed
    assert whole.matrix.dtype == torch.int64
    assert int(whole.matrix.sum()) == int(((gt != 0) & (gt != 255)).sum())


def test_merge_equals_single_matrix_and_state_round_trip():
    rng = np.random.default_rng(11)
    pairs = [random_pair(rng, 10, ignore=(255, 77)) for _ in range(6)]
    single = ConfusionMatrix(10, (255,))
    a, b = ConfusionMatrix(10, (255,)), ConfusionMatrix(10, (255,))
    for i, (gt, pred) in enumerate(pairs):
        single.update(gt, pred)
        (a if i % 2 else b).update(gt, pred)
    assert a.merge(b) == single
    assert single.unexpected_pixels > 0  # the 77s: outside [0, 10) and not an ignore label
    restored = ConfusionMatrix.from_state_dict(json.loads(json.dumps(single.state_dict())))
    assert restored == single and restored.compute()["iou"] == single.compute()["iou"]
    with pytest.raises(ValueError, match="cannot merge"):
        single.merge(ConfusionMatrix(10, (0, 255)))


def test_out_of_range_ground_truth_is_skipped_and_counted():
    cm = ConfusionMatrix(4, (255,))
    cm.update(np.array([[0, 1, 9, -3, 255]]), np.array([[0, 1, 2, 3, 3]]))
    assert int(cm.matrix.sum()) == 2 and cm.unexpected_pixels == 2  # 9 and -3; 255 is expected


def test_rejects_bad_inputs():
    cm = ConfusionMatrix(4)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3), np.int64), np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        cm.update(np.zeros((2, 2), np.int64), np.full((2, 2), 4))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        cm.update(np.zeros((2, 2), np.int64), np.full((2, 2), -1))
    with pytest.raises(TypeError, match="integers"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 2), np.int64))
    assert int(cm.matrix.sum()) == 0  # nothing was counted by the failed updates


def test_empty_matrix_gives_nan_not_an_error():
    out = ConfusionMatrix(3).compute()
    assert math.isnan(out["mIoU"]) and math.isnan(out["pAcc"]) and out["num_pixels"] == 0


def test_all_reduce_without_process_group_is_a_no_op():
    cm = ConfusionMatrix(3).update(np.array([[0, 1, 2]]), np.array([[0, 1, 1]]))
    before = cm.copy()
    assert cm.all_reduce() == before


def test_all_reduce_in_a_one_rank_gloo_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        cm = ConfusionMatrix(3, (255,)).update(np.array([[0, 1, 2, 9]]), np.array([[0, 1, 1, 1]]))
        before = cm.copy()
        assert cm.all_reduce() == before  # the sum over one rank; exercises packing and unpacking
        assert cm.matrix.dtype == torch.int64 and cm.unexpected_pixels == 1
    finally:
        dist.destroy_process_group()


def test_accelerator_path_counts_like_the_numpy_path():
    # The torch path runs for CUDA tensors; on CPU it can still be checked against the
    # numpy path directly.
    rng = np.random.default_rng(5)
    gt, pred = random_pair(rng, 30, ignore=(255, -4, 99))
    cm = ConfusionMatrix(30, (255,))
    counts_np, outside_np = cm._counts_numpy(gt, pred)
    counts_t, outside_t = cm._counts_torch(torch.from_numpy(gt), torch.from_numpy(pred))
    assert torch.equal(counts_np, counts_t) and torch.equal(outside_np, outside_t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_predictions_count_like_cpu_ones():
    rng = np.random.default_rng(6)
    gt, pred = random_pair(rng, 21, shape=(128, 96), ignore=(0, 255))
    on_cpu = ConfusionMatrix(21, (0, 255)).update(gt, pred)
    on_gpu = ConfusionMatrix(21, (0, 255)).update(gt, torch.from_numpy(pred).cuda())
    assert on_gpu == on_cpu and on_gpu.matrix.device.type == "cpu"
