"""Properties of the stage functions on random shapes and values (hypothesis): fused attention is
row-stochastic and non-negative, refined maps are finite, labels are in range, and any image from
1×1 pixels up to the size limit (MAX_PATCH_TOKENS) is either segmented or refused before anything is
allocated.

Few examples each and tiny models, so the file stays fast; the shapes and values vary, the seeds are
hypothesis'.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cliper_lib.suite.cli.commands as cli
from cliper_lib.config import CLIPerConfig, parse_field
from cliper_lib.method import fusion as elf
from cliper_lib.method.clip_backbone import MAX_PATCH_TOKENS, resized_shape
from cliper_lib.method.labels import class_scores, labels_from_maps, scaled_maps
from cliper_lib.method.pipeline import CLIPer

from helpers import fast_golden_model, refine_variant

FEW = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def tensor(seed: int, *shape: int, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def attention_stack(
    seed: int, layers: int, heads: int, n: int, sharpness: float
) -> list[torch.Tensor]:
    """`layers` attention maps (1, H, N, N), softmax of scores × sharpness (large: nearly one-hot
    rows)."""
    scores = torch.randn(
        layers, 1, heads, n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return list((scores * sharpness).softmax(-1))


@FEW
@given(
    seed=st.integers(0, 2**16),
    layers=st.integers(1, 4),
    heads=st.integers(1, 3),
    patches=st.integers(1, 30),
    sharpness=st.floats(0.0, 30.0),
    rounds=st.one_of(st.just("cumulative"), st.integers(0, 3)),
    per_head=st.booleans(),
)
def test_fused_attention_is_row_stochastic_and_nonnegative(
    seed, layers, heads, patches, sharpness, rounds, per_head
):
    attentions = attention_stack(seed, layers, heads, 1 + patches, sharpness)
    summed = elf.sum_attention(attentions, list(range(layers)))
    fused_attentions = elf.iter_fused_attentions(
        summed, num_outputs=layers + 1, rounds=rounds, per_head=per_head
    )
    for fused in fused_attentions:
        assert fused.shape == (1, heads, 1 + patches, 1 + patches)
        assert torch.isfinite(fused).all() and (fused >= 0).all()
        torch.testing.assert_close(
            fused.sum(-1), torch.ones(1, heads, 1 + patches, dtype=fused.dtype)
        )


@FEW
@given(
    seed=st.integers(0, 2**16),
    m=st.integers(1, 4),
    side=st.integers(1, 6),
    classes=st.integers(1, 4),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    thr=st.floats(0.0, 1.0),
    sharpness=st.floats(0.0, 30.0),
    variant=st.sampled_from(["sfsa", "mean", "selection", "none"]),
    scale=st.floats(1e-6, 1e3),
)
def test_refined_maps_are_finite(seed, m, side, classes, h, w, thr, sharpness, variant, scale):
    t = side * side
    head_maps = attention_stack(seed, 1, m, t, sharpness)[0][0].float()  # (m, T, T), rows sum to 1
    coarse = tensor(seed + 1, classes, h, w, dtype=torch.float32) * scale
    refined = refine_variant(coarse, head_maps, variant, thr, seed % m)
    assert refined.shape == (classes, side, side) and torch.isfinite(refined).all()
    assert (refined >= 0).all()  # non-negative maps through non-negative operators


@FEW
@given(
    seed=st.integers(0, 2**16),
    classes=st.integers(1, 6),
    side=st.integers(1, 6),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    score_threshold=st.floats(0.0, 1.0),
    bkg_thre=st.floats(0.0, 1.0),
    is_normalize=st.booleans(),
    constant=st.booleans(),
)
def test_labels_are_in_range(
    seed, classes, side, height, width, score_threshold, bkg_thre, is_normalize, constant
):
    refined = tensor(seed, classes, side, side)
    if constant:  # flat maps: min-max normalisation divides 0 by eps
        refined = torch.full_like(refined, 0.3)
    coarse = tensor(seed + 1, classes, side, side)
    scores = class_scores(refined, coarse)
    maps = scaled_maps(refined, scores, (height, width))
    assert maps.shape == (classes, height, width) and torch.isfinite(maps).all()
    labels = labels_from_maps(maps, scores, score_threshold, bkg_thre, is_normalize)
    assert labels.shape == (height, width) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) <= classes
    absent = [k + 1 for k in range(classes) if scores[k] <= score_threshold]
    # absent classes never label
    assert not torch.isin(labels, torch.tensor(absent, dtype=torch.int64)).any()


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 200_000),
    height=st.integers(1, 200_000),
    size=st.integers(16, 672),
    patch=st.sampled_from([14, 16]),
)
def test_any_image_size_is_resized_within_the_limit_or_refused(width, height, size, patch):
    """Rounded (half up) sides, independent of the implementation; over MAX_PATCH_TOKENS:
    ValueError."""
    ratio = size / min(width, height)
    rows = max(math.floor(height * ratio / patch + 0.5), 1)
    cols = max(math.floor(width * ratio / patch + 0.5), 1)
    if rows * cols > MAX_PATCH_TOKENS:
        with pytest.raises(ValueError, match="over the limit"):
            resized_shape(width, height, size, patch)
    else:
        assert resized_shape(width, height, size, patch) == (rows * patch, cols * patch)


@pytest.fixture(scope="module")
def tiny(golden_clip) -> CLIPer:
    return fast_golden_model(golden_clip, size=16)


@pytest.fixture(scope="module")
def text(tiny):
    return tiny.encode_text(["cat", "sofa", "wall"], ["sky"])


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    height=st.integers(1, 48),
    width=st.integers(1, 48),
    size=st.sampled_from([16, 32, 48]),
    fill=st.sampled_from(["random", "constant", "stripes"]),
    seed=st.integers(0, 2**16),
)
def test_pipeline_on_any_small_image(tiny, text, height, width, size, fill, seed):
    """The whole coarse pipeline on the tiny CLIP, image sizes from 1×1 (grids from 1 patch up to
    9×3)."""
    rng = np.random.default_rng(seed)
    if fill == "random":
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    elif fill == "constant":
        image = np.full((height, width, 3), rng.integers(0, 256), dtype=np.uint8)
    else:
        image = np.zeros((height, width, 3), np.uint8)
        image[::2] = 255
    cfg = tiny.cfg.replace(size=size)
    result = tiny.segment(image, given={"text": text}, cfg=cfg)
    attention = result.fused_attention  # (H, N, N)
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:2]))
    assert torch.isfinite(result.refined).all() and torch.isfinite(result.maps).all()
    assert (
        result.labels.shape == (height, width)
        and 0 <= int(result.labels.min()) <= int(result.labels.max()) <= 3
    )


# --- the command line's --set: every config field, any text --------------------------------------
#: texts shaped like what each kind of field takes (and near misses), beside arbitrary text
SHAPED_TEXTS = st.sampled_from(
    [
        "true",
        "No",
        "off",
        "1",
        "none",
        "null",
        "",
        " ",
        "0",
        "-1",
        "7",
        "0.5",
        "1e-3",
        "1e9",
        "nan",
        "inf",
        "[1, 2]",
        "2,9",
        "[]",
        "[a]",
        "cumulative",
        "auto",
        "cpu",
        "cuda:0",
        "mps",
        "float16",
        "sfsa",
        "dino-b8",
        "nearest",
        "up_blocks.3.attentions.1",
        "'quoted'",
    ]  # fmt: skip
)
FIELD_TEXTS = st.one_of(
    SHAPED_TEXTS,
    st.text(max_size=24),
    st.integers(-(2**40), 2**40).map(str),
    st.floats().map(repr),
    st.lists(st.integers(-5, 300), max_size=3).map(str),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from([f.name for f in dataclasses.fields(CLIPerConfig)]), text=FIELD_TEXTS)
def test_any_set_text_is_accepted_and_round_trips_or_refused_in_one_line(
    tmp_path, capsys, name, text
):
    """`cliper segment --set NAME=TEXT` on a missing image: the config is built first, so an
    accepted value reaches the image check ("no image found"), a refused one is one line naming
    the field; exit 2 either way, never a traceback. An accepted config survives the records it is
    saved in (the evaluation's JSON, the export's YAML preset) unchanged."""
    missing = str(tmp_path / "missing.png")
    argv = ["segment", missing, "--out", str(tmp_path / "o"), "--set", f"{name}={text}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    if "no image found" not in err:
        assert err.startswith("cliper: ") and f"{name}=" in err, err  # names the field
        return
    cfg = cli.config_from_args(cli.build_parser().parse_args(argv))
    assert getattr(cfg, name) == parse_field(name, text)
    assert CLIPerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    saved = tmp_path / "saved.yaml"
    saved.write_text(cfg.to_yaml(), encoding="utf-8")
    assert CLIPerConfig.from_preset(str(saved)) == cfg
