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
    OFFLINE_CDN,
    app_settings,
    bind,
    served_url,
    solara_environment,
)


def test_settings_travel_through_the_environment(tmp_path):
    image = tmp_path / "mine.png"
    settings = app_settings(
        "vit-b-16/voc21",
        "smoke",
        "cpu",
        None,
        [image],
        "cat; sofa",
        None,
        "exports",
        refinement="none",
        overrides={"attention_thr": 0.2, "fuse_layers": [1, 2]},
    )
    env = settings.to_environment()
    assert "CLIPER_APP_DTYPE" not in env and "CLIPER_APP_BACKGROUND" not in env  # unset stays unset
    back = AppSettings.from_environment(env)
    assert back == settings and back.images == [str(image.resolve())]
    assert back.out == str(Path("exports").resolve())  # absolute: the page may run elsewhere
    cfg = back.config()
    assert (cfg.refinement, cfg.attention_thr, cfg.fuse_layers) == ("none", 0.2, [1, 2])


def test_the_port_is_checked_and_the_address_printed_is_the_one_served():
    # a port in use: one line that says so, nothing served elsewhere
    with bind("127.0.0.1", None) as taken:
        port = taken.getsockname()[1]
        assert served_url(taken, "127.0.0.1") == f"http://127.0.0.1:{port}/"
        with pytest.raises(ValueError, match=f"port {port} on 127.0.0.1 is in use"):
            bind("127.0.0.1", port)
    for bad in (0, -1, 70000):
        with pytest.raises(ValueError, match="out of range"):
            bind("127.0.0.1", bad)
    with pytest.raises(ValueError, match="not an address"):
        bind("no-such-host.invalid", None)
    # the command line refuses the same ports before anything starts (exit 2, one line)
    parser = build_parser()
    for bad in ("-1", "0", "65536", "http"):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(["app", "--port", bad])
        assert stop.value.code == 2
    args = parser.parse_args(
        ["app", "a.jpg", "--profile", "smoke", "--no-browser", "--port", "9000"]
    )
    assert args.images == ["a.jpg"] and args.no_browser and args.port == 9000
    assert args.cull_idle_after == 60


def test_the_server_fetches_nothing_from_the_internet_and_culls_closed_visits():
    env = solara_environment(cull_idle=45)
    assert env["SOLARA_APP"] == "cliper_lib.suite.explorer.app.session"
    assert env["SOLARA_TELEMETRY_MIXPANEL_ENABLE"] == "False"
    # assets through the local proxy; a missing one is asked of a closed local port, not a CDN
    assert env["SOLARA_ASSETS_PROXY"] == "True" and env["SOLARA_ASSETS_CDN"] == OFFLINE_CDN
    assert OFFLINE_CDN.startswith("http://127.0.0.1:")
    assert env["SOLARA_KERNEL_CULL_TIMEOUT"] == "45s"


def _offline_page(tmp_path, monkeypatch, settings: AppSettings) -> AppPage:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    page = AppPage(settings)
    page.load()
    return page


def test_missing_weights_show_the_cli_message(tmp_path, monkeypatch):
    page = _offline_page(tmp_path, monkeypatch, AppSettings(profile="paper", device="cpu"))
    assert (
        page.explorer is None and "missing from the local Hugging Face cache" in page.error
    )  # the offline report
    (shown,) = page.widget.children
    assert (
        "cliper: " in shown.value
        and "cliper download" in shown.value
        and "Traceback" not in shown.value
    )


def test_every_command_the_offline_page_prints_is_accepted(tmp_path, monkeypatch):
    """Each `cliper ...` command on the page parses with the CLI's own parser, and each option the
    CLI's message suggests is one `cliper app` takes."""
    import html
    import re
    import shlex

    preset = "vit-b-16/voc21"
    page = _offline_page(
        tmp_path, monkeypatch, AppSettings(preset=preset, profile="paper", device="cpu")
    )
    (shown,) = page.widget.children
    text = html.unescape(re.sub(r"<[^>]+>", " ", shown.value))
    parser = build_parser()
    quoted = re.findall(r"`([^`]+)`", text)  # the CLI's message quotes what to type
    commands = [q for q in quoted if q.startswith("cliper ")] + [
        html.unescape(c)
        for c in re.findall(r"<code class='cliper-command'>([^<]+)</code>", shown.value)
    ]
    options = [q for q in quoted if q.startswith("--")]
    assert len(commands) >= 5 and any(c.startswith("cliper app") for c in commands)
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert args.command in ("app", "download") and args.preset == preset, command
    # the message's own suggestions, spelled as options of `cliper app`
    assert {"--refinement none", "--profile smoke"} <= set(options)
    for option in options:
        args = parser.parse_args(["app", *shlex.split(option)])
        assert args.command == "app"
    assert not [q for q in quoted if not q.startswith(("cliper ", "--"))], quoted


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
