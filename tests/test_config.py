"""Config: presets load, overrides validate, errors say what is allowed."""

from __future__ import annotations

import dataclasses

import pytest

from cliper_lib.config import CLIPerConfig, ConfigError, accepted, list_presets, parse_field

PAPER_TABLE = {  # docs/method.md section 5, a few rows checked field by field
    "vit-b-16/voc21": dict(
        size=336,
        select_layer=-1,
        logit_scale=100.0,
        attention_thr=0.1,
        score_threshold=0.7,
        bkg_thre=0.6,
        is_normalize=True,
        ignore_labels=[255],
        sliding_crop_size=336,
        templates="cliper",
        paper_miou=66.5,
    ),
    "vit-b-16/cityscapes": dict(
        size=560,
        attention_thr=0.35,
        bkg_thre=0.0001,
        ignore_labels=[0, 255],
        templates="openai",
        sliding_crop_size=0,
    ),
    "vit-l-14/coco_object": dict(
        select_layer=-2,
        logit_scale=50.0,
        attention_thr=0.1,
        score_threshold=0.5,
        ignore_labels=[255],
        templates="openai",
        backbone="ViT-L-14",
        paper_miou=44.4,
    ),
    "vit-h-14/voc21": dict(
        backbone="ViT-H-14", pretrained="laion2b_s32b_b79k", select_layer=-2, paper_miou=None
    ),
}


def test_all_seventeen_presets_exist_and_validate():
    presets = list_presets()
    assert len(presets) == 17
    for name in presets:
        cfg = CLIPerConfig.from_preset(name)
        assert cfg.preset == name
        assert cfg.refinement == "sfsa" and cfg.sd_timestep_index == 45


@pytest.mark.parametrize("name", PAPER_TABLE)
def test_preset_values(name):
    cfg = CLIPerConfig.from_preset(name)
    for key, value in PAPER_TABLE[name].items():
        assert getattr(cfg, key) == value, key


def test_overrides_and_unknown_fields():
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", profile="smoke", attention_thr=0.3)
    assert cfg.profile == "smoke" and cfg.attention_thr == 0.3
    with pytest.raises(ConfigError, match="unknown config field"):
        cfg.replace(atention_thr=0.2)
    with pytest.raises(ConfigError, match="unknown preset"):
        CLIPerConfig.from_preset("vit-b-16/nope")


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("refinement", "sfsb", "refinement takes one of sfsa, mean"),
        (
            "attention_thr",
            1.5,
            r"attention_thr=1.5 is not accepted; attention_thr takes a number in \[0, 1\]$",
        ),
        ("last_layer_attention", "qk", "fused"),
        ("normalization_rounds", "sometimes", "cumulative"),
        ("fuse_layers", [5, 2], "first <= last"),
        ("sliding_crop_size", -1, "sliding_crop_size takes an integer >= 0"),
        ("sd_timestep_index", 50, "sd_num_steps"),
        ("profile", "fast", "paper, smoke"),
        ("device", "gpu0", "cuda:N"),
    ],
)
def test_validation_messages(field, value, message):
    with pytest.raises(ConfigError, match=message):
        CLIPerConfig(**{field: value})


def test_depth_checks():
    cfg = CLIPerConfig(select_layer=-5, fuse_layers=[0, 3])
    with pytest.raises(ConfigError, match="select_layer=-5"):
        cfg.check_against_depth(4)
    with pytest.raises(ConfigError, match="reaches past block 2"):
        CLIPerConfig(fuse_layers=[0, 3]).check_against_depth(4)
    CLIPerConfig(fuse_layers=[0, 2], select_layer=-2).check_against_depth(4)


def test_yaml_round_trip():
    import yaml

    cfg = CLIPerConfig.from_preset("vit-l-14/ade20k")
    assert CLIPerConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(CLIPerConfig)])
def test_every_field_is_parsed_from_its_declaration(field):
    """A field needs only its declaration: its default, and that default as the command line
    writes it, read back to the same value; what it accepts is said in words."""
    default = getattr(CLIPerConfig(), field)
    assert parse_field(field, default) == default
    text = (
        "none"
        if default is None
        else ",".join(map(str, default))
        if isinstance(default, list)
        else str(default)
    )
    assert parse_field(field, text) == default
    assert accepted(field)
