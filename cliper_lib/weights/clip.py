"""CLIP weights: open_clip pretrained tags through the hub cache, a local checkpoint file, or a tiny
random ViT.

Both profiles go through the same constructor (`open_clip.create_model`); only the weights differ.
Offline and without cached weights, loading stops at once with `WeightsMissingError`, whose message
names what is missing, where it was looked for and how to get it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..config import PAPER_PRETRAINED, CLIPerConfig, resolve_dtype
from ..method.clip_backbone import ClipBundle
from .hub import WeightsMissingError, fetch_hub_file

#: open_clip config of the tiny smoke backbone: the architecture of the authors' golden outputs
#: (ViT, width 128, 4 blocks, 2 heads, patch 16, QuickGELU, embedding 64).
TINY_CLIP_NAME = "cliper-tiny"
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 128, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
#: the file names open_clip looks for in a hub repository, in its order of preference.
OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def register_tiny_clip() -> None:
    """Make the tiny smoke architecture known to open_clip under TINY_CLIP_NAME (once)."""
    # lazy (open_clip takes seconds to import): only building or looking up a model needs it
    import open_clip

    if TINY_CLIP_NAME in open_clip.list_models():
        return
    # open_clip registers configs from JSON files only; write ours to a private temporary folder.
    folder = Path(tempfile.mkdtemp(prefix="cliper_oc_cfg_"))
    (folder / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder)


def clip_weights_repo(backbone: str, pretrained: str) -> str:
    """The hub repository open_clip takes `backbone`'s `pretrained` weights from."""
    import open_clip  # lazy, as in register_tiny_clip

    cfg = open_clip.get_pretrained_cfg(backbone, pretrained)
    if not cfg or not cfg.get("hf_hub"):
        raise WeightsMissingError(
            f"open_clip has no hub weights for {backbone!r} with pretrained={pretrained!r}"
        )
    return cfg["hf_hub"].rstrip("/")


def fetch_clip_weights(backbone: str, pretrained: str, allow_download: bool = True) -> Path:
    """Local path of the open_clip checkpoint `backbone`/`pretrained`, downloading it into the hub
    cache if allowed."""
    repo = clip_weights_repo(backbone, pretrained)
    return fetch_hub_file(
        repo,
        OPEN_CLIP_WEIGHT_FILES,
        allow_download,
        what=f"CLIP {backbone} ({pretrained})",
        fix="cliper download",
    )


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """Drop open_clip's "No pretrained weights loaded ... initialized randomly" (root logger) while
    building a model whose weights we load ourselves, or that is random on purpose: a warning nobody
    can act on."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def uses_quick_gelu(cfg: CLIPerConfig, from_file: bool) -> bool:
    """Whether to build the backbone with QuickGELU: `quick_gelu` true/false, or auto
    (docs/method.md 4.8).

    auto: QuickGELU for OpenAI's weights, i.e. the `openai` tag, or a checkpoint file for a backbone
    whose paper weights are OpenAI's (ViT-B-16, ViT-L-14; OpenAI's own TorchScript files are such
    files). Set it to false for a GELU-trained checkpoint of those backbones (LAION's, say), true
    for a QuickGELU one of another backbone.
    """
    if cfg.quick_gelu != "auto":
        return bool(cfg.quick_gelu)
    if from_file:
        return PAPER_PRETRAINED.get(cfg.backbone) == "openai"
    return (cfg.pretrained or PAPER_PRETRAINED.get(cfg.backbone, "openai")) == "openai"


def load_clip(
    cfg: CLIPerConfig, device: torch.device | str = "cpu", allow_download: bool = True
) -> ClipBundle:
    """Build the CLIP model of `cfg`: real weights (paper) or a seeded tiny random ViT (smoke).

    A checkpoint (hub or local file, TorchScript included) is read and checked against the backbone
    before the model is built, so a wrong file stops with a `CheckpointError` naming both
    architectures.
    """
    import open_clip  # lazy, as in register_tiny_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    register_tiny_clip()  # so the tiny architecture can also be loaded from a local checkpoint
    if cfg.profile == "smoke":
        name = TINY_CLIP_NAME
        with torch.random.fork_rng(devices=[]), _quiet_random_init_warning():  # random on purpose
            torch.manual_seed(cfg.seed)
            model = open_clip.create_model(name, pretrained=None)
        weights_id = f"random-seed-{cfg.seed}"
    else:
        name = cfg.backbone
        pretrained = cfg.pretrained or PAPER_PRETRAINED.get(name, "openai")
        path = Path(pretrained).expanduser()
        from_file = path.suffix in CHECKPOINT_SUFFIXES
        if from_file:
            if not path.exists():
                raise WeightsMissingError(
                    f"CLIP checkpoint file {path} does not exist (config field `pretrained`)"
                )
            weights = path
        else:
            weights = fetch_clip_weights(name, pretrained, allow_download)
        state_dict = read_clip_checkpoint(weights)
        # before building the model: a wrong file costs nothing
        check_architecture(state_dict, name, weights)
        with _quiet_random_init_warning():  # the weights are loaded right below
            model = open_clip.create_model(
                name, pretrained=None, force_quick_gelu=uses_quick_gelu(cfg, from_file)
            )
        load_clip_state_dict(model, state_dict, name, weights)
        weights_id = f"{name}/{pretrained}"
    model = model.eval().to(device=device, dtype=resolve_dtype(cfg.dtype))
    patch = model.visual.conv1.kernel_size[0]
    return ClipBundle(
        model=model,
        tokenizer=open_clip.get_tokenizer(name),
        name=name,
        weights_id=weights_id,
        patch_size=patch,
        mean=tuple(OPENAI_DATASET_MEAN),
        std=tuple(OPENAI_DATASET_STD),
    )


# --------------------------------------------------------------------------------------------------
# checkpoint files: read safely, check against the backbone, load
#: suffixes by which `pretrained` is taken as a file rather than an open_clip tag.
CHECKPOINT_SUFFIXES = (".pt", ".bin", ".safetensors", ".pth")
#: entries of OpenAI's TorchScript archives that are constants, not weights.
_TORCHSCRIPT_CONSTANTS = ("input_resolution", "context_length", "vocab_size")


class CheckpointError(ValueError):
    """A weights file is not a CLIP checkpoint, or is one of another architecture; the message says
    which."""


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (what OpenAI published): a zip whose folder holds code/ and
    constants.pkl."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_clip_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a CLIP weights file: safetensors, a torch checkpoint (read with
    weights_only=True: no code runs), or a TorchScript archive (OpenAI's .pt files). Anything else
    is a `CheckpointError`."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            loaded: Any = load_file(str(path))
        elif is_torchscript(path):
            loaded = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            for key in _TORCHSCRIPT_CONSTANTS:
                loaded.pop(key, None)
        else:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        # unpickling, zip, safetensors header errors: the file is not what we need
        raise CheckpointError(
            f"{path} is not a CLIP checkpoint that can be read safely ({type(error).__name__}). "
            "Expected an open_clip/OpenAI state dict (.pt/.pth/.bin saved with torch.save, "
            "or .safetensors) or OpenAI's TorchScript .pt file; a file that needs arbitrary code "
            "to unpickle is refused on purpose."
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if (
        not isinstance(loaded, dict)
        or not loaded
        or not all(isinstance(v, torch.Tensor) for v in loaded.values())
    ):
        raise CheckpointError(f"{path} holds {type(loaded).__name__}, not a state dict of tensors")
    if next(iter(loaded)).startswith("module."):  # saved from DistributedDataParallel
        loaded = {k[len("module.") :]: v for k, v in loaded.items()}
    return loaded


def _vision_shape(state_dict: dict[str, torch.Tensor]) -> dict[str, int] | None:
    """Width, depth and patch size of the vision tower of an open_clip/OpenAI ViT state dict
    (None if not one)."""
    conv = state_dict.get("visual.conv1.weight")
    if conv is None or conv.ndim != 4:
        return None
    blocks = {
        int(k.split(".")[3]) for k in state_dict if k.startswith("visual.transformer.resblocks.")
    }
    return {"width": conv.shape[0], "layers": len(blocks), "patch_size": conv.shape[-1]}


def _named_like(shape: dict[str, int]) -> str:
    """open_clip model names whose vision tower has this shape (e.g. "like ViT-L-14"), or ""."""
    import open_clip  # lazy, as in register_tiny_clip

    names = []
    for name in open_clip.list_models():
        vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
        if (
            all(vision.get(k) == v for k, v in shape.items())
            and "-" in name
            and "quickgelu" not in name
        ):
            names.append(name)
    return f" (like {', '.join(sorted(names, key=len)[:2])})" if names else ""


def check_architecture(
    state_dict: dict[str, torch.Tensor], backbone: str, path: str | Path
) -> None:
    """A `CheckpointError` naming both architectures when the file's vision tower is not
    `backbone`'s."""
    import open_clip  # lazy, as in register_tiny_clip

    vision = (open_clip.get_model_config(backbone) or {}).get("vision_cfg", {})
    expected = {k: vision.get(k) for k in ("width", "layers", "patch_size")}
    found = _vision_shape(state_dict)
    if found is None:
        raise CheckpointError(
            f"{path} is not a CLIP ViT checkpoint (it has no visual.conv1.weight); backbone "
            f"{backbone} needs one"
        )
    if found != expected:
        raise CheckpointError(
            f"{path} is a checkpoint of another architecture: its vision tower has width "
            f"{found['width']}, {found['layers']} blocks, patch {found['patch_size']}"
            f"{_named_like(found)}, but the config's backbone {backbone} has width "
            f"{expected['width']}, {expected['layers']} blocks, patch {expected['patch_size']}. "
            "Set the config field `backbone` to match the file "
            f"or use a checkpoint of {backbone}."
        )


def load_clip_state_dict(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], backbone: str, path: str | Path
) -> None:
    """Load a checked state dict into `model` as open_clip's own loader would (key conversion,
    resized position embeddings); what still does not fit is a `CheckpointError`."""
    # lazy, as in register_tiny_clip
    from open_clip.convert import convert_state_dict
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    state_dict = convert_state_dict(model, dict(state_dict))
    # buffers the model rebuilds itself (attn_mask) are not saved by torch.save, but TorchScript
    # keeps them
    persistent = set(model.state_dict())
    for name, _ in model.named_buffers():
        if name not in persistent:
            state_dict.pop(name, None)
    if "logit_scale" in state_dict and model.logit_scale.ndim != state_dict["logit_scale"].ndim:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
    # a checkpoint trained at another resolution: interpolate, as open_clip
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise CheckpointError(
            f"{path} does not fit backbone {backbone}: "
            f"{detail if len(detail) < 400 else detail[:400] + '...'}"
        ) from None
