"""The explorer drives the pipeline through a stage cache:
each control recomputes exactly its stages."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")

from cliper_lib import CLIPer  # noqa: E402
from cliper_lib.eval.metrics import ConfusionMatrix  # noqa: E402
from cliper_lib.eval.synthetic import SyntheticDataset  # noqa: E402
from cliper_lib.method.stages import STAGES  # noqa: E402
from cliper_lib.suite.explorer.moves import INVALIDATES  # noqa: E402
from cliper_lib.suite.explorer.widgets import Explorer  # noqa: E402
from cliper_lib.suite.studies.layer_sweep import (  # noqa: E402
    coarse_prediction,
    layer_ranges,
    sweep_fused_layer_ranges,
)
from cliper_lib.suite.toolkit.stage_cache import StageCache  # noqa: E402

CLASSES = "red disc; blue box; green triangle"
BACKGROUND = ["ground", "sky"]
AFTER_TEXT = {"text", "layer_maps", "coarse", "refine", "labels"}
AFTER_FUSION = {"fusion", "layer_maps", "coarse", "refine", "labels"}


@pytest.fixture(scope="module")
def model(smoke_variant) -> CLIPer:
    """Smoke models at a small size (CLIP input 160 px, two sliding crops; SD at 128 px); the full
    method, SD too. The text cache is shared by the explorer and `segment`: each class set is
    encoded once."""
    built = smoke_variant(
        size=160,
        sliding_crop_size=96,
        sliding_stride=64,
        sd_image_size=128,
        score_threshold=0.0,
        bkg_thre=0.1,
    )
    assert built.sd is not None  # the SD half is a hard dependency: never test the CLIP half alone
    return built


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    data = SyntheticDataset(num_images=2, classes=3, size=(64, 96), seed=1)
    return {sample.name: sample.image for sample in data}


def make_explorer(model, images, **kwargs) -> Explorer:
    return Explorer(
        model, images=images, classes=CLASSES, background=BACKGROUND, raise_errors=True, **kwargs
    )


def stages(record) -> set[str]:
    return set(record["recomputed"])


def test_each_control_recomputes_exactly_its_stages(model, images):
    ex = make_explorer(model, images)
    has_sd = model.sd is not None
    vfm_stages = {
        "proxy",
        "vfm",
    }  # they run only for last_layer_attention=proxy / a DINO refinement
    first = (set(STAGES) if has_sd else set(STAGES) - {"sd_attention"}) - vfm_stages
    assert stages(ex.history[-1]) == first
    top = model.clip.num_layers - 2

    assert stages(ex.apply("score_threshold", 0.05)) == {"labels"}
    assert stages(ex.apply("bkg_thre", 0.2)) == {"labels"}
    assert stages(ex.apply("is_normalize", not ex.controls["is_normalize"].value)) == {"labels"}
    assert stages(ex.apply("fuse_layers", (1, top))) == AFTER_FUSION
    assert stages(ex.apply("classes", "red disc; blue box")) == AFTER_TEXT
    assert stages(ex.apply("background", "ground")) == AFTER_TEXT
    assert stages(ex.apply("select_layer", -2)) == {"coarse", "refine", "labels"}
    assert stages(ex.apply("attention_thr", 0.3)) == {"coarse", "refine", "labels"}
    if has_sd:
        assert stages(ex.apply("refinement", "mean")) == {"refine", "labels"}
        assert stages(ex.apply("selection_head", 1)) == set()  # only read by refinement=selection
        assert stages(ex.apply("refinement", "selection")) == {"refine", "labels"}
        assert stages(ex.apply("selection_head", 0)) == {"refine", "labels"}
    # settings seen before are cache hits, and the map panel recomputes nothing
    # going back to the first layer range reuses its fusion (the text changed since,
    # so the maps are new)
    assert stages(ex.apply("fuse_layers", (0, top))) == AFTER_FUSION - {"fusion"}
    assert stages(ex.apply("score_threshold", 0.3)) == {"labels"}
    assert stages(ex.apply("score_threshold", 0.05)) == set()
    other = [c for c in ex.state.classes if c != ex.controls["map_class"].value][0]
    assert stages(ex.apply("map_class", other)) == set()
    # the walk and SD ran once for the one image; the sliding window is a new walk, SD is not redone
    assert ex.cache.recomputed["clip_walk"] == 1
    assert ex.cache.recomputed["sd_attention"] == (1 if has_sd else 0)
    assert stages(ex.apply("sliding", False)) == {
        "clip_walk",
        "fusion",
        "layer_maps",
        "coarse",
        "refine",
        "labels",
    }
    assert ex.cache.recomputed["sd_attention"] == (1 if has_sd else 0)
    # a new image, the classes kept by choice, redoes the image stages but not the text
    ex.controls["keep_classes"].value = True
    typed = ex.controls["classes"].value
    new = ex.apply("image", list(images)[1])
    assert stages(new) == first - {"text"}
    assert ex.controls["classes"].value == typed
    # the documented table says the same as the measurements above
    assert set(INVALIDATES["score_threshold"]) == {"labels"}
    assert set(INVALIDATES["fuse_layers"]) == AFTER_FUSION
    assert set(INVALIDATES["classes"]) == AFTER_TEXT
    assert ex.state.error is None
    assert "recomputed" in ex.status.value


def test_explorer_matches_segment_after_moves(model, images):
    ex = make_explorer(model, images)
    top = model.clip.num_layers - 2
    for name, value in [
        ("fuse_layers", (1, top)),
        ("score_threshold", 0.1),
        ("select_layer", 0),
        ("classes", "red disc; green triangle"),
        ("attention_thr", 0.2),
    ]:
        ex.apply(name, value)
        state = ex.state
        reference = model.segment(
            images[state.image_name], classes=state.classes, background=BACKGROUND, cfg=state.cfg
        )
        assert torch.equal(torch.as_tensor(state.labels), reference.labels), name
        torch.testing.assert_close(torch.as_tensor(state.scores), reference.scores.float())
        torch.testing.assert_close(state.coarse, reference.coarse)
        torch.testing.assert_close(state.refined, reference.refined)


def test_threshold_and_classes_change_the_overlay(model, images):
    ex = make_explorer(model, images)
    ex.apply("score_threshold", 0.0)
    before_labels, before_overlay = ex.state.labels.copy(), ex.state.overlay.copy()
    assert (before_labels > 1).any(), (
        "with score_threshold 0 some pixels must get a class other than the first"
    )
    # a threshold above every score removes all classes: every pixel becomes background
    above = float(ex.state.scores.max()) + 0.01
    assert above <= 1.0, "smoke scores should stay below 1"
    record = ex.apply("score_threshold", above)
    assert stages(record) == {"labels"}
    assert (ex.state.labels == 0).all()
    assert not np.array_equal(ex.state.labels, before_labels)
    assert not np.array_equal(ex.state.overlay, before_overlay)
    np.testing.assert_array_equal(
        ex.state.overlay, images[ex.state.image_name]
    )  # background keeps the photo
    # back to 0, then other classes: the labels follow the class list
    ex.apply("score_threshold", 0.0)
    np.testing.assert_array_equal(ex.state.labels, before_labels)
    ex.apply("classes", "green triangle")
    assert set(np.unique(ex.state.labels)) <= {0, 1}
    assert ex.state.labels.shape == before_labels.shape
    assert not np.array_equal(ex.state.labels, before_labels)
    for panel in ("overlay", "maps", "scores"):  # every panel holds one PNG
        (output,) = ex.outputs[panel].outputs
        assert output["data"]["image/png"]


def test_bad_input_is_reported_and_the_last_result_kept(model, images):
    ex = Explorer(model, images=images, classes=CLASSES, background=BACKGROUND)
    labels = ex.state.labels.copy()
    ex.controls["classes"].value = " ; "
    assert ex.state.error and "class" in ex.state.error
    # in words beside the classes box (no exception name), and the status line points there
    assert "not applied" in ex.notes["classes"].value and "Error" not in ex.notes["classes"].value
    assert "beside classes" in ex.status.value
    np.testing.assert_array_equal(ex.state.labels, labels)
    ex.controls["classes"].value = "red disc"
    assert ex.state.error is None and ex.state.classes == ["red disc"]


def test_without_sd_and_with_an_uploaded_image(model, images):
    plain = CLIPer(model.cfg.replace(refinement="none"), model.clip, None, text_cache_dir=False)
    plain.text_cache = model.text_cache
    ex = make_explorer(plain, images)
    assert (
        list(ex.controls["refinement"].options) == ["none"] and ex.controls["refinement"].disabled
    )
    assert "sd_attention" not in ex.history[-1]["recomputed"]
    torch.testing.assert_close(ex.state.refined, ex.state.coarse.float())
    ex.controls["keep_classes"].value = True  # the typed classes, kept by choice
    ex.controls["upload"].value = (_upload("grey.png", np.full((48, 80, 3), 90, np.uint8)),)
    assert ex.controls["image"].value == "grey.png" and ex.state.image_name == "grey.png"
    assert ex.state.labels.shape == (48, 80)
    assert stages(ex.history[-1]) == {
        "clip_walk",
        "fusion",
        "layer_maps",
        "coarse",
        "refine",
        "labels",
    }
    assert ex.controls["upload"].value == ()  # cleared, so the same file can be uploaded again


def _upload(name: str, pixels: np.ndarray | None = None, content: bytes | None = None) -> dict:
    """What a FileUpload widget holds after a file is chosen (a PNG of `pixels`, or `content`)."""
    from PIL import Image

    if content is None:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        content = buffer.getvalue()
    return {
        "name": name,
        "type": "application/octet-stream",
        "size": len(content),
        "content": memoryview(content),
        "last_modified": datetime.now(UTC),
    }


def test_uploads_as_people_give_them(model, images):
    """A new photo opens with the default classes; a transparent PNG is put on white; a file that
    is not an image says so beside the upload button and keeps the last result."""
    ex = make_explorer(model, images)
    from cliper_lib.vocab import read_class_file

    preset_classes = "; ".join(read_class_file(model.cfg.classes).names)
    rgba = np.zeros((40, 64, 4), np.uint8)
    rgba[:, :32] = (200, 30, 30, 255)  # opaque red left half
    rgba[:, 32:] = (0, 0, 0, 0)  # transparent right half: white, not black
    rgba[:20, 32:] = (0, 0, 255, 128)  # half-transparent blue: blended with white
    ex.controls["upload"].value = (_upload("clear.png", rgba),)
    assert ex.controls["classes"].value == preset_classes and ex.state.error is None
    shown = ex.image_array("clear.png")
    assert (shown[:, :32] == (200, 30, 30)).all() and (shown[20:, 32:] == 255).all()
    expected_blue = np.rint(np.array([0, 0, 255]) * 128 / 255 + 255 * (1 - 128 / 255))
    assert (shown[:20, 32:] == expected_blue).all()
    # an opaque file is read exactly as the command line reads it
    plain = np.random.default_rng(3).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    ex.controls["upload"].value = (_upload("noise.png", plain),)
    np.testing.assert_array_equal(ex.image_array("noise.png"), plain)
    labels = ex.state.labels.copy()
    ex.controls["upload"].value = (_upload("notes.txt", content=b"not a photo at all"),)
    note = ex.notes["upload"].value
    assert "notes.txt is not a photo" in note and "Error" not in note
    assert (
        ex.controls["image"].value == "noise.png"
        and "notes.txt" not in ex.controls["image"].options
    )
    np.testing.assert_array_equal(ex.state.labels, labels)


def test_the_controls_are_disabled_while_a_result_is_computed(model, images):
    """During a computation every control is off and the status says so; other explorers on the
    same model wait their turn and say that they wait."""
    import threading

    lock = threading.Lock()
    ex = make_explorer(model, images, compute_lock=lock)
    seen = {}
    real_run = ex.cache.run

    def watching_run(*args, **kwargs):
        seen["disabled"] = {n: w.disabled for n, w in ex.controls.items()}
        seen["status"] = ex.status.value
        seen["busy"] = "cliper-busy" in ex.widget._dom_classes
        return real_run(*args, **kwargs)

    ex.cache.run = watching_run
    before = {n: w.disabled for n, w in ex.controls.items()}
    ex.apply("score_threshold", 0.2)
    assert all(seen["disabled"].values()) and seen["busy"]
    assert "computing" in seen["status"] and "cliper-busy-bar" in seen["status"]
    # afterwards each control is as it was (selection_head stays off unless 'selection')
    assert {n: w.disabled for n, w in ex.controls.items()} == before
    assert "cliper-busy" not in ex.widget._dom_classes and "found" in ex.status.value
    # another visitor holds the model: this one waits, and says so
    lock.acquire()
    waiter = threading.Thread(target=ex.apply, args=("score_threshold", 0.3))
    waiter.start()
    deadline = time.monotonic() + 30
    while "waiting" not in ex.status.value and time.monotonic() < deadline:
        waiter.join(0.05)
    assert "another visitor" in ex.status.value and waiter.is_alive()
    lock.release()
    waiter.join(60)
    assert not waiter.is_alive() and ex.state.cfg.score_threshold == 0.3


def test_sweep_walks_each_image_once_and_scores_like_a_direct_count(model):
    data = SyntheticDataset(num_images=2, classes=3, size=(64, 96), seed=2)
    cfg = model.cfg.replace(refinement="none")
    cache = StageCache(model)
    ranges = layer_ranges(model.clip.num_layers)
    assert ranges[0] == (0, 0) and ranges[-1] == (model.clip.num_layers - 2,) * 2
    rows = sweep_fused_layer_ranges(
        model, data, ranges, background=BACKGROUND, cfg=cfg, cache=cache, progress=False
    )
    assert [(r["first"], r["last"]) for r in rows] == ranges
    assert cache.recomputed["clip_walk"] == len(data)  # walks reused across ranges
    assert cache.recomputed["fusion"] == len(data) * len(ranges)
    assert cache.recomputed["text"] == 1 and cache.recomputed["sd_attention"] == 0
    assert all(0.0 <= r["miou"] <= 1.0 and r["walks"] == len(data) for r in rows)
    # reference: the same proxy from `segment`, for the full range
    full = ConfusionMatrix(len(data.classes) + 1, ignore_labels=[0, *cfg.ignore_labels])
    for sample in data:
        result = model.segment(
            sample.image,
            classes=data.classes,
            background=BACKGROUND,
            cfg=cfg.replace(fuse_layers=None),
        )
        full.update(sample.mask, coarse_prediction(result.coarse, sample.mask.shape).numpy())
    row = rows[ranges.index((0, model.clip.num_layers - 2))]
    assert row["miou"] == pytest.approx(full.miou())
    with pytest.raises(Exception, match="fuse_layers"):
        sweep_fused_layer_ranges(
            model, data, [(0, model.clip.num_layers - 1)], cfg=cfg, progress=False
        )
