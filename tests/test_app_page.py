"""The app page without a browser: settings through the environment, the server's command, the page's states."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ipywidgets")

from cliper_lib.suite.app.page import AppPage, AppSettings  # noqa: E402
from cliper_lib.suite.app.server import app_settings, notebook_path, voila_command  # noqa: E402
from cliper_lib.suite.cli import build_parser  # noqa: E402


def test_settings_travel_through_the_environment(tmp_path):
    image = tmp_path / "mine.png"
    settings = app_settings("vit-b-16/voc21", "smoke", "cpu", None, [image], "cat; sofa", None, "exports")
    env = settings.to_environment()
    assert "CLIPER_APP_DTYPE" not in env and "CLIPER_APP_BACKGROUND" not in env  # unset stays unset
    back = AppSettings.from_environment(env)
    assert back == settings and back.images == [str(image.resolve())]
    assert back.out == str(Path("exports").resolve())  # absolute: the kernel runs in the notebook's folder


def test_the_server_command_serves_the_packaged_notebook_and_culls_idle_kernels():
    assert notebook_path().is_file() and notebook_path().name == "app.ipynb"
    command = voila_command(8866, open_browser=False, cull_idle=120)
    assert str(notebook_path()) in command and "--port=8866" in command and "--Voila.open_browser=False" in command
    assert "--MappingKernelManager.cull_idle_timeout=120" in command
    assert "--MappingKernelManager.cull_connected=False" in command
    assert "--VoilaConfiguration.progressive_rendering=True" in command
    args = build_parser().parse_args(["app", "a.jpg", "--profile", "smoke", "--no-browser", "--port", "9000"])
    assert args.images == ["a.jpg"] and args.no_browser and args.port == 9000 and args.cull_idle_after == 600


def test_missing_weights_show_the_cli_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    page = AppPage(AppSettings(profile="paper", device="cpu"))
    page.load()
    assert page.explorer is None and "missing from the local Hugging Face cache" in page.error  # the offline report
    (shown,) = page.widget.children
    assert "cliper: " in shown.value and "cliper download" in shown.value and "Traceback" not in shown.value


def test_your_own_image_opens_first_and_asks_for_classes(tmp_path):
    image = tmp_path / "mine.png"
    Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(image)
    page = AppPage(AppSettings(profile="smoke", device="cpu", images=[str(image)], out=str(tmp_path)))
    page.load()
    explorer = page.explorer
    assert explorer.controls["image"].value == "mine.png" and explorer.controls["classes"].value == ""
    assert list(explorer.controls["image"].options)[1:] == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg",
                                                            "rocket.jpg"]
    page.first_result()
    assert explorer.state.labels is None and "type the classes" in explorer.status.value
    # the preset's state: its thresholds and select layer, all fusable blocks
    cfg = explorer.current_config()
    assert (cfg.score_threshold, cfg.bkg_thre, cfg.select_layer) == (0.7, 0.6, -1)
    assert cfg.fuse_layers == [0, explorer.num_layers - 2]
