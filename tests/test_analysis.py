"""Locality measures of cliper_lib.analysis against brute-force loops and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cliper_lib.method.clip_backbone import LayerWalk
from cliper_lib.suite.studies import analysis


def random_attention(b: int, heads: int, n: int, sharp: float = 3.0) -> torch.Tensor:
    """(B, H, N, N) row-stochastic attention."""
    return torch.softmax(sharp * torch.randn(b, heads, n, n), dim=-1)


# --- brute-force references (loops over queries and keys) -----------------------------------------
def brute_distance(attn: np.ndarray, grid, patch) -> np.ndarray:
    """attn (H, 1 + hw, 1 + hw) -> (H,): loop over heads, patch queries, patch keys."""
    h, w = grid
    out = []
    for a in attn:
        per_query = []
        for q in range(h * w):
            row = a[1 + q, 1:]
            row = row / row.sum()
            qr, qc = divmod(q, w)
            d = 0.0
            for k in range(h * w):
                kr, kc = divmod(k, w)
                d += row[k] * math.hypot(qr - kr, qc - kc) * patch
            per_query.append(d)
        out.append(np.mean(per_query))
    return np.array(out)


def brute_entropy(attn: np.ndarray) -> np.ndarray:
    """attn (H, 1 + hw, 1 + hw) -> (H,)."""
    out = []
    for a in attn:
        ents = []
        for q in range(1, a.shape[0]):
            row = a[q, 1:] / a[q, 1:].sum()
            ents.append(-sum(p * math.log(p) for p in row if p > 0))
        out.append(np.mean(ents))
    return np.array(out)


def brute_neighbour(tokens: np.ndarray, grid) -> float:
    """tokens (hw, D): per patch, the mean cosine to its in-grid 4-neighbours;
    then the mean over patches."""
    h, w = grid
    t = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    per_patch = []
    for r in range(h):
        for c in range(w):
            sims = [
                t[r * w + c] @ t[rr * w + cc]
                for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
                if 0 <= rr < h and 0 <= cc < w
            ]
            per_patch.append(np.mean(sims))
    return float(np.mean(per_patch))


# --- mean attention distance ----------------------------------------------------------------------
def test_distance_matches_brute_force():
    grid, patch = (3, 4), 16
    attn = random_attention(1, 3, 1 + 12)[0].double()
    got = analysis.mean_attention_distance(attn, grid, patch)
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), brute_distance(attn.numpy(), grid, patch), rtol=1e-5)


def test_identity_attention_has_zero_distance_and_entropy():
    grid = (4, 5)
    eye = torch.eye(21).expand(2, 21, 21)  # (H, N, N), CLS included
    assert torch.allclose(analysis.mean_attention_distance(eye, grid, 16), torch.zeros(2))
    assert torch.allclose(analysis.attention_entropy(eye), torch.zeros(2))


def test_hand_made_2x2_grid():
    # patches 0 1 / 2 3; query 0 puts half its patch attention on itself, half on the diagonal
    # patch 3; the mass on CLS is dropped by the renormalisation. Other queries attend to themselves
    # (distance 0).
    attn = torch.zeros(1, 5, 5)
    attn[0, 0, 0] = 1.0
    attn[0, 1, 0], attn[0, 1, 1], attn[0, 1, 4] = 0.2, 0.4, 0.4  # query patch 0
    for q in (2, 3, 4):
        attn[0, q, q] = 1.0
    dist = analysis.mean_attention_distance(attn, (2, 2), patch=10)
    assert dist.item() == pytest.approx(0.5 * math.sqrt(2) * 10 / 4)  # one query of four
    ent = analysis.attention_entropy(attn)
    assert ent.item() == pytest.approx(math.log(2) / 4)


def test_uniform_attention_distance_and_entropy():
    grid, patch = (3, 5), 14
    n = 1 + 15
    uniform = torch.full((2, n, n), 1.0 / n)
    dist = analysis.mean_attention_distance(uniform, grid, patch)
    assert torch.allclose(dist, torch.full((2,), analysis.uniform_attention_distance(grid, patch)))
    brute = brute_distance(uniform.numpy(), grid, patch)
    np.testing.assert_allclose(dist.numpy(), brute, rtol=1e-5)
    assert torch.allclose(
        analysis.attention_entropy(uniform), torch.full((2,), math.log(15)), atol=1e-5
    )


def test_batched_input_averages_over_images():
    grid = (2, 3)
    attn = random_attention(3, 2, 7)
    batched = analysis.mean_attention_distance(attn, grid, 16)
    per_image = torch.stack([analysis.mean_attention_distance(a, grid, 16) for a in attn])
    assert torch.allclose(batched, per_image.mean(0))
    ent_batched = analysis.attention_entropy(attn)
    assert torch.allclose(
        ent_batched, torch.stack([analysis.attention_entropy(a) for a in attn]).mean(0)
    )


def test_attention_without_cls_token():
    grid = (3, 3)
    with_cls = random_attention(1, 2, 10)[0]
    patches_only = with_cls[:, 1:, 1:]
    assert torch.allclose(
        analysis.mean_attention_distance(with_cls, grid, 8),
        analysis.mean_attention_distance(patches_only, grid, 8),
        atol=1e-6,
    )
    assert torch.allclose(
        analysis.attention_entropy(with_cls),
        analysis.attention_entropy(patches_only, grid),
        atol=1e-6,
    )
    with pytest.raises(ValueError):
        analysis.mean_attention_distance(with_cls, (2, 2), 8)


# --- entropy, CLS share ---------------------------------------------------------------------------
def test_entropy_matches_brute_force():
    attn = random_attention(1, 4, 1 + 6)[0].double()
    np.testing.assert_allclose(
        analysis.attention_entropy(attn).numpy(), brute_entropy(attn.numpy()), rtol=1e-6
    )


def test_cls_attention_matches_loop():
    attn = random_attention(1, 3, 1 + 8)[0]
    expected = [np.mean([attn[h, q, 0].item() for q in range(1, 9)]) for h in range(3)]
    np.testing.assert_allclose(analysis.cls_attention(attn).numpy(), expected, rtol=1e-6)


# --- token measures -------------------------------------------------------------------------------
def test_neighbour_similarity_matches_brute_force():
    grid = (3, 4)
    tokens = torch.randn(1 + 12, 5, dtype=torch.float64)
    got = analysis.neighbour_similarity(tokens, grid)  # CLS dropped
    assert got == pytest.approx(brute_neighbour(tokens[1:].numpy(), grid), rel=1e-6)
    assert analysis.neighbour_similarity(tokens[1:], grid) == pytest.approx(got)


def test_neighbour_similarity_extremes():
    grid = (2, 3)
    constant = torch.ones(6, 4)
    assert analysis.neighbour_similarity(constant, grid) == pytest.approx(1.0)
    # a checkerboard of +v / -v: every neighbour is the opposite vector
    sign = torch.tensor([[1, -1, 1], [-1, 1, -1]], dtype=torch.float32).reshape(6, 1)
    assert analysis.neighbour_similarity(sign * torch.ones(6, 4), grid) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        analysis.neighbour_similarity(torch.ones(1, 4), (1, 1))


def test_token_similarity_matches_pairs():
    grid = (2, 3)
    tokens = torch.randn(7, 5, dtype=torch.float64)
    t = torch.nn.functional.normalize(tokens[1:], dim=-1)
    cos = t @ t.T
    expected = (cos.sum() - cos.diagonal().sum()) / (6 * 5)
    assert analysis.token_similarity(tokens, grid) == pytest.approx(expected.item(), rel=1e-5)


# --- the table ------------------------------------------------------------------------------------
def test_layer_locality_table():
    grid, heads, layers = (2, 3), 2, 3
    n = 1 + 6
    walk = LayerWalk(
        grid=grid,
        normalized_inputs=[torch.randn(2, n, 8) for _ in range(layers)],
        attentions=[random_attention(2, heads, n) for _ in range(layers)],
        residual_inputs=[],
    )
    table = analysis.layer_locality_table(walk, patch=16, batch_index=1)
    assert len(table) == layers * heads
    assert list(table.columns) == [
        "layer",
        "head",
        "mean_attention_distance",
        "attention_entropy",
        "cls_attention",
        "neighbour_similarity",
        "token_similarity",
    ]
    row = table[(table["layer"] == 2) & (table["head"] == 1)].iloc[0]
    assert row.mean_attention_distance == pytest.approx(
        analysis.mean_attention_distance(walk.attentions[2][1], grid, 16)[1].item()
    )
    assert row.attention_entropy == pytest.approx(
        analysis.attention_entropy(walk.attentions[2][1])[1].item()
    )
    assert row.neighbour_similarity == pytest.approx(
        analysis.neighbour_similarity(walk.normalized_inputs[2][1], grid)
    )


# --- query maps -----------------------------------------------------------------------------------
def test_query_attention_maps():
    grid = (3, 4)
    attn = random_attention(1, 2, 13)[0]  # (H, N, N)
    maps = analysis.query_attention_maps(attn, grid, (1, 2))
    assert maps.shape == (2, 3, 4)
    q = 1 * 4 + 2
    for h in range(2):
        for r in range(3):
            for c in range(4):
                assert maps[h, r, c] == attn[h, 1 + q, 1 + r * 4 + c]
    assert torch.equal(analysis.query_attention_maps(attn, grid, q), maps)
    assert torch.equal(analysis.query_attention_maps(attn, grid, np.int64(q)), maps)
    renorm = analysis.query_attention_maps(attn, grid, q, renormalize=True)
    assert torch.allclose(renorm.sum(dim=(1, 2)), torch.ones(2))
    no_cls = analysis.query_attention_maps(attn.mean(0)[1:, 1:], grid, q)  # (N, N) without CLS
    assert no_cls.shape == (1, 3, 4)
    assert torch.allclose(no_cls[0], maps.mean(0))
    with pytest.raises(ValueError):
        analysis.query_attention_maps(attn, grid, (3, 0))


def test_query_patch_and_fraction_range():
    assert analysis.query_patch((0.0, 0.0), (4, 6)) == (0, 0)
    assert analysis.query_patch((1.0, 1.0), (4, 6)) == (3, 5)
    assert analysis.query_patch((0.5, 0.25), (4, 6)) == (2, 1)
    with pytest.raises(ValueError):
        analysis.query_patch((1.5, 0.0), (4, 6))
    assert analysis.fraction_range([0.0, 1.0], 11) == [0, 10]
    assert analysis.fraction_range([0.0, 0.5], 3) == [0, 1]
    assert analysis.fraction_range([0.5, 1.0], 11) == [5, 10]
    with pytest.raises(ValueError):
        analysis.fraction_range([0.6, 0.2], 11)


def test_sd_locality_table_matches_brute_force():
    """One row per (timestep index, layer, head); distance and normalised entropy recomputed by
    loops over tokens; a 2 × 2 grid layer of side 16 has tokens 8 SD px apart."""
    torch.manual_seed(0)
    fine = torch.softmax(torch.randn(2, 16, 16), -1)  # 2 heads on a 4 × 4 grid
    coarse = torch.softmax(torch.randn(1, 4, 4), -1)  # 1 head on a 2 × 2 grid
    table = analysis.sd_locality_table(
        {45: {"up_blocks.3.attentions.0": fine, "up_blocks.2.attentions.1": coarse}}, 16
    )
    assert len(table) == 3 and set(table["timestep index"]) == {45}
    row = table[(table["layer"] == "up_blocks.2.attentions.1") & (table["head"] == 0)].iloc[0]
    assert row["grid"] == 2 and row["block"] == "up_blocks.2" and row["label"] == "up2.attn1\n2×2"
    centres = [(r * 8.0, c * 8.0) for r in range(2) for c in range(2)]  # 16 px / 2 tokens
    distance = (
        sum(
            coarse[0, j, k].item() * math.dist(centres[j], centres[k])
            for j in range(4)
            for k in range(4)
        )
        / 4
    )
    entropy = (
        -sum(
            coarse[0, j, k].item() * math.log(coarse[0, j, k].item())
            for j in range(4)
            for k in range(4)
        )
        / 4
    )
    assert row["mean attention distance (SD px)"] == pytest.approx(distance, rel=1e-5)
    assert row["normalised entropy"] == pytest.approx(entropy / math.log(4), rel=1e-5)
    uniform = sum(math.dist(a, b) for a in centres for b in centres) / 16
    assert row["uniform distance (SD px)"] == pytest.approx(uniform, rel=1e-6)
