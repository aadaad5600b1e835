"""`cliper app --profile smoke` in a real browser (Playwright on the system Chromium).

One server for the module (tests run in file order; the last one stops it): the page opens in the
preset's state; a move redraws; the controls are disabled while a result is computed; opacity and
the labels toggle redraw without recomputing; a pasted photo is segmented; a file that is not a
photo says so in view; a dropped photo is segmented; an export's files are served and its
command reproduces the labels from a fresh folder; reloads and extra tabs keep the server's memory
bounded; nothing is requested outside the server; the page says so when the server is gone. A
paper-profile app without weights shows the CLI's message. Skipped, with the reason, where
Playwright, Solara or a Chromium is missing.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cliper_lib.suite.explorer.app.drive import (
    AppDriver,
    AppServer,
    browser_unavailable,
    chromium,
    external_requests,
    new_page,
    tree_rss,
)
from cliper_lib.suite.toolkit.viz import load_label_png

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        browser_unavailable() is not None, reason=f"no browser test: {browser_unavailable()}"
    ),
]

GB = 1024**3


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def app(browser, tmp_path_factory):
    """One smoke app server and one browser page (a laptop-sized window) for the module, opened
    once; every request of every page of the module is recorded."""
    folder = tmp_path_factory.mktemp("app")
    server = AppServer(
        ["--profile", "smoke", "--device", "cpu", "--out", str(folder / "exports")],
        log=folder / "server.log",
    )
    with server:
        requests: list[str] = []
        driver = AppDriver(new_page(browser, 1366, 768, requests), server.url)
        driver.opened = driver.open()
        driver.folder, driver.server, driver.requests = folder, server, requests
        yield driver


def stripes(path, height=72, width=96):
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (200, 40, 40)
    pixels[:, width // 2 :] = (40, 40, 200)
    Image.fromarray(pixels).save(path)
    return path


def test_the_page_opens_in_the_presets_state(app):
    assert app.opened["controls"] <= app.opened["ready"] <= app.opened["result"]
    # the preset vit-b-16/voc21 on the smoke models: all fusable blocks, its thresholds
    lower = app.page.locator(".cliper-fuse-layers .noUi-handle-lower")
    upper = app.page.locator(".cliper-fuse-layers .noUi-handle-upper")
    assert float(lower.get_attribute("aria-valuenow")) == 0
    assert upper.get_attribute("aria-valuenow") == upper.get_attribute("aria-valuemax")
    assert app.page.locator(".cliper-score-threshold .widget-readout").inner_text() == "0.70"
    assert app.page.locator(".cliper-bkg-thre .widget-readout").inner_text() == "0.600"
    assert app.page.locator(".cliper-image select").input_value() == "astronaut.jpg"
    assert app.page.locator(".cliper-classes input").input_value() == "person; flag; spacesuit"
    assert "found" in app.status()
    # every knob has a human label and a tooltip
    assert "background" in app.page.locator(".cliper-bkg-thre [title]").first.get_attribute("title")


def test_a_move_redraws_and_the_controls_are_off_meanwhile(app):
    # watch the page: were the controls disabled while it showed the busy state?
    app.page.evaluate(
        """() => {
             window.cliperSeen = [];
             const page = document.querySelector('.cliper-app');
             new MutationObserver(() => {
               const busy = document.querySelector('.cliper-page.cliper-busy');
               if (busy) window.cliperSeen.push({
                 classes: document.querySelector('.cliper-classes input').disabled,
                 export: document.querySelector('.cliper-export').disabled,
                 status: document.querySelector('.cliper-status').innerText});
             }).observe(page, {subtree: true, attributes: true, childList: true});
           }"""
    )
    before = app.text(".cliper-fuse-layers .widget-readout")
    src = app.overlay_src()
    app.move_layer_range_start(+1)
    assert app.text(".cliper-fuse-layers .widget-readout") != before and app.overlay_src() != src
    assert "layer fusion" in app.status() and "CLIP pass" in app.status().split("reused")[1]
    seen = app.page.evaluate("window.cliperSeen")
    assert seen and all(s["classes"] and s["export"] for s in seen)
    assert any("computing" in s["status"] for s in seen)
    assert not app.page.locator(".cliper-classes input").is_disabled()  # live again


def test_opacity_and_the_labels_toggle_redraw_the_overlay_without_recomputing(app):
    opacity = app.page.locator(".cliper-opacity .noUi-handle")
    shown = app.overlay_src()
    fainter = app.redrawn_only(lambda: (opacity.focus(), opacity.press("ArrowLeft")))
    assert fainter != shown
    toggle = app.page.locator(".cliper-show-labels input")
    bare = app.redrawn_only(toggle.click)  # labels off: the photo alone
    assert bare not in (shown, fainter)
    assert app.page.locator(".cliper-opacity .noUi-target").get_attribute("disabled") is not None
    assert app.redrawn_only(toggle.click) == fainter  # on again: the same drawing as before
    assert app.page.locator(".cliper-opacity .noUi-target").get_attribute("disabled") is None


def test_a_pasted_photo_is_segmented(app):
    app.paste(stripes(app.folder / "pasted.png", height=64, width=80))
    assert app.page.locator(".cliper-image select").input_value() == "pasted.png"
    assert "CLIP pass" in app.status().split("reused")[0]  # a new photo: walked


def test_a_file_that_is_not_a_photo_says_so_in_view(app):
    notes = app.folder / "notes.txt"
    notes.write_text("shopping list: milk, eggs")
    with app.page.expect_file_chooser() as chooser:
        app.page.locator(".cliper-upload").first.click()
    chooser.value.set_files(str(notes))
    message = app.page.locator(".cliper-note-upload .cliper-message")
    message.wait_for(timeout=60_000)
    assert message.inner_text().startswith("notes.txt is not a photo")
    assert "Error" not in message.inner_text()
    box = message.bounding_box()
    assert box and 0 <= box["y"] and box["y"] + box["height"] <= 768  # in the window, unscrolled


def test_a_dropped_photo_is_segmented_and_its_export_reproduces_the_labels(app, tmp_path):
    app.drop(stripes(app.folder / "stripes.png"))
    assert app.page.locator(".cliper-image select").input_value() == "stripes.png"
    assert "CLIP pass" in app.status().split("reused")[0]  # a new photo: walked
    app.export()
    links = app.export_links()
    folder = next((app.folder / "exports").iterdir())
    assert {url.rsplit("/", 1)[1] for url in links} == {p.name for p in folder.iterdir()}
    for url in links:  # served as files, byte for byte
        response = app.page.request.get(url)
        assert response.ok and response.body() == (folder / url.rsplit("/", 1)[1]).read_bytes()
    # the command written in the YAML, run in a copy of the folder, gives the same labels
    fresh = tmp_path / "fresh"
    shutil.copytree(folder, fresh)
    header = (fresh / "stripes_config.yaml").read_text().splitlines()[2]
    command = shlex.split(header.lstrip("# "))
    assert command[:3] == ["cliper", "segment", "stripes.png"]
    argv = [sys.executable, "-m", "cliper_lib", *command[1:], "--quiet"]
    subprocess.run(argv, check=True, timeout=600, cwd=fresh)
    out = fresh / command[command.index("--out") + 1]
    np.testing.assert_array_equal(
        load_label_png(out / "stripes_labels.png"), load_label_png(fresh / "stripes_labels.png")
    )


def test_reloads_and_tabs_keep_the_memory_of_one_model(app, browser):
    """Five reloads and three more tabs: the server's processes stay under one model load plus
    1 GB (a Voila kernel per visit loaded the models each time)."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import psutil; from cliper_lib.suite.explorer.app.page import load_model, "
            "AppSettings; load_model(AppSettings(profile='smoke', device='cpu')); "
            "print(psutil.Process().memory_info().rss)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    one_model = int(loaded.stdout.split()[-1])
    for _ in range(5):
        app.page.reload()
        app.open()
    tabs = [AppDriver(new_page(browser, 1366, 768, app.requests), app.url) for _ in range(3)]
    for tab in tabs:
        tab.open()
    peak = tree_rss(app.server.process.pid)
    for tab in tabs:
        tab.page.close()
    assert peak < one_model + GB, f"server {peak / GB:.2f} GB, one model {one_model / GB:.2f} GB"


def test_the_page_requests_nothing_outside_the_server(app):
    assert len(app.requests) > 10
    assert external_requests(app.requests, app.url) == []


def test_the_page_says_so_when_the_server_is_gone(app):
    app.server.__exit__()
    app.page.get_by_text("disconnected").first.wait_for(timeout=60_000)


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
        assert page.locator(".cliper-command").count() >= 4
        assert "Traceback" not in page.inner_text("body")
