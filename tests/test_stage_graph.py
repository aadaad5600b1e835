"""The stage graph is declared once: a config field recomputes exactly the stages that declare it
(and what they feed), a cached run equals a fresh `segment`, and a stage cannot read a field it did
not declare."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch

from cliper_lib import CLIPer, CLIPerConfig
from cliper_lib.config import ConfigView, UndeclaredFieldError
from cliper_lib.eval.synthetic import SyntheticDataset
from cliper_lib.method import stages
from cliper_lib.method.pipeline import CLIPer as MethodCLIPer
from cliper_lib.method.stages import GRAPH, STAGES, downstream, invalidated_by
from cliper_lib.suite.toolkit.stage_cache import StageCache

CLASSES = ["red disc", "blue box", "green triangle"]

#: a base config in which every field has an effect: sliding window on (the stride matters),
#: refinement
#: "selection" (the head matters), sd_attention_thr unset (attention_thr reaches the SD threshold),
#: sd_image_size
#: unset (the profile picks the SD side), all blocks fused, scores low enough for labels to appear.
BASE = CLIPerConfig.from_preset(
    "vit-b-16/voc21",
    profile="smoke",
    device="cpu",
    size=160,
    sliding_crop_size=96,
    sliding_stride=64,
    refinement="selection",
    selection_head=1,
    score_threshold=0.0,
    bkg_thre=0.1,
)

#: one other value for every config field, chosen so that its effective value changes.
ALTERNATIVES = {
    "profile": "paper",
    "backbone": "ViT-L-14",
    "pretrained": "laion2b_s32b_b79k",
    "quick_gelu": False,
    "sd_repo": "someone/another-sd-mirror",
    "device": "auto",
    "dtype": "bfloat16",
    "sd_dtype": "bfloat16",
    "seed": 7,
    "dataset": "ade20k",
    "classes": "context60",
    "templates": "openai",
    "ignore_labels": [0, 255],
    "size": 128,
    "fuse_layers": [1, 2],
    "normalization_rounds": 2,
    "last_layer_attention": "vanilla",
    "select_layer": -2,
    "logit_scale": 50.0,
    "attention_thr": 0.3,
    "sliding_crop_size": 0,
    "sliding_stride": 48,
    "refinement": "dino-s16",
    "selection_head": 0,
    "sd_attention_thr": 0.25,
    "sd_layers": ["up_blocks.3.attentions.0"],
    "sd_timestep_index": 30,
    "sd_num_steps": 60,
    "sd_image_size": 128,
    "sd_resize": "bilinear",
    "score_threshold": 0.2,
    "bkg_thre": 0.3,
    "is_normalize": False,
    "preset": "my-own",
    "paper_miou": 12.5,
    "paper_miou_no_fgc": 10.0,
    "proxy_model": "dino-s16",
    "proxy_double_normalization": False,
    "proxy_half_precision": False,
    "vfm_grid_rounding": "nearest",
    "vfm_position_resize": "to-grid",
}
#: fields that matter only with the ProxyCLIP-style last layer: their base is BASE with
#: last_layer_attention=proxy.
PROXY_BASE = BASE.replace(last_layer_attention="proxy")
PROXY_FIELDS = (
    "proxy_model",
    "proxy_double_normalization",
    "proxy_half_precision",
    "vfm_grid_rounding",
    "vfm_position_resize",
)
#: the stages only the VFM alternatives need (proxy attention, VFM refinement): a BASE run skips
#: them.
VFM_STAGES = {"proxy", "vfm"}


def base_of(name: str) -> CLIPerConfig:
    return PROXY_BASE if name in PROXY_FIELDS else BASE


@pytest.fixture(scope="module")
def model(smoke_variant) -> CLIPer:
    return smoke_variant(BASE)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return SyntheticDataset(num_images=1, classes=3, size=(72, 104), seed=4)[0].image


@pytest.fixture(scope="module")
def primed(model, image) -> StageCache:
    """A cache that has run BASE once (each test branches a copy of it)."""
    cache = StageCache(model)
    cache.run(image, BASE, CLASSES)
    return cache


@pytest.fixture(scope="module")
def primed_proxy(model, image, primed) -> StageCache:
    """A cache that has run BASE and PROXY_BASE once."""
    cache = primed.copy()
    cache.run(image, PROXY_BASE, CLASSES)
    return cache


def assert_same_run(out, result) -> None:
    """A cached run and a fresh `segment` agree on every intermediate, exactly (same operations,
    same order).
    """
    assert out.text.names == result.class_names and out.text.background == result.background
    assert torch.equal(out.layer_maps, result.layer_maps)
    assert torch.equal(out.coarse, result.coarse) and torch.equal(out.select_map, result.select_map)
    assert torch.equal(out.refined, result.refined)
    assert torch.equal(out.scores, result.scores) and torch.equal(out.maps, result.maps)
    assert torch.equal(out.labels.cpu(), result.labels)


def test_every_config_field_has_an_alternative_that_matters():
    assert set(ALTERNATIVES) == {f.name for f in fields(CLIPerConfig)}
    for name, value in ALTERNATIVES.items():
        assert getattr(base_of(name), name) != value, name


def test_declarations_name_real_fields_and_inputs():
    known = {f.name for f in fields(CLIPerConfig)}
    for i, stage in enumerate(GRAPH):
        assert set(stage.fields) <= known, stage.name
        earlier = set(STAGES[:i]) | set(stages.RUN_INPUTS)
        # the graph is in topological order
        assert set(stage.needs + stage.may_need) <= earlier, f"{stage.name} needs a later stage"
    assert downstream(["fusion"]) == ("fusion", "layer_maps", "coarse", "refine", "labels")
    assert invalidated_by("image") == (
        "clip_walk",
        "proxy",
        "fusion",
        "layer_maps",
        "coarse",
        "sd_latents",
        "sd_attention",
        "vfm",
        "refine",
        "labels",
    )
    assert invalidated_by("dataset") == () and invalidated_by("backbone") == ()


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_a_field_recomputes_exactly_the_stages_that_declare_it(
    model, image, primed, primed_proxy, name
):
    base = base_of(name)
    changed = base.replace(**{name: ALTERNATIVES[name]})
    out = (primed_proxy if base is PROXY_BASE else primed).copy().run(image, changed, CLASSES)
    declared = {stage.name for stage in GRAPH if name in stage.fields}
    # e.g. proxy feeds on clip_walk but runs only for last_layer_attention=proxy
    unused = VFM_STAGES - set(out.keys)
    assert set(out.timings) == set(downstream(declared)) - unused, (name, sorted(declared))
    fresh = MethodCLIPer(changed, model.clip, model.sd, text_cache_dir=False, vfm=model.vfm)
    fresh.text_cache = model.text_cache
    # A field SD does not declare cannot reach it (the stage's config view refuses it), so the fresh
    # run may reuse the base head maps there: the slowest stages run only for the fields they read.
    sd_stages = (stages.BY_NAME["sd_latents"], stages.BY_NAME["sd_attention"])
    given = {}
    if not any(name in stage.fields for stage in sd_stages):
        given["sd_attention"] = primed.run(image, base, CLASSES).head_maps
    assert_same_run(out, fresh.segment(image, classes=CLASSES, given=given))


def test_run_inputs_recompute_their_readers(model, image):
    cache = StageCache(model)
    first = cache.run(image, BASE, CLASSES)
    assert set(first.timings) == set(STAGES) - VFM_STAGES
    branch = cache.copy()
    assert branch.run(image, BASE, CLASSES).timings == {} and branch.recomputed["clip_walk"] == 0
    assert set(cache.run(image, BASE, CLASSES[:2]).timings) == set(invalidated_by("classes"))
    assert set(cache.run(image, BASE, CLASSES[:2], background="ground").timings) == set(
        invalidated_by("background")
    )
    other = np.ascontiguousarray(image[:, ::-1])
    assert set(cache.run(other, BASE, CLASSES).timings) == set(invalidated_by("image")) - VFM_STAGES
    assert cache.run(image, BASE, CLASSES).timings == {}  # everything seen before is a hit


def test_a_prefix_of_the_graph_computes_only_what_it_needs(model, image):
    run = model.run(image, CLASSES, until="coarse")
    assert set(run.timings) == {"text", "clip_walk", "fusion", "layer_maps", "coarse"}
    result = model.segment(image, classes=CLASSES)
    assert torch.equal(run.coarse, result.coarse)
    sd_only = model.run(image, until="sd_attention")
    assert set(sd_only.timings) == {"sd_latents", "sd_attention"}
    no_refinement = model.run(image, CLASSES, cfg=BASE.replace(refinement="none"))
    # refine needs SD only while a refinement runs
    assert not {"sd_latents", "sd_attention"} & set(no_refinement.timings)
    with pytest.raises(ValueError, match="unknown stage"):
        model.run(image, CLASSES, until="everything")


def test_the_vfm_stages_run_when_used_and_survive_threshold_moves(image, primed):
    cache = primed.copy()  # VFMs no other test here runs, so that nothing of them is cached yet
    dino = BASE.replace(refinement="dinov2-s14")
    assert set(cache.run(image, dino, CLASSES).timings) == {"vfm", "refine", "labels"}
    assert set(cache.run(image, dino.replace(attention_thr=0.3), CLASSES).timings) == {
        "coarse",
        "refine",
        "labels",
    }
    assert set(cache.run(image, dino.replace(score_threshold=0.2), CLASSES).timings) == {"labels"}
    assert set(cache.run(image, BASE.replace(refinement="sfsa"), CLASSES).timings) == {
        "refine",
        "labels",
    }
    assert cache.run(image, dino, CLASSES).timings == {}  # back to the VFM refinement: all cached
    proxy = PROXY_BASE.replace(proxy_model="dinov2-s14")
    assert set(cache.run(image, proxy, CLASSES).timings) == set(downstream(["proxy"]))
    moved = cache.run(image, proxy.replace(attention_thr=0.3), CLASSES)
    assert set(moved.timings) == {
        "coarse",
        "refine",
        "labels",
    }  # the VFM attention is not recomputed


def test_a_stage_sees_only_its_declared_fields():
    view = ConfigView(BASE, ("refinement", "attention_thr", "sd_attention_thr"), "refine")
    assert view.refinement == "selection"
    assert view.effective_sd_attention_thr == BASE.attention_thr  # properties read through the view
    with pytest.raises(UndeclaredFieldError, match="'refine' read config field 'size'"):
        _ = view.size
    partial = ConfigView(BASE, ("attention_thr",), "refine")
    with pytest.raises(UndeclaredFieldError, match="sd_attention_thr"):
        _ = partial.effective_sd_attention_thr
    with pytest.raises(AttributeError):
        view.refinement = "mean"


def test_the_documented_table_is_the_graph():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs" / "method.md"
    assert stages.describe() in docs.read_text(), (
        "docs/method.md 3.13 differs from stages.GRAPH: paste describe()"
    )


def test_the_architecture_diagram_is_the_graph():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
    assert stages.diagram() in docs.read_text(), (
        "docs/architecture.md differs from stages.GRAPH: paste stages.diagram()"
    )
