"""Stage-level memoisation of the CLIPer pipeline: the store the explorer, the layer-range sweep and
the notebooks run the method's stage graph (`cliper_lib.method.stages`) through.

Each stage's result is kept under a key made of the effective values of the config fields that stage
declares, chained with the keys of the stages it consumes, so moving one knob recomputes only the
stages downstream of it, and a setting seen before is a cache hit.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...config import CLIPerConfig
from ...images import content_id, rgb_array
from ...method.pipeline import CLIPer
from ...method.refinements import refinement_in_effect
from ...method.result import SegmentationResult
from ...method.stages import STAGES
from ...method.text import TextSet

#: how many results each stage keeps (least recently used goes first). The walk and the SD head maps
#: are the large ones (hundreds of MB per image at paper size), the later stages are small.
DEFAULT_CAPACITY = {
    "text": 32,
    "clip_walk": 2,
    "fusion": 4,
    "layer_maps": 8,
    "coarse": 8,
    "sd_latents": 2,
    "sd_attention": 2,
    "refine": 8,
    "labels": 8,
    "proxy": 4,
    "vfm": 2,
}


@dataclass
class StageEvent:
    """One recomputation: which stage, how long it took, during which `run` call."""

    stage: str
    seconds: float
    run: int


class StageCache:
    """Memoises each CLIPer stage by exactly the inputs it depends on; counts and times every
    recomputation.

    `recomputed[stage]` counts recomputations since creation (or `reset_counts`), `hits[stage]` the
    reuses, `log` lists every recomputation as a `StageEvent`; a run's `timings` say what it redid.
    """

    def __init__(self, model: CLIPer, capacity: Mapping[str, int] | None = None):
        self.model = model
        self.capacity = {**DEFAULT_CAPACITY, **(capacity or {})}
        unknown = set(self.capacity) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
        self._store: dict[str, OrderedDict] = {stage: OrderedDict() for stage in STAGES}
        self.recomputed: Counter = Counter()
        self.hits: Counter = Counter()
        self.log: list[StageEvent] = []
        self.runs = 0

    # --- bookkeeping ------------------------------------------------------------------------------
    def reset_counts(self) -> None:
        """Zero the counters and the log (the cached results stay)."""
        self.recomputed.clear()
        self.hits.clear()
        self.log.clear()

    def clear(self, stages: Iterable[str] | None = None) -> None:
        """Drop cached results (all stages, or the named ones)."""
        for stage in stages or STAGES:
            self._store[stage].clear()

    def copy(self) -> StageCache:
        """A cache holding the same results (shared, read-only) with fresh counters, e.g. to branch
        a sweep."""
        other = StageCache(self.model, self.capacity)
        other._store = {stage: OrderedDict(entries) for stage, entries in self._store.items()}
        return other

    def cached(self, stage: str) -> int:
        """How many results `stage` holds now."""
        return len(self._store[stage])

    # --- the store protocol of run_stages ---------------------------------------------------------
    def lookup(self, stage: str, key: Hashable) -> tuple[bool, Any]:
        store = self._store[stage]
        if key not in store:
            return False, None
        store.move_to_end(key)
        self.hits[stage] += 1
        return True, store[key]

    def save(self, stage: str, key: Hashable, value: Any, seconds: float) -> None:
        store = self._store[stage]
        store[key] = value
        while len(store) > max(1, self.capacity[stage]):
            store.popitem(last=False)
        self.recomputed[stage] += 1
        self.log.append(StageEvent(stage, seconds, self.runs))

    def effective_refinement(self, cfg: CLIPerConfig) -> str:
        """The name of the refinement that will run: none when the model lacks the part it needs."""
        return refinement_in_effect(self.model, cfg).name

    # --- the pipeline -----------------------------------------------------------------------------
    @torch.no_grad()
    def run(
        self,
        image: Any,
        cfg: CLIPerConfig | None = None,
        classes: Sequence[str] | str | TextSet | None = None,
        background: Sequence[str] | str | None = None,
        image_id: Hashable | None = None,
        until: str = "labels",
    ) -> SegmentationResult:
        """The pipeline of `CLIPer.segment` with every stage looked up before it is computed.

        `image_id` names the image in the keys (default: a hash of its pixels); `until` stops after
        a stage ("coarse" skips SD, refinement and labels). `classes` may be a list, a ';'-separated
        string or a TextSet.
        """
        if until not in STAGES:
            raise ValueError(f"until={until!r}; choose one of {', '.join(STAGES)}")
        if classes is None:
            raise ValueError("give the class names (a list, a ';'-separated string, or a TextSet)")
        model = self.model
        cfg = cfg or model.cfg
        text = classes if isinstance(classes, TextSet) else None
        image = rgb_array(image)
        image_id = content_id(image) if image_id is None else image_id
        self.runs += 1
        # the text is always part of a run (the explorer shows the class names, whatever stage it
        # stops at)
        targets = ("text", until) if until != "text" else ("text",)
        given = {"text": text} if text is not None else None
        return model.run(
            image,
            None if text else classes,
            background,
            cfg=cfg,
            until=targets,
            given=given,
            image_id=image_id,
            store=self,
        )
