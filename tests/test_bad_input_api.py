"""Bad classes and configs through the Python API (issue 10): class lists, configs edited after
construction, preset files, devices. Each case asserts the exact error type and a message fragment.

The model is the golden tiny CLIP (4 blocks, patch 16) without Stable Diffusion.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from cliper_lib.config import CLIPerConfig, ConfigError, load_preset_values, resolve_device
from cliper_lib.method.pipeline import CLIPer
from cliper_lib.vocab import check_class_names

from helpers import FAST, fast_golden_model, photo


@pytest.fixture(scope="module")
def tiny(golden_clip) -> CLIPer:
    return fast_golden_model(golden_clip)


@pytest.mark.parametrize(
    "classes,fragment",
    [
        (["cat", 5], r"#2 is 5: class names must be text"),
        (["cat", ""], r"#2 is empty"),
        (["  ", "cat"], r"#1 is empty"),
        (["cat", None], "#2 is None"),
        ([], "at least one"),
        ([" "], "at least one"),
        (" ; ;", "at least one"),
    ],
)
def test_bad_class_lists_are_value_errors(tiny, classes, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_class_names(classes)
    with pytest.raises(ValueError, match=fragment):
        tiny.segment(photo(), classes=classes)


@pytest.mark.parametrize(
    "field,value",
    [
        ("attention_thr", 5),
        ("refinement", "bogus"),
        ("fuse_layers", [2, 1]),
        ("size", 3),
        ("score_threshold", "x"),
    ],
)
def test_config_edited_after_construction_is_validated_where_used(tiny, field, value):
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", **FAST)
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=field):
        tiny.segment(photo(), classes="cat", cfg=cfg)


def test_invalid_preset_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        textwrap.dedent("""\
        backbone: ViT-B-16
        size: 336
        attention_thr: [0.1, 0.2
        bkg_thre: 0.5
        """)
    )
    with pytest.raises(ConfigError, match=r"mine\.yaml, line \d+ column \d+ is not valid YAML"):
        load_preset_values(str(path))


@pytest.mark.parametrize("text,fragment", [("- a\n- b\n", "mapping"), ("size: 3\n", "size=3")])
def test_preset_with_wrong_content(tmp_path, text, fragment):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        CLIPerConfig.from_preset(str(path))


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_one_clear_error(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        resolve_device(device)
