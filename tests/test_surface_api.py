"""The Python API (and the notebooks, which build configs through it) reads every value with the
command line's parser and refuses what the command line refuses, in one ConfigError naming the
field, the value and what is accepted (issue 26); images and devices are checked before the
models load.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cliper_lib.weights.models as models
from cliper_lib.config import CLIPerConfig, ConfigError, accepted, parse_field
from cliper_lib.images import float_tensor, rgb_array

from helpers import smoke_config


# --- one parser, whatever the caller --------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value",
    [
        ("is_normalize", "maybe"),
        ("is_normalize", 1),  # a number is not a boolean here
        ("size", True),  # nor a boolean a number
        ("size", 336.5),
        ("attention_thr", float("nan")),
        ("attention_thr", "0.2x"),
        ("fuse_layers", 3),
        ("fuse_layers", [1, "x"]),
        ("sd_layers", "up_blocks.3.attentions.1"),  # text where a list is expected: one item
        ("ignore_labels", [-1]),
        ("refinement", None),
        ("templates", "imagenet"),
    ],
)
def test_a_wrong_value_from_python_is_the_same_one_line_error(field, value):
    if field == "sd_layers":  # a text is read as a list of one item: accepted, as on the CLI
        assert CLIPerConfig(sd_layers=value).sd_layers == [value]
        return
    with pytest.raises(ConfigError) as caught:
        CLIPerConfig(**{field: value})
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{field}={value!r}")
    assert message.endswith(accepted(field))


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("is_normalize", "no", False),
        ("attention_thr", "0.25", 0.25),
        ("attention_thr", 1, 1.0),  # an int where a float is declared: the same number
        ("size", np.int64(224), 224),
        ("is_normalize", np.bool_(False), False),
        ("fuse_layers", (2, 9), [2, 9]),
        ("normalization_rounds", "4", 4),
        ("quick_gelu", "off", False),
    ],
)
def test_python_values_and_command_line_texts_give_the_same_config(field, value, expected):
    got = getattr(CLIPerConfig(**{field: value}), field)
    assert got == expected and type(got) is type(expected)
    assert got == parse_field(field, str(value) if not isinstance(value, tuple) else "2,9")


def test_replace_and_from_preset_read_values_the_same_way():
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", attention_thr="0.3", is_normalize="false")
    assert cfg.attention_thr == 0.3 and cfg.is_normalize is False
    assert cfg.replace(size="224").size == 224
    with pytest.raises(ConfigError, match="sliding_stride=0 with sliding_crop_size=336"):
        cfg.replace(sliding_stride=0)
    with pytest.raises(ConfigError, match="did you mean select_layer"):
        cfg.replace(selct_layer=-2)


def test_an_explicit_none_is_kept_where_the_caller_says_so():
    cfg = CLIPerConfig.from_preset_given("vit-b-16/voc21", {"sd_image_size": None, "seed": 3})
    assert cfg.sd_image_size is None and cfg.seed == 3


@pytest.mark.parametrize("field", ["pretrained", "backbone", "sd_repo"])
def test_a_field_the_smoke_profile_fixes_is_refused_not_dropped(field):
    value = {"pretrained": "/w/clip.pt", "backbone": "ViT-L-14", "sd_repo": "/w/sd"}[field]
    with pytest.raises(ConfigError, match=f"{field}=.*no effect with profile smoke"):
        CLIPerConfig.from_preset("vit-b-16/voc21", profile="smoke", **{field: value})
    assert getattr(CLIPerConfig.from_preset("vit-b-16/voc21", **{field: value}), field) == value


# --- images: no silent clamping -------------------------------------------------------------------
@pytest.mark.parametrize("convert", [rgb_array, float_tensor])
@pytest.mark.parametrize("high", [255.0, 2.0])
def test_a_float_tensor_beyond_0_1_is_refused_not_clamped_white(convert, high):
    tensor = torch.rand(3, 8, 10, generator=torch.Generator().manual_seed(0)) * high
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        convert(tensor)


def test_a_float_tensor_in_0_255_for_plots_keeps_its_values():
    tensor = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(3, 4, 5) * 4.0  # 0 .. 236
    expected = tensor.permute(1, 2, 0).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(rgb_array(tensor, floats=True), expected)
    unit = tensor / 255.0  # the pipeline's convention still reads the same pixels
    np.testing.assert_array_equal(rgb_array(unit), expected)


# --- before the weights load ---------------------------------------------------------------------
def refuse_loading(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr(models, "load_clip", load)


def test_a_class_file_that_is_not_utf8_stops_from_config_before_any_weights(tmp_path, monkeypatch):
    refuse_loading(monkeypatch)
    path = tmp_path / "c.txt"
    path.write_bytes(b"sky\ncat\nd\xf6g\n")
    with pytest.raises(ValueError, match=f"class file {path}, line 3, is not UTF-8"):
        models.CLIPer.from_config(smoke_config(classes=str(path)))


def test_an_unwritable_cache_stops_from_config_before_any_weights(tmp_path, monkeypatch):
    refuse_loading(monkeypatch)
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("CLIPER_CACHE", str(tmp_path / "f" / "cache"))
    with pytest.raises(ValueError, match="the cache folder"):
        models.CLIPer.from_config(smoke_config())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_a_missing_gpu_stops_from_config_before_any_weights(monkeypatch, device):
    refuse_loading(monkeypatch)
    with pytest.raises(ConfigError, match="set device to cpu or auto"):
        models.CLIPer.from_config(smoke_config().replace(device=device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_index_past_the_visible_ones_is_named_with_those_there_are():
    from cliper_lib.config import resolve_device

    count = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=rf"only {count} CUDA GPU\(s\) are visible"):
        resolve_device(f"cuda:{count}")
    assert resolve_device("cuda:0").type == "cuda"
