"""The VFM paths as the authors' code runs them: floor grids (`vfm_grid_rounding`), the hub models'
position-embedding resize (`vfm_position_resize`) and the float16 proxy (`proxy_half_precision`),
each against an independent computation written from its formula, and through `segment` on the
smoke profile with each setting on and off."""

from __future__ import annotations

import itertools
import math
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cliper_lib import CLIPerConfig
from cliper_lib.config import list_presets
from cliper_lib.eval.synthetic import SyntheticDataset
from cliper_lib.vfm import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VFMInput,
    patch_multiple,
    positions_resized,
    proxy_attention,
    refine_with_features,
    refinement_features,
    scale_factor_positions,
    vfm_pixels,
)
from cliper_lib.weights.vfm import VFM_ARCHITECTURES, build_random_vfm

CLASSES = ["red disc", "blue box", "green triangle"]
#: the authors' behaviour of each field, and today's (the config's defaults).
AUTHORS = {
    "proxy_double_normalization": True,
    "proxy_half_precision": True,
    "vfm_grid_rounding": "floor",
    "vfm_position_resize": "scale-factor",
}
OURS = {name: getattr(CLIPerConfig(), name) for name in AUTHORS}
#: one VFM per patch size (8, 14, 16).
ONE_PER_PATCH = {arch[4]: name for name, arch in reversed(VFM_ARCHITECTURES.items())}


# --- independent references -----------------------------------------------------------------------
def floor_multiple(size: int, patch: int) -> int:
    """The largest multiple of `patch` not above `size` (one patch when there is none)."""
    return max([m for m in range(patch, size + 1, patch)] or [patch])


def nearest_multiple(size: int, patch: int) -> int:
    """The multiple of `patch` closest to `size`, halves up (one patch at least)."""
    candidates = range(patch, size + 2 * patch, patch)
    return min(candidates, key=lambda m: (abs(m - size), -m))


def multiple(size: int, patch: int, rounding: str) -> int:
    return floor_multiple(size, patch) if rounding == "floor" else nearest_multiple(size, patch)


def cubic_taps(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights of the 4 source cells around a sample at fraction t
    (PyTorch's bicubic uses a = -0.75)."""

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

    return [kernel(t + 1), kernel(t), kernel(1 - t), kernel(2 - t)]


def bicubic_axis(values: np.ndarray, out: int, scale: float) -> np.ndarray:
    """Resample axis 0 to `out` samples: output i reads source (i + 0.5) / scale - 0.5, 4 taps,
    indices clamped to the edge (align_corners=False)."""
    rows = []
    for i in range(out):
        x = (i + 0.5) / scale - 0.5
        x0 = math.floor(x)
        taps = cubic_taps(x - x0)
        last = values.shape[0] - 1
        rows.append(sum(w * values[min(max(x0 - 1 + k, 0), last)] for k, w in enumerate(taps)))
    return np.stack(rows)


def positions_by_hand(table: torch.Tensor, grid: tuple[int, int], offset: float) -> torch.Tensor:
    """(1, 1 + M², D) -> (1, 1 + h·w, D): the patch table resampled with scale (n + offset) / M
    per axis (offset 0.1: the hub models; 0: to the grid), CLS first; the own grid unchanged."""
    side = math.isqrt(table.shape[1] - 1)
    h, w = grid
    if (h, w) == (side, side):
        return table
    cells = table[0, 1:].double().numpy().reshape(side, side, -1)  # (M, M, D)
    rows = bicubic_axis(cells, h, (h + offset) / side)  # (h, M, D)
    both = bicubic_axis(rows.transpose(1, 0, 2), w, (w + offset) / side).transpose(1, 0, 2)
    patches = torch.from_numpy(both.reshape(1, h * w, -1)).to(table.dtype)
    return torch.cat([table[:, :1], patches], dim=1)


def features_by_hand(encoder, pixels: torch.Tensor, position_resize: str) -> torch.Tensor:
    """The VFM's patch features (fh, fw, D) of normalised pixels (1, 3, H, W), its position
    embeddings replaced by `positions_by_hand` for the forward pass."""
    p, embeddings = encoder.patch_size, encoder.model.embeddings
    grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
    offset = 0.1 if position_resize == "scale-factor" else 0.0

    def interpolate(tokens, height, width):
        return positions_by_hand(embeddings.position_embeddings, grid, offset)

    with mock.patch.object(embeddings, "interpolate_pos_encoding", interpolate), torch.no_grad():
        hidden = encoder.model(pixel_values=pixels, **encoder.forward_kwargs).last_hidden_state
    return hidden[0, encoder.num_prefix_tokens :].reshape(*grid, -1)


def imagenet_normalised(images: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(v)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (images - mean) / std


def resized_by_hand(images: torch.Tensor, patch: int, rounding: str) -> torch.Tensor:
    """(B, 3, H, W) resized bilinearly to the patch multiples `rounding` gives (by hand)."""
    size = tuple(multiple(s, patch, rounding) for s in images.shape[-2:])
    if size == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def proxy_by_hand(features: torch.Tensor, grid: tuple[int, int], fp16: bool) -> torch.Tensor:
    """(fh, fw, D) -> (1 + T, 1 + T), the authors' steps one by one: the features resized
    bilinearly to the grid, unit vectors, S = cosines, S - mean(S), entries < 0 dropped, softmax.

    `fp16`: the float32 path with each step's result rounded to float16 by hand (what a float16
    operation on a GPU keeps of the float32 result it computes); otherwise float64 throughout.
    """
    dtype = torch.float32 if fp16 else torch.float64
    rounded = (lambda t: t.half().to(dtype)) if fp16 else (lambda t: t)
    on_grid = F.interpolate(
        rounded(features.to(dtype)).permute(2, 0, 1)[None], size=grid, mode="bilinear"
    )
    tokens = rounded(on_grid)[0].flatten(1).T  # (T, D)
    unit = rounded(tokens / rounded(tokens.square().sum(1, keepdim=True).sqrt()))
    similarity = rounded(unit @ unit.T)
    centred = rounded(similarity - rounded(similarity.mean()))
    weights = torch.where(centred >= 0, centred.exp(), torch.zeros_like(centred))
    t = len(tokens)
    out = torch.zeros(t + 1, t + 1, dtype=dtype)
    out[1:, 1:] = rounded(weights / weights.sum(1, keepdim=True))
    return out


def assert_same_attention(ours: torch.Tensor, expected: torch.Tensor, fp16: bool) -> None:
    """The same entries kept and dropped, and the same values: to float32's precision, or in
    float16 identical but for rare one-step differences (float32 sums in another order)."""
    assert torch.equal(ours == 0, expected == 0)
    if not fp16:
        torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-6)
        return
    ours = ours.float()
    torch.testing.assert_close(ours, expected, rtol=2**-10, atol=1e-7)  # one float16 step
    # rare: under 1 % of the entries (seen: up to 0.4 %), where a missing rounding moves ~all
    differ = (ours != expected).float().mean().item()
    assert differ < 0.01, differ


# --- the presets and the defaults -----------------------------------------------------------------
def test_the_presets_run_the_vfm_paths_as_the_authors_and_new_configs_as_before():
    for name in list_presets():
        cfg = CLIPerConfig.from_preset(name)
        assert {field: getattr(cfg, field) for field in AUTHORS} == AUTHORS, name
    assert OURS == {
        "proxy_double_normalization": False,
        "proxy_half_precision": False,
        "vfm_grid_rounding": "nearest",
        "vfm_position_resize": "to-grid",
    }


# --- grid rounding --------------------------------------------------------------------------------
@pytest.mark.parametrize("patch", sorted(ONE_PER_PATCH))
def test_floor_and_nearest_multiples_of_every_patch_for_odd_sizes(patch):
    for size in range(1, 600, 2):
        assert patch_multiple(size, patch, "floor") == floor_multiple(size, patch), size
        assert patch_multiple(size, patch, "nearest") == nearest_multiple(size, patch), size
    assert (
        patch_multiple(patch * 7, patch, "floor") == patch_multiple(patch * 7, patch) == 7 * patch
    )


def test_the_issues_examples_of_floor_against_nearest():
    # VOC's 500 x 375 at patch 8, and 200 x 260 at patch 14: (grid of floor, grid of nearest)
    for (h, w), patch, floor, nearest in [
        ((375, 500), 8, (46, 62), (47, 63)),
        ((200, 260), 14, (14, 18), (14, 19)),
    ]:
        assert tuple(patch_multiple(s, patch, "floor") // patch for s in (h, w)) == floor
        assert tuple(patch_multiple(s, patch, "nearest") // patch for s in (h, w)) == nearest


@pytest.mark.parametrize("name", sorted(ONE_PER_PATCH.values()))
@pytest.mark.parametrize("rounding", ["floor", "nearest"])
def test_the_vfm_input_and_grid_follow_the_rounding(name, rounding):
    encoder = build_random_vfm(name, seed=3)
    p = encoder.patch_size
    images = torch.rand(1, 3, 5 * p - 3, 8 * p + 3, generator=torch.Generator().manual_seed(5))
    pixels = vfm_pixels(images, encoder, rounding)
    torch.testing.assert_close(pixels, imagenet_normalised(resized_by_hand(images, p, rounding)))
    image = (images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    features = refinement_features(encoder, image, VFMInput(grid_rounding=rounding))
    grid = tuple(multiple(s, p, rounding) // p for s in image.shape[:2])
    assert features.shape[:2] == grid == ((4, 8) if rounding == "floor" else (5, 8))


# --- the position embeddings ----------------------------------------------------------------------
#: (VFM, its own grid side M, grids to resize to: non-square, one side M, square but not M).
POSITION_CASES = [
    ("dino-s16", 14, [(5, 9), (20, 11), (14, 15), (7, 7)]),
    ("dino-s8", 28, [(9, 13), (31, 28)]),
    ("dinov2-s14", 37, [(5, 7), (40, 23), (37, 12), (9, 9)]),
]


@pytest.mark.parametrize("name, side, grids", POSITION_CASES)
def test_the_scale_factor_resize_matches_its_formula_on_non_square_grids(name, side, grids):
    encoder = build_random_vfm(name, seed=1)
    table = encoder.model.embeddings.position_embeddings.detach()
    assert table.shape[1] == 1 + side * side
    assert scale_factor_positions(table, (side, side)) is table  # its own grid: as it is
    for grid in grids:
        ours = scale_factor_positions(table, grid)
        torch.testing.assert_close(ours, positions_by_hand(table, grid, 0.1), atol=1e-6, rtol=1e-5)
        # resizing to the grid (scale n / M) differs once the grid is not the table's own
        assert (ours - positions_by_hand(table, grid, 0.0)).abs().max() > 1e-3, grid


@pytest.mark.parametrize("name, side, grids", POSITION_CASES)
def test_the_hook_puts_the_resize_into_the_models_own_forward(name, side, grids):
    encoder = build_random_vfm(name, seed=2)
    model, p = encoder.model, encoder.patch_size
    embeddings = model.embeddings
    generator = torch.Generator().manual_seed(6)
    for h, w in grids[:2]:
        pixels = torch.randn(1, 3, h * p, w * p, generator=generator)
        tokens = torch.zeros(1, 1 + h * w, embeddings.position_embeddings.shape[-1])
        # transformers' own resize is to the grid: the cubic at scale n / M
        torch.testing.assert_close(
            embeddings.interpolate_pos_encoding(tokens, h * p, w * p),
            positions_by_hand(embeddings.position_embeddings, (h, w), 0.0),
            atol=1e-6,
            rtol=1e-5,
        )
        with positions_resized(model, "scale-factor", p):
            inside = embeddings.interpolate_pos_encoding(tokens, h * p, w * p)
            features = encoder.patch_features(pixels, "scale-factor")
        assert "interpolate_pos_encoding" not in vars(embeddings)  # the hook is gone after
        by_hand = positions_by_hand(embeddings.position_embeddings, (h, w), 0.1)
        torch.testing.assert_close(inside, by_hand, atol=1e-6, rtol=1e-5)
        expected = features_by_hand(encoder, pixels, "scale-factor")
        torch.testing.assert_close(features[0], expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            encoder.patch_features(pixels)[0],
            features_by_hand(encoder, pixels, "to-grid"),
            atol=1e-5,
            rtol=1e-4,
        )
        assert not torch.allclose(features, encoder.patch_features(pixels), atol=1e-3)


def test_the_scale_factor_resize_needs_a_transformers_model():
    with pytest.raises(TypeError, match="ViTModel or Dinov2Model"):
        with positions_resized(torch.nn.Linear(2, 2), "scale-factor", 8):
            pass
    with positions_resized(torch.nn.Linear(2, 2), "to-grid", 8):  # nothing to hook
        pass


# --- the float16 proxy ----------------------------------------------------------------------------
def test_the_half_precision_proxy_is_the_float32_formula_rounded_at_each_step():
    g = torch.Generator().manual_seed(7)
    features = torch.randn(9, 11, 24, generator=g) + 0.3  # (fh, fw, D), positive mean similarity
    grid = (12, 14)  # CLIP's grid: the features are resized to it
    half = proxy_attention(features[None], grid, half_precision=True)[0, 0]
    full = proxy_attention(features[None], grid)[0, 0]
    assert_same_attention(half, proxy_by_hand(features, grid, fp16=True), fp16=True)
    assert_same_attention(full, proxy_by_hand(features, grid, fp16=False), fp16=False)
    # float16 moves entries across the cut at 0, so the two differ by more than its rounding
    assert not torch.equal(half == 0, full == 0)
    assert (half - full).abs().max() > 5e-3


# --- through segment on the smoke profile ---------------------------------------------------------
@pytest.fixture(scope="module")
def image() -> np.ndarray:
    # 90 x 137: floor and nearest differ at patch 16 (5 vs 6 rows) and 14 (9 vs 10 columns)
    return SyntheticDataset(num_images=1, classes=3, size=(90, 137), seed=4)[0].image


def smoke_config(**overrides) -> CLIPerConfig:
    return CLIPerConfig.from_preset(
        "vit-b-16/voc21",
        profile="smoke",
        device="cpu",
        **{
            "size": 176,
            "sliding_crop_size": 0,
            "score_threshold": 0.0,
            "bkg_thre": 0.1,
            **overrides,
        },
    )


SETTINGS = list(itertools.product(["nearest", "floor"], ["to-grid", "scale-factor"]))


@pytest.mark.parametrize("name", ["dino-s16", "dinov2-s14"])
def test_a_vfm_refinement_through_segment_with_each_setting(smoke_variant, image, name):
    refined = {}
    for rounding, resize in SETTINGS:
        cfg = smoke_config(refinement=name, vfm_grid_rounding=rounding, vfm_position_resize=resize)
        model = smoke_variant(cfg)
        result = model.segment(image, classes=CLASSES)
        encoder = model.vfm(name)
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        sized = resized_by_hand(pixels, encoder.patch_size, rounding)
        features = features_by_hand(encoder, imagenet_normalised(sized), resize)
        expected = refine_with_features(result.coarse, features)
        torch.testing.assert_close(result.refined, expected, atol=1e-5, rtol=1e-4)
        refined[rounding, resize] = result.refined
    # each setting changes the refinement: the grid (rounding), the values (position resize)
    assert refined["floor", "to-grid"].shape != refined["nearest", "to-grid"].shape
    for rounding in ("nearest", "floor"):
        assert not torch.allclose(refined[rounding, "to-grid"], refined[rounding, "scale-factor"])


#: the proxy's four settings: (double normalisation, float16, grid rounding, position resize).
PROXY_SETTINGS = list(
    itertools.product(
        [False, True], [False, True], ["nearest", "floor"], ["to-grid", "scale-factor"]
    )
)


def proxy_config(double: bool, half: bool, rounding: str, resize: str, **overrides) -> CLIPerConfig:
    return smoke_config(
        last_layer_attention="proxy",
        proxy_model="dinov2-s14",
        refinement="none",
        proxy_double_normalization=double,
        proxy_half_precision=half,
        vfm_grid_rounding=rounding,
        vfm_position_resize=resize,
        **overrides,
    )


def proxy_by_hand_from_clip_input(model, clip_input, settings) -> torch.Tensor:
    """The proxy attention (1 + T, 1 + T) of CLIP's normalised input (3, H, W), every step by
    hand: the VFM's input, its size, its position embeddings, the attention."""
    double, half, rounding, resize = settings
    clip, encoder = model.clip, model.vfm("dinov2-s14")
    if double:  # the authors: CLIP's normalised tensor, normalised again
        images = clip_input[None]
    else:  # the [0, 1] image
        mean, std = (torch.tensor(v)[:, None, None] for v in (clip.mean, clip.std))
        images = (clip_input * std + mean)[None]
    pixels = imagenet_normalised(resized_by_hand(images, encoder.patch_size, rounding))
    features = features_by_hand(encoder, pixels, resize)
    grid = (clip_input.shape[-2] // clip.patch_size, clip_input.shape[-1] // clip.patch_size)
    return proxy_by_hand(features, grid, fp16=half)


@pytest.fixture(scope="module")
def proxy_runs(smoke_variant, image) -> dict:
    """settings -> (model, segment's result) for every combination of the four settings."""
    runs = {}
    for settings in PROXY_SETTINGS:
        model = smoke_variant(proxy_config(*settings))
        runs[settings] = (model, model.segment(image, classes=CLASSES))
    return runs


def test_the_proxy_through_segment_with_each_setting(proxy_runs, image):
    assert len(proxy_runs) == 16
    model = next(iter(proxy_runs.values()))[0]
    clip_input = model.run(image, CLASSES, until="clip_walk")["clip_walk"].input  # (3, 176, 272)
    for settings, (model, result) in proxy_runs.items():
        expected = proxy_by_hand_from_clip_input(model, clip_input, settings)
        assert_same_attention(result.fused_attention[0], expected, fp16=settings[1])


def test_each_proxy_setting_changes_the_attention(proxy_runs):
    flipped = {False: True, True: False, "nearest": "floor", "floor": "nearest"}
    flipped |= {"to-grid": "scale-factor", "scale-factor": "to-grid"}
    for settings, (_, result) in proxy_runs.items():
        for i in range(4):
            other = tuple(flipped[v] if j == i else v for j, v in enumerate(settings))
            changed = proxy_runs[other][1].fused_attention
            assert not torch.equal(result.fused_attention, changed), (settings, i)


def test_the_proxy_with_a_sliding_window_our_extension_runs_each_crop(smoke_variant, image):
    from cliper_lib.images import crop_boxes

    settings = tuple(AUTHORS.values())
    model = smoke_variant(proxy_config(*settings, sliding_crop_size=96, sliding_stride=64))
    run = model.run(image, CLASSES, until="fusion")
    clip_input = run["clip_walk"].input
    whole, crops = run["proxy"]
    boxes = crop_boxes(*clip_input.shape[1:], 96, 64)
    assert crops.shape[0] == len(boxes) > 1
    expected = proxy_by_hand_from_clip_input(model, clip_input, settings)
    assert_same_attention(whole[0, 0], expected, fp16=True)
    for (y1, y2, x1, x2), crop in zip(boxes, crops, strict=True):
        expected = proxy_by_hand_from_clip_input(model, clip_input[:, y1:y2, x1:x2], settings)
        assert_same_attention(crop[0], expected, fp16=True)
    assert model.segment(image, classes=CLASSES).labels.shape == image.shape[:2]
