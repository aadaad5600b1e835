"""What careless and hostile users do, case by case (issue 10): each case asserts the exact error
type and a message fragment, or the correct output, and that nothing partial is left behind.

The models are the golden tiny CLIP (4 blocks, patch 16) without Stable Diffusion; the command line
runs in-process with `build_model` replaced by one that counts how often it was called, so "checked
before the model loads" is a count of 0.
"""

from __future__ import annotations

import errno
import io
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cliper_lib.files as files
import cliper_lib.suite.cli.commands as cli
import cliper_lib.suite.runs.batch as batch
from cliper_lib.config import CLIPerConfig, ConfigError, load_preset_values, resolve_device
from cliper_lib.eval.runner import run_eval
from cliper_lib.files import OutputPathError, atomic_group, check_output_file, check_output_folder
from cliper_lib.images import ImageReadError, float_tensor, read_image, rgb_array
from cliper_lib.method import fusion as elf
from cliper_lib.method.clip_backbone import (
    MAX_PATCH_TOKENS,
    preprocess_image,
    resized_shape,
    walk_layers,
)
from cliper_lib.method.pipeline import CLIPer
from cliper_lib.method.refine import normalize_head_maps
from cliper_lib.suite.runs.batch import expand_images, output_stems
from cliper_lib.suite.toolkit.viz import load_label_png, save_label_png
from cliper_lib.vocab import check_class_names

FAST = dict(profile="smoke", refinement="none", device="cpu", size=32, sliding_crop_size=0)


@pytest.fixture(scope="module")
def tiny(golden_clip) -> CLIPer:
    """The method on the golden tiny CLIP, coarse only (no SD), small inputs: a segment call takes
    milliseconds."""
    return CLIPer(
        CLIPerConfig.from_preset("vit-b-16/voc21", **FAST), golden_clip, None, text_cache_dir=False
    )


def photo(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray | Image.Image, **kwargs) -> Path:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    image.save(path, **kwargs)
    return path


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial files left in a folder (atomic writes use hidden '.name.*' files)."""
    return (
        sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
        if folder.exists()
        else []
    )


# ==================================================================================================
# 1. Reading images: orientation, bit depth, empty and broken files
def test_exif_orientation_is_applied(tmp_path):
    stored = photo(20, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": phone photos taken upright
    path = save(tmp_path / "phone.png", stored, exif=exif.tobytes())
    upright = read_image(path)
    assert upright.shape == (40, 20, 3)
    np.testing.assert_array_equal(upright, np.rot90(stored, k=-1))  # as every viewer shows it


def _scaled(values: np.ndarray, factor: float) -> np.ndarray:
    grey = np.rint(values.astype(np.float64) * factor).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


@pytest.mark.parametrize(
    "mode,values,factor",
    [
        ("I;16", np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16), 255 / 65535),
        ("I", (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.int32), 255 / 65535),
        ("F", np.linspace(0, 1, 48 * 64).reshape(48, 64).astype(np.float32), 255.0),
        ("F", np.linspace(0, 255, 48 * 64).reshape(48, 64).astype(np.float32), 1.0),
    ],
)
def test_high_bit_depth_is_scaled_not_saturated(tmp_path, mode, values, factor):
    path = save(tmp_path / ("deep.png" if mode == "I;16" else "deep.tif"), values)
    with Image.open(path) as check:
        assert check.mode == mode
    pixels = read_image(path)
    np.testing.assert_array_equal(pixels, _scaled(values, factor))
    assert (pixels == 255).mean() < 0.01  # convert("RGB") alone made 99.6 % of a 16-bit PNG white


@pytest.mark.parametrize(
    "values,fragment",
    [
        (np.array([[np.nan, 0.5]], np.float32), "NaN or infinite"),
        (np.array([[np.inf, 0.5]], np.float32), "NaN or infinite"),
        (np.array([[-3.0, 0.5]], np.float32), "no 8-bit meaning"),
        (np.array([[0.0, 300.0]], np.float32), "no 8-bit meaning"),
        (np.array([[-5, 7]], np.int32), "no 8-bit meaning"),
        (np.array([[0, 70000]], np.int32), "no 8-bit meaning"),
    ],
)
def test_unconvertible_deep_images_are_refused(tmp_path, values, fragment):
    path = save(tmp_path / "odd.tif", values)
    with pytest.raises(ImageReadError, match=fragment) as caught:
        read_image(path)
    assert "odd.tif" in str(caught.value)


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"", "cannot read image"),
        (b"this is not an image", "cannot identify"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "cannot read image"),
    ],
)
def test_broken_files_name_the_file(tmp_path, content, fragment):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=fragment) as caught:
        read_image(path)
    assert str(path) in str(caught.value)


def test_truncated_jpeg_names_the_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(photo(64, 64)).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(path)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((7, 0), np.uint8),
        Image.new("RGB", (0, 0)),
        torch.zeros(3, 0, 4),
    ],
)
def test_empty_images_are_refused(image):
    with pytest.raises(ValueError, match="empty"):
        rgb_array(image)


def test_empty_image_reaches_no_stage(tiny):
    with pytest.raises(ValueError, match="empty"):
        tiny.segment(np.zeros((0, 0, 3), np.uint8), classes="cat")
    with pytest.raises(ValueError, match=r"empty \(0x4 pixels\)"):
        resized_shape(0, 4, 336, 16)  # no ZeroDivisionError


@pytest.mark.parametrize(
    "image,error,fragment",
    [
        (torch.full((3, 8, 8), float("nan")), ValueError, "finite"),
        (torch.tensor(float("inf")).expand(3, 8, 8), ValueError, "finite"),
        (torch.full((3, 8, 8), 1.5), ValueError, r"\[0, 1\]"),
        (torch.rand(4, 8, 8), ValueError, r"\(3, H, W\)"),
        (torch.randint(0, 255, (3, 8, 8)), ValueError, "float"),
        (np.random.rand(8, 8, 3), ValueError, "uint8"),
        ([[0, 1], [2, 3]], TypeError, "unsupported image type"),
    ],
)
def test_bad_tensors_and_arrays_for_the_sd_half(image, error, fragment):
    with pytest.raises(error, match=fragment):
        float_tensor(image)


@pytest.mark.parametrize(
    "image",
    [
        torch.full((3, 8, 8), float("nan")),
        np.full((8, 8, 3), np.nan),
        np.full((8, 8, 3), -np.inf),
    ],
)
def test_nan_inputs_are_refused_before_the_method_runs(tiny, image):
    with pytest.raises(ValueError, match="NaN or infinite"):
        rgb_array(image, floats=True)
    with pytest.raises(ValueError, match="NaN or infinite"):
        tiny.segment(image, classes="cat")


# ==================================================================================================
# 2. The size limit: refused before anything is allocated
def test_long_strip_is_refused_before_resizing(tiny, monkeypatch):
    def no_resize(*args, **kwargs):
        raise AssertionError("resized although the image is over the limit")

    monkeypatch.setattr(Image.Image, "resize", no_resize)
    strip = np.zeros((3, 5000, 3), np.uint8)
    with pytest.raises(ValueError, match=f"over the limit of {MAX_PATCH_TOKENS}"):
        tiny.segment(strip, classes="cat")
    with pytest.raises(ValueError, match="crop it or lower size"):
        preprocess_image(strip, 336, 16, (0, 0, 0), (1, 1, 1))


@pytest.mark.parametrize(
    "width,height,size,patch,accepted",
    [
        (MAX_PATCH_TOKENS * 16, 16, 16, 16, True),  # 1 x 4096 patches: exactly the limit
        (MAX_PATCH_TOKENS * 16 + 16, 16, 16, 16, False),  # 1 x 4097
        (64 * 14, 64 * 14, 64 * 14, 14, True),  # 64 x 64
        (65 * 14, 64 * 14, 64 * 14, 14, False),  # 64 x 65
        (5000, 3, 336, 16, False),  # the strip: 21 x 35000 patches
        (1, 1, 336, 16, True),
    ],
)
def test_limit_boundary(width, height, size, patch, accepted):
    if accepted:
        h, w = resized_shape(width, height, size, patch)
        assert (h // patch) * (w // patch) <= MAX_PATCH_TOKENS
    else:
        with pytest.raises(ValueError, match="over the limit"):
            resized_shape(width, height, size, patch)


def test_uniform_attention_gives_uniform_not_nan():
    """Exactly uniform attention centres every column to 0; the authors' 0/0 would make every map
    NaN."""
    fused = elf.finish_fused_attention(torch.full((1, 2, 5, 5), 0.2))
    torch.testing.assert_close(fused, torch.full((1, 2, 5, 5), 0.2))
    mixed = torch.tensor([[[[0.3, 0.5], [0.5, 0.7]]]])  # row 0 is at or below both column means
    assert torch.isfinite(elf.finish_fused_attention(mixed)).all()


def test_one_pixel_image_segments(tiny):
    result = tiny.segment(np.full((1, 1, 3), 200, np.uint8), classes="cat; dog", background="sky")
    assert result.labels.shape == (1, 1) and 0 <= int(result.labels) <= 2


# ==================================================================================================
# 3. Classes and configs
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


def test_more_than_255_classes_write_16_bit_label_pngs(tmp_path):
    labels = np.arange(12 * 30).reshape(12, 30) % 301  # ids up to 300
    path = save_label_png(tmp_path / "many.png", labels, num_labels=301)
    with Image.open(path) as written:
        assert written.mode == "I;16"
    np.testing.assert_array_equal(load_label_png(path), labels)
    # the format follows the class list, not what happened to be predicted
    few = save_label_png(tmp_path / "few_ids.png", np.zeros((4, 4), np.int64), num_labels=301)
    assert Image.open(few).mode == "I;16"
    assert Image.open(save_label_png(tmp_path / "p.png", labels % 256)).mode == "P"
    with pytest.raises(ValueError, match="0..65535"):
        save_label_png(tmp_path / "too_many.png", np.array([[70000]]))
    assert not (tmp_path / "too_many.png").exists()


# ==================================================================================================
# 4. The command line: checked before the model loads, one line per failure, nothing half-written
@pytest.fixture(scope="module")
def text_cache(tmp_path_factory) -> Path:
    """One text-embedding cache for the module's command-line runs: each run builds a fresh
    model."""
    return tmp_path_factory.mktemp("text-cache")


@pytest.fixture()
def cliper(golden_clip, monkeypatch, text_cache):
    """main() with the model builder replaced by the tiny coarse model; `.builds` counts the model
    loads."""

    class Runner:
        builds = 0

        def __call__(self, *argv: str) -> int:
            return cli.main([*argv])

        @staticmethod
        def segment(*argv: str) -> int:
            return cli.main(
                [
                    "segment",
                    *argv,
                    "--profile",
                    "smoke",
                    "--refinement",
                    "none",
                    "--quiet",
                    "--background",
                    "sky",
                    "--set",
                    "size=32",
                    "--set",
                    "sliding_crop_size=0",
                ]
            )

    runner = Runner()

    def build(cfg):
        runner.builds += 1
        return CLIPer(cfg, golden_clip, None, text_cache_dir=str(text_cache))

    monkeypatch.setattr(cli, "build_model", build)
    return runner


@pytest.fixture()
def pictures(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    save(folder / "a.png", photo(24, 40, 1))
    save(folder / "b.jpg", photo(30, 30, 2))
    return folder


def test_segment_writes_three_files_per_image(cliper, pictures, tmp_path, capsys):
    out = tmp_path / "out"
    assert cliper.segment(str(pictures), "--classes", "cat; dog", "--out", str(out)) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "a_labels.png",
        "a_overlay.png",
        "a_scores.json",
        "b_labels.png",
        "b_overlay.png",
        "b_scores.json",
    ]
    assert "wrote 6 files for 2 image(s)" in capsys.readouterr().out and cliper.builds == 1


def test_same_stems_get_unique_stable_names(cliper, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    save(folder / "photo.jpg", photo(24, 40, 1))
    save(folder / "photo.png", photo(40, 24, 2))
    out = tmp_path / "out"
    for _ in range(2):  # the same names again on a second run
        assert cliper.segment(str(folder), "--classes", "cat", "--out", str(out)) == 0
        assert sorted(p.name for p in out.iterdir()) == [
            f"photo_{ext}{suffix}" for ext in ("jpg", "png") for suffix in batch.OUTPUT_SUFFIXES
        ]
    assert load_label_png(out / "photo_png_labels.png").shape == (40, 24)
    assert json.loads((out / "photo_jpg_scores.json").read_text())["image"].endswith("photo.jpg")


def test_output_stems_rules(tmp_path):
    paths = [Path("x/photo.jpg"), Path("x/Photo.PNG"), Path("y/photo.jpg"), Path("x/other.png")]
    stems = output_stems(paths)
    assert stems[Path("x/other.png")] == "other" and stems[Path("x/Photo.PNG")] == "Photo_png"
    assert stems[Path("x/photo.jpg")].startswith("photo_jpg_") and stems[
        Path("y/photo.jpg")
    ].startswith("photo_jpg_")
    assert len({s.casefold() for s in stems.values()}) == 4
    assert output_stems(list(reversed(paths))) == stems  # depends on the set, not the order


def test_exif_photo_labels_line_up_with_the_upright_photo(cliper, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    save(tmp_path / "phone.jpg", photo(20, 40), exif=exif.tobytes(), quality=95)
    out = tmp_path / "out"
    assert cliper.segment(str(tmp_path / "phone.jpg"), "--classes", "cat", "--out", str(out)) == 0
    assert load_label_png(out / "phone_labels.png").shape == (40, 20)


@pytest.mark.parametrize("bad", ["empty.png", "text.png", "strip.png"])
def test_one_bad_image_is_named_and_the_batch_goes_on(cliper, pictures, tmp_path, capsys, bad):
    {
        "empty.png": lambda p: p.write_bytes(b""),
        "text.png": lambda p: p.write_text("hello"),
        "strip.png": lambda p: save(p, np.zeros((3, 5000, 3), np.uint8)),
    }[bad](pictures / bad)
    out = tmp_path / "out"
    assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(out)) == 1
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [
        f"{s}{x}" for s in "ab" for x in batch.OUTPUT_SUFFIXES
    ]
    assert f"skipping {pictures / bad}" in captured.err and "1 of 3 image(s) failed" in captured.err
    assert "Traceback" not in captured.err


def test_unreadable_pixels_after_a_good_header_are_skipped_too(cliper, pictures, tmp_path, capsys):
    save(
        pictures / "deep.tif", np.array([[-5, 7]], np.int32)
    )  # the header is fine, the values are not
    out = tmp_path / "out"
    assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(out)) == 1
    assert (
        "deep.tif" in capsys.readouterr().err
        and len(list(out.iterdir())) == 6
        and cliper.builds == 1
    )


def test_all_images_bad_loads_no_model_and_leaves_no_folder(cliper, tmp_path, capsys):
    (tmp_path / "bad.png").write_text("no")
    out = tmp_path / "out"
    assert cliper.segment(str(tmp_path / "bad.png"), "--classes", "cat", "--out", str(out)) == 1
    assert cliper.builds == 0 and not out.exists()
    assert "1 of 1 image(s) failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setup,fragment",
    [
        (lambda t: (t / "out").write_text("x"), "is an existing file, not a folder"),
        (lambda t: (t / "file").write_text("x"), "is a file, so no folder can be made under it"),
    ],
)
def test_bad_out_is_refused_before_the_model(cliper, pictures, tmp_path, capsys, setup, fragment):
    setup(tmp_path)
    out = tmp_path / ("out" if "existing" in fragment else "file/sub")
    assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and cliper.builds == 0


def _read_only(monkeypatch, folder: Path) -> None:
    """Make `folder` refuse new files, also for root (who ignores permission bits): mkstemp there
    fails."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real = files.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).absolute() == folder.absolute():
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


def test_read_only_out_is_refused_before_the_model(cliper, pictures, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    _read_only(monkeypatch, locked)
    assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(locked / "out")) == 2
    assert "cannot write in" in capsys.readouterr().err and cliper.builds == 0
    assert not (locked / "out").exists()


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--classes", " ; "], "at least one class name"),
        ([], "no --classes given"),
        (["--set", "attention_thr=3", "--classes", "cat"], "attention_thr"),
        (["--set", "nonsense=1", "--classes", "cat"], "nonsense"),
        (["--preset", "no/such", "--classes", "cat"], "unknown preset"),
        (["--device", "cuda", "--classes", "cat"], "no CUDA GPU"),
    ],
)
def test_bad_arguments_fail_before_the_model_in_one_line(
    cliper, pictures, tmp_path, capsys, monkeypatch, argv, fragment
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    status = cli.main(
        [
            "segment",
            str(pictures),
            "--out",
            str(out),
            "--profile",
            "smoke",
            "--refinement",
            "none",
            "--quiet",
            *argv,
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert cliper.builds == 0 and not out.exists()


def test_device_cuda_without_gpu_through_the_real_builder(monkeypatch, pictures, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = cli.main(
        [
            "segment",
            str(pictures),
            "--classes",
            "cat",
            "--profile",
            "smoke",
            "--device",
            "cuda",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        status == 2
        and err.startswith("cliper: device='cuda' but no CUDA GPU")
        and err.count("\n") == 1
    )


@pytest.mark.parametrize(
    "patterns,error,fragment",
    [
        (["{d}/notes.txt"], ValueError, "not an image type"),
        (["{d}/none/*.png"], FileNotFoundError, "no image found"),
        (["{d}/empty_folder"], FileNotFoundError, "no image found"),
        (["{d}/missing.jpg"], FileNotFoundError, "no image found"),
    ],
)
def test_image_arguments(tmp_path, patterns, error, fragment):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(error, match=fragment):
        expand_images([p.format(d=tmp_path) for p in patterns])


def test_gif_is_read_in_folders_and_as_explicit_path(tmp_path):
    gif = save(tmp_path / "anim.gif", photo(10, 10))
    assert expand_images([str(tmp_path)]) == [gif] == expand_images([str(gif)])
    assert read_image(gif).shape == (10, 10, 3)


def test_many_classes_through_the_cli_write_16_bit_pngs(cliper, pictures, tmp_path, monkeypatch):
    import cliper_lib.method.pipeline as pipeline

    monkeypatch.setattr(
        pipeline, "load_templates", lambda name: ["a photo of a {}."]
    )  # 300 prompts, not 4,500
    out = tmp_path / "out"
    names = "; ".join(f"thing {k}" for k in range(300))
    assert (
        cliper.segment(
            str(pictures / "a.png"),
            "--classes",
            names,
            "--out",
            str(out),
            "--set",
            "score_threshold=0",
        )
        == 0
    )
    with Image.open(out / "a_labels.png") as written:
        assert written.mode == "I;16"
    labels = load_label_png(out / "a_labels.png")
    assert labels.shape == (24, 40) and 0 <= labels.min() and labels.max() <= 300


# --- a full disk: each image's three files together or not at all ---------------------------------
@pytest.mark.parametrize("fail_at", [1, 2, 4, 6, 9])
def test_disk_full_keeps_whole_images_only(
    cliper, pictures, tmp_path, capsys, monkeypatch, fail_at
):
    """The fsync number `fail_at` reports ENOSPC. Per image: 1 label PNG, 2 overlay (each its own
    atomic write), 3-5 the group's three files; image b: 6-10."""
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    out = tmp_path / "out" / "nested"
    assert cliper.segment(str(pictures), "--classes", "cat", "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert (tmp_path / "out").exists() == out.exists()  # no empty parent folder either
    assert "No space left on device" in err and err.count("\n") == 1
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    stems = {name.split("_")[0] for name in written}
    assert all(
        f"{s}{x}" in written for s in stems for x in batch.OUTPUT_SUFFIXES
    )  # whole images only
    assert len(written) == 3 * len(stems) and leftovers(out) == []
    assert ("1 image(s) complete" in err) == bool(stems) and ("nothing written" in err) == (
        not stems
    )
    assert out.exists() == bool(stems)  # no empty folder left behind


def test_atomic_group_removes_everything_on_failure(tmp_path):
    (tmp_path / "b.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_group([tmp_path / "a.txt", tmp_path / "b.txt"]) as (a, b):
            a.write_text("new a")
            raise RuntimeError("boom")
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]
        and (tmp_path / "b.txt").read_text() == "old"
    )


# --- errors nobody planned for, --debug, Ctrl-C ---------------------------------------------------
@pytest.mark.parametrize(
    "raised,status,fragment",
    [
        (
            RuntimeError("CUDA out of memory"),
            1,
            "RuntimeError: CUDA out of memory (run with --debug",
        ),
        (
            AssertionError("Torch not compiled with CUDA enabled"),
            1,
            "AssertionError: Torch not compiled",
        ),
        (KeyboardInterrupt(), 130, "interrupted"),
        (PermissionError(13, "Permission denied"), 1, "PermissionError"),
    ],
)
def test_unexpected_failures_are_one_line(
    monkeypatch, pictures, tmp_path, capsys, raised, status, fragment
):
    def build(cfg):
        raise raised

    monkeypatch.setattr(cli, "build_model", build)
    argv = [
        "segment",
        str(pictures),
        "--classes",
        "cat",
        "--profile",
        "smoke",
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli.main(argv) == status
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and not (tmp_path / "o").exists()
    with pytest.raises(type(raised)):  # --debug: the traceback, before or after the command
        cli.main(["--debug", *argv] if status == 1 else [*argv, "--debug"])


# --- cliper eval --out ----------------------------------------------------------------------------
def _eval_args(*argv: str):
    return cli.build_parser().parse_args(
        [
            "eval",
            "--profile",
            "smoke",
            "--dataset",
            "synthetic",
            "--limit",
            "2",
            "--no-progress",
            *argv,
        ]
    )


@pytest.mark.parametrize(
    "option,make,fragment",
    [
        ("--out", lambda t: t.mkdir(), "is a folder; give a file name"),
        ("--table", lambda t: t.mkdir(), "is a folder; give a file name"),
        ("--out", lambda t: t.parent.joinpath("f").write_text("x"), "its folder"),
    ],
)
def test_eval_output_is_checked_before_the_first_image(tmp_path, capsys, option, make, fragment):
    target = tmp_path / "target"
    make(target)
    path = tmp_path / "f" / "r.json" if fragment == "its folder" else target
    built = []
    assert run_eval(_eval_args(option, str(path)), model_factory=built.append) == 2
    assert fragment in capsys.readouterr().err and built == []


@pytest.mark.parametrize(
    "argv,fragment",
    [  # handled before issue 10 too: kept so they stay handled
        (["--limit", "0"], "--limit must be >= 1"),
        (["--set", "attention_thr=7"], "attention_thr"),
        (["--set", "nonsense=1"], "nonsense"),
        (["--dataset", "folder"], "--data-root"),
        (["--checkpoint", "{d}/old.ckpt.json"], "pass --resume"),
    ],
)
def test_eval_bad_options_before_any_model(tmp_path, capsys, argv, fragment):
    (tmp_path / "old.ckpt.json").write_text("{}")
    built = []
    assert (
        run_eval(_eval_args(*[a.format(d=tmp_path) for a in argv]), model_factory=built.append) == 2
    )
    err = capsys.readouterr().err
    assert fragment in err and built == [] and "Traceback" not in err


def test_eval_out_in_read_only_folder(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    _read_only(monkeypatch, locked)
    built = []
    assert run_eval(_eval_args("--out", str(locked / "r.json")), model_factory=built.append) == 2
    assert "cannot write in" in capsys.readouterr().err and built == []


def test_output_checks_create_nothing(tmp_path):
    check_output_folder(tmp_path / "a" / "b")
    check_output_file(tmp_path / "c" / "r.json")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(tmp_path)


# ==================================================================================================
# 5. Tests that let deliberate bugs through (mutation gaps)
def test_sd_encode_is_latent_mean_times_scaling_factor():
    """Independent of the extractor: diffusers' own VAE call. (The authors' latents are also pinned
    by tests/test_golden.py::test_sd_input_latents_and_timestep_match_authors.)"""
    from cliper_lib.method.sd_attention import SDSelfAttention
    from cliper_lib.weights.sd import build_random_sd_components

    components = build_random_sd_components(seed=0)
    vae = components.vae
    assert vae.config.scaling_factor not in (0, 1)  # else dropping it would go unnoticed
    extractor = SDSelfAttention(components, CLIPerConfig(profile="smoke"))
    # walked
    assert all(type(block).__name__ == "DownEncoderBlock2D" for block in vae.encoder.down_blocks)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(extractor.encode(pixels), expected, rtol=0, atol=0)


@pytest.fixture(scope="module")
def walk_and_features(golden_clip, cat_image):
    cfg = CLIPerConfig.from_preset("vit-b-16/voc21", **{**FAST, "size": 64})
    model = CLIPer(cfg, golden_clip, None, text_cache_dir=False)
    return model, model.clip_features(cat_image)


def test_fuse_layers_full_range_is_the_default_exactly(walk_and_features):
    model, features = walk_and_features
    last = model.clip.num_layers - 2
    default = model.fusion(features)
    full = model.fusion(features, model.cfg.replace(fuse_layers=[0, last]))
    assert torch.equal(default.whole.last_attention, full.whole.last_attention)
    assert torch.equal(default.whole.embeddings, full.whole.embeddings)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_fuse_layers_single_block_fuses_exactly_that_block(walk_and_features, k):
    model, features = walk_and_features
    single = model.fusion(features, model.cfg.replace(fuse_layers=[k, k])).whole
    expected = elf.fuse_layers(model.clip.visual, features.walk, fuse=[k])
    assert torch.equal(single.last_attention, expected.last_attention)
    # Â_0 of block k alone
    summed = next(elf.iter_fused_attentions(features.walk.attentions[k].float(), 1))
    first = elf.fuse_layers(model.clip.visual, features.walk, fuse=[k], rounds=1)
    torch.testing.assert_close(first.last_attention, summed.float(), rtol=1e-5, atol=1e-7)


def test_head_map_threshold_tie_is_kept():
    """DESIGN: zero entries `< attention_thr`; an entry exactly at the threshold stays (a `<=` would
    drop it)."""
    maps = torch.tensor([[[0.2, 0.6], [0.8, 0.4]]], dtype=torch.float64)
    scaled = maps / (maps.amax(dim=-2, keepdim=True) + 1e-5)
    thr = float(scaled[0, 0, 0])  # the (0, 0) entry lands exactly on the threshold
    out = normalize_head_maps(maps, thr)
    assert out[0, 0, 0] > 0
    torch.testing.assert_close(out[0, 0], scaled[0, 0] / (scaled[0, 0].sum() + 1e-5))
    assert normalize_head_maps(maps, thr + 1e-9)[0, 0, 0] == 0


def test_coarse_map_threshold_tie_is_kept():
    """DESIGN: zero every value below attention_thr × max; a value exactly at it stays."""
    select = torch.tensor([[[1.0, 0.5, 0.25, 0.0]]])
    kept = elf.threshold_select_map(select, 0.5)
    assert kept.tolist() == [[[1.0, 0.5, 0.0, 0.0]]]


def test_sides_are_rounded_to_patch_multiples_not_floored():
    """DESIGN: round each side to the nearest multiple of p: 451 x 300 at 336 -> 505.1 px -> 32
    patches (512), where flooring would give 31 (496)."""
    assert resized_shape(451, 300, 336, 16) == (336, 512)
    x = preprocess_image(np.zeros((300, 451, 3), np.uint8), 336, 16, (0, 0, 0), (1, 1, 1))
    assert tuple(x.shape) == (3, 336, 512)


def test_walk_grid_follows_the_rounded_sides(golden_clip):
    x = preprocess_image(
        np.zeros((300, 451, 3), np.uint8), 336, 16, golden_clip.mean, golden_clip.std
    )
    assert walk_layers(golden_clip.visual, x[None], num_blocks=1).grid == (21, 32)
