"""The stage graph of CLIPer, declared once: each stage's inputs, the config fields it reads, and its computation.

`GRAPH` below is the only place the stages are wired (`describe()` renders it as the table in docs/method.md).
`run_stages` evaluates a target stage and what it needs, nothing else: `CLIPer.segment` runs it to `labels`, a
notebook asks for a prefix ("everything up to the coarse map"), and a store given to it (the explorer's stage
cache) memoises each stage under a key made of the effective values of its fields and the keys of its inputs. A
stage sees the config through a `ConfigView` that refuses any field it did not declare, so the declarations
cannot drift from the code, and what depends on them (the explorer's invalidation table, the stage cache) is
derived from them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..config import VFM_REFINEMENTS, CLIPerConfig, ConfigView, UndeclaredFieldError  # noqa: F401 (re-exported)
from ..images import crop_boxes
from ..vfm import encoder_of, proxy_attentions, refinement_features

#: what a run is given rather than computes.
RUN_INPUTS = ("image", "classes", "background")


def refinement_in_effect(model: Any, cfg: Any) -> str:
    """The refinement that runs: the configured one, or 'none' when the model lacks its SD extractor / VFMs."""
    return (
        "none"
        if (model.vfm if cfg.refinement in VFM_REFINEMENTS else model.sd) is None
        else cfg.refinement
    )


def _fused_range(model: Any, cfg: Any) -> tuple[int, int]:
    return (
        (0, model.clip.num_layers - 2) if cfg.fuse_layers is None else tuple(cfg.fuse_layers)
    )  # None == all


@dataclass(frozen=True)
class Stage:
    """One step of the method: what it needs, which config fields it reads, and how it is computed."""

    name: str
    needs: tuple[str, ...]  # earlier stages or RUN_INPUTS, in the order `compute` takes them
    fields: tuple[str, ...]  # every config field the stage (and its key) may read
    settings: Callable[
        [Any, Any], Hashable
    ]  # (model, cfg view) -> effective values of the fields: the key part
    compute: Callable[..., Any]  # (model, cfg view, *values of needs) -> result
    # (model, cfg view) -> the needs used this time (default: all); refine skips SD when no refinement runs
    select: Callable[[Any, Any], tuple[str, ...]] | None = None

    def needed(self, model: Any, cfg: Any) -> tuple[str, ...]:
        return self.needs if self.select is None else self.select(model, cfg)


def _refine_needs(model: Any, cfg: Any) -> tuple[str, ...]:
    kind = refinement_in_effect(model, cfg)
    return (
        ("coarse",)
        if kind == "none"
        else ("coarse", "vfm" if kind in VFM_REFINEMENTS else "sd_attention")
    )


def _refine_settings(model: Any, cfg: Any) -> Hashable:
    kind = refinement_in_effect(model, cfg)
    if kind == "none" or kind in VFM_REFINEMENTS:
        return (kind,)
    return (
        kind,
        float(cfg.effective_sd_attention_thr),
        cfg.selection_head if kind == "selection" else None,
    )


def _refine(
    model: Any, cfg: Any, coarse: tuple, head_maps: torch.Tensor | None = None
) -> torch.Tensor:
    return model.refine(coarse[0], head_maps, cfg)


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
        compute=lambda m, c, image: m.clip_features(image, c),
    ),
    Stage(
        "proxy",
        ("clip_walk",),
        ("proxy_model", "proxy_double_normalization"),  # VFM attention: image, crops
        settings=lambda m, c: (c.proxy_model, c.proxy_double_normalization),
        compute=lambda m, c, f: proxy_attentions(
            encoder_of(m.vfm, c.proxy_model),
            m.clip,
            f.input,
            crop_boxes(*f.input.shape[1:], f.crop_size, f.stride) if f.crop_walk else [],
            c.proxy_double_normalization,
        ),
    ),
    Stage(
        "fusion",
        ("clip_walk", "proxy"),
        ("fuse_layers", "normalization_rounds", "last_layer_attention"),
        settings=lambda m, c: (_fused_range(m, c), c.normalization_rounds, c.last_layer_attention),
        compute=lambda m, c, features, proxy=None: m.fusion(features, c, proxy),
        select=lambda m, c: (
            ("clip_walk", "proxy") if c.last_layer_attention == "proxy" else ("clip_walk",)
        ),
    ),
    Stage(
        "layer_maps",
        ("clip_walk", "fusion", "text"),
        ("logit_scale",),
        settings=lambda m, c: (float(c.logit_scale),),
        compute=lambda m, c, features, fused, text: m.layer_maps(features, fused, text, c),
    ),
    Stage(
        "coarse",
        ("layer_maps", "fusion"),
        ("select_layer", "attention_thr"),
        settings=lambda m, c: (c.select_layer % m.clip.num_layers, float(c.attention_thr)),
        compute=lambda m, c, maps, fused: m.coarse(maps, fused, c),
    ),  # (S_c, thresholded S_sel)
    Stage(
        "sd_attention",
        ("image",),
        (
            "sd_layers",
            "sd_timestep_index",
            "sd_num_steps",
            "sd_image_size",
            "profile",
            "sd_resize",
            "seed",
        ),
        settings=lambda m, c: (
            tuple(c.sd_layers),
            c.sd_timestep_index,
            c.sd_num_steps,
            c.effective_sd_image_size,
            c.sd_resize,
            c.seed,
        ),
        compute=lambda m, c, image: m.sd_attention(image, c),
    ),
    Stage(
        "vfm",
        ("image",),
        ("refinement",),
        settings=lambda m, c: (c.refinement,),  # a VFM refinement's features
        compute=lambda m, c, image: refinement_features(encoder_of(m.vfm, c.refinement), image),
    ),
    Stage(
        "refine",
        ("coarse", "sd_attention", "vfm"),
        ("refinement", "selection_head", "attention_thr", "sd_attention_thr"),
        settings=_refine_settings,
        compute=_refine,
        select=_refine_needs,
    ),
    Stage(
        "labels",
        ("refine", "coarse", "image"),
        ("score_threshold", "bkg_thre", "is_normalize"),
        settings=lambda m, c: (float(c.score_threshold), float(c.bkg_thre), bool(c.is_normalize)),
        compute=lambda m, c, refined, coarse, image: m.labels(
            refined, coarse[0], image.shape[:2], c
        ),
    ),
)
STAGES: tuple[str, ...] = tuple(stage.name for stage in GRAPH)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in GRAPH}


# --- what the declarations imply ------------------------------------------------------------------------------------
def stages_reading(name: str) -> tuple[str, ...]:
    """The stages that declare config field `name`, or that take run input `name` directly."""
    return tuple(s.name for s in GRAPH if name in s.fields or name in s.needs)


def downstream(names: Iterable[str]) -> tuple[str, ...]:
    """`names` and every stage that (possibly) consumes them, directly or not, in graph order."""
    hit = set(names)
    for stage in GRAPH:  # GRAPH is in topological order
        if any(need in hit for need in stage.needs):
            hit.add(stage.name)
    return tuple(s for s in STAGES if s in hit)


def invalidated_by(*names: str) -> tuple[str, ...]:
    """The stages a change of these config fields / run inputs recomputes: their readers and all downstream."""
    return downstream(s for name in names for s in stages_reading(name))


def describe() -> str:
    """The graph as a markdown table: stage, what it needs, which config fields it reads (docs/method.md 3.13)."""
    rows = ["| stage | needs | config fields it reads |", "|---|---|---|"]
    rows += [
        f"| `{s.name}` | {', '.join(s.needs)} | {', '.join(f'`{f}`' for f in s.fields)} |"
        for s in GRAPH
    ]
    return "\n".join(rows)


# --- running it ------------------------------------------------------------------------------------------------------
class StageStore(Protocol):
    """Somewhere to keep stage results by key (the explorer's cache); `run_stages` works without one."""

    def lookup(self, stage: str, key: Hashable) -> tuple[bool, Any]: ...

    def save(self, stage: str, key: Hashable, value: Any, seconds: float) -> None: ...


@dataclass
class StageRun:
    """What one `run_stages` call produced: each stage reached, its key, and the seconds of those it computed."""

    cfg: CLIPerConfig
    values: dict[str, Any] = field(default_factory=dict)  # stage or run input -> value
    keys: dict[str, Hashable] = field(default_factory=dict)  # stage -> key (only stages)
    recomputed: dict[str, float] = field(
        default_factory=dict
    )  # stage -> seconds, for the stages computed now

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values


def run_stages(
    model: Any,
    cfg: CLIPerConfig,
    inputs: Mapping[str, Any],
    input_keys: Mapping[str, Hashable],
    targets: Sequence[str] = ("labels",),
    store: StageStore | None = None,
    given: Mapping[str, tuple[Hashable, Any]] | None = None,
    keep: Iterable[str] | None = None,
) -> StageRun:
    """Evaluate `targets` and the stages they need (each once), in dependency order.

    `inputs`/`input_keys` hold the RUN_INPUTS and what identifies them; `given` maps a stage to a (key, value)
    the caller already has (an encoded text set, SD head maps), used instead of computing it. `keep` (default: all)
    names the stages the run returns; any other is dropped once its last reader is done (the walk, before SD).
    """
    unknown = [t for t in targets if t not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    cfg.check_against_depth(model.clip.num_layers)
    given = dict(given or {})
    run = StageRun(cfg)
    run.values.update(inputs)
    sync = model.device.type == "cuda"
    readers: dict[str, int] = {}  # with `keep`: stage -> how many stages of this run still read it
    wanted = set(targets)
    for stage in reversed(GRAPH if keep is not None else ()):  # GRAPH is in topological order
        if stage.name in wanted:
            for need in stage.needed(model, ConfigView(cfg, stage.fields, stage.name)):
                readers[need] = readers.get(need, 0) + 1
                wanted.add(need)
    keep = set(keep or ()) | set(targets)

    def resolve(name: str) -> Hashable:
        if name in RUN_INPUTS:
            return input_keys[name]
        if name in run.keys:
            return run.keys[name]
        stage = BY_NAME[name]
        view = ConfigView(cfg, stage.fields, name)
        needed = stage.needed(model, view)
        needed_keys = tuple(resolve(need) for need in needed)
        if name in given:
            key, value = given[name]
            key = ("given", name, key)
        else:
            key = (name, stage.settings(model, view), needed_keys)
            hit, value = store.lookup(name, key) if store is not None else (False, None)
            if not hit:
                if sync:
                    torch.cuda.synchronize(model.device)
                start = time.perf_counter()
                value = stage.compute(model, view, *(run.values[need] for need in needed))
                if sync:
                    torch.cuda.synchronize(model.device)  # time the work, not the kernel launches
                seconds = time.perf_counter() - start
                run.recomputed[name] = seconds
                if store is not None:
                    store.save(name, key, value, seconds)
        run.values[name], run.keys[name] = value, key
        for need in needed:  # drop what no later stage reads and nobody keeps
            readers[need] = readers.get(need, 0) - 1
            if readers[need] == 0 and need in BY_NAME and need not in keep:
                del run.values[need]
        return key

    try:
        for target in targets:
            resolve(target)
    finally:
        # resolve is recursive, so its closure holds itself and with it `run`: a reference cycle that would keep
        # every stage value (the layer walk, the SD scratch) alive until the cyclic garbage collector runs.
        del resolve
    return run
