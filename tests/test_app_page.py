"""The app page without a browser: settings through the environment, the server's command,
the page's states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ipywidgets")

from cliper_lib.suite.cli.commands import build_parser  # noqa: E402
from cliper_lib.suite.explorer.app.page import AppPage, AppSettings  # noqa: E402
from cliper_lib.suite.explorer.app.server import (  # noqa: E402
    app_settings,
    notebook_path,
    voila_command,
)


def test_settings_travel_through_the_environment(tmp_path):
    image = tmp_path / "mine.png"
    settings = app_settings(
        "vit-b-16/voc21", "smoke", "cpu", None, [image], "cat; sofa", None, "exports"
    )
    env = settings.to_environment()
    assert "CLIPER_APP_DTYPE" not in env and "CLIPER_APP_BACKGROUND" not in env  # unset stays unset
    back = AppSettings.from_environment(env)
    assert back == settings and back.images == [str(image.resolve())]
    assert back.out == str(
        Path("exports").resolve()
    )  # absolute: the kernel runs in the notebook's folder


def test_the_server_command_serves_the_packaged_notebook_and_culls_idle_kernels():
    assert notebook_path().is_file() and notebook_path().name == "app.ipynb"
    command = voila_command(8866, open_browser=False, cull_idle=120)
    assert (
        str(notebook_path()) in command
        and "--port=8866" in command
        and "--Voila.open_browser=False" in command
    )
    assert "--MappingKernelManager.cull_idle_timeout=120" in command
    assert "--MappingKernelManager.cull_connected=False" in command
    assert "--VoilaConfiguration.progressive_rendering=True" in command
    args = build_parser().parse_args(
        ["app", "a.jpg", "--profile", "smoke", "--no-browser", "--port", "9000"]
    )
    assert (
        args.images == ["a.jpg"]
        and args.no_browser
        and args.port == 9000
        and args.cull_idle_after == 600
    )


def test_missing_weights_show_the_cli_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    page = AppPage(AppSettings(profile="paper", device="cpu"))
    page.load()
    assert (
        page.explorer is None and "missing from the local Hugging Face cache" in page.error
    )  # the offline report
    (shown,) = page.widget.children
    assert (
        "cliper: " in shown.value
        and "cliper download" in shown.value
        and "Traceback" not in shown.value
    )


def test_your_own_image_opens_first_and_asks_for_classes(tmp_path):
    image = tmp_path / "mine.png"
    Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(image)
    page = AppPage(
        AppSettings(profile="smoke", device="cpu", images=[str(image)], out=str(tmp_path))
    )
    page.load()
    explorer = page.explorer
    assert (
        explorer.controls["image"].value == "mine.png" and explorer.controls["classes"].value == ""
    )
    assert list(explorer.controls["image"].options)[1:] == [
        "astronaut.jpg",
        "chelsea.jpg",
        "coffee.jpg",
        "rocket.jpg",
    ]
    page.first_result()
    assert explorer.state.labels is None and "type the classes" in explorer.status.value
    # the preset's state: its thresholds and select layer, all fusable blocks
    cfg = explorer.current_config()
    assert (cfg.score_threshold, cfg.bkg_thre, cfg.select_layer) == (0.7, 0.6, -1)
    assert cfg.fuse_layers == [0, explorer.num_layers - 2]


def _values(box):
    return {name: w.value for name, w in box.items() if name not in ("upload", "map_class")}


def _controls_of(widget) -> dict:
    """The widgets under `widget` that carry a `cliper-<name>` class, by name."""
    found, stack = {}, [widget]
    while stack:
        w = stack.pop()
        stack.extend(getattr(w, "children", ()))
        for css in getattr(w, "_dom_classes", ()):
            if css.startswith("cliper-"):
                found[css[len("cliper-") :].replace("-", "_")] = w
    return found


def test_controls_show_before_the_models_disabled_then_live(tmp_path):
    import subprocess
    import sys

    # drawing the controls imports neither torch nor open_clip (what made the first paint wait)
    code = (
        "import sys; from cliper_lib.suite.explorer.app.page import AppPage, AppSettings; "
        "AppPage(AppSettings(profile='smoke', device='cpu')); "
        "print(sorted(m for m in ('torch', 'open_clip', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"

    page = AppPage(AppSettings(profile="smoke", device="cpu", out=str(tmp_path)))
    (preview,) = page.widget.children
    shown = _controls_of(preview)
    assert (
        "loading the models" in shown["status"].value
        and "cliper-ready" not in page.widget._dom_classes
    )
    assert all(w.disabled for w in shown.values() if hasattr(w, "disabled"))
    assert {"fuse_layers", "select_layer", "classes", "refinement", "export"} <= set(shown)
    page.load()
    explorer = page.explorer
    assert page.widget.children == (explorer.widget,) and "cliper-ready" in page.widget._dom_classes
    assert (
        not explorer.controls["fuse_layers"].disabled and not explorer.controls["classes"].disabled
    )
    # the preview opened in the explorer's state: same values, same layer ranges,
    # same refinement menu
    preview_controls = {n: w for n, w in shown.items() if n in explorer.controls}
    assert _values(preview_controls) == _values(explorer.controls)
    for name in ("fuse_layers", "select_layer"):
        assert (shown[name].min, shown[name].max) == (
            explorer.controls[name].min,
            explorer.controls[name].max,
        )
    assert shown["refinement"].options == explorer.controls["refinement"].options


def test_depths_without_building_match_open_clip():
    import open_clip

    from cliper_lib.config import CLIPerConfig
    from cliper_lib.suite.explorer.controls import (
        BACKBONE_DEPTHS,
        planned_refinements,
        vision_depth,
    )
    from cliper_lib.weights.clip import register_tiny_clip

    register_tiny_clip()
    for name, depth in BACKBONE_DEPTHS.items():
        assert open_clip.get_model_config(name)["vision_cfg"]["layers"] == depth, name
    assert vision_depth(CLIPerConfig(backbone="ViT-B-32")) == 12  # not in the table: asks open_clip
    assert (
        vision_depth(CLIPerConfig(backbone="ViT-L-14", profile="smoke")) == 4
    )  # smoke builds the tiny ViT
    assert "sfsa" not in planned_refinements(CLIPerConfig(refinement="none"))
    assert planned_refinements(CLIPerConfig(refinement="sfsa"))[:4] == [
        "sfsa",
        "mean",
        "selection",
        "none",
    ]


def test_a_bad_preset_shows_the_cli_message_at_once():
    page = AppPage(AppSettings(preset="vit-b-16/no-such-benchmark", profile="smoke", device="cpu"))
    (shown,) = page.widget.children
    assert page.error and "cliper: " in shown.value and "Traceback" not in shown.value
    page.load()
    page.first_result()
    assert page.explorer is None
