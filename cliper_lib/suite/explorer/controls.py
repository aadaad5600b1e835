"""The explorer's widgets: one control per knob (set from a config) and the page layout around the
outputs.

Split from `widgets.Explorer` so the explorer keeps the logic (observers, updates, export) and this
module the look. Every widget gets a CSS class `cliper-<name>` so a browser test can find it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as W

from ...config import REFINEMENTS, SD_REFINEMENTS, CLIPerConfig

#: crop size used when the sliding window is switched on for a preset without one (the authors'
#: other value).
DEFAULT_CROP = 224
#: vision blocks of the backbones with presets (open_clip's `vision_cfg.layers`;
#: tests/test_app_page.py checks them against open_clip), so the app can draw its controls before
#: torch and open_clip are even imported.
BACKBONE_DEPTHS = {"ViT-B-16": 12, "ViT-L-14": 24, "ViT-H-14": 32, "cliper-tiny": 4}


def vision_depth(c: CLIPerConfig) -> int:
    """The number of vision blocks of the CLIP model `c` builds (the tiny ViT for the smoke profile,
    as `weights.clip.load_clip` does), without building it."""
    backbone = "cliper-tiny" if c.profile == "smoke" else c.backbone
    if backbone in BACKBONE_DEPTHS:
        return BACKBONE_DEPTHS[backbone]
    # another backbone: ask open_clip's config (slower: imports torch, which the app page must not
    # need before its controls show)
    import open_clip

    from ...weights.clip import register_tiny_clip

    register_tiny_clip()
    return int(open_clip.get_model_config(backbone)["vision_cfg"]["layers"])


def planned_refinements(c: CLIPerConfig) -> list[str]:
    """The refinements a model built from `c` will run (as `CLIPer.from_config` builds it): the SD
    ones only when the config refines with SD (the SD extractor is built then), 'none' and the VFM
    ones always."""
    return [r for r in REFINEMENTS if r not in SD_REFINEMENTS or c.refinement in SD_REFINEMENTS]


def runnable_refinements(model: Any, c: CLIPerConfig) -> list[str]:
    """The refinements this model can run: the SD ones with an SD extractor, the VFM ones with a VFM
    loader."""
    from ...method.refinements import refinement_in_effect  # torch: not before the app page shows

    return [
        r for r in REFINEMENTS if refinement_in_effect(model, c.replace(refinement=r)).name == r
    ]


def build_controls(
    c: CLIPerConfig,
    num_layers: int,
    images: Sequence[str],
    image: str,
    classes_text: str,
    background_text: str,
    refinements: Sequence[str],
) -> dict[str, Any]:
    """The controls, opening at the config's values: image, upload, classes, background,
    fuse_layers, select_layer, attention_thr, sliding, refinement, selection_head, score_threshold,
    bkg_thre, is_normalize, map_class."""
    slider = dict(
        continuous_update=False,
        style={"description_width": "initial"},
        layout=W.Layout(width="340px"),
    )
    controls: dict[str, Any] = {
        **_input_controls(images, image, classes_text, background_text),
        **_fusion_controls(c, num_layers, slider),
        **_refinement_controls(c, refinements, slider),
        **_label_controls(c, slider),
        "map_class": W.Dropdown(options=[], description="class map"),
    }
    controls["selection_head"].disabled = controls["refinement"].value != "selection"
    return controls


def _input_controls(
    images: Sequence[str], image: str, classes_text: str, background_text: str
) -> dict[str, Any]:
    """image, upload, classes, background."""
    return {
        "image": W.Dropdown(options=list(images), value=image, description="image"),
        "upload": W.FileUpload(accept="image/*", multiple=False, description="upload"),
        "classes": W.Text(
            value=classes_text,
            description="classes",
            continuous_update=False,
            placeholder="cat; sofa; wall (';'-separated)",
            layout=W.Layout(width="420px"),
        ),
        "background": W.Text(
            value=background_text,
            description="background",
            continuous_update=False,
            placeholder="background words (';'-separated) or auto; empty = none",
            layout=W.Layout(width="420px"),
        ),
    }


def _fusion_controls(c: CLIPerConfig, num_layers: int, slider: dict) -> dict[str, Any]:
    """fuse_layers, select_layer, attention_thr, sliding."""
    top = num_layers - 2
    fuse = (0, top) if c.fuse_layers is None else tuple(c.fuse_layers)
    crop = c.sliding_crop_size or DEFAULT_CROP
    return {
        "fuse_layers": W.IntRangeSlider(
            value=fuse, min=0, max=top, description="fused layers", **slider
        ),
        "select_layer": W.IntSlider(
            value=c.select_layer,
            min=-num_layers,
            max=num_layers - 1,
            description="select layer",
            **slider,
        ),
        "attention_thr": W.FloatSlider(
            value=c.attention_thr,
            min=0.0,
            max=1.0,
            step=0.01,
            description="attention_thr",
            **slider,
        ),
        "sliding": W.Checkbox(
            value=c.sliding_crop_size > 0, description=f"sliding window ({crop} px)", indent=False
        ),
    }


def _refinement_controls(
    c: CLIPerConfig, refinements: Sequence[str], slider: dict
) -> dict[str, Any]:
    """refinement (the runnable ones), selection_head."""
    return {
        "refinement": W.Dropdown(
            options=list(refinements),
            value=c.refinement if c.refinement in refinements else "none",
            description="refinement",
            disabled=len(refinements) < 2,
            tooltip=None if len(refinements) > 1 else "this model was built without a refinement",
        ),
        "selection_head": W.IntSlider(
            value=c.selection_head,
            min=0,
            max=max(c.selection_head, 5 * len(c.sd_layers) - 1),
            description="selection head",
            **slider,
        ),
    }


def _label_controls(c: CLIPerConfig, slider: dict) -> dict[str, Any]:
    """score_threshold, bkg_thre, is_normalize."""
    return {
        "score_threshold": W.FloatSlider(
            value=c.score_threshold,
            min=0.0,
            max=1.0,
            step=0.01,
            description="score_threshold",
            **slider,
        ),
        "bkg_thre": W.FloatSlider(
            value=c.bkg_thre,
            min=0.0,
            max=1.0,
            step=0.001,
            readout_format=".3f",
            description="bkg_thre",
            **slider,
        ),
        "is_normalize": W.Checkbox(
            value=c.is_normalize, description="min-max normalise maps", indent=False
        ),
    }


def build_outputs() -> dict[str, Any]:
    """The three output panels: overlay, maps, scores."""
    return {
        name: W.Output(layout=W.Layout(border="1px solid #ddd"))
        for name in ("overlay", "maps", "scores")
    }


def build_buttons() -> dict[str, Any]:
    """reset (back to the opening state) and export (the four files of what is shown)."""
    return {
        "reset": W.Button(description="reset", tooltip="back to the opening state"),
        "export": W.Button(
            description="export",
            icon="download",
            tooltip="label PNG, overlay PNG, scores JSON, config YAML",
        ),
    }


def build_layout(
    k: dict[str, Any],
    outputs: dict[str, Any],
    buttons: dict[str, Any],
    hint: Any,
    exported: Any,
    status: Any,
) -> Any:
    """Header (image, upload, classes, background), actions (reset, export), knobs beside the
    outputs, status."""
    for name, box in [
        *k.items(),
        *buttons.items(),
        ("status", status),
        ("exported", exported),
        *((f"out-{n}", o) for n, o in outputs.items()),
    ]:
        box.add_class(f"cliper-{name.replace('_', '-')}")
    header = W.VBox(
        [W.HBox([k["image"], k["upload"]]), W.HBox([k["classes"], hint]), k["background"]]
    )
    fusion_box = W.VBox(
        [
            W.HTML("<b>early-layer fusion</b>"),
            k["fuse_layers"],
            k["select_layer"],
            k["attention_thr"],
            k["sliding"],
        ]
    )
    refine_box = W.VBox(
        [W.HTML("<b>fine-grained compensation</b>"), k["refinement"], k["selection_head"]]
    )
    label_box = W.VBox(
        [W.HTML("<b>scores and labels</b>"), k["score_threshold"], k["bkg_thre"], k["is_normalize"]]
    )
    panel = W.VBox([fusion_box, refine_box, label_box], layout=W.Layout(min_width="360px"))
    results = W.VBox(
        [outputs["overlay"], W.HBox([W.VBox([k["map_class"], outputs["maps"]]), outputs["scores"]])]
    )
    actions = W.HBox([buttons["reset"], buttons["export"], exported])
    return W.VBox(
        [W.HTML("<h3>CLIPer explorer</h3>"), header, actions, W.HBox([panel, results]), status]
    )
