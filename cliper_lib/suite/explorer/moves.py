"""What a move of the explorer recomputes and costs: the config fields behind each control, the
stages each control invalidates (derived from the stage graph that also makes the cache keys), the
record of a move and its timing rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...method.stages import STAGES, invalidated_by

#: the controls that change the computation (everything but the class shown in the map panel).
COMPUTE_CONTROLS = (
    "image",
    "classes",
    "background",
    "fuse_layers",
    "select_layer",
    "attention_thr",
    "score_threshold",
    "bkg_thre",
    "is_normalize",
    "sliding",
    "refinement",
    "selection_head",
)

#: the config fields (or run inputs) behind each explorer control.
CONTROL_FIELDS = {
    "image": ("image",),
    "classes": ("classes",),
    "background": ("background",),
    "sliding": ("sliding_crop_size",),
    "fuse_layers": ("fuse_layers",),
    "select_layer": ("select_layer",),
    "attention_thr": ("attention_thr",),
    "refinement": ("refinement",),
    "selection_head": ("selection_head",),
    "score_threshold": ("score_threshold",),
    "bkg_thre": ("bkg_thre",),
    "is_normalize": ("is_normalize",),
    "map_class": (),  # display only
}
#: which stages each explorer control invalidates, derived from the stage graph (SD runs the first
#: time a refinement needs it for an image; selection_head matters only while refinement ==
#: "selection").
INVALIDATES = {control: invalidated_by(*names) for control, names in CONTROL_FIELDS.items()}


def timing_rows(move: str, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Long-form rows (move, stage, seconds) of one `Explorer.apply` record: every stage (0 when
    cached) + drawing."""
    rows = [
        {"move": move, "stage": stage, "seconds": float(record["recomputed"].get(stage, 0.0))}
        for stage in STAGES
    ]
    rows.append({"move": move, "stage": "drawing", "seconds": float(record["render_s"])})
    return rows


def move_record(
    control: str,
    value: Any,
    recomputed: Mapping[str, float],
    compute: float,
    render: float,
    error: str | None,
) -> dict[str, Any]:
    """The record of one move (`Explorer.history`, `Explorer.apply`): the control and its value,
    the stages it recomputed (seconds each), compute, drawing and total seconds, and the error if
    any."""
    return {
        "control": control,
        "value": value,
        "recomputed": dict(recomputed),
        "compute_s": compute,
        "render_s": render,
        "total_s": compute + render,
        "error": error,
    }
