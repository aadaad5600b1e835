"""Scores and labels against independent per-pixel computations."""

from __future__ import annotations

import torch

from cliper_lib.method.labels import class_scores, labels_from_maps, scaled_maps


def naive_labels(maps, scores, score_thr, bkg_thr, normalize):
    c, h, w = maps.shape
    m = maps.clone()
    if normalize:
        for k in range(c):
            m[k] = (m[k] - m[k].min()) / (m[k].max() - m[k].min() + 1e-6)
    out = torch.zeros(h, w, dtype=torch.long)
    for y in range(h):
        for x in range(w):
            best, label = 0.0, 0
            for k in range(c):
                v = m[k, y, x].item() if scores[k] > score_thr else 0.0
                v = 0.0 if v < bkg_thr else v
                if v > best:
                    best, label = v, k + 1
            out[y, x] = label
    return out


def test_labels_match_naive_loop():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(4, 6, 7, generator=g)
    scores = torch.tensor([0.9, 0.2, 0.8, 0.5])
    for normalize in (True, False):
        ours = labels_from_maps(maps, scores, 0.4, 0.3, normalize)
        assert torch.equal(ours, naive_labels(maps, scores, 0.4, 0.3, normalize))


def test_ties_go_to_lower_class():
    maps = torch.ones(3, 2, 2)
    assert (labels_from_maps(maps, torch.ones(3), 0.0, 0.5, False) == 1).all()


def test_background_channel_mode():
    maps = torch.tensor([[[0.9, 0.1]], [[0.2, 0.3]]])
    labels = labels_from_maps(maps, torch.ones(2), 0.0, 0.0, False)
    # pixel 0: max 0.9 -> bg (0.1)^2 = 0.01 < 0.9 -> class 1; pixel 1: max 0.3 -> bg 0.49 wins
    assert labels.tolist() == [[1, 0]]


def test_scores_and_scaled_maps():
    refined = torch.rand(2, 8, 8)
    coarse = torch.rand(2, 4, 4)
    s = class_scores(refined, coarse)
    torch.testing.assert_close(s, 0.5 * refined.amax((1, 2)) + 0.5 * coarse.amax((1, 2)))
    scaled = scaled_maps(refined, s, (16, 12))
    assert scaled.shape == (2, 16, 12)
    torch.testing.assert_close(
        scaled.amax((1, 2)), s * (1 - 1e-5 / (scaled.new_tensor(1.0))), rtol=1e-4, atol=1e-4
    )
