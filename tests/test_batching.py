"""Batched evaluation (B images per CLIP walk, VAE encode and UNet pass) equals batch 1 (tiny
models, CPU)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from cliper_lib import CLIPer
from cliper_lib.config import CLIPerConfig
from cliper_lib.eval.batching import batched_clip_features, refine_batch, segment_batch
from cliper_lib.eval.loop import evaluate
from cliper_lib.eval.runner import run_eval
from cliper_lib.eval.synthetic import SyntheticDataset
from cliper_lib.method.refinements import refinement_in_effect
from cliper_lib.suite.cli.arguments import add_eval_arguments


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def refine_one(model: CLIPer, cfg: CLIPerConfig, coarse: torch.Tensor, source) -> torch.Tensor:
    """S_f of one image by the refinement in effect, from its source stage's output (head maps)."""
    return refinement_in_effect(model, cfg).one(model, cfg, coarse, source)


@pytest.fixture(scope="module")
def model(smoke_variant) -> CLIPer:
    return smoke_variant(sliding_crop_size=112, sliding_stride=64)


@pytest.fixture(scope="module")
def images(cat_image):
    """Two images of one CLIP input shape (one walk), one of another (its own walk), one square."""
    flipped = np.ascontiguousarray(cat_image[:, ::-1])
    return [
        cat_image,
        cat_image[40:260, 100:400].copy(),
        flipped,
        np.full((150, 150, 3), 90, np.uint8),
    ]


def test_batch_equals_one_at_a_time(model, images) -> None:
    text = model.encode_text(["cat", "sofa", "wall"])
    features = batched_clip_features(model, images, model.cfg)
    assert features[0].walk.attentions[0].shape[0] == 1 and features[0].crop_walk is not None
    given = {"text": text}
    singles = [model.run(image, given=given, until=("coarse", "sd_attention")) for image in images]
    for one, batched in zip(singles, features, strict=True):
        torch.testing.assert_close(
            batched.walk.output, one["clip_walk"].walk.output, rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            batched.crop_walk.output, one["clip_walk"].crop_walk.output, rtol=1e-5, atol=1e-5
        )
    coarse = [run.coarse for run in singles]
    refined = refine_batch(model, images, coarse, model.cfg)  # one UNet pass for all four
    for run, ours in zip(singles, refined, strict=True):
        expected = refine_one(model, model.cfg, run.coarse, run["sd_attention"])
        assert relative_error(ours, expected) < 1e-5
    labels = segment_batch(model, images, text)
    for image, ours in zip(images, labels, strict=True):
        reference = model.segment(image, given=given).labels
        assert ours.shape == reference.shape == image.shape[:2]
        assert (ours == reference).float().mean() > 0.999  # ties aside, the same labels


@pytest.mark.parametrize("variant", ["mean", "none"])
def test_other_refinements_batch_too(model, images, variant) -> None:
    cfg = model.cfg.replace(refinement=variant)
    coarse = [
        model.run(image, until="coarse", cfg=cfg, classes=["cat", "sofa"]).coarse
        for image in images[:2]
    ]
    refined = refine_batch(model, images[:2], coarse, cfg)
    for image, c, ours in zip(images[:2], coarse, refined, strict=True):
        maps = None if variant == "none" else model.sd(image, cfg)
        assert relative_error(ours, refine_one(model, cfg, c, maps)) < 1e-5


def test_bfloat16_batch_equals_bfloat16_one_at_a_time(images) -> None:
    # its own build: bfloat16 weights are other models than the session's float32 ones
    cfg = CLIPerConfig.from_preset(
        "vit-b-16/voc21", profile="smoke", device="cpu", dtype="bfloat16", sliding_crop_size=0
    )
    low = CLIPer.from_config(cfg, text_cache_dir=False)
    text = low.encode_text(["cat", "sofa"])
    coarse = [low.run(image, given={"text": text}, until="coarse").coarse for image in images[:2]]
    refined = refine_batch(low, images[:2], coarse, cfg)
    for image, c, ours in zip(images[:2], coarse, refined, strict=True):
        expected = refine_one(low, cfg, c, low.sd(image, cfg))
        assert relative_error(ours, expected) < 2e-2  # bfloat16: 8 bits of mantissa


def test_evaluate_in_batches_equals_one_by_one() -> None:
    dataset = SyntheticDataset(7, classes="voc21", size=(40, 48), seed=0)

    def rule(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((image[..., 0].astype(np.int64) // 40) % 21)

    calls = []

    def many(batch: list[np.ndarray]) -> list[torch.Tensor]:
        calls.append(len(batch))
        return [rule(image) for image in batch]

    one = evaluate(rule, dataset, 21, [255], progress=False)
    batched = evaluate(rule, dataset, 21, [255], progress=False, batch_size=3, segment_many=many)
    assert calls == [3, 3, 1] and batched.names == one.names
    assert torch.equal(batched.confusion.matrix, one.confusion.matrix)
    with pytest.raises(ValueError, match="segment_many"):
        evaluate(rule, dataset, 21, [255], progress=False, batch_size=2)


def test_cli_batch_size_gives_the_batch_one_metrics(tmp_path) -> None:
    """The same confusion matrix, count for count. Without min-max normalisation: the smoke models'
    refined maps are nearly flat, so scaling each to [0, 1] turns batching's float rounding (4e-7
    relative, within test_batch_equals_one_at_a_time's 1e-5) into label flips (0.7 % of pixels
    measured on an AMX Xeon, under 0.2 % on an earlier CPU); argmax of the maps themselves does
    not."""
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    results = {}
    for batch in (1, 3):
        out = tmp_path / f"b{batch}.json"
        args = parser.parse_args(
            [
                "--profile",
                "smoke",
                "--dataset",
                "synthetic",
                "--limit",
                "4",
                "--no-progress",
                "--synthetic-size",
                "64",
                "--device",
                "cpu",
                "--batch-size",
                str(batch),
                "--set",
                "is_normalize=false",
                "--out",
                str(out),
            ]
        )
        assert run_eval(args) == 0
        results[batch] = json.loads(out.read_text())
    one, three = (np.array(results[b]["confusion_matrix"]) for b in (1, 3))
    assert one.sum() == three.sum() > 0
    assert np.array_equal(three, one)
    bad = parser.parse_args(
        [
            "--profile",
            "smoke",
            "--dataset",
            "synthetic",
            "--limit",
            "1",
            "--batch-size",
            "0",
            "--out",
            str(tmp_path / "bad.json"),
        ]
    )
    assert run_eval(bad) == 2 and not (tmp_path / "bad.json").exists()
