"""One dispatch per refinement: every kind is registered once, and its batched path (cliper eval
--batch-size B) gives what segmenting one image at a time gives, on the smoke models (CPU)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cliper_lib import CLIPer
from cliper_lib.config import REFINEMENTS as CONFIG_REFINEMENTS
from cliper_lib.config import SD_REFINEMENTS, VFM_REFINEMENTS
from cliper_lib.eval.batching import refine_batch, segment_batch
from cliper_lib.eval.loop import evaluate
from cliper_lib.eval.synthetic import SyntheticDataset
from cliper_lib.method import refinements
from cliper_lib.method.refinements import REFINEMENTS, refinement_in_effect

CLASSES = ["red disc", "blue box", "green triangle"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@pytest.fixture(scope="module")
def model(smoke_variant) -> CLIPer:
    """Smoke models with SD loaded and every VFM available (built on first use)."""
    return smoke_variant(
        size=128,
        sliding_crop_size=96,
        sliding_stride=64,
        score_threshold=0.0,
        bkg_thre=0.1,
        # random SD maps smooth S_f almost flat, and min-max normalisation would blow float rounding
        # up to whole labels: compare the score-scaled maps as they are
        is_normalize=False,
    )


@pytest.fixture(scope="module")
def dataset() -> SyntheticDataset:
    return SyntheticDataset(num_images=3, classes=3, size=(96, 128), seed=11)


def test_the_registry_holds_exactly_the_configurable_refinements() -> None:
    assert set(REFINEMENTS) == set(CONFIG_REFINEMENTS)
    for name, kind in REFINEMENTS.items():
        assert kind.name == name
        assert kind.source in (None, "sd_attention", "vfm")
        assert (kind.part is None) == (kind.source is None)
        # the config's name lists (read where torch is not loaded: the app's first paint, the
        # weights inventory) agree with the parts the registry says each kind needs
        assert (kind.part == "sd") == (name in SD_REFINEMENTS)
        assert (kind.part == "vfm") == (name in VFM_REFINEMENTS)


@pytest.mark.parametrize("name", sorted(REFINEMENTS))
def test_every_registered_refinement_has_a_batched_path(name) -> None:
    assert callable(REFINEMENTS[name].batch), f"refinement {name!r} has no batched path"


def test_a_kind_without_a_batched_path_is_refused_by_batched_evaluation(model, monkeypatch):
    bare = replace(REFINEMENTS["mean"], batch=None)
    monkeypatch.setitem(REFINEMENTS, "mean", bare)
    with pytest.raises(ValueError, match="'mean' has no batched path"):
        refine_batch(model, [], [], model.cfg.replace(refinement="mean"))


def test_a_refinement_whose_part_is_missing_runs_as_none(model) -> None:
    bare = CLIPer(model.cfg, model.clip, sd=None, text_cache_dir=False, vfm=None)
    for name in REFINEMENTS:
        kind = refinement_in_effect(bare, model.cfg.replace(refinement=name))
        assert kind.name == "none"
    assert refinement_in_effect(model, model.cfg.replace(refinement="dino-s8")).name == "dino-s8"


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered already"):
        refinements.register(REFINEMENTS["none"])


@pytest.mark.parametrize("name", sorted(REFINEMENTS))
def test_batched_refinement_equals_one_image_at_a_time(model, dataset, name) -> None:
    """Each kind's batched path against `segment` image by image: S_f to float rounding, labels
    equal but for ties, and the evaluation's confusion matrix the same but for those pixels."""
    cfg = model.cfg.replace(refinement=name)
    text = model.encode_text(CLASSES, [])
    images = [dataset[i].image for i in range(len(dataset))]
    singles = [model.run(image, cfg=cfg, given={"text": text}) for image in images]
    coarse = [run.coarse for run in singles]
    for run, batched in zip(singles, refine_batch(model, images, coarse, cfg), strict=True):
        assert batched.shape == run.refined.shape
        assert relative_error(batched, run.refined) < 1e-5, name
    labels = segment_batch(model, images, text, cfg)
    for run, batched in zip(singles, labels, strict=True):
        assert (batched == run.labels).float().mean() > 0.999, name

    def one_at_a_time(image: np.ndarray) -> torch.Tensor:
        return model.segment(image, cfg=cfg, given={"text": text}).labels

    def many(images: list[np.ndarray]) -> list[torch.Tensor]:
        return segment_batch(model, images, text, cfg)

    common = dict(num_classes=4, ignore_labels=[255], progress=False, prefetch=0)
    single = evaluate(one_at_a_time, dataset, **common)
    batch = evaluate(one_at_a_time, dataset, **common, batch_size=3, segment_many=many)
    differing = (single.confusion.matrix - batch.confusion.matrix).abs().sum() / 2
    assert differing <= 0.001 * single.confusion.matrix.sum(), name


@pytest.mark.parametrize("name", ["sfsa", "mean"])
def test_given_head_maps_are_used_and_what_they_need_never_runs(model, dataset, name) -> None:
    """Head maps the caller hands in replace the SD stages, streamed SFSA included: no VAE encode,
    no UNet pass, and other maps give another S_f."""
    cfg = model.cfg.replace(refinement=name)
    image = dataset[0].image
    full = model.run(image, CLASSES, cfg=cfg)
    given = model.segment(image, CLASSES, cfg=cfg, given={"sd_attention": full.head_maps})
    assert not {"sd_latents", "sd_attention"} & set(given.timings)
    assert torch.equal(given.refined, full.refined)
    uniform = torch.full_like(full.head_maps, 1.0 / full.head_maps.shape[-1])
    other = model.segment(image, CLASSES, cfg=cfg, given={"sd_attention": uniform})
    assert not torch.equal(other.refined, full.refined)
