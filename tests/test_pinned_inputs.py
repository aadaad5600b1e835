"""Pinned behaviours at the edges of the method that planted one-line bugs slipped past (issue 26,
point 7): ties at the VFM refinement's cut, the VFM grid helpers on small and odd sizes, automatic
background words (threshold, aliases, defaults), four-channel arrays, and the empty-prompt cache
key. Each is checked against an independent computation."""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cliper_lib import CLIPer
from cliper_lib.eval.batching import segment_batch
from cliper_lib.files import TensorCache
from cliper_lib.images import rgb_array
from cliper_lib.suite.toolkit import background as bg
from cliper_lib.vfm import (
    VFMEncoder,
    proxy_attention,
    refine_with_features,
    refinement_probabilities,
)
from cliper_lib.vfm.encoder import patch_multiple, refinement_features, vfm_pixels
from cliper_lib.weights import sd_prompt
from cliper_lib.weights.sd_prompt import (
    cached_empty_embedding,
    encode_empty_prompt,
    folder_identity,
    random_identity,
)


# --- ties at the VFM refinement's cut -------------------------------------------------------------
def dyadic_unit_tokens() -> list[list[Fraction]]:
    """Four unit vectors in 8-D with dyadic components, so float32 holds every product exactly:
    mean(S) = |mean of the tokens|² = 5/8, the cut 1.2·5/8 = 3/4, and e1·u = 3/4 lands on it."""
    e1 = [Fraction(1)] + [Fraction(0)] * 7
    u = [Fraction(3, 4)] + [Fraction(1, 4)] * 7
    h = [Fraction(0)] * 4 + [Fraction(1, 2)] * 4
    return [e1, e1, u, h]


def exact_refinement_probabilities(tokens: list[list[Fraction]]) -> torch.Tensor:
    """P of docs/method.md with exact rationals for the cut: entries < 0 dropped, 0 kept."""
    T = len(tokens)
    S = [[sum(a * b for a, b in zip(x, y, strict=True)) for y in tokens] for x in tokens]
    mean = sum(map(sum, S)) / (T * T)
    logits = [[(s - Fraction(6, 5) * mean) * 3 for s in row] for row in S]
    rows = []
    for row in logits:
        weights = [math.exp(float(v)) if v >= 0 else 0.0 for v in row]
        rows.append([w / sum(weights) for w in weights])
    return torch.tensor(rows, dtype=torch.float64)


def test_an_entry_exactly_on_the_vfm_cut_is_kept() -> None:
    tokens = dyadic_unit_tokens()
    expected = exact_refinement_probabilities(tokens)
    # the tie: row e1 keeps e1, e1 and u (logit exactly 0), drops h; row u keeps e1, e1 (ties), u
    assert (expected[0] > 0).tolist() == [True, True, True, False]
    assert (expected[2] > 0).tolist() == [True, True, True, False]
    features = torch.tensor([[float(v) for v in x] for x in tokens]) * 2.5  # any length: cosine
    torch.testing.assert_close(refinement_probabilities(features).double(), expected)
    torch.testing.assert_close(
        refinement_probabilities(features, slice(2, 4)).double(), expected[2:4]
    )
    # and through the refinement, in blocks of one row
    grid = features.reshape(2, 2, 8)  # (fh, fw, D)
    coarse = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 2.0]]])  # (C, 2, 2)
    refined = refine_with_features(coarse, grid, block=1)
    torch.testing.assert_close(
        refined.double(), (expected @ coarse.reshape(2, 4).T.double()).T.reshape(2, 2, 2)
    )


def test_the_vfm_cut_is_at_1_2_times_the_mean_not_at_the_mean() -> None:
    """e8·h = 1/2 lies between mean(S) = 7/16 and 1.2·mean(S) = 21/40: dropped (the softmax is
    shift-invariant, so only the set of kept entries shows the weight 1.2)."""
    e1, e8 = ([Fraction(int(i == k)) for i in range(8)] for k in (0, 7))
    h = [Fraction(0)] * 4 + [Fraction(1, 2)] * 4
    tokens = [e1, e1, e8, h]
    expected = exact_refinement_probabilities(tokens)
    assert expected[2, 3] == 0 and expected[3, 2] == 0
    features = torch.tensor([[float(v) for v in x] for x in tokens])
    torch.testing.assert_close(refinement_probabilities(features).double(), expected)


def test_an_entry_exactly_on_the_proxy_cut_is_kept() -> None:
    """The proxy attention's cut is S - mean(S) < 0: with tokens e1, e1, e8, h (mean(S) = 1/2),
    e1·h = 1/2 is a tie and stays; e1·e8 = 0 goes."""
    e1, e8 = ([Fraction(int(i == k)) for i in range(8)] for k in (0, 7))
    h = [Fraction(1, 2)] * 4 + [Fraction(0)] * 4
    tokens = [e1, e1, e8, h]
    S = [[sum(a * b for a, b in zip(x, y, strict=True)) for y in tokens] for x in tokens]
    mean = sum(map(sum, S)) / 16
    assert mean == Fraction(1, 2)
    expected = torch.zeros(5, 5, dtype=torch.float64)
    for i, row in enumerate(S):
        weights = [math.exp(float(v - mean)) if v >= mean else 0.0 for v in row]
        expected[1 + i, 1:] = torch.tensor(weights) / sum(weights)
    assert expected[1, 4] > 0 and expected[1, 3] == 0  # e1 keeps h (the tie), drops e8
    features = torch.tensor([[float(v) for v in x] for x in tokens]).reshape(1, 2, 2, 8)
    attention = proxy_attention(features, (2, 2))  # the features already on CLIP's grid
    torch.testing.assert_close(attention[0, 0].double(), expected)


# --- the VFM grid helpers, called directly --------------------------------------------------------
def nearest_multiple(size: int, patch: int) -> int:
    """The nearest multiple of `patch` (halves up), at least one patch: integer arithmetic only."""
    return max((2 * size + patch) // (2 * patch), 1) * patch


@pytest.mark.parametrize("patch", [8, 14, 16])
def test_patch_multiple_is_the_nearest_multiple_for_every_small_size(patch) -> None:
    for size in range(1, 5 * patch + 1):
        assert patch_multiple(size, patch) == nearest_multiple(size, patch), (size, patch)
    assert patch_multiple(patch // 2 - 1, patch) == patch  # below half a patch: one patch
    assert patch_multiple(3 * patch // 2, patch) == 2 * patch  # a half rounds up
    assert patch_multiple(5 * patch // 2, patch) == 3 * patch  # (not to even)


class PatchMeans(torch.nn.Module):
    """A stand-in VFM: a CLS token of zeros, then each patch's mean colour, row-major."""

    def __init__(self, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the encoder a device and dtype

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        means = F.avg_pool2d(pixel_values, self.patch).flatten(2).transpose(1, 2)  # (B, T, 3)
        cls = means.new_zeros(len(means), 1, 3)
        return SimpleNamespace(last_hidden_state=torch.cat([cls, means], dim=1))


def stand_in_encoder(patch: int) -> VFMEncoder:
    return VFMEncoder(PatchMeans(patch), "stand-in", patch, 1, "stand-in")


@pytest.mark.parametrize("height, width", [(1, 1), (3, 5), (5, 11), (7, 13), (12, 4), (17, 9)])
def test_vfm_input_of_small_and_odd_images(height, width) -> None:
    encoder = stand_in_encoder(8)
    rows, cols = nearest_multiple(height, 8), nearest_multiple(width, 8)
    # a constant colour stays that colour through any bilinear resize
    colour = torch.tensor([0.2, 0.5, 0.9])
    flat = colour[None, :, None, None].expand(1, 3, height, width)
    pixels = vfm_pixels(flat, encoder)
    assert pixels.shape == (1, 3, rows, cols)
    normalised = (colour - torch.tensor(encoder.mean)) / torch.tensor(encoder.std)
    torch.testing.assert_close(pixels, normalised[None, :, None, None].expand_as(pixels))
    # structure: the image's own pixels, resized as docs/method.md says, patch by patch, row-major
    image = np.random.default_rng(height * 100 + width).integers(0, 256, (height, width, 3))
    image = image.astype(np.uint8)
    features = refinement_features(encoder, image)
    assert features.shape == (rows // 8, cols // 8, 3)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    if (rows, cols) != (height, width):
        x = F.interpolate(x, size=(rows, cols), mode="bilinear", align_corners=False)
    x = (x - torch.tensor(encoder.mean)[:, None, None]) / torch.tensor(encoder.std)[:, None, None]
    for i in range(rows // 8):
        for j in range(cols // 8):
            patch = x[0, :, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8]
            torch.testing.assert_close(features[i, j], patch.mean(dim=(1, 2)), rtol=0, atol=1e-5)


def test_a_side_that_is_a_patch_multiple_is_left_alone() -> None:
    encoder = stand_in_encoder(8)
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(encoder.mean)[:, None, None], torch.tensor(encoder.std)[:, None, None]
    assert torch.equal(vfm_pixels(x, encoder), (x - mean) / std)


# --- automatic background words -------------------------------------------------------------------
@pytest.fixture(scope="module")
def coarse_model(smoke_coarse_model) -> CLIPer:
    return smoke_coarse_model


def closeness(model: CLIPer, classes: list[str]) -> torch.Tensor:
    """Each vocabulary term's largest cosine with the classes (README "Background words")."""
    terms = list(bg.general_vocabulary())
    bank = model.encode_text(terms, [], model.cfg).fg.float()
    fg = model.encode_text(classes, [], model.cfg).fg.float()
    return (bank @ fg.T).max(dim=1).values


def closest_allowed(cosine: torch.Tensor, below: float, banned: set[str], count: int) -> list[str]:
    """The `count` terms of cosine < `below` not in `banned`, closest first, ties in order."""
    terms = bg.general_vocabulary()
    order = sorted(range(len(terms)), key=lambda i: (-float(cosine[i]), i))
    return [terms[i] for i in order if float(cosine[i]) < below and terms[i] not in banned][:count]


def test_a_term_exactly_at_the_synonym_cosine_is_left_out(coarse_model) -> None:
    classes = ["cat", "wooden spoon"]
    cosine = closeness(coarse_model, classes)
    terms = bg.general_vocabulary()
    ranked = [i for i in torch.argsort(cosine, descending=True).tolist() if terms[i] != "cat"]
    nearest = ranked[0]
    at = float(cosine[nearest])  # the threshold exactly at the nearest term's cosine
    words, _ = bg.auto_background(coarse_model, classes, coarse_model.cfg, 6, synonym_cosine=at)
    assert terms[nearest] not in words
    assert words == closest_allowed(cosine, at, {"cat"}, 6)
    # a hair above, it is the first word
    above = float(np.nextafter(np.float32(at), np.float32(2)))
    words, _ = bg.auto_background(coarse_model, classes, coarse_model.cfg, 6, above)
    assert words[0] == terms[nearest] and words == closest_allowed(cosine, above, {"cat"}, 6)


def test_every_alias_on_a_class_line_is_kept_out_of_auto_words(coarse_model) -> None:
    terms = bg.general_vocabulary()
    assert {"sofa", "dog", "cat"} <= set(terms)
    lines = ["Couch ,  SOFA", "puppy, dog"]  # aliases after the first name, any case and spacing
    cosine = closeness(coarse_model, lines)
    everything = len(terms)
    words, _ = bg.auto_background(coarse_model, lines, coarse_model.cfg, everything, 2.0)
    assert "sofa" not in words and "dog" not in words and "cat" in words
    assert words == closest_allowed(cosine, 2.0, {"sofa", "dog", "couch", "puppy"}, everything)
    vocab = bg.resolve_vocabulary(coarse_model, "Couch ,  SOFA; puppy, dog", "auto", None, 400, 2.0)
    assert vocab.classes == lines and vocab.background == words


def test_auto_defaults_are_the_documented_24_words_below_cosine_0_9(coarse_model) -> None:
    classes = ["sky"]  # the tiny random text encoder puts ~50 terms below 0.9 of it
    cosine = closeness(coarse_model, classes)
    # README "Background words": synonym_cosine 0.9, auto_words 24
    assert int((cosine < 0.9).sum()) > 25  # both defaults bite
    expected = closest_allowed(cosine, 0.9, {"sky"}, 24)
    assert len(expected) == 24
    assert bg.auto_background(coarse_model, classes, coarse_model.cfg)[0] == expected
    vocab = bg.resolve_vocabulary(coarse_model, "sky", "auto")
    assert vocab.background == expected and vocab.classes == classes
    assert "24 distractors" in vocab.notices[-1]


# --- four-channel arrays --------------------------------------------------------------------------
def rgba_of(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """`rgb` with an alpha channel of random values (0 and 255 included)."""
    alpha = np.random.default_rng(seed).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    alpha[0, 0], alpha[-1, -1] = 0, 255
    return np.dstack([rgb, alpha])


def test_rgba_arrays_and_images_drop_alpha(cat_image) -> None:
    rgba = rgba_of(cat_image)
    assert rgb_array(rgba).shape == cat_image.shape
    assert np.array_equal(rgb_array(rgba), cat_image)
    assert np.array_equal(rgb_array(Image.fromarray(rgba, "RGBA")), cat_image)


@pytest.fixture(scope="module")
def sd_model(smoke_variant) -> CLIPer:
    return smoke_variant(sliding_crop_size=0)


def test_segment_of_an_rgba_array_is_the_segment_of_its_rgb(sd_model, cat_image) -> None:
    text = sd_model.encode_text(["cat", "sofa", "wall"])
    rgba = rgba_of(cat_image)
    expected = sd_model.segment(cat_image, given={"text": text})
    for image in (rgba, Image.fromarray(rgba, "RGBA")):
        ours = sd_model.segment(image, given={"text": text})  # streamed SFSA: SD and CLIP halves
        assert torch.equal(ours.coarse, expected.coarse)
        assert torch.equal(ours.refined, expected.refined)
        assert torch.equal(ours.labels, expected.labels)
    other = np.ascontiguousarray(cat_image[::-1])
    batched = segment_batch(sd_model, [rgba, rgba_of(other, 1)], text)
    assert all(
        torch.equal(a, b)
        for a, b in zip(batched, segment_batch(sd_model, [cat_image, other], text), strict=True)
    )


def test_vfm_features_of_an_rgba_array_are_those_of_its_rgb(cat_image) -> None:
    encoder = stand_in_encoder(8)
    small = cat_image[:45, :70].copy()
    assert torch.equal(
        refinement_features(encoder, rgba_of(small)), refinement_features(encoder, small)
    )


def test_the_sd_extractor_takes_an_rgba_array_like_segment(sd_model, cat_image) -> None:
    small = cat_image[:64, :96]
    assert torch.equal(sd_model.sd(rgba_of(small)), sd_model.sd(small))


# --- the empty-prompt cache key -------------------------------------------------------------------
class Computations:
    """compute() for cached_empty_embedding that records each call and returns a new value."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return torch.full((1, 77, 4), float(self.calls))


TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 1000}


@pytest.mark.parametrize(
    "change",
    [
        {"hidden_size": 64},
        {"num_hidden_layers": 3},
        {"vocab_size": 1001},
    ],
)
def test_another_text_config_misses_the_cache(tmp_path, change) -> None:
    cache, compute = TensorCache(tmp_path), Computations()
    first = cached_empty_embedding(random_identity("random-seed-0", TEXT), compute, cache)
    other = cached_empty_embedding(
        random_identity("random-seed-0", {**TEXT, **change}), compute, cache
    )
    assert compute.calls == 2 and not torch.equal(first, other)
    again = cached_empty_embedding(random_identity("random-seed-0", dict(TEXT)), compute, cache)
    assert compute.calls == 2 and torch.equal(again, first)  # the same config: a hit


def test_another_library_version_or_seed_misses_the_cache(tmp_path, monkeypatch) -> None:
    import transformers

    cache, compute = TensorCache(tmp_path), Computations()
    cached_empty_embedding(random_identity("random-seed-0", TEXT), compute, cache)
    cached_empty_embedding(random_identity("random-seed-1", TEXT), compute, cache)
    assert compute.calls == 2
    for module in (torch, transformers):
        with monkeypatch.context() as patch:
            patch.setattr(module, "__version__", "0.0.0-other")
            cached_empty_embedding(random_identity("random-seed-0", TEXT), compute, cache)
    assert compute.calls == 4


def hub_snapshot(root: Path, revision: str, blobs: dict[str, str]) -> Path:
    """A hub-cache snapshot whose text_encoder/ and tokenizer/ files link to blobs/<name>."""
    snapshot = root / "snapshots" / revision
    for name, blob in blobs.items():
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "blobs" / blob, link.parent))
    return snapshot


def test_a_re_pointed_hub_blob_misses_the_cache_and_a_moved_snapshot_hits(tmp_path) -> None:
    root = tmp_path / "models--org--sd"
    (root / "blobs").mkdir(parents=True)
    for blob, byte in (("aaa1", b"A"), ("bbb2", b"B"), ("ccc3", b"C")):
        (root / "blobs" / blob).write_bytes(byte * 64)  # same size,
        os.utime(root / "blobs" / blob, ns=(10**18, 10**18))  # same modification time
    files = {"text_encoder/model.safetensors": "aaa1", "tokenizer/vocab.json": "ccc3"}
    snapshot = hub_snapshot(root, "r1", files)
    cache, compute = TensorCache(tmp_path / "cache"), Computations()
    first = cached_empty_embedding(folder_identity(snapshot), compute, cache)
    # another snapshot folder holding the same blobs: the same weights, a hit
    moved = hub_snapshot(root, "r2", files)
    assert torch.equal(cached_empty_embedding(folder_identity(moved), compute, cache), first)
    assert compute.calls == 1
    # the same file name re-pointed to another blob (same size and time): other weights, a miss
    link = snapshot / "text_encoder" / "model.safetensors"
    link.unlink()
    link.symlink_to(os.path.relpath(root / "blobs" / "bbb2", link.parent))
    other = cached_empty_embedding(folder_identity(snapshot), compute, cache)
    assert compute.calls == 2 and not torch.equal(other, first)


def test_a_re_pointed_text_encoder_blob_loads_its_own_embedding(tmp_path, monkeypatch) -> None:
    """End to end through load_sd_components: a hub cache whose text encoder blob is swapped for
    other weights of the same size gives those weights' embedding, not the cached one."""
    import huggingface_hub.constants

    from cliper_lib.config import CLIPerConfig
    from cliper_lib.weights.sd import build_random_sd_components, load_sd_components, save_sd_folder

    monkeypatch.setenv("CLIPER_CACHE", str(tmp_path / "cache"))
    entry = tmp_path / "hub" / "models--cliper-tests--swapped-sd"
    commit = "c" * 40
    snapshot = save_sd_folder(build_random_sd_components(seed=0), entry / "snapshots" / commit)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    weights = snapshot / "text_encoder" / "model.safetensors"
    (entry / "blobs").mkdir()
    for name, seed in (("blob-seed-0", 0), ("blob-seed-1", 1)):
        components = build_random_sd_components(seed=seed)
        components.text_encoder.save_pretrained(tmp_path / name)
        (tmp_path / name / "model.safetensors").rename(entry / "blobs" / name)
    assert (entry / "blobs" / "blob-seed-0").stat().st_size == (
        entry / "blobs" / "blob-seed-1"
    ).stat().st_size
    weights.unlink()
    weights.symlink_to(os.path.relpath(entry / "blobs" / "blob-seed-0", weights.parent))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = CLIPerConfig(profile="paper", sd_repo="cliper-tests/swapped-sd", sd_image_size=256)
    seed0, seed1 = (build_random_sd_components(seed=s) for s in (0, 1))
    first = load_sd_components(cfg).empty_embedding
    assert torch.equal(first, encode_empty_prompt(seed0.tokenizer, seed0.text_encoder))
    weights.unlink()
    weights.symlink_to(os.path.relpath(entry / "blobs" / "blob-seed-1", weights.parent))
    swapped = load_sd_components(cfg).empty_embedding
    assert torch.equal(swapped, encode_empty_prompt(seed1.tokenizer, seed1.text_encoder))
    assert sd_prompt.hub_snapshot_folder("cliper-tests/swapped-sd") == snapshot
