"""The one place where images are read and converted: files, PIL images, arrays and tensors to RGB
pixels.

Everything that reads an image (the pipeline, the SD extractor, the data sets, the command line, the
widgets, the plots) goes through `read_image` (a file) or `rgb_array` (anything), so a rule about
decoding lives here once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: the file suffixes read as images (lower case), for folders, glob patterns and explicit paths
#: alike.
#: what PIL raises for a file it cannot decode (a truncated, malformed or oversized image).
IMAGE_READ_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

#: what an image argument may be: a path, a PIL image, an (H, W[, 3|4]) array or a (3, H, W) tensor
#: in [0, 1].
ImageLike = Any


class ImageReadError(ValueError):
    """An image file cannot be decoded; the message names the file."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a file with one of the IMAGE_SUFFIXES."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def read_image(source: str | os.PathLike | BinaryIO, name: str | None = None) -> np.ndarray:
    """Decode an image file (a path, or an open binary file such as an upload) to a writable
    (H, W, 3) uint8 RGB array, turned upright as its EXIF orientation says (as every viewer shows
    it) and high bit depths scaled to 8 bits; ImageReadError naming the file (`name`, else the path)
    if it cannot be decoded or is empty."""
    name = name or source
    try:
        with Image.open(source) as im:
            if 0 in im.size:
                raise ImageReadError(
                    f"cannot read image {name}: it is empty ({im.width}x{im.height} pixels)"
                )
            # a phone photo stored sideways (orientation 6) comes out upright
            im = ImageOps.exif_transpose(im)
            return _rgb8(im, name)
    except IMAGE_READ_ERRORS as error:
        if isinstance(error, ImageReadError):
            raise
        raise ImageReadError(f"cannot read image {name}: {error}") from None


def _rgb8(im: Image.Image, name: Any) -> np.ndarray:
    """(H, W, 3) uint8 of a PIL image; 16-bit ("I;16*"), 32-bit ("I") and float ("F") grey scaled to
    8 bits.

    convert("RGB") would clip those modes (a 16-bit PNG turns almost white), so they are scaled
    here: 16-bit and non-negative integers up to 65535 by 255/65535, floats in [0, 1] by 255 and
    floats in [0, 255] as they are.
    """
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        values = np.asarray(im).astype(np.float64)
        if not np.isfinite(values).all():
            raise ImageReadError(
                f"cannot read image {name}: it holds NaN or infinite values (mode {im.mode})"
            )
        low, high = values.min(), values.max()
        if im.mode == "F" and low >= 0 and high <= 1:
            values = values * 255.0
        elif im.mode != "F" and low >= 0 and high <= 65535:
            values = values * (255.0 / 65535.0)
        elif not (im.mode == "F" and low >= 0 and high <= 255):
            raise ImageReadError(
                f"cannot read image {name}: mode {im.mode} values {low:g} .. {high:g} have no "
                f"8-bit meaning (integers 0..65535 and floats in [0, 1] or [0, 255] are read)"
            )
        grey = np.rint(values).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.array(im.convert("RGB"), dtype=np.uint8)  # np.array copies: writable


def rgb_array(image: ImageLike, *, floats: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a path, a PIL image, a uint8 array or a (3, H, W) float tensor in
    [0, 1].

    Arrays are (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped). With `floats`, float
    arrays (and tensors in (H, W, 3) layout) are accepted too, as [0, 1] when their maximum is at
    most 1, else as 0..255: plotting code receives all of these; the method itself takes only the
    unambiguous forms.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        if 0 in image.size:
            raise ValueError(f"image is empty ({image.width}x{image.height} pixels)")
        return _rgb8(image, "(PIL image)")
    if hasattr(image, "detach"):  # a torch tensor: no need to import torch to recognise it
        if image.is_floating_point() and not image.isfinite().all():
            raise ValueError("image tensor holds NaN or infinite values")
        if image.ndim == 3 and image.shape[0] == 3:
            in_unit = not image.numel() or (image.min() >= 0 and image.max() <= 1)
            if image.is_floating_point() and not in_unit and not floats:
                # clamping would turn a 0..255 tensor white: refuse instead
                raise ValueError(
                    f"image tensor must hold values in [0, 1], got {float(image.min()):g} .. "
                    f"{float(image.max()):g} (divide a 0..255 tensor by 255)"
                )
            if image.is_floating_point() and in_unit:  # the pipeline's convention
                image = (image.detach() * 255).round().byte()
            image = image.permute(1, 2, 0)  # (3, H, W) -> (H, W, 3); floats go on as arrays
        elif not floats:
            raise ValueError(f"image tensor must be (3, H, W) in [0, 1], got {tuple(image.shape)}")
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(
            f"image must be (H, W, 3) RGB (or RGBA / greyscale), got shape {array.shape}"
        )
    array = array[:, :, :3]
    if 0 in array.shape:
        raise ValueError(f"image is empty (shape {array.shape})")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError("image array holds NaN or infinite values")
    if array.dtype != np.uint8:
        if not floats or array.dtype.kind not in "fiub":
            raise ValueError(
                f"image array must be HxWx3 uint8, got shape {array.shape} dtype {array.dtype}"
            )
        if array.dtype.kind == "f" and array.size and array.max() <= 1.0:
            array = array * 255.0  # floats in [0, 1] are the other common image convention
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return array


def float_tensor(image: ImageLike):
    """An image as a float32 tensor (1, 3, H, W) in [0, 1]; float tensors pass through unrounded."""
    import torch  # lazy: the command line and the app import this module without torch

    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(
                f"tensor images must be float (3, H, W) in [0, 1], got {tuple(image.shape)} "
                f"{image.dtype}"
            )
        if 0 in image.shape:
            raise ValueError(f"image is empty (shape {tuple(image.shape)})")
        if not image.isfinite().all():
            raise ValueError(
                "tensor images must hold finite values in [0, 1], got NaN or infinite values"
            )
        if image.numel() and (image.min() < 0 or image.max() > 1):
            raise ValueError("tensor images must hold values in [0, 1]")
        return image[None].float()  # (1, 3, H, W)
    if isinstance(image, np.ndarray) and image.dtype != np.uint8:
        # the shapes rgb_array takes (grey, RGB, RGBA with alpha dropped), as `segment` does
        raise ValueError(
            f"numpy images must be uint8 (H, W[, 3|4]), got shape {image.shape} dtype {image.dtype}"
        )
    if not isinstance(image, (np.ndarray, Image.Image, str, os.PathLike)):
        raise TypeError(
            f"unsupported image type {type(image).__name__}: use a uint8 array, "
            "a PIL image or a tensor"
        )
    # torch.tensor copies: arrays from PIL are read-only
    return torch.tensor(rgb_array(image)).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)


def content_id(image: ImageLike) -> str:
    """A content id for an image (PIL, (H, W, 3) array or tensor): shape, dtype and SHA-1 of its
    bytes."""
    array = np.ascontiguousarray(
        np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    )
    digest = hashlib.sha1(array.tobytes()).hexdigest()[:16]
    return f"{'x'.join(map(str, array.shape))}:{array.dtype}:{digest}"


def resize_square(image, side: int, mode: str = "nearest"):
    """(1, 3, H, W) tensor in [0, 1] -> (1, 3, side, side) in [0, 1], the whole image (aspect ratio
    not kept)."""
    import torch  # lazy, as in float_tensor
    import torch.nn.functional as F

    if mode == "nearest":
        # what diffusers' VaeImageProcessor does with tensors: F.interpolate's default mode
        return F.interpolate(image, size=(side, side), mode="nearest")
    if mode in ("bilinear", "bicubic"):
        # antialias like PIL, which is what a user choosing these modes would compare against
        out = F.interpolate(
            image, size=(side, side), mode=mode, align_corners=False, antialias=True
        )
        return out.clamp(0, 1)  # bicubic overshoots
    if mode == "lanczos":
        # what diffusers does with a PIL image: 8-bit PIL resize, then / 255
        array = (image[0].permute(1, 2, 0).cpu() * 255).round().to(torch.uint8).numpy()  # (H, W, 3)
        resized = Image.fromarray(array).resize((side, side), resample=Image.Resampling.LANCZOS)
        return float_tensor(np.asarray(resized)).to(image.device)
    raise ValueError(f"sd_resize={mode!r}: use nearest, bilinear, bicubic or lanczos")


def crop_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) windows covering the image (mmseg's slide order: rows, then columns; last
    ones flush)."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes
