"""Whatever a user types on the command line gets the right result or one clear line (exit 2)
before any model loads (issue 26): --set values of every kind, fields given twice, class lists,
image arguments, devices, unwritable folders.

`cliper` (conftest.py) runs main() in-process with the model builder counted: "before any model
loads" is `cliper.builds == 0`.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import cliper_lib.suite.cli.commands as cli
from cliper_lib.config import CLIPerConfig

from helpers import photo, save


def one_line_refusal(capsys, *needles: str) -> str:
    """The stderr of a refused command: one line, no traceback, naming each needle."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def config_of(*argv: str) -> CLIPerConfig:
    """The config `cliper segment` would build from these options."""
    args = cli.build_parser().parse_args(["segment", "x.png", "--out", "o", *argv])
    return cli.config_from_args(args)


def segment(pictures, out, *argv: str) -> int:
    """`cliper segment` on the smoke models with `argv`, nothing else set (the `cliper` fixture sets
    size and sliding_crop_size itself)."""
    return cli.main(["segment", str(pictures), "--classes", "cat", "--out", str(out),
                     "--profile", "smoke", "--quiet", *argv])  # fmt: skip


def scores(out, stem: str) -> dict:
    return json.loads((out / f"{stem}_scores.json").read_text())


# --- --set: one typed parser ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "assignment,accepted",
    [
        ("is_normalize=maybe", "true or false"),
        ("proxy_half_precision=2", "true or false"),
        ("attention_thr=abc", "a number in [0, 1]"),
        ("attention_thr=1.5", "a number in [0, 1]"),
        ("score_threshold=nan", "a number in [0, 1]"),
        ("fuse_layers=3", "[first, last]"),
        ("fuse_layers=[1, 2, 3]", "[first, last]"),
        ("ignore_labels=a,b", "a list of integers >= 0"),
        ("size=3.5", "an integer >= 16"),
        ("seed=-1", "an integer in [0, 4294967295]"),
        ("sd_layers=", "a non-empty list of UNet module paths"),
        ("normalization_rounds=-1", "cumulative, or an integer >= 0"),
        ("quick_gelu=perhaps", "one of auto, true, false"),
        ("refinement=SFSA", "one of sfsa, mean"),
        ("device=gpu", "auto, cpu, cuda, cuda:N or mps"),
        ("sd_image_size=100", "a multiple of 8"),
    ],
)
def test_a_wrong_set_value_is_one_line_naming_field_value_and_what_is_accepted(
    cliper, pictures, tmp_path, capsys, assignment, accepted
):
    field, _, value = assignment.partition("=")
    assert segment(pictures, tmp_path / "o", "--set", assignment) == 2
    one_line_refusal(capsys, f"{field}={value!r}", accepted)
    assert cliper.builds == 0 and not (tmp_path / "o").exists()


def test_unknown_field_names_the_closest_known_one(cliper, pictures, tmp_path, capsys):
    argv = [str(pictures), "--classes", "cat", "--out", str(tmp_path / "o")]
    assert cliper.segment(*argv, "--set", "atention_thr=0.2") == 2
    one_line_refusal(capsys, "atention_thr", "did you mean attention_thr?")
    assert cliper.segment(*argv, "--set", "attention_thr") == 2  # no '='
    one_line_refusal(capsys, "expected KEY=VALUE")
    assert cliper.builds == 0


@pytest.mark.parametrize(
    "text,value", [("no", False), ("OFF", False), ("0", False), ("yes", True), ("True", True)]
)
def test_booleans_take_the_usual_spellings(text, value):
    assert config_of("--set", f"is_normalize={text}").is_normalize is value


@pytest.mark.parametrize(
    "assignment,field,value",
    [
        ("fuse_layers=[2, 9]", "fuse_layers", [2, 9]),
        ("fuse_layers=2,9", "fuse_layers", [2, 9]),
        ("fuse_layers=none", "fuse_layers", None),
        ("ignore_labels=0,255", "ignore_labels", [0, 255]),
        ("attention_thr=1e-1", "attention_thr", 0.1),
        ("normalization_rounds=3", "normalization_rounds", 3),
        ("quick_gelu=false", "quick_gelu", False),
        ("sd_dtype=none", "sd_dtype", None),
        ("sd_attention_thr=null", "sd_attention_thr", None),
        ("backbone=123", "backbone", "123"),  # a text field keeps text that looks like a number
    ],
)
def test_values_are_read_by_their_fields_type(assignment, field, value):
    got = getattr(config_of("--set", assignment), field)
    assert got == value and type(got) is type(value)


# --- explicit choices are never overridden silently -----------------------------------------------
@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--profile", "smoke", "--set", "profile=paper"], ["--profile smoke", "profile=paper"]),
        (["--device", "cpu", "--set", "device=auto"], ["--device cpu", "device=auto"]),
        (["--refinement", "none", "--set", "refinement=sfsa"], ["--refinement none"]),
        (["--dtype", "float16", "--set", "dtype=float32"], ["--dtype float16"]),
    ],
)
def test_a_field_given_twice_with_different_values_is_refused(
    cliper, pictures, tmp_path, capsys, argv, needles
):
    assert cli.main(["segment", str(pictures), "--classes", "cat", "--out", str(tmp_path / "o"),
                     *argv]) == 2  # fmt: skip
    one_line_refusal(capsys, "disagree", *needles)
    assert cliper.builds == 0


def test_the_same_value_twice_is_fine():
    assert config_of("--profile", "smoke", "--set", "profile=smoke").profile == "smoke"
    assert config_of("--device", "cpu", "--set", "device=cpu").device == "cpu"


@pytest.mark.parametrize(
    "assignment", ["pretrained=/weights/clip.pt", "backbone=ViT-L-14", "sd_repo=/models/sd"]
)
def test_a_field_the_smoke_profile_ignores_is_refused(
    cliper, pictures, tmp_path, capsys, assignment
):
    argv = [str(pictures), "--classes", "cat", "--out", str(tmp_path / "o"), "--set", assignment]
    assert cliper.segment(*argv) == 2
    one_line_refusal(capsys, assignment.split("=")[0], "no effect with profile smoke")
    assert cliper.builds == 0


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--set", "sliding_crop_size=64", "--set", "sliding_stride=0"], "sliding_stride=0"),
        (["--set", "sliding_crop_size=64", "--set", "sliding_stride=65"], "leave gaps"),
        (["--set", "sd_timestep_index=50"], "sd_timestep_index=50 with sd_num_steps=50"),
        (["--set", "fuse_layers=[5, 2]"], "first <= last"),
    ],
)
def test_contradictory_fields_are_refused(cliper, pictures, tmp_path, capsys, argv, needle):
    assert segment(pictures, tmp_path / "o", *argv) == 2
    one_line_refusal(capsys, needle)
    assert cliper.builds == 0


def test_a_set_given_twice_with_different_values_is_refused(cliper, pictures, tmp_path, capsys):
    assert segment(pictures, tmp_path / "o", "--set", "size=64", "--set", "size=96") == 2
    one_line_refusal(capsys, "--set size=64 and --set size=96 disagree")
    assert segment(pictures, tmp_path / "o", "--set", "seed=1", "--set", "seed=2") == 2
    one_line_refusal(capsys, "seed=1", "seed=2")
    assert cliper.builds == 0


# --- class lists: commas and new lines separate ---------------------------------------------------
@pytest.mark.parametrize(
    "classes,names",
    [
        ("cat, dog", ["cat", "dog"]),
        ("cat\ndog\n", ["cat", "dog"]),
        ("cat,dog,,sofa", ["cat", "dog", "sofa"]),
        ("person, people; cat", ["person, people", "cat"]),
    ],
)
def test_commas_and_new_lines_separate_classes(cliper, pictures, tmp_path, classes, names):
    out = tmp_path / "o"
    assert cliper.segment(str(pictures / "a.png"), "--classes", classes, "--out", str(out)) == 0
    assert scores(out, "a")["classes"] == names


def test_help_says_how_classes_are_separated(capsys):
    with pytest.raises(SystemExit):
        cli.main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "commas, semicolons or new lines" in help_text


# --- image arguments mean what they say -----------------------------------------------------------
def test_an_existing_name_with_brackets_is_that_file_not_a_pattern(cliper, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    save(folder / "shot[1].png", photo(20, 30, 1))
    save(folder / "shot1.png", photo(26, 22, 2))  # what the pattern shot[1].png would match
    out = tmp_path / "o"
    assert cliper.segment(str(folder / "shot[1].png"), "--classes", "cat", "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".json")) == [
        "shot[1]_scores.json"
    ]
    assert scores(out, "shot[1]")["image"] == str(folder / "shot[1].png")


def test_a_pattern_expands_only_when_no_such_path_exists(cliper, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    save(folder / "shot1.png", photo(20, 30, 1))
    save(folder / "shot2.png", photo(20, 30, 2))
    out = tmp_path / "o"
    assert cliper.segment(str(folder / "shot[12].png"), "--classes", "cat", "--out", str(out)) == 0
    assert {p.name for p in out.glob("*_scores.json")} == {"shot1_scores.json", "shot2_scores.json"}


def test_the_output_folder_is_never_an_input(cliper, pictures, tmp_path, capsys):
    assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(pictures)) == 2
    one_line_refusal(capsys, "is the output folder")
    # a pattern reaching into the output folder: the second run does not segment the first's outputs
    out = tmp_path / "out"
    pattern = str(tmp_path / "*" / "*.png")
    assert cliper.segment(pattern, "--classes", "cat", "--out", str(out)) == 0
    first = sorted(p.name for p in out.iterdir())
    assert cliper.segment(pattern, "--classes", "cat", "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == first
    assert "kept the outputs of 1 image(s)" in capsys.readouterr().out


def test_the_same_file_named_twice_runs_once(cliper, pictures, tmp_path, capsys):
    (tmp_path / "link.png").symlink_to(pictures / "a.png")
    out = tmp_path / "o"
    names = [str(pictures / "a.png"), str(pictures / "." / "a.png"), str(tmp_path / "link.png")]
    assert cliper.segment(*names, "--classes", "cat", "--out", str(out)) == 0
    assert "wrote 3 files for 1 image(s)" in capsys.readouterr().out


def test_an_output_name_too_long_for_the_file_system_is_shortened(cliper, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    long_name = "é" * 100 + ".png"  # 200 bytes: its outputs' temporary names would pass 255
    save(folder / long_name, photo(20, 30, 1))
    save(folder / "b.png", photo(20, 30, 2))
    out = tmp_path / "o"
    assert cliper.segment(str(folder), "--classes", "cat", "--out", str(out)) == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 6 and all(len(n.encode()) <= 255 for n in names)
    long_scores = [n for n in names if n.startswith("é") and n.endswith("_scores.json")]
    assert json.loads((out / long_scores[0]).read_text())["image"] == str(folder / long_name)


# --- devices, caches, class files: before the model -----------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("argv", [["--device", "cuda:1"], ["--set", "device=cuda"]])
def test_a_gpu_this_machine_lacks_is_said_before_the_model(
    cliper, pictures, tmp_path, capsys, argv
):
    assert cli.main(["segment", str(pictures), "--classes", "cat", "--out", str(tmp_path / "o"),
                     "--profile", "smoke", *argv]) == 2  # fmt: skip
    one_line_refusal(capsys, "no CUDA GPU is available", "set device to cpu or auto")
    assert cliper.builds == 0


def test_mps_without_apple_hardware_is_said_before_the_model(cliper, pictures, tmp_path, capsys):
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    assert cli.main(["segment", str(pictures), "--classes", "cat", "--out", str(tmp_path / "o"),
                     "--profile", "smoke", "--device", "mps"]) == 2  # fmt: skip
    one_line_refusal(capsys, "device='mps'", "not available")
    assert cliper.builds == 0


@pytest.mark.parametrize("blocker", ["file", "file-above"])
def test_an_unwritable_cache_folder_is_said_before_the_model(
    cliper, pictures, tmp_path, capsys, monkeypatch, blocker
):
    (tmp_path / "cachefile").write_text("in the way")
    cache = tmp_path / "cachefile" if blocker == "file" else tmp_path / "cachefile" / "sub"
    monkeypatch.setenv("CLIPER_CACHE", str(cache))
    assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(tmp_path / "o")) == 2
    one_line_refusal(capsys, "the cache folder", str(cache))
    assert cliper.builds == 0


@pytest.mark.parametrize("line", [1, 3])
def test_a_class_file_that_is_not_utf8_is_named_with_its_line(
    cliper, pictures, tmp_path, capsys, line
):
    lines = [b"ground, sky", b"cat", b"dog"]
    lines[line - 1] += b" caf\xe9"  # Latin-1
    path = tmp_path / "classes.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    argv = [str(pictures), "--classes", "cat", "--out", str(tmp_path / "o")]
    assert cliper.segment(*argv, "--set", f"classes={path}") == 2
    one_line_refusal(capsys, f"class file {path}, line {line}", "not UTF-8")
    assert cliper.builds == 0


def test_an_unwritable_output_path_is_said_before_the_model(cliper, pictures, tmp_path, capsys):
    (tmp_path / "plain").write_text("a file")
    for out in (tmp_path / "plain", tmp_path / "plain" / "sub"):
        assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(out)) == 2
        one_line_refusal(capsys, "--out")
    assert cliper.builds == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_reproduce_on_a_machine_without_the_plans_gpu_says_reproduces_own_option(capsys):
    assert cli.main(["reproduce", "--plan", "paper"]) == 2
    line = one_line_refusal(capsys, "device='cuda'", "--set device=cpu")
    assert "--device" not in line
    assert cli.main(["reproduce", "--plan", "paper", "--set", "device=cuda:0"]) == 2
    one_line_refusal(capsys, "device='cuda:0'", "--set device=cpu")


def test_environment_is_left_as_it_was(cliper, pictures, tmp_path):
    before = dict(os.environ)
    assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(tmp_path / "o")) == 0
    assert dict(os.environ) == before


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--profile", "smoke", "--set", "profile=paper"], "disagree"),
        (["--set", "is_normalize=maybe"], "is_normalize='maybe'"),
        (["--profile", "smoke", "--set", "classes=/no/such/classes.txt"], "not found"),
    ],
)
def test_the_app_refuses_a_bad_config_before_the_server_starts(monkeypatch, capsys, argv, needle):
    def serve(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(cli, "serve", serve)
    assert cli.main(["app", "--no-browser", *argv]) == 2
    one_line_refusal(capsys, needle)
