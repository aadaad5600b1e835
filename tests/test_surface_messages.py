"""Every command or option a message suggests exists and works where the message is shown (issue
26): each suggestion in a command-line message is parsed with that command's own parser; the
messages the Python API and the notebooks show suggest no command-line option at all.
"""

from __future__ import annotations

import argparse
import re

import pytest
import torch

import cliper_lib.suite.cli.commands as cli
from cliper_lib.config import CLIPerConfig, ConfigError, resolve_device, with_field_options
from cliper_lib.weights.hub import WeightsMissingError, missing_weights_message
from cliper_lib.weights.inventory import (
    WeightFile,
    config_spelling,
    offline_report,
    option_spelling,
    respelled,
)

#: the smallest valid command line of each command (its required arguments).
REQUIRED = {
    "segment": ["x.png", "--out", "o"],
    "demo": [],
    "eval": [],
    "reproduce": [],
    "download": [],
    "app": [],
    "presets": [],
}
MISSING = [
    WeightFile("CLIP ViT-B-16 (openai)", "timm/vit", "open_clip_model.safetensors", 599.0),
    WeightFile("Stable Diffusion", "sd/repo", "unet/diffusion_pytorch_model.safetensors", 3464.0),
]
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)(?:[ =]([^\s`,;()]+))?")
COMMAND = re.compile(r"`(cliper [^`]+)`")


def subparser(command: str) -> argparse.ArgumentParser:
    return cli.build_parser()._subparsers._group_actions[0].choices[command]


def check_suggestions(message: str, command: str) -> int:
    """Parse every `cliper ...` command and every --option in `message` with `command`'s parser
    (SystemExit from argparse fails the test); returns how many were checked."""
    checked = 0
    for line in COMMAND.findall(message):
        words = line.split()[1:]
        cli.build_parser().parse_args([*words, *REQUIRED[words[0]]])
        checked += 1
    without_commands = COMMAND.sub("", message)
    parser = subparser(command)
    actions = {o: a for a in parser._actions for o in a.option_strings}
    for option, value in OPTION.findall(without_commands):
        assert option in actions, f"{command} has no {option} ({message!r})"
        argv = [option] if actions[option].nargs == 0 else [option, value]
        parser.parse_args([*REQUIRED[command], *argv])
        checked += 1
    return checked


@pytest.mark.parametrize("command", ["segment", "demo", "eval", "download", "app"])
def test_the_offline_report_on_the_command_line_names_only_that_commands_options(command):
    library = WeightsMissingError(offline_report(MISSING), MISSING)
    message = respelled(library, option_spelling(subparser(command)))
    assert check_suggestions(message, command) >= 2
    assert "profile" in message and "smoke" in message  # the tiny models are always offered


def test_eval_which_has_no_refinement_option_is_told_the_set_spelling():
    message = respelled(
        WeightsMissingError(offline_report(MISSING), MISSING), option_spelling(subparser("eval"))
    )
    assert "`--set refinement=none`" in message and "`--profile smoke`" in message
    app = subparser("app")
    message = respelled(WeightsMissingError(offline_report(MISSING), MISSING), option_spelling(app))
    can = {a.dest for a in app._actions} & {"refinement", "overrides"}
    assert ("refinement" in message) == bool(can)  # offered only where app can take it


@pytest.mark.parametrize(
    "message",
    [
        offline_report(MISSING),
        offline_report(MISSING, config_spelling),
        missing_weights_message(
            "VFM dino-b8",
            "facebook/dino-vitb8",
            "model.safetensors",
            "cliper download --vfm dino-b8",
        ),  # fmt: skip
    ],
)
def test_messages_of_the_python_api_and_notebooks_suggest_no_command_line_option(message):
    without_commands = COMMAND.sub("", message)
    assert not OPTION.findall(without_commands), without_commands
    for line in COMMAND.findall(message):  # a shell command is fine anywhere, if it parses
        check_suggestions(f"`{line}`", "download")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_missing_gpu_from_the_api_says_the_config_field(device):
    with pytest.raises(ConfigError) as caught:
        resolve_device(device)
    assert not OPTION.findall(str(caught.value)) and "set device to cpu or auto" in str(
        caught.value
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_reproduce_says_its_own_set_option(capsys):
    assert cli.main(["reproduce", "--plan", "paper", "--only", "00"]) == 2
    assert check_suggestions(capsys.readouterr().err, "reproduce") == 1


@pytest.mark.parametrize("command", ["segment", "eval", "download"])
def test_the_disagreement_message_names_options_the_command_has(command, capsys):
    with pytest.raises(ConfigError) as caught:
        with_field_options({"profile": "paper"}, {"profile": "smoke"})
    assert check_suggestions(str(caught.value), command) == 2


def test_eval_messages_name_eval_options(tmp_path, capsys):
    checkpoint = tmp_path / "run.ckpt.json"
    checkpoint.write_text("{}")
    argv = ["eval", "--profile", "smoke", "--dataset", "synthetic", "--limit", "1", "--no-progress"]
    assert (
        cli.main([*argv, "--out", str(tmp_path / "r.json"), "--checkpoint", str(checkpoint)]) == 2
    )
    assert check_suggestions(capsys.readouterr().err, "eval") >= 1  # --resume
    assert cli.main([*argv[:3], "--dataset", "folder"]) == 2
    assert check_suggestions(capsys.readouterr().err, "eval") >= 2  # --data-root, --mask-dir
    assert cli.main(["eval", "--profile", "smoke", "--set", "classes=ade150"]) == 2
    assert check_suggestions(capsys.readouterr().err, "eval") >= 1  # --set classes=voc21


def test_the_smoke_profile_refusal_suggests_a_profile_every_surface_has():
    with pytest.raises(ConfigError) as caught:
        CLIPerConfig.from_preset("vit-b-16/voc21", profile="smoke", pretrained="/w/clip.pt")
    assert not OPTION.findall(str(caught.value)) and "use profile paper" in str(caught.value)
