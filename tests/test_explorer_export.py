"""The explorer's reset and export: four files, and a config YAML that `cliper segment` reproduces
the labels with."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil

import numpy as np
import pytest
import yaml

pytest.importorskip("ipywidgets")

from cliper_lib import CLIPer  # noqa: E402
from cliper_lib.suite.cli.commands import main  # noqa: E402
from cliper_lib.suite.explorer.widgets import Explorer  # noqa: E402
from cliper_lib.suite.toolkit.samples import sample_images  # noqa: E402
from cliper_lib.suite.toolkit.viz import load_label_png  # noqa: E402


@pytest.fixture(scope="module")
def model(smoke_variant) -> CLIPer:
    return smoke_variant(size=128, sliding_crop_size=0, refinement="none", score_threshold=0.0)


def test_export_writes_a_folder_that_reproduces_the_labels_elsewhere(model, tmp_path, monkeypatch):
    ex = Explorer(
        model,
        image="chelsea.jpg",
        classes="cat; sofa; wall; cat",
        raise_errors=True,
        export_dir=tmp_path / "app",
    )
    # the duplicate is merged and 'wall' left the preset's background words,
    # both said in the status line
    assert ex.state.classes == ["cat", "sofa", "wall"] and "wall" not in ex.state.background
    assert "duplicate" in ex.status.value and "removed from the background" in ex.status.value
    ex.apply("fuse_layers", (1, model.clip.num_layers - 2))
    ex.apply("bkg_thre", 0.3)
    paths = ex.export()
    assert sorted(paths) == ["config", "labels", "overlay", "photo", "scores"]
    folder = paths["labels"].parent
    assert folder.parent == tmp_path / "app" and folder.name.endswith("-chelsea")
    assert {p.name for p in folder.iterdir()} == {p.name for p in paths.values()}
    # the photo is a copy of its file (it decodes to the same pixels), its hash recorded
    assert paths["photo"].read_bytes() == sample_images()["chelsea.jpg"].read_bytes()
    np.testing.assert_array_equal(load_label_png(paths["labels"]), ex.state.labels)
    record = json.loads(paths["scores"].read_text())
    assert record["image_sha256"] == hashlib.sha256(paths["photo"].read_bytes()).hexdigest()
    assert list(record["scores"]) == ex.state.classes
    assert record["scores"]["cat"] == pytest.approx(float(ex.state.scores[0]), abs=1e-6)
    config = yaml.safe_load(paths["config"].read_text())
    assert config["fuse_layers"] == [1, model.clip.num_layers - 2] and config["bkg_thre"] == 0.3
    # a second export never overwrites the first
    again = ex.export()
    assert again["labels"].parent != folder and paths["labels"].exists()
    # the command in the YAML, run in a copy of the folder elsewhere, recomputes the same labels
    header = paths["config"].read_text().splitlines()[2]
    command = shlex.split(header.lstrip("# "))
    assert command[:3] == ["cliper", "segment", "chelsea.jpg"]
    elsewhere = tmp_path / "another-machine"
    shutil.copytree(folder, elsewhere)
    monkeypatch.chdir(elsewhere)
    assert main([*command[1:], "--quiet"]) == 0
    out = elsewhere / command[command.index("--out") + 1]
    np.testing.assert_array_equal(load_label_png(out / "chelsea_labels.png"), ex.state.labels)
    # the export button shows download links for the five files
    ex.buttons["export"].click()
    assert ex.exported.value.count("cliper-download") == 5


def test_an_uploaded_photo_is_saved_as_its_pixels(model, tmp_path):
    """A photo without a file of its own (uploaded, composited on white) is saved losslessly."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    ex = Explorer(
        model,
        images={"mine.png": pixels},
        classes="cat; dog",
        raise_errors=True,
        export_dir=tmp_path,
        link_of=lambda path: f"/files/{path.name}",
    )
    paths = ex.export()
    assert paths["photo"].name == "mine.png"
    np.testing.assert_array_equal(np.asarray(Image.open(paths["photo"])), pixels)
    ex.buttons["export"].click()
    links = ex.exported.value
    assert "href='/files/mine_labels.png'" in links and "data:" not in links


def test_reset_returns_to_the_opening_state(model):
    ex = Explorer(model, image="coffee.jpg", raise_errors=True)
    opening = ex.state.labels.copy(), ex.current_config()
    ex.apply("classes", "cup")
    ex.apply("score_threshold", 0.5)
    ex.apply("fuse_layers", (2, 3))
    record = ex.reset()
    assert record["control"] == "reset" and record["recomputed"] == {}  # all cached
    np.testing.assert_array_equal(ex.state.labels, opening[0])
    assert ex.current_config() == opening[1]
    assert ex.controls["classes"].value == "coffee cup; saucer; spoon; wooden table"
