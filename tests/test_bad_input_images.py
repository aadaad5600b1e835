"""Bad images, the way careless and hostile users hand them in (issue 10): files with odd
orientation, bit depth or content, empty or broken files, arrays and tensors the method cannot read,
sizes over the limit, image arguments that name no image. Each case asserts the exact error type and
a message fragment, or the correct output.

The model is the golden tiny CLIP (4 blocks, patch 16) without Stable Diffusion.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cliper_lib.images import ImageReadError, float_tensor, read_image, rgb_array
from cliper_lib.method import fusion as elf
from cliper_lib.method.clip_backbone import (
    MAX_PATCH_TOKENS,
    preprocess_image,
    resized_shape,
)
from cliper_lib.method.pipeline import CLIPer
from cliper_lib.suite.runs.batch import expand_images

from helpers import fast_golden_model, photo, save


@pytest.fixture(scope="module")
def tiny(golden_clip) -> CLIPer:
    return fast_golden_model(golden_clip)


# ==================================================================================================
# Reading images: orientation, bit depth, empty and broken files
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
# The size limit: refused before anything is allocated
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
# Image arguments of the command line: paths, folders, patterns
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
