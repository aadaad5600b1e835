"""Running a VFM on images: its input (resize to patch multiples, its normalisation, its position
embeddings' resize: `VFMInput`), its last-layer patch tokens, and the two stage computations built
on them (ProxyCLIP-style attention for CLIP's grid; refinement features).

The model is any module called as `model(pixel_values=..., **forward_kwargs)` that returns
`last_hidden_state` (B, prefix + fh·fw, D) after its final norm: transformers' ViTModel (DINO) and
Dinov2Model, built or loaded by `cliper_lib.weights.vfm`. Images: (B, 3, H, W) float.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..images import rgb_array
from .affinity import proxy_attention
from .positions import positions_resized

#: the normalisation DINO and DINOv2 were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VFMEncoder:
    """A vision foundation model with what is needed to use it (built by cliper_lib.weights.vfm, or
    by hand)."""

    model: torch.nn.Module  # eval mode; returns last_hidden_state after the final norm
    name: str  # short name, e.g. dino-b8 (config.VFM_MODELS)
    patch_size: int
    num_prefix_tokens: int  # CLS plus register tokens, dropped from the output
    weights_id: str  # hub repo id, or "random-seed-N"
    # ViTModel: interpolate_pos_encoding=True
    forward_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @torch.no_grad()
    def patch_features(
        self, pixels: torch.Tensor, position_resize: str = "to-grid"
    ) -> torch.Tensor:
        """Last-layer patch tokens of normalised pixels (B, 3, H, W), H and W multiples of the
        patch: (B, fh, fw, D). `position_resize`: see `positions.POSITION_RESIZES`."""
        b, _, height, width = pixels.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"VFM input {height}x{width} is not a multiple of the patch size {p}")
        weight = next(self.model.parameters())
        with positions_resized(self.model, position_resize, p):
            hidden = self.model(
                pixel_values=pixels.to(weight.device, weight.dtype), **self.forward_kwargs
            )
        tokens = hidden.last_hidden_state[:, self.num_prefix_tokens :]  # (B, fh*fw, D)
        return tokens.reshape(b, height // p, width // p, -1).float()


def encoder_of(encoders: Callable[[str], VFMEncoder] | None, name: str) -> VFMEncoder:
    """The encoder `name` from a model's VFM provider (name -> VFMEncoder), or a clear error when it
    has none."""
    if encoders is None:
        raise RuntimeError(
            f"this CLIPer was built without vision foundation models, so {name!r} cannot run: "
            "build it with CLIPer.from_config, or pass vfm=<name -> VFMEncoder>"
        )
    return encoders(name)


@dataclass(frozen=True)
class VFMInput:
    """How an image reaches a VFM: its sides' rounding to patch multiples (`GRID_ROUNDINGS`) and the
    resize of the position embeddings (`positions.POSITION_RESIZES`)."""

    grid_rounding: str = "nearest"
    position_resize: str = "to-grid"

    @classmethod
    def of(cls, cfg: Any) -> VFMInput:
        """The config's choice (fields vfm_grid_rounding, vfm_position_resize)."""
        return cls(cfg.vfm_grid_rounding, cfg.vfm_position_resize)


#: vfm_grid_rounding -> the number of patches a side of `size` pixels gets (at least 1 is kept).
GRID_ROUNDINGS: dict[str, Callable[[int, int], int]] = {
    "nearest": lambda size, patch: int(size / patch + 0.5),
    "floor": lambda size, patch: size // patch,  # the authors' code: ⌊H/p⌋·p
}


def patch_multiple(size: int, patch: int, rounding: str = "nearest") -> int:
    """`size` brought to a multiple of `patch` by `rounding` (at least one patch)."""
    return max(GRID_ROUNDINGS[rounding](size, patch), 1) * patch


def vfm_pixels(
    images: torch.Tensor, encoder: VFMEncoder, rounding: str = "nearest"
) -> torch.Tensor:
    """The VFM's input: (B, 3, H, W) resized bilinearly to patch multiples (`rounding`), then
    normalised with its mean/std."""
    p = encoder.patch_size
    size = (
        patch_multiple(images.shape[-2], p, rounding),
        patch_multiple(images.shape[-1], p, rounding),
    )
    if size != tuple(images.shape[-2:]):
        images = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(encoder.mean, device=images.device)[:, None, None]
    std = torch.tensor(encoder.std, device=images.device)[:, None, None]
    return (images.float() - mean) / std


def vfm_features(encoder: VFMEncoder, images: torch.Tensor, how: VFMInput) -> torch.Tensor:
    """The VFM's patch features (B, fh, fw, D) of images (B, 3, H, W), brought to it as `how`
    says."""
    pixels = vfm_pixels(images, encoder, how.grid_rounding)
    return encoder.patch_features(pixels, how.position_resize)


def proxy_input(
    clip_input: torch.Tensor,
    clip_mean: Sequence[float],
    clip_std: Sequence[float],
    double_normalization: bool = False,
) -> torch.Tensor:
    """What `vfm_pixels` normalises for the proxy attention, from CLIP's normalised input
    (B, 3, H, W).

    Single normalisation (default): CLIP's normalisation undone, the [0, 1] image. Double (the
    authors' published code): CLIP's normalised tensor as it is, so the VFM sees it normalised
    twice.
    """
    if double_normalization:
        return clip_input.float()
    mean = torch.tensor(clip_mean, device=clip_input.device)[:, None, None]
    std = torch.tensor(clip_std, device=clip_input.device)[:, None, None]
    return clip_input.float() * std + mean


@torch.no_grad()
def proxy_attentions(
    encoder: VFMEncoder,
    clip: Any,
    clip_input: torch.Tensor,
    boxes: Sequence[tuple[int, int, int, int]],
    how: VFMInput = VFMInput(),
    double_normalization: bool = False,
    half_precision: bool = False,
):
    """Stage proxy: the VFM attention of CLIP's input (3, H, W) and of its sliding-window crops
    `boxes` (the crops are our extension: the authors' code has the whole image only).

    `clip` gives CLIP's patch_size, mean and std (a ClipBundle). Each image's features go to
    `proxy_attention` on CLIP's grid (H/p, W/p). Returns (whole (1, 1, N, N), crops (K, 1, N', N')
    or None).
    """

    def attention(images: torch.Tensor) -> torch.Tensor:
        # (B, 3, H, W) CLIP-normalised -> (B, 1, N, N)
        vfm_input = proxy_input(images, clip.mean, clip.std, double_normalization)
        features = vfm_features(encoder, vfm_input, how)  # (B, fh, fw, D)
        grid = (images.shape[-2] // clip.patch_size, images.shape[-1] // clip.patch_size)
        return proxy_attention(features, grid, half_precision)

    crops = [clip_input[:, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes]
    return attention(clip_input[None]), attention(torch.stack(crops)) if crops else None


@torch.no_grad()
def refinement_features(
    encoder: VFMEncoder, image: Any, how: VFMInput = VFMInput()
) -> torch.Tensor:
    """Stage vfm: the VFM's patch features of the original image (its [0, 1] pixels):
    (fh, fw, D)."""
    array = rgb_array(image)  # (H0, W0, 3) uint8
    weight = next(encoder.model.parameters())
    # (1, 3, H0, W0); torch.tensor copies: arrays from PIL are read-only
    pixels = torch.tensor(array).to(weight.device).permute(2, 0, 1)[None].float() / 255.0
    return vfm_features(encoder, pixels, how)[0]
