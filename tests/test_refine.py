"""Fine-grained compensation maths against independent, deliberately naive computations."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from cliper_lib.config import CLIPerConfig, ConfigError
from cliper_lib.method.refine import (
    HeadChain,
    chain_apply,
    check_head_maps,
    normalize_and_apply_,
    normalize_head_maps,
    normalize_head_maps_,
    refine_selection,
    refine_sfsa,
    upsample_coarse,
    zero_below_,
)
from cliper_lib.method.refinements import REFINEMENTS

from helpers import SD_VARIANTS, refine_variant


def random_stochastic(
    m: int, T: int, seed: int = 0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """m random row-stochastic (T, T) matrices (softmax of Gaussian scores, like attention)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, T, T, generator=g, dtype=dtype).mul(2).softmax(dim=-1)


def naive_normalize(maps: torch.Tensor, thr: float) -> torch.Tensor:
    """The authors' three steps written as plain loops over entries."""
    m, T, _ = maps.shape
    out = maps.clone()
    for k in range(m):
        for j in range(T):
            col_max = max(float(maps[k, i, j]) for i in range(T))
            for i in range(T):
                value = float(maps[k, i, j]) / (col_max + 1e-5)
                out[k, i, j] = 0.0 if value < thr else value
        for i in range(T):
            row_sum = sum(float(out[k, i, j]) for j in range(T))
            for j in range(T):
                out[k, i, j] = float(out[k, i, j]) / (row_sum + 1e-5)
    return out


def authors_reference(
    coarse: torch.Tensor, maps: torch.Tensor, variant: str, thr: float, head: int
) -> torch.Tensor:
    """The whole refinement the authors' way: normalise all maps, form the product left to right,
    then apply it."""
    s = int(maps.shape[-1] ** 0.5)
    S = (
        F.interpolate(coarse[None], size=(s, s), mode="bilinear", align_corners=False)[0]
        .flatten(-2)
        .T
    )  # (T, C)
    A = naive_normalize(maps, thr)
    if variant == "mean":
        A = A.mean(0)
    elif variant == "selection":
        A = A[head]
    else:
        A = functools.reduce(torch.matmul, A, torch.eye(A.shape[-1], dtype=A.dtype))
    return (A @ S).T.reshape(-1, s, s)


# --------------------------------------------------------------------------------------------------
def test_normalize_matches_naive_loop() -> None:
    maps = random_stochastic(3, 9, seed=1)
    for thr in (0.0, 0.1, 0.35):
        torch.testing.assert_close(
            normalize_head_maps(maps, thr), naive_normalize(maps, thr), rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_below_is_masked_fill_exactly(dtype) -> None:
    g = torch.Generator().manual_seed(7)
    maps = torch.rand(2, 64, 64, generator=g).to(dtype)
    for thr in (
        0.0,
        0.1,
        0.3,
        1 / 3,
    ):  # 0.1 and 1/3 are not representable: both sides round them to `dtype`
        tied = maps.clone()
        tied[0, :4, :4] = torch.tensor(thr, dtype=dtype)  # exact ties (kept)
        tied[1, 0, :3] = torch.nextafter(
            torch.tensor(thr, dtype=dtype), torch.tensor(-1.0, dtype=dtype)
        )  # just below
        tied[1, 1, 0] = float("nan")
        expected = tied.clone().masked_fill_(tied.clone() < thr, 0)
        out = zero_below_(tied, thr)
        assert out is tied and torch.equal(out.isnan(), expected.isnan())
        assert torch.equal(out.nan_to_num(-1.0), expected.nan_to_num(-1.0)), thr


def test_in_place_normalisation_equals_the_copying_one_bit_for_bit() -> None:
    maps = torch.softmax(
        torch.randn(3, 256, 256, generator=torch.Generator().manual_seed(8)), -1
    )  # float32
    expected = normalize_head_maps(maps, 0.1)
    buffer = maps.clone()
    assert normalize_head_maps_(buffer, 0.1) is buffer and torch.equal(buffer, expected)


def test_normalize_rows_are_stochastic_or_empty() -> None:
    out = normalize_head_maps(random_stochastic(4, 25, seed=2), 0.2)
    sums = out.sum(-1)
    assert (out >= 0).all()
    assert torch.all((sums - 1).abs() < 1e-4)  # +1e-5 in the denominator keeps sums just below 1
    # every column keeps its maximum (value ~1 after the column normalisation), so no row of max
    # entries vanishes
    assert (out > 0).any(dim=-2).all()


def test_normalize_does_not_modify_input_and_checks_shape() -> None:
    maps = random_stochastic(2, 16)
    before = maps.clone()
    normalize_head_maps(maps, 0.1)
    assert torch.equal(maps, before)
    with pytest.raises(ValueError, match=r"\(m, T, T\)"):
        normalize_head_maps(maps[0], 0.1)


def test_chain_equals_explicit_left_to_right_product() -> None:
    maps = random_stochastic(6, 16, seed=3)
    S = torch.rand(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    explicit = functools.reduce(torch.matmul, maps) @ S  # A_1 A_2 ... A_m, then S
    torch.testing.assert_close(chain_apply(maps, S), explicit, rtol=1e-12, atol=1e-12)


def test_head_chain_streams_last_first_and_order_matters() -> None:
    maps = random_stochastic(
        4, 16, seed=5
    )  # two layers of two heads: "a" = maps 0, 1; "b" = maps 2, 3
    coarse = torch.rand(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    S = upsample_coarse(coarse, 4).reshape(3, 16).T  # (T, C)
    expected = chain_apply(normalize_head_maps(maps, 0.1), S)

    def feed(
        chain: HeadChain,
    ) -> torch.Tensor:  # as a UNet would: layer "a" first, each layer's last head first
        for layer, offset in (("a", 0), ("b", 2)):
            for head in (1, 0):
                chain(
                    layer, head, 2, maps[offset + head][None].clone()
                )  # (1, T, T): the chain normalises in place
        return chain.S[0]

    in_order = HeadChain([coarse], ["a", "b"], 0.1)  # "b" is due first: "a" waits for it
    torch.testing.assert_close(feed(in_order), expected, rtol=1e-12, atol=1e-12)
    assert not in_order.waiting and not in_order.due and in_order.count == 4
    assert not torch.allclose(
        feed(HeadChain([coarse], ["b", "a"], 0.1)), expected
    )  # another product


@pytest.mark.parametrize("band", [5, 16, 64])
def test_banded_normalise_and_apply_equals_normalise_then_product(band) -> None:
    raw = torch.rand(
        1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(8)
    ).softmax(-1)
    S = torch.rand(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    A = raw[0].clone()
    out = normalize_and_apply_(A, S, 0.1, band=band)  # bands of 5 leave a last band of 1 row
    normalised = normalize_head_maps(raw, 0.1)[0]
    assert torch.equal(A, normalised)  # normalised in place, the same bits
    torch.testing.assert_close(out, normalised @ S, rtol=1e-12, atol=1e-12)


def test_chain_shape_errors() -> None:
    maps = random_stochastic(2, 16)
    with pytest.raises(ValueError, match="S must have shape"):
        chain_apply(maps, torch.rand(9, 2, dtype=torch.float64))


@pytest.mark.parametrize("variant", SD_VARIANTS)
def test_refine_variants_match_authors_reference(variant: str) -> None:
    maps = random_stochastic(4, 36, seed=7)  # s = 6
    coarse = torch.rand(3, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    got = refine_variant(coarse, maps, variant, 0.2, 2)
    assert got.shape == (3, 6, 6)
    torch.testing.assert_close(
        got, authors_reference(coarse, maps, variant, 0.2, 2), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("band", [None, 5, 16])
def test_banded_sfsa_equals_the_whole_map_one(band) -> None:
    maps = random_stochastic(4, 36, seed=7)
    coarse = torch.rand(3, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(
        refine_sfsa(coarse, maps, 0.2, band),
        authors_reference(coarse, maps, "sfsa", 0.2, 0),
        rtol=1e-10,
        atol=1e-12,
    )


def test_refine_none_is_the_bilinear_upsample() -> None:
    coarse = torch.rand(2, 4, 4)
    maps = random_stochastic(2, 64, dtype=torch.float32)
    expected = F.interpolate(coarse[None], size=(8, 8), mode="bilinear", align_corners=False)[0]
    # S_c↑ at the side of the head maps' token grid
    torch.testing.assert_close(upsample_coarse(coarse, check_head_maps(maps)), expected)
    torch.testing.assert_close(upsample_coarse(coarse, 8), expected)
    # the registered `none` refinement is S_c itself (float32): labels upsample it to the image
    none = REFINEMENTS["none"]
    assert none.source is None and none.part is None
    assert torch.equal(none.one(None, CLIPerConfig(), coarse.half(), None), coarse.half().float())


def test_refine_half_precision_maps_are_refined_in_float32() -> None:
    maps = random_stochastic(3, 16, dtype=torch.float32)
    coarse = torch.rand(2, 3, 3)
    out = refine_sfsa(coarse, maps.half(), 0.1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, refine_sfsa(coarse, maps.half().float(), 0.1))


def test_refine_input_errors() -> None:
    maps = random_stochastic(3, 16, dtype=torch.float32)
    coarse = torch.rand(2, 3, 3)
    assert "median" not in REFINEMENTS
    with pytest.raises(ConfigError, match="refinement=.median. is not accepted; refinement takes"):
        CLIPerConfig(refinement="median").validate()
    with pytest.raises(ValueError, match="selection_head=3"):
        refine_selection(coarse, maps, 0.1, 3)
    for variant in SD_VARIANTS:
        with pytest.raises(ValueError, match=r"\(C, h, w\)"):
            refine_variant(coarse[0], maps, variant, 0.1)
        with pytest.raises(ValueError, match=r"\(m, T, T\)"):
            refine_variant(coarse, maps[:, :, :8], variant, 0.1)
        with pytest.raises(ValueError, match="not a square grid"):
            refine_variant(coarse, random_stochastic(2, 12, dtype=torch.float32), variant, 0.1)
        with pytest.raises(ValueError, match=r"empty \(m = 0\)"):
            refine_variant(coarse, maps[:0], variant, 0.1)
    # a head map whose token grid disagrees with the chain's S_c↑
    chain = HeadChain([coarse], ["a"], 0.1)
    chain("a", 1, 2, maps[:1].clone())
    with pytest.raises(ValueError, match="does not fit"):
        chain("a", 0, 2, random_stochastic(1, 25, dtype=torch.float32))
