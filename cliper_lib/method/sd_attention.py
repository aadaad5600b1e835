"""Stable Diffusion self-attention for fine-grained compensation (docs/method.md, "Fine-grained compensation").

The image is resized to the SD side, VAE-encoded, noised at one timestep and passed once through the UNet with
the empty prompt. An attention processor installed on the `attn1` of the named UNet layers computes the same
output as diffusers' default processor and records the per-head self-attention probabilities (in float32).
The components come from `cliper_lib.weights` (real or tiny random weights) or are built by hand.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import CLIPerConfig
from ..images import ImageLike, float_tensor

#: the pipeline components loaded from a diffusers folder / hub repo, by subfolder.
SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

@dataclass
class SDComponents:
    """The parts of a Stable Diffusion pipeline that the one-step extraction needs."""

    unet: Any  # diffusers UNet2DConditionModel (eval mode)
    vae: Any  # diffusers AutoencoderKL (eval mode)
    text_encoder: Any  # transformers CLIPTextModel (eval mode)
    tokenizer: Any  # transformers CLIPTokenizer (model_max_length 77)
    scheduler: Any  # a diffusers scheduler (DDIM, PNDM, ...), as shipped with the weights
    source: str  # repo id, local folder, "random-seed-N" or "random-full-size-seed-N"

    def to(self, device: torch.device | str, dtype: torch.dtype) -> SDComponents:
        """Move the three networks to `device`/`dtype` (in place) and return self."""
        cast = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat16"}
        if dtype not in cast:
            raise ValueError(f"dtype={dtype}: use float32, float16 or bfloat16")
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
            # .half()/.float() rather than .to(dtype): diffusers logs a warning on every .to(dtype) call
            getattr(module, cast[dtype])().eval().requires_grad_(False)
        return self


# ---------------------------------------------------------------------------------------------------------------
# attention capture
# ---------------------------------------------------------------------------------------------------------------
class AttentionStore(dict):
    """Shared store of captured attention: path -> float32 probabilities (heads, T, S); the latest call wins."""

    def record(self, path: str, probabilities: torch.Tensor) -> None:
        # (B, heads, T, S) -> (heads, T, S): the store holds one image
        if probabilities.shape[0] != 1:
            raise ValueError(
                f"attention capture at {path!r} got a batch of {probabilities.shape[0]}; it stores one image "
                f"(batch 1), e.g. no classifier-free guidance"
            )
        self[path] = probabilities[0].detach()


class CaptureAttnProcessor:
    """Attention processor: diffusers' default computation, plus per-head probabilities (float32) into a store."""

    def __init__(self, store: AttentionStore, path: str) -> None:
        self.store = store
        self.path = path

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)  # (B, T, c)

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, source_len, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, source_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])  # (B, h, 1|T, S)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, T, d)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, S, d)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # (B, h, S, d)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # float32 even for fp16 models: the probabilities are multiplied along a chain of ~10 maps later.
        # Scaling q first avoids a second (h, T, S) temporary; attn.scale is head_dim ** -0.5 in SD.
        scores = (query.float() * attn.scale) @ key.float().transpose(-1, -2)  # (B, h, T, S)
        if attention_mask is not None:
            scores = scores + attention_mask.float()
        probabilities = scores.softmax(dim=-1)  # (B, h, T, S)
        del scores
        out = probabilities @ value.float()  # (B, h, T, d)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)  # (B, T, h*d)
        self.store.record(self.path, probabilities)

        out = attn.to_out[0](out)  # linear projection
        out = attn.to_out[1](out)  # dropout
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)  # (B, c, H, W)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def normalize_layer_path(path: str) -> str:
    """'up_blocks[3].attentions[1]' -> 'up_blocks.3.attentions.1' (the form `get_submodule` reads)."""
    return re.sub(r"\[(\d+)\]", r".\1", path).strip(".")


def self_attention_paths(unet: torch.nn.Module) -> list[str]:
    """Module paths of every transformer layer in `unet` whose first block's attn1 can be captured."""
    return [name for name, module in unet.named_modules() if hasattr(module, "transformer_blocks") and name]


def resolve_self_attention(unet: torch.nn.Module, path: str) -> torch.nn.Module:
    """The attn1 module named by `path`: a transformer layer ('up_blocks.3.attentions.1') or an attention itself."""
    from diffusers.models.attention_processor import Attention

    name = normalize_layer_path(path)
    try:
        module = unet.get_submodule(name)
    except AttributeError:
        module = None
    if module is not None and hasattr(module, "transformer_blocks"):
        module = module.transformer_blocks[0].attn1
    if not isinstance(module, Attention) or module.is_cross_attention:
        valid = self_attention_paths(unet)
        raise ValueError(
            f"{path!r} names no self-attention of this UNet; use a transformer layer (its "
            f"transformer_blocks.0.attn1 is captured) or an '...attn1' path. Transformer layers: {', '.join(valid)}"
        )
    return module


@contextlib.contextmanager
def capture_self_attention(unet: torch.nn.Module, paths: Sequence[str]) -> Iterator[AttentionStore]:
    """Install capture processors on the attn1 of each path; yield the shared store; always restore the originals."""
    modules = {path: resolve_self_attention(unet, path) for path in paths}  # all resolved before any is touched
    seen: dict[int, str] = {}
    for path, module in modules.items():
        if id(module) in seen:
            raise ValueError(f"{path!r} and {seen[id(module)]!r} name the same attention module")
        seen[id(module)] = path
    store = AttentionStore()
    originals = {path: module.processor for path, module in modules.items()}
    try:
        for path, module in modules.items():
            module.set_processor(CaptureAttnProcessor(store, path))
        yield store
    finally:
        for path, module in modules.items():
            module.set_processor(originals[path])


def resize_for_sd(image: torch.Tensor, side: int, mode: str = "nearest") -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> (1, 3, side, side) in [0, 1], the whole image (aspect ratio not kept)."""
    if mode == "nearest":
        # what diffusers' VaeImageProcessor does with tensors: F.interpolate's default mode
        return F.interpolate(image, size=(side, side), mode="nearest")
    if mode in ("bilinear", "bicubic"):
        # antialias like PIL, which is what a user choosing these modes would compare against
        out = F.interpolate(image, size=(side, side), mode=mode, align_corners=False, antialias=True)
        return out.clamp(0, 1)  # bicubic overshoots
    if mode == "lanczos":
        # what diffusers does with a PIL image: 8-bit PIL resize, then / 255
        array = (image[0].permute(1, 2, 0).cpu() * 255).round().to(torch.uint8).numpy()  # (H, W, 3)
        resized = Image.fromarray(array).resize((side, side), resample=Image.Resampling.LANCZOS)
        return float_tensor(np.asarray(resized)).to(image.device)
    raise ValueError(f"sd_resize={mode!r}: use nearest, bilinear, bicubic or lanczos")


# ---------------------------------------------------------------------------------------------------------------
# the extractor
# ---------------------------------------------------------------------------------------------------------------
class SDSelfAttention:
    """One noised UNet pass with the empty prompt, returning the self-attention head maps of `cfg.sd_layers`.

    Every method reads the config given to it (a stage passes the run's config), else the one of construction.
    """

    def __init__(self, components: SDComponents, cfg: CLIPerConfig) -> None:
        self.components = components
        self.cfg = cfg
        parameter = next(components.unet.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype
        self._empty_embedding: torch.Tensor | None = None
        for path in cfg.sd_layers:  # fail at construction, not after a UNet pass
            resolve_self_attention(components.unet, path)

    @property
    def image_size(self) -> int:
        return self.cfg.effective_sd_image_size

    @torch.no_grad()
    def empty_prompt_embedding(self) -> torch.Tensor:
        """Text-encoder output for "" (1, 77, D), computed once (as the pipeline's encode_prompt does)."""
        if self._empty_embedding is None:
            tokenizer = self.components.tokenizer
            ids = tokenizer(
                "", padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids  # (1, 77)
            self._empty_embedding = self.components.text_encoder(ids.to(self.device))[0]  # (1, 77, D)
        return self._empty_embedding

    def preprocess(self, image: ImageLike, cfg: CLIPerConfig | None = None) -> torch.Tensor:
        """Image -> VAE input (1, 3, side, side) in [-1, 1], on the model's device and dtype."""
        cfg = cfg or self.cfg
        pixels = resize_for_sd(float_tensor(image), cfg.effective_sd_image_size, cfg.sd_resize)  # (1, 3, side, side)
        return (pixels * 2 - 1).to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE input (1, 3, side, side) -> latent mean x scaling factor (1, 4, side/8, side/8)."""
        vae = self.components.vae
        return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor

    def timestep(self, timestep_index: int | None = None, cfg: CLIPerConfig | None = None) -> torch.Tensor:
        """`scheduler.timesteps[index]` after `set_timesteps(cfg.sd_num_steps)` (index defaults to the config's)."""
        cfg = cfg or self.cfg
        index = cfg.sd_timestep_index if timestep_index is None else timestep_index
        scheduler = self.components.scheduler
        scheduler.set_timesteps(cfg.sd_num_steps)
        if not -len(scheduler.timesteps) <= index < len(scheduler.timesteps):
            raise ValueError(f"timestep index {index} is outside the {len(scheduler.timesteps)} scheduler timesteps")
        return scheduler.timesteps[index]

    def add_noise(self, latents: torch.Tensor, timestep: torch.Tensor, cfg: CLIPerConfig | None = None) -> torch.Tensor:
        """Noise the latents at `timestep` with noise from a CPU generator seeded by cfg.seed (same on any device)."""
        generator = torch.Generator("cpu").manual_seed((cfg or self.cfg).seed)
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
        # mixed in float32, then cast: the fp16 model sees the same noisy latents up to one rounding
        noisy = self.components.scheduler.add_noise(latents.float(), noise, timestep.reshape(1))
        return noisy.to(self.dtype)

    @torch.no_grad()
    def extract(
        self, image: ImageLike, layers: Sequence[str] | None = None, timestep_index: int | None = None,
        cfg: CLIPerConfig | None = None,
    ) -> dict[str, torch.Tensor]:
        """Self-attention probabilities of any attn1 `layers` at any timestep: {path: (heads, T, T) float32}."""
        cfg = cfg or self.cfg
        layers = list(cfg.sd_layers if layers is None else layers)
        latents = self.encode(self.preprocess(image, cfg))  # (1, 4, side/8, side/8)
        timestep = self.timestep(timestep_index, cfg)
        noisy = self.add_noise(latents, timestep, cfg)
        with capture_self_attention(self.components.unet, layers) as store:
            self.components.unet(
                noisy, timestep.to(self.device), encoder_hidden_states=self.empty_prompt_embedding(), return_dict=False
            )
        return {path: store[path] for path in layers}

    def __call__(self, image: ImageLike, cfg: CLIPerConfig | None = None) -> torch.Tensor:
        """Head maps (m, T, T) float32: all heads of cfg.sd_layers[0], then of sd_layers[1], ... (authors' order)."""
        cfg = cfg or self.cfg
        maps = self.extract(image, cfg=cfg)
        return torch.cat([maps[path] for path in cfg.sd_layers])  # (sum of heads, T, T)
