"""The explorer's reset and export: four files, and a config YAML that `cliper segment` reproduces
the labels with."""

from __future__ import annotations

import json
import shlex

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


def test_export_writes_four_files_that_reproduce_the_labels(model, tmp_path, monkeypatch):
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
    assert sorted(paths) == ["config", "labels", "overlay", "scores"] and all(
        p.exists() for p in paths.values()
    )
    np.testing.assert_array_equal(load_label_png(paths["labels"]), ex.state.labels)
    record = json.loads(paths["scores"].read_text())
    assert list(record["scores"]) == ex.state.classes
    assert record["scores"]["cat"] == pytest.approx(float(ex.state.scores[0]), abs=1e-6)
    config = yaml.safe_load(paths["config"].read_text())
    assert config["fuse_layers"] == [1, model.clip.num_layers - 2] and config["bkg_thre"] == 0.3
    # the command written into the YAML recomputes the same labels from a fresh model
    command = shlex.split(record["reproduce"])
    assert command[:2] == ["cliper", "segment"] and command[2] == str(
        sample_images()["chelsea.jpg"].resolve()
    )
    out = tmp_path / "again"
    assert main([*command[1 : command.index("--out")], "--out", str(out), "--quiet"]) == 0
    np.testing.assert_array_equal(load_label_png(out / "chelsea_labels.png"), ex.state.labels)
    # the export button shows download links for the four files
    ex.buttons["export"].click()
    assert ex.exported.value.count("cliper-download") == 4


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
