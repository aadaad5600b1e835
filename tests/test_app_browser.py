"""`cliper app --profile smoke` in a real browser (Playwright on the system Chromium).

The page loads with the controls and a result; the layer-range slider moves and the overlay
changes; the classes change; an uploaded image is segmented; export writes the four files and
`cliper segment` with the exported YAML reproduces the labels. A paper-profile app without weights
shows the CLI's message, not a traceback.
Skipped, with the reason, where Playwright or a Chromium is missing.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from cliper_lib.suite.explorer.app.drive import (
    AppDriver,
    AppServer,
    browser_unavailable,
    chromium,
    new_page,
)
from cliper_lib.suite.toolkit.viz import load_label_png

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        browser_unavailable() is not None, reason=f"no browser test: {browser_unavailable()}"
    ),
]


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def app(browser, tmp_path_factory):
    """One smoke app server and one browser page for the module; the page opened once."""
    folder = tmp_path_factory.mktemp("app")
    server = AppServer(
        ["--profile", "smoke", "--device", "cpu", "--out", str(folder / "exports")],
        log=folder / "server.log",
    )
    with server:
        driver = AppDriver(new_page(browser), server.url)
        driver.opened = driver.open()
        driver.folder = folder
        yield driver


def test_the_page_opens_in_the_presets_state(app):
    assert (
        app.opened["controls"] <= app.opened["ready"] <= app.opened["result"]
    )  # controls before the models
    # the preset vit-b-16/voc21 on the smoke models (3 blocks): all fusable blocks,
    # select layer -1, its thresholds
    lower = app.page.locator(".cliper-fuse-layers .noUi-handle-lower")
    upper = app.page.locator(".cliper-fuse-layers .noUi-handle-upper")
    assert float(lower.get_attribute("aria-valuenow")) == 0
    assert upper.get_attribute("aria-valuenow") == upper.get_attribute("aria-valuemax")
    assert app.page.locator(".cliper-score-threshold .widget-readout").inner_text() == "0.70"
    assert app.page.locator(".cliper-bkg-thre .widget-readout").inner_text() == "0.600"
    first = app.page.locator(".cliper-image select").input_value()
    assert first == "astronaut.jpg"  # the first sample, opened with its suggested classes
    assert app.page.locator(".cliper-classes input").input_value() == "person; flag; spacesuit"
    assert "present" in app.status()


def test_layer_range_slider_moves_and_the_overlay_changes(app):
    before = app.text(".cliper-fuse-layers .widget-readout")
    src = app.overlay_src()
    app.move_layer_range_start(+1)
    after = app.text(".cliper-fuse-layers .widget-readout")
    assert after != before and after.startswith("1")
    assert app.overlay_src() != src
    assert "fusion" in app.status()  # the move recomputed the fusion onward, not the walk
    assert "clip_walk" not in app.status().split("cached")[0]


def test_classes_change(app):
    app.type_text("classes", "person; rocket; rocket")
    assert app.map_classes() == ["person", "rocket"]  # the duplicate merged
    assert "duplicate" in app.status()


def test_uploaded_image_is_segmented_and_exported_reproducibly(app):
    path = app.folder / "stripes.png"
    pixels = np.zeros((72, 96, 3), np.uint8)
    pixels[:, :48] = (200, 40, 40)
    pixels[:, 48:] = (40, 40, 200)
    Image.fromarray(pixels).save(path)
    app.upload(path)
    assert app.page.locator(".cliper-image select").input_value() == "stripes.png"
    assert "clip_walk" in app.status().split("cached")[0]  # a new image: walked

    app.export()
    exports = app.folder / "exports"
    files = {p.name for p in exports.iterdir()}
    assert files == {
        "stripes_labels.png",
        "stripes_overlay.png",
        "stripes_scores.json",
        "stripes_config.yaml",
    }
    labels = load_label_png(exports / "stripes_labels.png")
    assert labels.shape == (72, 96)
    header = (exports / "stripes_config.yaml").read_text().splitlines()[1]
    command = shlex.split(header.lstrip("# "))
    assert command[:3] == ["cliper", "segment", "stripes.png"]
    config = yaml.safe_load((exports / "stripes_config.yaml").read_text())
    assert config["fuse_layers"][0] == 1 and config["profile"] == "smoke"
    out = app.folder / "again"
    argv = [
        sys.executable,
        "-m",
        "cliper_lib",
        "segment",
        str(path),
        *command[3 : command.index("--out")],
        "--out",
        str(out),
        "--quiet",
    ]
    subprocess.run(argv, check=True, timeout=600)
    np.testing.assert_array_equal(load_label_png(out / "stripes_labels.png"), labels)


def test_paper_profile_without_weights_shows_the_cli_message(browser, tmp_path):
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "empty-hub"),
        "HF_HOME": str(tmp_path / "hf"),
    }
    with AppServer(
        ["--profile", "paper", "--device", "cpu"], env=env, log=tmp_path / "server.log"
    ) as server:
        page = new_page(browser)
        page.goto(server.url, timeout=180_000)
        page.wait_for_selector(".cliper-error", timeout=180_000)
        message = page.locator(".cliper-error").inner_text()
        assert message.startswith("cliper: ") and "cliper download" in message
        assert "Traceback" not in page.content()
