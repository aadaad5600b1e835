"""Stable Diffusion weights: a hub repo id or a local diffusers folder (paper), or tiny random
components (smoke).

The paper profile loads the five components the one-step extraction needs (UNet, VAE, text encoder,
tokenizer and the scheduler shipped with the weights) from a local diffusers folder or the hub
cache; offline and uncached, loading stops at once with `WeightsMissingError`. The smoke profile
(and the benchmarks) build seeded random components of the same classes from the configs below,
SD-2.1-base's layout at tiny or full size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError

from ..config import CLIPerConfig, resolve_device, resolve_dtype
from ..files import atomic_write_text, default_cache_dir
from ..method.sd_attention import SDComponents, SDSelfAttention
from .hub import WeightsMissingError, hub_reachable, missing_weights_message
from .sd_prompt import (
    cached_empty_embedding,
    encode_empty_prompt,
    folder_identity,
    hub_snapshot_folder,
    random_identity,
)

#: the pipeline components of a diffusers folder / hub repo, by subfolder.
SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

#: the scheduler values of SD-2.1-base (used for the smoke profile; the paper profile loads the
#: shipped one).
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

#: SD-2.1-base UNet layout. diffusers' legacy `attention_head_dim` is the number of heads per block
#: here (320/5 = 64 channels per head in the blocks at full latent resolution, hence 5 heads in
#: up_blocks.3).
_UNET_LAYOUT: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "use_linear_projection": True,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
    "norm_eps": 1e-5,
    "downsample_padding": 1,
}
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    # up blocks have layers_per_block + 1 attentions, so layers_per_block=1 still gives
    # up_blocks.3.attentions.0/1
    "tiny": {
        **_UNET_LAYOUT,
        "sample_size": 32,
        "block_out_channels": (32, 32, 64, 64),
        "layers_per_block": 1,
        "attention_head_dim": (2, 2, 4, 4),
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
    },
    "full": {
        **_UNET_LAYOUT,
        "sample_size": 64,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "attention_head_dim": (5, 10, 20, 20),
        "cross_attention_dim": 1024,
        "norm_num_groups": 32,
    },
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
    "tiny": {
        **_VAE_LAYOUT,
        "block_out_channels": (8, 16, 32, 32),
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 256,
    },
    "full": {
        **_VAE_LAYOUT,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "sample_size": 512,
    },
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
    "tiny": {
        **_TEXT_LAYOUT,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": 32,
    },
    # SD-2.x uses the OpenCLIP ViT-H text tower without its last block (23 of 24)
    "full": {
        **_TEXT_LAYOUT,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "projection_dim": 512,
    },
}


_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


def tiny_tokenizer_dir() -> Path:
    """A folder with a CLIP tokenizer in transformers' format, written once from open_clip's bundled
    BPE table."""
    folder = default_cache_dir() / "sd-tokenizer-openclip-bpe"
    if all((folder / name).exists() for name in _TOKENIZER_FILES):
        return folder
    # lazy (open_clip takes seconds to import): needed once, to write the folder
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    # Same ids as open_clip: byte symbols, byte symbols + '</w>', merges in rank order, then the two
    # specials, which transformers spells <|startoftext|>/<|endoftext|>.
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
        # concurrent test workers never read a half-written file
        atomic_write_text(folder / name, text)
    return folder


def save_sd_folder(components: SDComponents, folder: str | Path) -> Path:
    """Write a diffusers folder layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/,
    model_index.json)."""
    folder = Path(folder)
    for name in SD_SUBFOLDERS:
        getattr(components, name).save_pretrained(folder / name)
    index = {"_class_name": "StableDiffusionPipeline"}
    for name in SD_SUBFOLDERS:
        module = getattr(components, name)
        library = "transformers" if name in ("text_encoder", "tokenizer") else "diffusers"
        index[name] = [library, type(module).__name__]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def sd_dtype_of(cfg: CLIPerConfig) -> torch.dtype:
    """The compute dtype of the VAE and UNet: `sd_dtype`, else `dtype` (docs/method.md, precision).

    The captured attention probabilities and everything after them stay float32 whatever it is.
    """
    return resolve_dtype(cfg.dtype if cfg.sd_dtype is None else cfg.sd_dtype)


def move_components(
    components: SDComponents, device: torch.device | str, dtype: torch.dtype
) -> SDComponents:
    """Move the networks and the empty-prompt embedding to `device`/`dtype` (in place); return the
    components."""
    cast = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat16"}
    if dtype not in cast:
        raise ValueError(f"dtype={dtype}: use float32, float16 or bfloat16")
    for module in (components.unet, components.vae, components.text_encoder):
        if module is not None:
            module.to(device)
            # .half()/.float() rather than .to(dtype): diffusers logs a warning on every .to(dtype)
            # call
            getattr(module, cast[dtype])().eval().requires_grad_(False)
    if components.empty_embedding is not None:
        components.empty_embedding = components.empty_embedding.to(device=device, dtype=dtype)
    return components


def drop_vae_decoder(vae: Any) -> Any:
    """Free the VAE's decoder half (the extraction only encodes): about 0.2 GB of fp32 weights for
    SD-2.x."""
    vae.decoder = None
    vae.post_quant_conv = None
    return vae


def build_random_sd_components(
    seed: int = 0,
    full_size: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    lean: bool = False,
) -> SDComponents:
    """Seeded random UNet/VAE/text encoder built from configs: tiny (tests, smoke) or SD-2.1-base
    size (benchmarks).

    `lean` (what `load_sd_components` uses) holds the empty-prompt embedding (from the on-disk
    cache; the text encoder is built only on a miss) instead of the text encoder and tokenizer. The
    weights are the same either way (one seeded stream: UNet, VAE, then text encoder).
    """
    # lazy (slow to import): only building SD needs them, and a config without SD never does
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    size = "full" if full_size else "tiny"
    source = f"random-full-size-seed-{seed}" if full_size else f"random-seed-{seed}"
    text_encoder = tokenizer = embedding = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET_CONFIGS[size])
        vae = AutoencoderKL(**VAE_CONFIGS[size])
        if lean:
            # a miss: the encoder from where the seeded stream stands, used once
            def encode() -> torch.Tensor:
                encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIGS[size])).eval()
                return encode_empty_prompt(
                    CLIPTokenizer.from_pretrained(tiny_tokenizer_dir()), encoder
                )

            embedding = cached_empty_embedding(random_identity(source, TEXT_CONFIGS[size]), encode)
        else:
            text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIGS[size])).eval()
            tokenizer = CLIPTokenizer.from_pretrained(tiny_tokenizer_dir())
            embedding = encode_empty_prompt(tokenizer, text_encoder)
    # from_config drops keys PNDM does not take
    scheduler = PNDMScheduler.from_config(SD21_SCHEDULER_CONFIG)
    components = SDComponents(
        unet, vae, text_encoder, tokenizer, scheduler, source=source, empty_embedding=embedding
    )
    return move_components(components, device, dtype)


def _load_scheduler(source: str, local_files_only: bool) -> Any:
    """The scheduler class named in `scheduler/scheduler_config.json` (what the pipeline loader
    would pick)."""
    import diffusers  # lazy, as in build_random_sd_components

    # any scheduler class can read the JSON: they share the file name scheduler_config.json
    config = diffusers.DDIMScheduler.load_config(
        source, subfolder="scheduler", local_files_only=local_files_only
    )
    class_name = config.get("_class_name", "DDIMScheduler")
    scheduler_class = getattr(diffusers, class_name, None)
    if scheduler_class is None:
        raise ValueError(
            f"scheduler class {class_name!r} of {source} is not in diffusers "
            f"{diffusers.__version__}"
        )
    return scheduler_class.from_config(config)


def _load_pretrained(source: str, local_files_only: bool, variant: str | None) -> SDComponents:
    """Load what the extraction runs from a hub repo id or a diffusers folder (OSError when files
    are missing): UNet, VAE encoder, scheduler and the empty-prompt embedding (cached; the text
    encoder is loaded on a miss)."""
    # lazy, as in build_random_sd_components
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    common = {"local_files_only": local_files_only, "variant": variant}

    def encode() -> torch.Tensor:
        text_encoder = CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", **common
        ).eval()
        tokenizer = CLIPTokenizer.from_pretrained(
            source, subfolder="tokenizer", local_files_only=local_files_only
        )
        # transformers 5 returns a 2-token tokenizer instead of raising when the vocabulary files
        # are absent
        if len(tokenizer) != text_encoder.config.vocab_size:
            raise OSError(
                f"the tokenizer of {source} has {len(tokenizer)} tokens "
                f"but its text encoder expects {text_encoder.config.vocab_size}: "
                "tokenizer/vocab.json and merges.txt (or tokenizer.json) are missing"
            )
        return encode_empty_prompt(tokenizer, text_encoder)

    folder = Path(source) if Path(source).is_dir() else hub_snapshot_folder(source)
    # first: the encoder is freed before the UNet
    embedding = cached_empty_embedding(folder_identity(folder), encode)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **common)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **common)
    scheduler = _load_scheduler(source, local_files_only)
    for module in (unet, vae):
        module.eval().requires_grad_(False)
    return SDComponents(unet, vae, None, None, scheduler, source=source, empty_embedding=embedding)


def _load_any_variant(source: str) -> SDComponents:
    """Load local files: the full-precision weights, else the fp16 variant (what `cliper download`
    may fetch)."""
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
    dtype: torch.dtype | None = None,
    allow_download: bool = True,
    keep_vae_decoder: bool = False,
) -> SDComponents:
    """The SD components of `cfg`: tiny random ones (smoke) or real weights from a local folder /
    the hub cache.

    What the extraction runs, nothing more: the cached empty-prompt embedding instead of the text
    encoder, and no VAE decoder unless `keep_vae_decoder` (a notebook that shows decoded latents).
    """
    components = _load_sd_components(cfg, allow_download)
    if not keep_vae_decoder:
        drop_vae_decoder(components.vae)
    return move_components(components, device, sd_dtype_of(cfg) if dtype is None else dtype)


def _load_sd_components(cfg: CLIPerConfig, allow_download: bool) -> SDComponents:
    if cfg.profile == "smoke":
        return build_random_sd_components(cfg.seed, lean=True)

    folder = Path(cfg.sd_repo).expanduser()
    if not folder.is_dir() and (folder.is_absolute() or cfg.sd_repo.startswith((".", "~"))):
        raise WeightsMissingError(
            f"the Stable Diffusion folder {folder} (config field sd_repo) does not exist"
        )
    if folder.is_dir():
        try:
            components = _load_any_variant(str(folder))
        except (OSError, ValueError) as error:
            present = sorted(p.name for p in folder.iterdir())
            raise WeightsMissingError(
                f"{folder} is not a complete diffusers Stable Diffusion folder: it needs the "
                f"subfolders {', '.join(SD_SUBFOLDERS)} with their configs and weights "
                f"(found: {present}).\n  cause: {error}"
            ) from error
        return components

    repo = cfg.sd_repo
    # Cache first, with no network at all: offline, diffusers/transformers would otherwise retry for
    # a while. The cached snapshot is loaded as a local folder: diffusers' hub path passes
    # huggingface_hub a deprecated argument (a warning on every load that no user can act on).
    try:
        components = _load_any_variant(str(_cached_snapshot(repo)))
    except (OSError, ValueError) as error:
        if not (allow_download and hub_reachable()):
            message = missing_weights_message(
                "Stable Diffusion",
                repo,
                f"{', '.join(SD_SUBFOLDERS)} (configs and weights)",
                "cliper download",
            )
            raise WeightsMissingError(message) from error
        components = _load_any_variant(str(download_sd_weights(repo)))
    components.source = repo
    return components


def _cached_snapshot(repo: str) -> Path:
    """The folder of `repo`'s cached snapshot (the one refs/main names); OSError when nothing is
    cached."""
    index = try_to_load_from_cache(repo, "model_index.json")
    if not isinstance(index, str):
        raise OSError(f"'{repo}' is not in the Hugging Face cache")
    return Path(index).parent


def sd_allow_patterns(variant: str | None = None) -> list[str]:
    """The files of a diffusers SD repo that the extraction needs (no safety checker, no feature
    extractor)."""
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
    """Fetch the needed files of `repo` into the hub cache (fp32 weights, or variant="fp16"); return
    the snapshot."""
    if Path(repo).expanduser().is_dir():
        return Path(repo).expanduser()  # a local folder needs no download
    if variant not in (None, "fp16"):
        raise ValueError(f"variant={variant!r}: use None (full precision) or 'fp16'")
    if not hub_reachable():
        raise WeightsMissingError(
            missing_weights_message(
                "Stable Diffusion", repo, ", ".join(sd_allow_patterns(variant)), "cliper download"
            )
        )
    patterns = sd_allow_patterns(variant)
    try:
        # looked up when called, so that a replacement (a test's monkeypatch) is the one used
        snapshot = Path(huggingface_hub.snapshot_download(repo, allow_patterns=patterns))
    except HfHubHTTPError as error:
        raise WeightsMissingError(
            f"could not download Stable Diffusion weights from '{repo}': {error}"
        ) from error
    # allow_patterns silently matches nothing when a repo lacks a file (e.g. a mirror with .bin
    # weights only)
    missing = [name for name in patterns if "*" not in name and not (snapshot / name).exists()]
    if missing:
        raise WeightsMissingError(
            f"'{repo}' has no {', '.join(missing)}; it is not a diffusers SD repo with "
            f"safetensors weights{'' if variant is None else f' of variant {variant}'}"
        )
    return snapshot


def load_sd_extractor(
    cfg: CLIPerConfig,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    allow_download: bool = True,
    keep_vae_decoder: bool = False,
) -> SDSelfAttention:
    """The SD self-attention extractor of `cfg` (device and dtype default to the config's, the dtype
    to `sd_dtype_of(cfg)`): components loaded, wrapped."""
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    dtype = sd_dtype_of(cfg) if dtype is None else dtype
    return SDSelfAttention(
        load_sd_components(cfg, device, dtype, allow_download, keep_vae_decoder), cfg
    )
