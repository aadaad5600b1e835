"""The explorer's widgets: one control per knob (set from a config) and the page layout around the
outputs.

Split from `widgets.Explorer` so the explorer keeps the logic (observers, updates, export) and this
module the look. Every widget gets a CSS class `cliper-<name>` so a browser test can find it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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


#: every knob's human label and its tooltip (what it does, in the paper's terms where it helps).
LABELS = {
    "image": ("photo", "the photo to segment: a bundled sample, one you gave, or one you uploaded"),
    "upload": ("upload a photo", "a JPEG, PNG or other image file; you can also drop or paste one"),
    "classes": (
        "classes",
        "what to look for, separated by ';', ',' or new lines; press Enter to apply",
    ),
    "keep_classes": (
        "keep these classes for new photos",
        "off: a new photo opens with its suggested classes (or the preset's)",
    ),
    "background": (
        "background",
        "words that compete with the classes for each pixel ('auto' picks them, empty: none)",
    ),
    "fuse_layers": (
        "layers fused",
        "early-layer fusion: the CLIP blocks whose attention maps are averaged into one",
    ),
    "select_layer": (
        "layer read",
        "which block's output the class maps are read from (-1: the last)",
    ),
    "attention_thr": (
        "attention cut",
        "map values below this fraction of their maximum are set to zero",
    ),
    "sliding": (
        "sliding window",
        "segment overlapping crops and average them: slower, finer on large photos",
    ),
    "refinement": (
        "refinement",
        "fine-grained compensation: sharpen the coarse maps with Stable Diffusion's attention "
        "(or a DINO model); none keeps the coarse maps",
    ),
    "selection_head": (
        "attention head",
        "with the 'selection' refinement: which Stable Diffusion attention map to use",
    ),
    "score_threshold": (
        "presence threshold",
        "a class is present in the photo when its score is above this",
    ),
    "bkg_thre": (
        "background cut",
        "map values below this become background (0: a soft background channel instead)",
    ),
    "is_normalize": (
        "stretch each map to 0-1",
        "min-max normalise every class map before labelling",
    ),
    "opacity": ("label opacity", "how strongly the label colours cover the photo"),
    "show_labels": ("show labels", "off: the photo alone"),
    "map_class": ("class map", "the class whose coarse and refined maps are shown below"),
}


def _labelled(name: str) -> dict[str, Any]:
    label, tooltip = LABELS[name]
    return {"description": label, "tooltip": tooltip}


def build_controls(
    c: CLIPerConfig,
    num_layers: int,
    images: Sequence[str],
    image: str,
    classes_text: str,
    background_text: str,
    refinements: Sequence[str],
    alpha: float = 0.5,
) -> dict[str, Any]:
    """The controls, opening at the config's values: image, upload, classes, keep_classes,
    background, fuse_layers, select_layer, attention_thr, sliding, refinement, selection_head,
    score_threshold, bkg_thre, is_normalize, opacity, show_labels, map_class."""
    slider = dict(
        continuous_update=False,
        style={"description_width": "initial"},
        layout=W.Layout(width="100%", max_width="360px"),
    )
    controls: dict[str, Any] = {
        **_input_controls(images, image, classes_text, background_text),
        **_fusion_controls(c, num_layers, slider),
        **_refinement_controls(c, refinements, slider),
        **_label_controls(c, slider),
        **_look_controls(alpha, slider),
    }
    controls["selection_head"].disabled = controls["refinement"].value != "selection"
    return controls


def _input_controls(
    images: Sequence[str], image: str, classes_text: str, background_text: str
) -> dict[str, Any]:
    """image, upload, classes, keep_classes, background."""
    wide = W.Layout(width="100%", max_width="560px")
    return {
        "image": W.Dropdown(options=list(images), value=image, **_labelled("image")),
        "upload": W.FileUpload(accept="image/*", multiple=False, **_labelled("upload")),
        "classes": W.Text(
            value=classes_text,
            continuous_update=False,
            placeholder="cat; sofa; wall  (';', ',' or new lines between classes)",
            layout=wide,
            **_labelled("classes"),
        ),
        "keep_classes": W.Checkbox(value=False, indent=False, **_labelled("keep_classes")),
        "background": W.Text(
            value=background_text,
            continuous_update=False,
            placeholder="background words, or auto; empty: none",
            layout=wide,
            **_labelled("background"),
        ),
    }


def _fusion_controls(c: CLIPerConfig, num_layers: int, slider: dict) -> dict[str, Any]:
    """fuse_layers, select_layer, attention_thr, sliding."""
    top = num_layers - 2
    fuse = (0, top) if c.fuse_layers is None else tuple(c.fuse_layers)
    crop = c.sliding_crop_size or DEFAULT_CROP
    sliding_label, sliding_tip = LABELS["sliding"]
    return {
        "fuse_layers": W.IntRangeSlider(
            value=fuse, min=0, max=top, **_labelled("fuse_layers"), **slider
        ),
        "select_layer": W.IntSlider(
            value=c.select_layer,
            min=-num_layers,
            max=num_layers - 1,
            **_labelled("select_layer"),
            **slider,
        ),
        "attention_thr": W.FloatSlider(
            value=c.attention_thr,
            min=0.0,
            max=1.0,
            step=0.01,
            **_labelled("attention_thr"),
            **slider,
        ),
        "sliding": W.Checkbox(
            value=c.sliding_crop_size > 0,
            description=f"{sliding_label} ({crop} px crops)",
            tooltip=sliding_tip,
            indent=False,
        ),
    }


def _refinement_controls(
    c: CLIPerConfig, refinements: Sequence[str], slider: dict
) -> dict[str, Any]:
    """refinement (the runnable ones), selection_head."""
    label, tip = LABELS["refinement"]
    return {
        "refinement": W.Dropdown(
            options=list(refinements),
            value=c.refinement if c.refinement in refinements else "none",
            description=label,
            disabled=len(refinements) < 2,
            tooltip=tip if len(refinements) > 1 else "this model was built without a refinement",
        ),
        "selection_head": W.IntSlider(
            value=c.selection_head,
            min=0,
            max=max(c.selection_head, 5 * len(c.sd_layers) - 1),
            **_labelled("selection_head"),
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
            **_labelled("score_threshold"),
            **slider,
        ),
        "bkg_thre": W.FloatSlider(
            value=c.bkg_thre,
            min=0.0,
            max=1.0,
            step=0.001,
            readout_format=".3f",
            **_labelled("bkg_thre"),
            **slider,
        ),
        "is_normalize": W.Checkbox(value=c.is_normalize, indent=False, **_labelled("is_normalize")),
    }


def _look_controls(alpha: float, slider: dict) -> dict[str, Any]:
    """opacity, show_labels, map_class: how the result is drawn (nothing is recomputed)."""
    return {
        "opacity": W.FloatSlider(
            value=alpha, min=0.0, max=1.0, step=0.05, **_labelled("opacity"), **slider
        ),
        "show_labels": W.Checkbox(value=True, indent=False, **_labelled("show_labels")),
        "map_class": W.Dropdown(options=[], **_labelled("map_class")),
    }


def build_outputs() -> dict[str, Any]:
    """The three output panels: overlay, maps, scores (each shrinks to the window's width)."""
    return {
        name: W.Output(layout=W.Layout(border="1px solid #ddd", max_width="100%"))
        for name in ("overlay", "maps", "scores")
    }


def build_buttons() -> dict[str, Any]:
    """reset (back to the opening state) and export (the files of what is shown)."""
    return {
        "reset": W.Button(description="reset", tooltip="every knob back to the opening state"),
        "export": W.Button(
            description="export",
            icon="download",
            tooltip="save the labels, overlay, scores, config and photo in a new folder",
        ),
    }


#: the page's own style: panels wrap below each other in narrow windows, images shrink to fit,
#: the busy bar moves.
PAGE_CSS = """<style>
.cliper-page .widget-hbox.cliper-wrap { flex-wrap: wrap; gap: 4px 16px; }
.cliper-page .cliper-panel { flex: 1 1 300px; max-width: 380px; min-width: 260px; }
.cliper-page .cliper-results { flex: 3 1 420px; min-width: 0; }
.cliper-page .jp-OutputArea-output img,
.cliper-page .widget-image { max-width: 100%; height: auto; }
.cliper-page .cliper-note:empty { display: none; }
.cliper-busy-bar { height: 4px; width: 160px; background: #ddd; overflow: hidden;
  display: inline-block; vertical-align: middle; margin-right: 8px; }
.cliper-busy-bar::after { content: ""; display: block; height: 100%; width: 40%;
  background: #1976d2; animation: cliper-slide 1.1s linear infinite; }
@keyframes cliper-slide { from { transform: translateX(-100%); }
  to { transform: translateX(250%); } }
</style>"""


def build_layout(
    k: dict[str, Any],
    outputs: dict[str, Any],
    buttons: dict[str, Any],
    hint: Any,
    exported: Any,
    status: Any,
    notes: dict[str, Any],
    gallery: Any | None = None,
) -> Any:
    """Header (photo, upload, gallery, classes, background, each with its message beside it), the
    status line and actions (in view at the top), then the knobs beside the outputs (wrapping
    below them in a narrow window)."""
    for name, box in [
        *k.items(),
        *buttons.items(),
        ("status", status),
        ("exported", exported),
        *((f"out-{n}", o) for n, o in outputs.items()),
        *((f"note-{n}", o) for n, o in notes.items()),
    ]:
        box.add_class(f"cliper-{name.replace('_', '-')}")
    for note in notes.values():
        note.add_class("cliper-note")
    wrap = W.HBox
    photo_row = wrap([k["image"], k["upload"], notes["upload"]])
    rows = [photo_row, *([gallery] if gallery is not None else [])]
    rows += [
        wrap([k["classes"], k["keep_classes"]]),
        wrap([hint, notes["classes"]]),
        wrap([k["background"], notes["background"]]),
    ]
    actions = wrap([buttons["reset"], buttons["export"], exported])
    knobs = _knob_panel(k)
    results = W.VBox(
        [
            wrap([k["show_labels"], k["opacity"]]),
            outputs["overlay"],
            wrap([W.VBox([k["map_class"], outputs["maps"]]), outputs["scores"]]),
        ]
    )
    results.add_class("cliper-results")
    body = wrap([knobs, results])
    page = W.VBox([W.HTML(PAGE_CSS + "<h3>CLIPer explorer</h3>"), *rows, status, actions, body])
    for box in [photo_row, *rows, actions, body]:
        box.add_class("cliper-wrap")
    page.add_class("cliper-page")
    return page


def _knob_panel(k: dict[str, Any]) -> Any:
    """The knobs in the paper's three stages."""
    panel = W.VBox(
        [
            W.HTML("<b>early-layer fusion</b>"),
            k["fuse_layers"],
            k["select_layer"],
            k["attention_thr"],
            k["sliding"],
            W.HTML("<b>fine-grained compensation</b>"),
            k["refinement"],
            k["selection_head"],
            W.HTML("<b>scores and labels</b>"),
            k["score_threshold"],
            k["bkg_thre"],
            k["is_normalize"],
        ]
    )
    panel.add_class("cliper-panel")
    return panel


def build_gallery(photos: dict[str, Any], size: int = 72) -> tuple[Any, dict[str, Any]]:
    """Thumbnails of the photos (name -> path), each with a button that opens it: (box, buttons)."""
    import io

    from PIL import Image

    tiles, buttons = [], {}
    for name, path in photos.items():
        with Image.open(path) as im:
            im.thumbnail((size * 2, size))
            buffer = io.BytesIO()
            im.convert("RGB").save(buffer, format="JPEG", quality=80)
        button = W.Button(
            description=Path(name).stem,
            tooltip=f"open {name}",
            layout=W.Layout(width="auto"),
        )
        thumb = W.Image(value=buffer.getvalue(), format="jpeg", layout=W.Layout(height=f"{size}px"))
        tiles.append(W.VBox([thumb, button]))
        buttons[name] = button
    box = W.HBox(tiles)
    box.add_class("cliper-gallery")
    return box, buttons
