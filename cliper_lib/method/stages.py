"""The stage graph of CLIPer, declared once: each stage's inputs, config fields and computation.

`GRAPH` below is the only place the stages are wired (`describe()` renders it as the table in
docs/method.md, `diagram()` as the picture in docs/architecture.md). `run_stages` evaluates the
stages a caller asks for and what they need, nothing else: `CLIPer.segment` runs it to `labels`, a
notebook asks for a prefix ("everything up to the coarse map"), and a store given to it (the
explorer's stage cache) memoises each stage under a key made of the effective values of its fields
and the keys of its inputs. A stage sees the config through a `ConfigView` that refuses any field it
did not declare, so the declarations cannot drift from the code, and what depends on them (the
explorer's invalidation table, the stage cache) is derived from them.

What the caller keeps is declared too (`keep`), and two stages compute less when their output is
not kept: the layer walk then holds only the attention sum that fusion reads (`Stage.lean`), and
SFSA refines straight from the VAE latents, applying each SD head map as the UNet yields it (the
refine stage's `select`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..config import CLIPerConfig, ConfigView
from ..images import crop_boxes
from ..vfm import VFMInput, encoder_of, proxy_attentions, refinement_features
from .labels import label_map
from .refinements import REFINEMENTS, SD_PASS_FIELDS, refinement_in_effect
from .result import CoarseMap, SegmentationResult

#: what a run is given rather than computes.
RUN_INPUTS = ("image", "classes", "background")


@dataclass(frozen=True)
class Stage:
    """One step of the method: what it needs, which config fields it reads, how it is computed."""

    name: str
    needs: tuple[str, ...]  # earlier stages or RUN_INPUTS it always reads
    fields: tuple[str, ...]  # every config field the stage (and its key) may read
    settings: Callable[[Any, Any], Hashable]  # (model, cfg view) -> effective values: the key part
    compute: Callable[..., Any]  # (model, cfg view, **{need: value}) -> result
    may_need: tuple[str, ...] = ()  # stages it reads in some configurations only (see select)
    # (model, cfg view, kept stages) -> the needs read this time, in the order they are evaluated
    select: Callable[[Any, Any, Collection[str]], tuple[str, ...]] | None = None
    # (reader, fn): when the caller does not keep this stage, compute only what the stage `reader`
    # reads of it, fn(model, the reader's cfg view), passed to compute as `lean=`
    lean: tuple[str, Callable[[Any, Any], Hashable]] | None = None

    def needed(self, model: Any, cfg: Any, kept: Collection[str]) -> tuple[str, ...]:
        return self.needs if self.select is None else self.select(model, cfg, kept)


def fused_attention_layers(model: Any, cfg: Any) -> tuple[int, ...]:
    """The layers whose attentions fusion reads: the fused range.

    An empty tuple for another last-layer attention.
    """
    if cfg.last_layer_attention != "fused":
        return ()
    return cfg.fused_layers(model.clip.num_layers)


def _fusion_needs(model: Any, cfg: Any, kept: Collection[str]) -> tuple[str, ...]:
    return ("clip_walk", "proxy") if cfg.last_layer_attention == "proxy" else ("clip_walk",)


def _refine_needs(model: Any, cfg: Any, kept: Collection[str]) -> tuple[str, ...]:
    kind = refinement_in_effect(model, cfg)
    if kind.streamed is not None and kind.source not in kept:
        # nobody keeps the head maps: refine from the latents, encoded first, while only the
        # weights are resident (the VAE's activations are the largest of an image)
        return ("sd_latents", "coarse")
    return ("coarse",) if kind.source is None else ("coarse", kind.source)


def _refine_settings(model: Any, cfg: Any) -> Hashable:
    kind = refinement_in_effect(model, cfg)
    return (kind.name, kind.settings(cfg))


def _refine(model: Any, cfg: Any, coarse: CoarseMap, **source: Any) -> torch.Tensor:
    """S_f (C, s, s) by the refinement in effect, from its source stage or (streamed) latents."""
    kind = refinement_in_effect(model, cfg)
    if "sd_latents" in source:
        return kind.streamed(model, cfg, [coarse.coarse], source["sd_latents"])[0]
    return kind.one(model, cfg, coarse.coarse, source.get(kind.source))


def _proxy(model: Any, cfg: Any, clip_walk: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The VFM attention of the CLIP input and its crops: (1, 1, N, N), (K, 1, N', N') or None."""
    height, width = clip_walk.input.shape[1:]
    boxes = []
    if clip_walk.crop_walk is not None:
        boxes = crop_boxes(height, width, clip_walk.crop_size, clip_walk.stride)
    encoder = encoder_of(model.vfm, cfg.proxy_model)
    return proxy_attentions(
        encoder,
        model.clip,
        clip_walk.input,
        boxes,
        VFMInput.of(cfg),
        double_normalization=cfg.proxy_double_normalization,
        half_precision=cfg.proxy_half_precision,
    )


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


#: the fields of the refine stage: every kind's, and the SD pass it runs itself when streaming.
REFINE_FIELDS = _unique(
    ("refinement", *(f for kind in REFINEMENTS.values() for f in kind.fields), *SD_PASS_FIELDS)
)
SD_IMAGE_FIELDS = ("sd_image_size", "profile", "sd_resize")
#: how the image reaches a VFM (the proxy's and the VFM refinements').
VFM_INPUT_FIELDS = ("vfm_grid_rounding", "vfm_position_resize")
PROXY_FIELDS = (
    "proxy_model",
    "proxy_double_normalization",
    "proxy_half_precision",
    *VFM_INPUT_FIELDS,
)

GRAPH: tuple[Stage, ...] = (
    Stage(
        "text",
        ("classes", "background"),
        ("classes", "templates"),
        settings=lambda m, c: (c.classes, c.templates),
        compute=lambda m, c, classes, background: m.encode_text(classes, background, cfg=c),
    ),
    Stage(
        "clip_walk",
        ("image",),
        ("size", "sliding_crop_size", "sliding_stride"),
        settings=lambda m, c: (
            c.size,
            c.sliding_crop_size,
            c.sliding_stride if c.sliding_crop_size else 0,
        ),
        compute=lambda m, c, image, lean=None: m.clip_features(image, c, summed_layers=lean),
        lean=("fusion", fused_attention_layers),
    ),
    Stage(  # the VFM attention of last_layer_attention="proxy", for the image and its crops
        "proxy",
        ("clip_walk",),
        PROXY_FIELDS,
        settings=lambda m, c: tuple(getattr(c, name) for name in PROXY_FIELDS),
        compute=_proxy,
    ),
    Stage(
        "fusion",
        ("clip_walk",),
        ("fuse_layers", "normalization_rounds", "last_layer_attention"),
        settings=lambda m, c: (
            c.fused_layers(m.clip.num_layers),
            c.normalization_rounds,
            c.last_layer_attention,
        ),
        compute=lambda m, c, clip_walk, proxy=None: m.fusion(clip_walk, c, proxy),
        may_need=("proxy",),
        select=_fusion_needs,
    ),
    Stage(
        "layer_maps",
        ("clip_walk", "fusion", "text"),
        ("logit_scale",),
        settings=lambda m, c: (float(c.logit_scale),),
        compute=lambda m, c, clip_walk, fusion, text: m.layer_maps(clip_walk, fusion, text, c),
    ),
    Stage(
        "coarse",
        ("layer_maps", "fusion"),
        ("select_layer", "attention_thr"),
        settings=lambda m, c: (c.select_layer % m.clip.num_layers, float(c.attention_thr)),
        compute=lambda m, c, layer_maps, fusion: m.coarse(layer_maps, fusion, c),
    ),
    Stage(  # the image's VAE latents, for the SD pass
        "sd_latents",
        ("image",),
        SD_IMAGE_FIELDS,
        settings=lambda m, c: (c.effective_sd_image_size, c.sd_resize),
        compute=lambda m, c, image: m.sd_latents(image, c),
    ),
    Stage(  # SD self-attention head maps (m, T, T)
        "sd_attention",
        ("sd_latents",),
        SD_PASS_FIELDS,
        settings=lambda m, c: (tuple(c.sd_layers), c.sd_timestep_index, c.sd_num_steps, c.seed),
        compute=lambda m, c, sd_latents: m.sd_attention(sd_latents, c),
    ),
    Stage(  # a VFM refinement's patch features (fh, fw, D)
        "vfm",
        ("image",),
        ("refinement", *VFM_INPUT_FIELDS),
        settings=lambda m, c: (c.refinement, c.vfm_grid_rounding, c.vfm_position_resize),
        compute=lambda m, c, image: refinement_features(
            encoder_of(m.vfm, c.refinement), image, VFMInput.of(c)
        ),
    ),
    Stage(
        "refine",
        ("coarse",),
        REFINE_FIELDS,
        settings=_refine_settings,
        compute=_refine,
        may_need=("sd_attention", "vfm", "sd_latents"),
        select=_refine_needs,
    ),
    Stage(
        "labels",
        ("refine", "coarse", "image"),
        ("score_threshold", "bkg_thre", "is_normalize"),
        settings=lambda m, c: (float(c.score_threshold), float(c.bkg_thre), bool(c.is_normalize)),
        # tiled: never C × H0 × W0 floats (labels.py)
        compute=lambda m, c, refine, coarse, image: label_map(
            refine, coarse.coarse, image.shape[:2], c
        ),
    ),
)
STAGES: tuple[str, ...] = tuple(stage.name for stage in GRAPH)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in GRAPH}


# --- what the declarations imply ------------------------------------------------------------------
def inputs_of(stage: Stage) -> tuple[str, ...]:
    """Every input a stage may read: what it always needs, then what some configurations add."""
    return stage.needs + stage.may_need


def stages_reading(name: str) -> tuple[str, ...]:
    """The stages that declare config field `name`, or that take run input `name` directly."""
    return tuple(s.name for s in GRAPH if name in s.fields or name in inputs_of(s))


def downstream(names: Iterable[str]) -> tuple[str, ...]:
    """`names` and every stage that (possibly) consumes them, directly or not, in graph order."""
    hit = set(names)
    for stage in GRAPH:  # GRAPH is in topological order
        if any(need in hit for need in inputs_of(stage)):
            hit.add(stage.name)
    return tuple(s for s in STAGES if s in hit)


def invalidated_by(*names: str) -> tuple[str, ...]:
    """What a change of these config fields / run inputs recomputes: their readers and all below."""
    return downstream(s for name in names for s in stages_reading(name))


def describe() -> str:
    """The graph as a markdown table: stage, what it needs, which config fields it reads."""
    rows = ["| stage | needs | needs in some configurations | config fields it reads |"]
    rows.append("|---|---|---|---|")
    for s in GRAPH:
        fields = ", ".join(f"`{f}`" for f in s.fields)
        rows.append(f"| `{s.name}` | {', '.join(s.needs)} | {', '.join(s.may_need)} | {fields} |")
    return "\n".join(rows)


def diagram() -> str:
    """The graph as a Mermaid flowchart, run inputs as rounded boxes.

    A dotted arrow marks an input that the configuration decides whether to read.
    """
    lines = ["flowchart TD"]
    lines += [f"    {name}([{name}])" for name in RUN_INPUTS]
    lines += [f"    {stage.name}[{stage.name}]" for stage in GRAPH]
    for stage in GRAPH:
        lines += [f"    {need} --> {stage.name}" for need in stage.needs]
        lines += [f"    {need} -.-> {stage.name}" for need in stage.may_need]
    return "\n".join(lines)


# --- running it -----------------------------------------------------------------------------------
class StageStore(Protocol):
    """A store of stage results by key (the explorer's cache); `run_stages` works without one."""

    def lookup(self, stage: str, key: Hashable) -> tuple[bool, Any]: ...

    def save(self, stage: str, key: Hashable, value: Any, seconds: float) -> None: ...


class _GraphRun:
    """One run of the graph: resolves each stage once, keyed; drops what nobody reads anymore."""

    def __init__(
        self,
        model: Any,
        cfg: CLIPerConfig,
        input_keys: Mapping[str, Hashable],
        store: StageStore | None,
        given: Mapping[str, tuple[Hashable, Any]],
    ) -> None:
        self.model, self.cfg, self.input_keys, self.store, self.given = (
            model,
            cfg,
            input_keys,
            store,
            given,
        )
        self.result = SegmentationResult(cfg)
        self.kept: Collection[str] = STAGES
        self.readers: dict[str, int] = {}  # stage -> how many stages of this run still read it
        self.sync = model.device.type == "cuda"  # time the work, not the kernel launches

    def view(self, stage: Stage) -> ConfigView:
        return ConfigView(self.cfg, stage.fields, stage.name)

    def plan(self, targets: Sequence[str], keep: Iterable[str] | None) -> None:
        """With `keep`: count who reads each stage that is not kept.

        The stages kept are `keep`, `targets` and what the caller gave (it holds them).
        """
        if keep is None:
            return
        self.kept = frozenset(keep) | frozenset(targets) | frozenset(self.given)
        wanted = set(targets)
        for stage in reversed(GRAPH):  # GRAPH is in topological order
            if stage.name in wanted and stage.name not in self.given:
                for need in stage.needed(self.model, self.view(stage), self.kept):
                    self.readers[need] = self.readers.get(need, 0) + 1
                    wanted.add(need)

    def resolve(self, name: str) -> Hashable:
        """The key of `name`, computing its value (and what it needs) if this run has not yet."""
        if name in RUN_INPUTS:
            return self.input_keys[name]
        if name in self.result.keys:
            return self.result.keys[name]
        if name in self.given:  # the caller's value: nothing it would need is computed
            key, value = self.given[name]
            self.result.values[name], self.result.keys[name] = value, ("given", name, key)
            return self.result.keys[name]
        stage = BY_NAME[name]
        view = self.view(stage)
        needed = stage.needed(self.model, view, self.kept)
        needed_keys = tuple(self.resolve(need) for need in needed)
        lean = self.lean(stage)
        key = (name, stage.settings(self.model, view), needed_keys, lean)
        value = self.lookup_or_compute(stage, view, key, needed, lean)
        self.result.values[name], self.result.keys[name] = value, key
        self.release(needed)
        return key

    def lean(self, stage: Stage) -> Hashable | None:
        """What the reader of an unkept stage reads of it (None: the stage is kept, or not lean)."""
        if stage.lean is None or stage.name in self.kept:
            return None
        reader, part = stage.lean
        return part(self.model, self.view(BY_NAME[reader]))

    def lookup_or_compute(
        self, stage: Stage, view: ConfigView, key: Hashable, needed: Sequence[str], lean: Any
    ) -> Any:
        hit, value = self.store.lookup(stage.name, key) if self.store is not None else (False, None)
        if hit:
            return value
        values = {need: self.result.values[need] for need in needed}
        if lean is not None:
            values["lean"] = lean
        if self.sync:
            torch.cuda.synchronize(self.model.device)
        start = time.perf_counter()
        value = stage.compute(self.model, view, **values)
        if self.sync:
            torch.cuda.synchronize(self.model.device)
        seconds = time.perf_counter() - start
        self.result.timings[stage.name] = seconds
        if self.store is not None:
            self.store.save(stage.name, key, value, seconds)
        return value

    def release(self, needed: Sequence[str]) -> None:
        """Drop each stage value no later stage reads and the caller does not keep."""
        for need in needed:
            self.readers[need] = self.readers.get(need, 0) - 1
            if self.readers[need] == 0 and need in BY_NAME and need not in self.kept:
                del self.result.values[need]


def run_stages(
    model: Any,
    cfg: CLIPerConfig,
    inputs: Mapping[str, Any],
    input_keys: Mapping[str, Hashable],
    targets: Sequence[str] = ("labels",),
    *,
    keep: Iterable[str] | None = None,
    store: StageStore | None = None,
    given: Mapping[str, tuple[Hashable, Any]] | None = None,
) -> SegmentationResult:
    """Evaluate `targets` and the stages they need (each once), in dependency order.

    `inputs`/`input_keys` hold the RUN_INPUTS and what identifies them; `given` maps a stage to a
    (key, value) the caller already has (an encoded text set, SD head maps), used instead of
    computing it. `keep` (default: every stage reached) names the stages the result holds besides
    `targets`; any other is dropped once its last reader is done, and computed lean where the graph
    says how (see Stage.lean).
    """
    unknown = [t for t in targets if t not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    cfg.check_against_depth(model.clip.num_layers)
    run = _GraphRun(model, cfg, input_keys, store, given or {})
    run.result.values.update(inputs)
    run.plan(targets, keep)
    for target in targets:
        run.resolve(target)
    return run.result
