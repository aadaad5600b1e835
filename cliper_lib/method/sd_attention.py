"""Stable Diffusion self-attention for fine-grained compensation (DESIGN.md section 1, FGC step 1).

The image is resized to the SD side, VAE-encoded, noised at one timestep and passed once through the UNet with
the empty prompt. An attention processor installed on the `attn1` of the named UNet layers computes the same
output as diffusers' default processor and records the per-head self-attention probabilities (in float32).

Weights (paper profile) come from a hub repo id or a local diffusers folder; offline and uncached, loading stops
at once with `WeightsMissingError`. The smoke profile builds tiny random components of the same classes.
"""
from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import CLIPerConfig
from .files import atomic_write_text
from .models import (
    WeightsMissingError,
    default_cache_dir,
    hub_reachable,
    missing_weights_message,
    resolve_device,
    resolve_dtype,
)

#: the pipeline components loaded from a diffusers folder / hub repo, by subfolder.
SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

#: the scheduler values of SD-2.1-base (used for the smoke profile; the paper profile loads the shipped one).
SD21_SCHEDULER_CONFIG: dict[str, Any] = {
    # SD-2.1-base ships a PNDM scheduler (PLMS steps only); with 50 steps timesteps[45] is 101.
    "_class_name": "PNDMScheduler",
    "skip_prk_steps": True,
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

#: SD-2.1-base UNet layout. diffusers' legacy `attention_head_dim` is the number of heads per block here
#: (320/5 = 64 channels per head in the blocks at full latent resolution, hence 5 heads in up_blocks.3).
_UNET_LAYOUT: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "use_linear_projection": True,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
    "norm_eps": 1e-5,
    "downsample_padding": 1,
}
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    # up blocks have layers_per_block + 1 attentions, so layers_per_block=1 still gives up_blocks.3.attentions.0/1
    "tiny": {**_UNET_LAYOUT, "sample_size": 32, "block_out_channels": (32, 32, 64, 64), "layers_per_block": 1,
             "attention_head_dim": (2, 2, 4, 4), "cross_attention_dim": 32, "norm_num_groups": 8},
    "full": {**_UNET_LAYOUT, "sample_size": 64, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
             "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024, "norm_num_groups": 32},
}
_VAE_LAYOUT: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,  # 4 blocks: 3 downsamples, factor 8
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "act_fn": "silu",
    "scaling_factor": 0.18215,
}
VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {**_VAE_LAYOUT, "block_out_channels": (8, 16, 32, 32), "layers_per_block": 1, "norm_num_groups": 4,
             "sample_size": 256},
    "full": {**_VAE_LAYOUT, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
             "norm_num_groups": 32, "sample_size": 512},
}
_TEXT_LAYOUT: dict[str, Any] = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}
TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {**_TEXT_LAYOUT, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "projection_dim": 32},
    # SD-2.x uses the OpenCLIP ViT-H text tower without its last block (23 of 24)
    "full": {**_TEXT_LAYOUT, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
             "num_attention_heads": 16, "projection_dim": 512},
}

_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


# ---------------------------------------------------------------------------------------------------------------
# components: loading, downloading, tiny random ones
# ---------------------------------------------------------------------------------------------------------------
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

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write a diffusers folder layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/, model_index.json)."""
        folder = Path(folder)
        for name in SD_SUBFOLDERS:
            getattr(self, name).save_pretrained(folder / name)
        index = {
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", type(self.unet).__name__],
            "vae": ["diffusers", type(self.vae).__name__],
            "text_encoder": ["transformers", type(self.text_encoder).__name__],
            "tokenizer": ["transformers", type(self.tokenizer).__name__],
            "scheduler": ["diffusers", type(self.scheduler).__name__],
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        return folder


def tiny_tokenizer_dir() -> Path:
    """A folder with a CLIP tokenizer in transformers' format, written once from open_clip's bundled BPE table."""
    folder = default_cache_dir() / "sd-tokenizer-openclip-bpe"
    if all((folder / name).exists() for name in _TOKENIZER_FILES):
        return folder
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    # Same ids as open_clip: byte symbols, byte symbols + '</w>', merges in rank order, then the two specials,
    # which transformers spells <|startoftext|>/<|endoftext|>.
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(token, token): index for token, index in bpe.encoder.items()}
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    # SD-2.x pads with "!" (id 0), as open_clip does; SD-1.x padded with <|endoftext|>.
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",
        "do_lower_case": True,
    }
    contents = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
    }
    for name, text in contents.items():
        atomic_write_text(folder / name, text)  # concurrent test workers never read a half-written file
    return folder


def build_random_sd_components(
    seed: int = 0,
    full_size: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SDComponents:
    """Seeded random UNet/VAE/text encoder built from configs: tiny (tests, smoke) or SD-2.1-base size (benchmarks)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    size = "full" if full_size else "tiny"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET_CONFIGS[size])
        vae = AutoencoderKL(**VAE_CONFIGS[size])
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIGS[size]))
    tokenizer = CLIPTokenizer.from_pretrained(tiny_tokenizer_dir())
    scheduler = PNDMScheduler.from_config(SD21_SCHEDULER_CONFIG)  # from_config drops keys PNDM does not take
    source = f"random-full-size-seed-{seed}" if full_size else f"random-seed-{seed}"
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler, source=source).to(device, dtype)


def _load_scheduler(source: str, local_files_only: bool) -> Any:
    """The scheduler class named in `scheduler/scheduler_config.json` (what the pipeline loader would pick)."""
    import diffusers

    # any scheduler class can read the JSON: they share the file name scheduler_config.json
    config = diffusers.DDIMScheduler.load_config(source, subfolder="scheduler", local_files_only=local_files_only)
    class_name = config.get("_class_name", "DDIMScheduler")
    scheduler_class = getattr(diffusers, class_name, None)
    if scheduler_class is None:
        raise ValueError(f"scheduler class {class_name!r} of {source} is not in diffusers {diffusers.__version__}")
    return scheduler_class.from_config(config)


def _load_pretrained(source: str, local_files_only: bool, variant: str | None) -> SDComponents:
    """Load the five components from a hub repo id or a diffusers folder (raises OSError when files are missing)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    common = {"local_files_only": local_files_only, "variant": variant}
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **common)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **common)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **common)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local_files_only)
    # transformers 5 returns a 2-token tokenizer instead of raising when the vocabulary files are absent
    if len(tokenizer) != text_encoder.config.vocab_size:
        raise OSError(
            f"the tokenizer of {source} has {len(tokenizer)} tokens but its text encoder expects "
            f"{text_encoder.config.vocab_size}: tokenizer/vocab.json and merges.txt (or tokenizer.json) are missing"
        )
    scheduler = _load_scheduler(source, local_files_only)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler, source=source)


def _load_any_variant(source: str) -> SDComponents:
    """Load local files: the full-precision weights, else the fp16 variant (what `cliper download` may fetch)."""
    try:
        return _load_pretrained(source, local_files_only=True, variant=None)
    except (OSError, ValueError) as error:
        try:
            return _load_pretrained(source, local_files_only=True, variant="fp16")
        except (OSError, ValueError):
            raise error from None


def load_sd_components(
    cfg: CLIPerConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_download: bool = True,
) -> SDComponents:
    """The SD components of `cfg`: tiny random ones (smoke) or real weights from a local folder / the hub cache."""
    if cfg.profile == "smoke":
        return build_random_sd_components(cfg.seed, device=device, dtype=dtype)

    folder = Path(cfg.sd_repo).expanduser()
    if not folder.is_dir() and (folder.is_absolute() or cfg.sd_repo.startswith((".", "~"))):
        raise WeightsMissingError(f"the Stable Diffusion folder {folder} (config field sd_repo) does not exist")
    if folder.is_dir():
        try:
            components = _load_any_variant(str(folder))
        except (OSError, ValueError) as error:
            present = sorted(p.name for p in folder.iterdir())
            raise WeightsMissingError(
                f"{folder} is not a complete diffusers Stable Diffusion folder: it needs the subfolders "
                f"{', '.join(SD_SUBFOLDERS)} with their configs and weights (found: {present}).\n  cause: {error}"
            ) from error
        return components.to(device, dtype)

    repo = cfg.sd_repo
    # Cache first, with no network at all: offline, diffusers/transformers would otherwise retry for a while.
    try:
        components = _load_any_variant(repo)
    except (OSError, ValueError) as error:
        if not (allow_download and hub_reachable()):
            message = missing_weights_message(
                "Stable Diffusion", repo, f"{', '.join(SD_SUBFOLDERS)} (configs and weights)", "cliper download"
            )
            raise WeightsMissingError(message) from error
        download_sd_weights(repo)
        components = _load_any_variant(repo)
    return components.to(device, dtype)


def sd_allow_patterns(variant: str | None = None) -> list[str]:
    """The files of a diffusers SD repo that the extraction needs (no safety checker, no feature extractor)."""
    suffix = "" if variant is None else f".{variant}"
    return [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/*",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        f"unet/diffusion_pytorch_model{suffix}.safetensors",
        f"vae/diffusion_pytorch_model{suffix}.safetensors",
        f"text_encoder/model{suffix}.safetensors",
    ]


def download_sd_weights(repo: str, variant: str | None = None) -> Path:
    """Fetch the needed files of `repo` into the hub cache (fp32 weights, or variant="fp16"); return the snapshot."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    if Path(repo).expanduser().is_dir():
        return Path(repo).expanduser()  # a local folder needs no download
    if variant not in (None, "fp16"):
        raise ValueError(f"variant={variant!r}: use None (full precision) or 'fp16'")
    if not hub_reachable():
        raise WeightsMissingError(
            missing_weights_message("Stable Diffusion", repo, ", ".join(sd_allow_patterns(variant)), "cliper download")
        )
    patterns = sd_allow_patterns(variant)
    try:
        snapshot = Path(snapshot_download(repo, allow_patterns=patterns))
    except HfHubHTTPError as error:
        raise WeightsMissingError(f"could not download Stable Diffusion weights from '{repo}': {error}") from error
    # allow_patterns silently matches nothing when a repo lacks a file (e.g. a mirror with .bin weights only)
    missing = [name for name in patterns if "*" not in name and not (snapshot / name).exists()]
    if missing:
        raise WeightsMissingError(f"'{repo}' has no {', '.join(missing)}; it is not a diffusers SD repo with "
                                  f"safetensors weights{'' if variant is None else f' of variant {variant}'}")
    return snapshot


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


# ---------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------
ImageLike = Any  # HxWx3 uint8 numpy array | PIL.Image | float tensor (3, H, W) in [0, 1]


def image_to_tensor(image: ImageLike) -> torch.Tensor:
    """An image as a float32 tensor (1, 3, H, W) in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy images must be HxWx3 uint8, got shape {image.shape} dtype {image.dtype}")
        # torch.tensor copies: arrays from PIL are read-only
        return torch.tensor(image).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(f"tensor images must be float (3, H, W) in [0, 1], got {tuple(image.shape)} {image.dtype}")
        if image.numel() and (image.min() < 0 or image.max() > 1):
            raise ValueError("tensor images must hold values in [0, 1]")
        return image[None].float()  # (1, 3, H, W)
    raise TypeError(f"unsupported image type {type(image).__name__}: use a uint8 array, a PIL image or a tensor")


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
        return image_to_tensor(np.asarray(resized)).to(image.device)
    raise ValueError(f"sd_resize={mode!r}: use nearest, bilinear, bicubic or lanczos")


# ---------------------------------------------------------------------------------------------------------------
# the extractor
# ---------------------------------------------------------------------------------------------------------------
class SDSelfAttention:
    """One noised UNet pass with the empty prompt, returning the self-attention head maps of `cfg.sd_layers`."""

    def __init__(self, components: SDComponents, cfg: CLIPerConfig) -> None:
        self.components = components
        self.cfg = cfg
        parameter = next(components.unet.parameters())
        self.device = parameter.device
        self.dtype = parameter.dtype
        self._empty_embedding: torch.Tensor | None = None
        for path in cfg.sd_layers:  # fail at construction, not after a UNet pass
            resolve_self_attention(components.unet, path)

    @classmethod
    def from_config(
        cls,
        cfg: CLIPerConfig,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        allow_download: bool = True,
    ) -> SDSelfAttention:
        """Load the components of `cfg` (device/dtype default to the config's) and wrap them."""
        device = resolve_device(cfg.device) if device is None else torch.device(device)
        dtype = resolve_dtype(cfg.dtype) if dtype is None else dtype
        return cls(load_sd_components(cfg, device, dtype, allow_download), cfg)

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

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """Image -> VAE input (1, 3, side, side) in [-1, 1], on the model's device and dtype."""
        pixels = resize_for_sd(image_to_tensor(image), self.image_size, self.cfg.sd_resize)  # (1, 3, side, side)
        return (pixels * 2 - 1).to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE input (1, 3, side, side) -> latent mean x scaling factor (1, 4, side/8, side/8)."""
        vae = self.components.vae
        return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor

    def timestep(self, timestep_index: int | None = None) -> torch.Tensor:
        """`scheduler.timesteps[index]` after `set_timesteps(cfg.sd_num_steps)` (index defaults to the config's)."""
        index = self.cfg.sd_timestep_index if timestep_index is None else timestep_index
        scheduler = self.components.scheduler
        scheduler.set_timesteps(self.cfg.sd_num_steps)
        if not -len(scheduler.timesteps) <= index < len(scheduler.timesteps):
            raise ValueError(f"timestep index {index} is outside the {len(scheduler.timesteps)} scheduler timesteps")
        return scheduler.timesteps[index]

    def add_noise(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Noise the latents at `timestep` with noise from a CPU generator seeded by cfg.seed (same on any device)."""
        generator = torch.Generator("cpu").manual_seed(self.cfg.seed)
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device)
        # mixed in float32, then cast: the fp16 model sees the same noisy latents up to one rounding
        noisy = self.components.scheduler.add_noise(latents.float(), noise, timestep.reshape(1))
        return noisy.to(self.dtype)

    @torch.no_grad()
    def extract(
        self, image: ImageLike, layers: Sequence[str] | None = None, timestep_index: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Self-attention probabilities of any attn1 `layers` at any timestep: {path: (heads, T, T) float32}."""
        layers = list(self.cfg.sd_layers if layers is None else layers)
        latents = self.encode(self.preprocess(image))  # (1, 4, side/8, side/8)
        timestep = self.timestep(timestep_index)
        noisy = self.add_noise(latents, timestep)
        with capture_self_attention(self.components.unet, layers) as store:
            self.components.unet(
                noisy, timestep.to(self.device), encoder_hidden_states=self.empty_prompt_embedding(), return_dict=False
            )
        return {path: store[path] for path in layers}

    def __call__(self, image: ImageLike) -> torch.Tensor:
        """Head maps (m, T, T) float32: all heads of cfg.sd_layers[0], then of sd_layers[1], ... (authors' order)."""
        maps = self.extract(image)
        return torch.cat([maps[path] for path in self.cfg.sd_layers])  # (sum of heads, T, T)
