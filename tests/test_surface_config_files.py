"""Config files (presets, class files, templates) are read the way the command line reads values,
and every problem names the file, and the line where there is one (issue 26).
"""

from __future__ import annotations

import pytest

import cliper_lib.suite.cli.commands as cli
from cliper_lib.config import CLIPerConfig, ConfigError, load_preset_values
from cliper_lib.vocab import load_templates, read_class_file


def preset_file(tmp_path, text: str | bytes, name: str = "mine.yaml"):
    path = tmp_path / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# --- presets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gone.yaml", "sub/gone.yml", "./gone"])
def test_a_preset_path_that_does_not_exist_says_so(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="preset file .*gone.* does not exist"):
        load_preset_values(name)


def test_a_preset_name_that_is_not_bundled_lists_the_bundled_ones():
    with pytest.raises(ConfigError, match="unknown preset 'vit-b-16/nope'; available: .*voc21"):
        load_preset_values("vit-b-16/nope")


def test_a_folder_given_as_preset_says_so(tmp_path):
    (tmp_path / "p.yaml").mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_preset_values(str(tmp_path / "p.yaml"))


@pytest.mark.parametrize("line", [1, 2])
def test_a_preset_that_is_not_utf8_names_the_file_and_line(tmp_path, line):
    lines = [b"attention_thr: 0.2", b"classes: voc21"]
    lines[line - 1] += b"  # caf\xe9"
    path = preset_file(tmp_path, b"\n".join(lines) + b"\n")
    with pytest.raises(ConfigError, match=f"preset {path}, line {line}, is not UTF-8"):
        load_preset_values(str(path))


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_a_preset_with_a_byte_order_mark_reads_the_same(tmp_path, encoding):
    path = preset_file(tmp_path, "attention_thr: 0.2\nprofile: smoke\n".encode(encoding))
    cfg = CLIPerConfig.from_preset(str(path))
    assert cfg.attention_thr == 0.2 and cfg.profile == "smoke"


@pytest.mark.parametrize(
    "line,needle",
    [
        ("attention_thr: high", "attention_thr='high'"),
        ("is_normalize: maybe", "is_normalize='maybe'"),
        ("fuse_layers: 4", "fuse_layers=4"),
        ("ignore_labels: [255, x]", "ignore_labels=[255, 'x']"),
        ("sd_num_steps: 0", "sd_num_steps=0"),
    ],
)
def test_a_wrong_value_in_a_preset_is_one_line_like_on_the_command_line(
    tmp_path, capsys, line, needle
):
    path = preset_file(tmp_path, line + "\n")
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        CLIPerConfig.from_preset(str(path))
    assert cli.main(["segment", "x.png", "--out", str(tmp_path / "o"), "--preset", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and needle in err


def test_preset_texts_are_read_by_the_fields_type(tmp_path):
    path = preset_file(tmp_path, 'is_normalize: "no"\nattention_thr: "0.3"\nsize: "224"\n')
    cfg = CLIPerConfig.from_preset(str(path))
    assert (cfg.is_normalize, cfg.attention_thr, cfg.size) == (False, 0.3, 224)


# --- class files and templates --------------------------------------------------------------------
def test_a_class_file_with_a_byte_order_mark_keeps_its_first_word(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("sky, ground\ncat\ndog\n", encoding="utf-8-sig")
    classes = read_class_file(str(path))
    assert classes.background == ["sky", "ground"] and classes.names == ["cat", "dog"]


def test_a_class_file_without_background_line_keeps_first_class_clean(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbfbackground\r\ncat\r\n")  # BOM and Windows line ends
    assert read_class_file(str(path)).background == ["background"]
    assert read_class_file(str(path)).names == ["cat"]


@pytest.mark.parametrize("line", [1, 4])
def test_a_class_file_that_is_not_utf8_names_file_and_line(tmp_path, line):
    lines = [b"sky", b"cat", b"dog", b"bird"]
    lines[line - 1] = lines[line - 1] + b"\x92s"  # Windows-1252 apostrophe
    path = tmp_path / "c.txt"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=f"class file {path}, line {line}, is not UTF-8"):
        read_class_file(str(path))


def test_a_template_file_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"a photo of a {}.\na pict\xfcre of a {}.\n")
    with pytest.raises(ValueError, match=f"template file {path}, line 2, is not UTF-8"):
        load_templates(str(path))
    path.write_text("a photo of a {}.\n", encoding="utf-8-sig")
    assert load_templates(str(path)) == ["a photo of a {}."]
