"""Stable Diffusion self-attention for fine-grained compensation (docs/method.md 3.9).

The image is resized to the SD side, VAE-encoded, noised at one timestep and passed through the UNet
with the empty prompt, up to the last named layer it reaches (nothing after it is read). A processor
on the `attn1` of the named layers computes diffusers' default output head by head and hands each
head's float32 probabilities to a sink: a store of maps, or the refinement chain itself.

Components: `cliper_lib.weights`, or built by hand.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import CLIPerConfig
from ..heap import release_free_memory
from ..images import ImageLike, float_tensor, resize_square


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion pipeline the one-step extraction needs.

    `cliper_lib.weights.sd` loads and moves them. The text encoder only encodes "": the extraction
    reads `empty_embedding`, not the encoder.
    """

    unet: Any  # diffusers UNet2DConditionModel (eval mode)
    vae: Any  # diffusers AutoencoderKL (eval mode; only its encoder is used)
    text_encoder: Any  # transformers CLIPTextModel (eval mode), or None with `empty_embedding`
    # transformers CLIPTokenizer (model_max_length 77), or None with `empty_embedding`
    tokenizer: Any
    scheduler: Any  # a diffusers scheduler (DDIM, PNDM, ...), as shipped with the weights
    source: str  # repo id, local folder, "random-seed-N" or "random-full-size-seed-N"
    empty_embedding: torch.Tensor | None = None  # the text encoder's output for "" (1, 77, D)


# --- attention capture ----------------------------------------------------------------------------
#: sink(path, head, heads, probabilities): one head's float32 self-attention (B, T, S), heads given
#: last first, in the capture's scratch buffer (overwritten by the next head): a sink keeps a copy,
#: and may change it in place.
HeadSink = Callable[[str, int, int, torch.Tensor], None]


class AttentionStore(dict):
    """A sink keeping every captured head: path -> float32 probabilities (B, heads, T, S).

    The latest call wins.
    """

    def __call__(self, path: str, head: int, heads: int, probabilities: torch.Tensor) -> None:
        if head == heads - 1:  # the first head of a call (they come last first): a fresh buffer
            self[path] = probabilities.new_empty(
                probabilities.shape[0], heads, *probabilities.shape[1:]
            )
        # a copy: the capture reuses its buffer for the next head
        self[path][:, head] = probabilities


class _EndOfCapture(Exception):
    """Raised by the capture of the last attention a pass needs.

    The rest of the UNet's output is never read.
    """


class CaptureAttnProcessor:
    """diffusers' default self-attention, one head at a time, handing each head to `sink`.

    The sink gets each head's float32 probabilities; the (heads, T, S) scores never exist at once.

    `pending` (early exit): the paths still to capture in this pass; the call that empties it skips
    its output and raises `_EndOfCapture` after the sink.

    `scratch`: the (B, T, S) score and probability buffers, shared by the processors of one capture
    and reused head after head: on a CPU a fresh 64 MB tensor costs as much as the arithmetic on it
    (new pages, zeroed by the kernel).
    """

    def __init__(
        self,
        sink: HeadSink,
        path: str,
        pending: set[str] | None = None,
        scratch: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.sink, self.path, self.pending = sink, path, pending
        self.scratch = {} if scratch is None else scratch

    def _buffer(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        buffer = self.scratch.get(name)
        if buffer is None or buffer.shape != shape or buffer.device != device:
            self.scratch[name] = buffer = torch.empty(shape, dtype=torch.float32, device=device)
        return buffer

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                f"{self.path}: the capture computes plain self-attention (no context, no mask)"
            )
        residual, input_ndim = hidden_states, hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            # (B, T, c)
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch, heads = hidden_states.shape[0], attn.heads
        query, key, value = (
            project(hidden_states).unflatten(-1, (heads, -1)).transpose(1, 2)
            for project in (attn.to_q, attn.to_k, attn.to_v)
        )  # (B, h, T, d) each
        if self.pending is not None:
            self.pending.discard(self.path)
        last = self.pending is not None and not self.pending
        out = None if last else query.new_empty(query.shape, dtype=torch.float32)  # (B, h, T, d)
        shape = (batch, query.shape[2], key.shape[2])  # (B, T, S)
        scores, probabilities = (
            self._buffer(name, shape, query.device) for name in ("scores", "probabilities")
        )
        # Last head first: the refinement chain applies the maps right to left.
        # float32 even for fp16 models: the probabilities get multiplied along a chain of ~10 maps.
        # Scaling q first avoids a (T, S) temporary.
        for head in reversed(range(heads)):
            torch.matmul(
                query[:, head].float() * attn.scale,
                key[:, head].float().transpose(-1, -2),
                out=scores,
            )
            # (B, T, S); `out=`: same kernels, same results
            torch.softmax(scores, dim=-1, out=probabilities)
            if out is not None:
                # (B, T, d), before the sink may change it
                out[:, head] = probabilities @ value[:, head].float()
            self.sink(self.path, head, heads, probabilities)
        if last:
            raise _EndOfCapture
        # (B, T, c): proj, dropout
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2).to(query.dtype)))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)  # (B, c, H, W)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def normalize_layer_path(path: str) -> str:
    """'up_blocks[3].attentions[1]' -> 'up_blocks.3.attentions.1' (as `get_submodule` reads)."""
    return re.sub(r"\[(\d+)\]", r".\1", path).strip(".")


def self_attention_paths(unet: torch.nn.Module) -> list[str]:
    """Module paths of each transformer layer in `unet` whose first block's attn1 is capturable."""
    return [
        name
        for name, module in unet.named_modules()
        if hasattr(module, "transformer_blocks") and name
    ]


def resolve_self_attention(unet: torch.nn.Module, path: str) -> torch.nn.Module:
    """The attn1 module named by `path`.

    `path` names a transformer layer ('up_blocks.3.attentions.1') or an attention itself.
    """
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
            f"{path!r} names no self-attention of this UNet; use a transformer layer "
            "(its transformer_blocks.0.attn1 is captured) or an '...attn1' path. "
            f"Transformer layers: {', '.join(valid)}"
        )
    unsupported = [
        name
        for name in ("spatial_norm", "group_norm", "norm_q", "norm_k")
        if getattr(module, name, None) is not None
    ]
    if unsupported:
        raise ValueError(
            f"{path!r}: the capture does not handle attention with {', '.join(unsupported)}"
        )
    return module


@contextlib.contextmanager
def capture_self_attention(
    unet: torch.nn.Module,
    paths: Sequence[str],
    sink: HeadSink | None = None,
    early_exit: bool = False,
) -> Iterator[HeadSink]:
    """Install capture processors on the attn1 of each path, and yield the sink.

    The sink defaults to a new AttentionStore. With `early_exit` the capture that completes the set
    raises `_EndOfCapture` (use `run_until_captured`). The original processors are always restored.
    """
    # all resolved before any is touched
    modules = {path: resolve_self_attention(unet, path) for path in paths}
    seen: dict[int, str] = {}
    for path, module in modules.items():
        if id(module) in seen:
            raise ValueError(f"{path!r} and {seen[id(module)]!r} name the same attention module")
        seen[id(module)] = path
    sink = AttentionStore() if sink is None else sink
    pending = set(modules) if early_exit else None
    # one set of buffers for all the layers, captured one after the other
    scratch: dict[str, torch.Tensor] = {}
    originals = {path: module.processor for path, module in modules.items()}
    try:
        for path, module in modules.items():
            module.set_processor(CaptureAttnProcessor(sink, path, pending, scratch))
        yield sink
    finally:
        for path, module in modules.items():
            module.set_processor(originals[path])


def run_until_captured(
    unet: torch.nn.Module, paths: Sequence[str], sink: HeadSink, *args: Any, **kwargs: Any
) -> None:
    """unet(*args, **kwargs) up to the last of `paths` it reaches, their heads handed to `sink`."""
    with capture_self_attention(unet, paths, sink, early_exit=True):
        try:
            unet(*args, **kwargs)
        except _EndOfCapture:
            return
    raise RuntimeError(f"the UNet pass ended before capturing all of {list(paths)}")


def vae_memory_format(pixels: torch.Tensor) -> torch.memory_format:
    """The memory format the VAE encoder runs in: channels-last for bfloat16 on a CPU.

    oneDNN's bfloat16 convolutions are 2.5 times faster in it (one 512 x 512 image: 0.93 s against
    2.31 s, benchmarks/README.md); in float32 it moves the latents by 3e-5 and gains nothing.
    """
    if pixels.device.type == "cpu" and pixels.dtype == torch.bfloat16:
        return torch.channels_last
    return torch.contiguous_format


# --- the extractor --------------------------------------------------------------------------------
class SDSelfAttention:
    """Self-attention head maps of `cfg.sd_layers` from one noised UNet pass with the empty prompt.

    Every method reads the config given to it (a stage passes the run's config),
    else the one of construction.
    """

    def __init__(self, components: SDComponents, cfg: CLIPerConfig) -> None:
        self.components = components
        self.cfg = cfg
        parameter = next(components.unet.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype
        self._empty_embedding: torch.Tensor | None = components.empty_embedding
        for path in cfg.sd_layers:  # fail at construction, not after a UNet pass
            resolve_self_attention(components.unet, path)

    @property
    def image_size(self) -> int:
        return self.cfg.effective_sd_image_size

    def preprocess(self, image: ImageLike, cfg: CLIPerConfig | None = None) -> torch.Tensor:
        """Image -> VAE input (1, 3, side, side) in [-1, 1], on the model's device and dtype."""
        cfg = cfg or self.cfg
        # (1, 3, side, side)
        pixels = resize_square(float_tensor(image), cfg.effective_sd_image_size, cfg.sd_resize)
        return (pixels * 2 - 1).to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE input (B, 3, side, side) -> latent mean x scaling factor (B, 4, side/8, side/8).

        The encoder's own calls, resnet by resnet: no block input outlives its first resnet (in
        Encoder.forward, +128 MiB at 512 px fp32).
        """
        vae, enc = self.components.vae, self.components.vae.encoder
        pixels = pixels.contiguous(memory_format=vae_memory_format(pixels))
        if vae.use_tiling or any(
            type(block).__name__ != "DownEncoderBlock2D" for block in enc.down_blocks
        ):
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
            return latents.contiguous()
        h = enc.conv_in(pixels)
        for block in enc.down_blocks:
            for resnet in block.resnets:
                h = resnet(h, None)  # no time embedding in the VAE
            for downsampler in block.downsamplers or ():
                h = downsampler(h)
        h = enc.conv_out(enc.conv_act(enc.conv_norm_out(enc.mid_block(h))))
        # (B, 8, s, s): mean, then log-variance
        moments = vae.quant_conv(h) if vae.quant_conv is not None else h
        return (moments.chunk(2, dim=1)[0] * vae.config.scaling_factor).contiguous()

    def timestep(
        self, timestep_index: int | None = None, cfg: CLIPerConfig | None = None
    ) -> torch.Tensor:
        """`scheduler.timesteps[index]` after `set_timesteps(cfg.sd_num_steps)`.

        `timestep_index` defaults to the config's.
        """
        cfg = cfg or self.cfg
        index = cfg.sd_timestep_index if timestep_index is None else timestep_index
        scheduler = self.components.scheduler
        scheduler.set_timesteps(cfg.sd_num_steps)
        if not -len(scheduler.timesteps) <= index < len(scheduler.timesteps):
            raise ValueError(
                f"timestep index {index} is outside "
                f"the {len(scheduler.timesteps)} scheduler timesteps"
            )
        return scheduler.timesteps[index]

    def add_noise(
        self, latents: torch.Tensor, timestep: torch.Tensor, cfg: CLIPerConfig | None = None
    ) -> torch.Tensor:
        """Noise (B, 4, s, s) latents at `timestep`, every image with the same noise.

        That noise is what a CPU generator seeded by cfg.seed gives one image (the same on any
        device and at any batch size).
        """
        generator = torch.Generator("cpu").manual_seed((cfg or self.cfg).seed)
        noise = torch.randn((1, *latents.shape[1:]), generator=generator, dtype=torch.float32).to(
            latents.device
        )
        # mixed in float32, then cast: the fp16 model sees the same noisy latents up to one rounding
        noisy = self.components.scheduler.add_noise(
            latents.float(), noise.expand_as(latents), timestep.reshape(1)
        )
        return noisy.to(self.dtype)

    @torch.no_grad()
    def latents(self, images: Sequence[ImageLike], cfg: CLIPerConfig | None = None) -> torch.Tensor:
        """The images' VAE latents (B, 4, s/8, s/8).

        Freed heap pages go back to the system first: the encoder's activations
        (~0.6 GB at 512 x 512 in float32) are the largest of an image.
        """
        cfg = cfg or self.cfg
        release_free_memory()
        return self.encode(torch.cat([self.preprocess(image, cfg) for image in images]))

    @torch.no_grad()
    def capture(
        self,
        latents: torch.Tensor,
        sink: HeadSink,
        cfg: CLIPerConfig | None = None,
        layers: Sequence[str] | None = None,
        timestep_index: int | None = None,
    ) -> None:
        """One UNet pass over VAE latents (B, 4, s/8, s/8), noised at the configured timestep.

        The pass ends after the last of `layers` (default cfg.sd_layers) it reaches; each head's
        probabilities (B, T, T) go to `sink`, last head first, as the UNet runs the layers.
        """
        cfg = cfg or self.cfg
        layers = list(cfg.sd_layers if layers is None else layers)
        timestep = self.timestep(timestep_index, cfg)
        noisy = self.add_noise(latents, timestep, cfg)
        if self._empty_embedding is None:
            raise ValueError(
                "the SD components hold no empty-prompt embedding "
                "(the text encoder's output for '')"
            )
        context = self._empty_embedding.expand(len(latents), -1, -1)  # (B, 77, D)
        run_until_captured(
            self.components.unet,
            layers,
            sink,
            noisy,
            timestep.to(self.device),
            encoder_hidden_states=context,
            return_dict=False,
        )

    def head_maps(
        self, latents: torch.Tensor, cfg: CLIPerConfig | None = None
    ) -> list[torch.Tensor]:
        """Head maps (m, T, T) float32 of each of the B latents, in the authors' order.

        All heads of cfg.sd_layers[0], then of sd_layers[1], ...
        """
        cfg = cfg or self.cfg
        store = AttentionStore()
        self.capture(latents, store, cfg)
        return [torch.cat([store[path][b] for path in cfg.sd_layers]) for b in range(len(latents))]

    def extract(
        self,
        image: ImageLike,
        layers: Sequence[str] | None = None,
        timestep_index: int | None = None,
        cfg: CLIPerConfig | None = None,
    ) -> dict[str, torch.Tensor]:
        """Self-attention probabilities of any attn1 `layers` at any timestep.

        Returns {path: (heads, T, T) float32}.
        """
        cfg = cfg or self.cfg
        layers = list(cfg.sd_layers if layers is None else layers)
        store = AttentionStore()
        self.capture(self.latents([image], cfg), store, cfg, layers, timestep_index)
        return {path: store[path][0] for path in layers}

    def __call__(self, image: ImageLike, cfg: CLIPerConfig | None = None) -> torch.Tensor:
        """Head maps (m, T, T) float32 of one image, in the authors' order (see head_maps)."""
        cfg = cfg or self.cfg
        return self.head_maps(self.latents([image], cfg), cfg)[0]
