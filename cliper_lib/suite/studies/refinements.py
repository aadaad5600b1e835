"""Refinements side by side (notebook 04): SD's self-attention chain against a VFM's patch
affinities, on the same cached CLIP stages, with what each costs for one image (seconds, memory) and
how their labels compare."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from ...config import CLIPerConfig
from ...method.refinements import refinement_in_effect
from ...method.result import SegmentationResult
from ...vfm.encoder import encoder_of
from ..toolkit.stage_cache import StageCache

#: the stages that belong to the refinement: the affinity source (SD head maps or VFM features) and
#: S_f.
REFINEMENT_STAGES = ("sd_attention", "vfm", "refine")
_MIB = 2**20


@dataclass
class RefinementRun:
    """One refinement on one image: the stage run, its seconds and memory."""

    name: str
    run: SegmentationResult  # every stage value (run.refined = S_f, run.labels, ...)
    seconds: dict[str, float]  # the refinement's stages that ran -> seconds
    # what the affinity stage keeps: SD head maps (m, T, T) or VFM features (fh, fw, D)
    affinity_mib: float
    peak_cuda_mib: float | None  # peak CUDA memory above what was allocated before (None on CPU)

    @property
    def labels(self) -> torch.Tensor:
        return self.run.labels  # (H0, W0), on the CPU


def run_refinement(
    cache: StageCache, image: Any, classes: Sequence[str], name: str, cfg: CLIPerConfig
) -> RefinementRun:
    """Run `cfg` through a branch of `cache` with the refinement's stages dropped, so that they
    (only) are timed.

    A VFM is loaded before the clock starts (loading is not per-image work).
    """
    model = cache.model
    if refinement_in_effect(model, cfg).part == "vfm":
        encoder_of(model.vfm, cfg.refinement)
    branch = cache.copy()
    branch.clear(REFINEMENT_STAGES + ("labels",))
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(model.device)
        torch.cuda.reset_peak_memory_stats(model.device)
        before = torch.cuda.memory_allocated(model.device)
    run = model.run(image, list(classes), cfg=cfg, store=branch)
    peak = (torch.cuda.max_memory_allocated(model.device) - before) / _MIB if cuda else None
    source = run.values.get("vfm") if "vfm" in run.keys else run.values.get("sd_attention")
    affinity = 0.0 if source is None else source.numel() * source.element_size() / _MIB
    seconds = {stage: t for stage, t in run.timings.items() if stage in REFINEMENT_STAGES}
    return RefinementRun(name, run, seconds, affinity, peak)


def compare_refinements(
    cache: StageCache, image: Any, classes: Sequence[str], configs: Mapping[str, CLIPerConfig]
) -> tuple[pd.DataFrame, dict[str, RefinementRun]]:
    """Each named config's refinement on `image`: a table (grid of S_f, seconds, memory, classes
    found, label agreement with the first config) and the runs themselves."""
    runs = {name: run_refinement(cache, image, classes, name, cfg) for name, cfg in configs.items()}
    first = next(iter(runs.values()))
    rows = []
    for name, r in runs.items():
        refined = r.run["refine"]  # (C, s, s) or (C, fh, fw)
        rows.append(
            {
                "refinement": name,
                "S_f grid": "×".join(map(str, refined.shape[1:])),
                "seconds (affinity + refine)": sum(r.seconds.values()),
                **{f"{stage} s": r.seconds.get(stage) for stage in REFINEMENT_STAGES},
                "affinity stage MiB": round(r.affinity_mib, 2),
                "peak CUDA MiB": None if r.peak_cuda_mib is None else round(r.peak_cuda_mib, 1),
                "classes present": ", ".join(
                    r.run["text"].names[i - 1] for i in torch.unique(r.labels).tolist() if i
                ),
                "label agreement with first": float((r.labels == first.labels).float().mean()),
            }
        )
    return pd.DataFrame(rows), runs


def threshold_sweep(
    rerun: Any,
    cfg: CLIPerConfig,
    head_maps: torch.Tensor,
    thresholds: Sequence[float],
    reference: SegmentationResult,
    class_index: int,
) -> tuple[pd.DataFrame, dict[float, torch.Tensor]]:
    """Notebook 04: each value set once through `sd_attention_thr` (S_f alone moves) and once
    through `attention_thr` (S_c too, while the two are tied). `rerun(cfg)` returns the run of a
    config (coarse, refined, scores, labels). Returns one row per (value, knob) and, per value, the
    class's S_f under `sd_attention_thr`."""
    from ...method.refine import normalize_head_maps

    records, refined_by_value = [], {}
    for value in thresholds:
        normed = normalize_head_maps(head_maps, value)  # (m, T, T)
        zeroed, emptied = (
            float((normed == 0).float().mean()),
            float((normed.sum(-1) == 0).float().mean()),
        )
        del normed  # m·T² floats: one at a time
        for knob in ("sd_attention_thr", "attention_thr"):
            changed = cfg.replace(**{knob: value})
            _, refined, scores, labels = rerun(changed)
            tau_is_value = changed.effective_sd_attention_thr == value
            records.append(
                {
                    "threshold": value,
                    "knob": knob,
                    "τ on SD maps": changed.effective_sd_attention_thr,
                    "zeroed share of SD maps": zeroed if tau_is_value else None,
                    "emptied rows": emptied if tau_is_value else None,
                    "relative change of S_f": float(
                        (refined - reference.refined).norm() / reference.refined.norm()
                    ),
                    "label agreement with preset": float(
                        (labels == reference.labels).float().mean()
                    ),
                    "score of the focus class": float(scores[class_index]),
                }
            )
            if knob == "sd_attention_thr":
                refined_by_value[value] = refined[class_index]
    return pd.DataFrame(records), refined_by_value
