"""CLIPer end to end: config + models -> segment(image, classes) -> a result holding every intermediate.

Each stage is a method that takes the previous stage's output and a config, so callers (notebooks, the widget
explorer) can cache a stage and recompute only what depends on a changed setting:

    clip_features(image)              image, size           -> CLIP input, layer walks (whole image, crops)
    fusion(features, cfg)             fuse_layers, rounds, last_layer_attention -> per-layer embeddings, Â
    layer_maps(fused, text, cfg)      text, logit_scale     -> S_k (whole image, sliding window, blended)
    coarse(maps, fused, cfg)          select_layer, attention_thr -> S_c
    sd_attention(image)               image                 -> SD head maps (m, T, T)
    refine(coarse, head_maps, cfg)    refinement, attention_thr -> S_f
    labels(refined, coarse, cfg)      score_threshold, bkg_thre, is_normalize -> scores, label map
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from . import fusion as elf
from .clip_backbone import LayerWalk, preprocess_image, to_pil, walk_layers
from .config import CLIPerConfig
from .labels import class_scores, labels_from_maps, scaled_maps
from .models import ClipBundle, default_cache_dir, load_clip, resolve_device, resolve_dtype
from .text import TextEmbeddingCache, TextSet, encode_class_names, load_templates, model_fingerprint, read_class_file


@dataclass
class ClipFeatures:
    """Stage 1: what the image alone determines."""

    image: np.ndarray  # (H0, W0, 3) uint8, the original image
    input: torch.Tensor  # (3, h*p, w*p) normalised CLIP input
    walk: LayerWalk  # first L-1 blocks of the whole image (batch 1)
    crop_walk: LayerWalk | None  # first L-1 blocks of the sliding-window crops (batch K), if sliding
    crop_size: int
    stride: int


@dataclass
class FusedLayers:
    """Stage 2: ELF on the whole image (and the crops)."""

    whole: elf.FusionOutput
    crops: elf.FusionOutput | None


@dataclass
class LayerMaps:
    """Stage 3: per-layer class maps S_k (L, C, h, w)."""

    whole: torch.Tensor  # from the whole image
    sliding: elf.SlidingWindowOutput | None
    blended: torch.Tensor  # 0.5·sliding + 0.5·whole when sliding, else whole


@dataclass
class SegmentationResult:
    """Every intermediate of one `segment` call; shapes in the comments (C classes, h×w patch grid)."""

    class_names: list[str]
    background: list[str]
    image_size: tuple[int, int]  # (H0, W0)
    grid: tuple[int, int]  # (h, w)
    layer_embeddings: torch.Tensor  # (L, N, E), CLS first
    fused_attention: torch.Tensor  # (H, N, N): Â_{L-1} of the whole image
    fused_attention_mean: torch.Tensor  # (h*w, h*w): its head-mean over patch tokens
    layer_maps_whole: torch.Tensor  # (L, C, h, w)
    layer_maps: torch.Tensor  # (L, C, h, w) after the sliding-window blend
    sliding: elf.SlidingWindowOutput | None
    select_map: torch.Tensor  # (C, h, w): thresholded S_sel
    coarse: torch.Tensor  # (C, h, w): S_c
    refined: torch.Tensor  # (C, s, s): S_f (= S_c when refinement is none)
    head_maps_summary: dict[str, Any]  # shapes / layers of the SD head maps (the maps themselves are large)
    scores: torch.Tensor  # (C,)
    maps: torch.Tensor  # (C, H0, W0): score-scaled maps at image size
    labels: torch.Tensor  # (H0, W0) int64: 0 background, k = class_names[k-1]
    timings: dict[str, float] = field(default_factory=dict)

    def present_classes(self) -> list[str]:
        ids = torch.unique(self.labels).tolist()
        return [self.class_names[i - 1] for i in ids if i > 0]


@contextmanager
def _timed(timings: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


class CLIPer:
    """The CLIPer method on injected models: a CLIP bundle and (unless refinement is none) an SD extractor."""

    def __init__(
        self,
        cfg: CLIPerConfig,
        clip: ClipBundle,
        sd: Any | None = None,
        text_cache_dir: str | None | bool = True,
    ):
        cfg.check_against_depth(clip.num_layers)
        self.cfg = cfg
        self.clip = clip
        self.sd = sd
        self.device = next(clip.model.parameters()).device
        folder = default_cache_dir() / "text" if text_cache_dir is True else (text_cache_dir or None)
        self.text_cache = TextEmbeddingCache(folder)

    # --- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: CLIPerConfig, allow_download: bool = True, text_cache_dir: str | None | bool = True):
        """Build the models `cfg` names (paper: real weights via the hub cache; smoke: tiny random models)."""
        device = resolve_device(cfg.device)
        clip = load_clip(cfg, device=device, allow_download=allow_download)
        sd = None
        if cfg.refinement != "none":
            from .sd_attention import SDSelfAttention

            sd = SDSelfAttention.from_config(cfg, device=device, dtype=resolve_dtype(cfg.dtype),
                                             allow_download=allow_download)
        return cls(cfg, clip, sd, text_cache_dir=text_cache_dir)

    # --- text --------------------------------------------------------------------------------------------------
    def encode_text(self, classes: Sequence[str], background: Sequence[str] | None = None) -> TextSet:
        """Encode class lines and background words (default: the config's class file's background vocabulary)."""
        classes = [c.strip() for c in classes if c and c.strip()]
        if not classes:
            raise ValueError("give at least one class name")
        if background is None:
            background = read_class_file(self.cfg.classes).background
        background = [b.strip() for b in background if b and b.strip()]
        templates = load_templates(self.cfg.templates)
        fg = self._encode_names(classes, templates)
        bg = self._encode_names(background, templates) if background else fg.new_zeros(0, fg.shape[1])
        return TextSet(names=list(classes), background=list(background), fg=fg, bg=bg)

    def _encode_names(self, names: list[str], templates: list[str]) -> torch.Tensor:
        model = self.clip.model
        key = self.text_cache.key(self.clip.weights_id, model_fingerprint(model), templates, names)
        return self.text_cache.get_or_compute(
            key, lambda: encode_class_names(model, self.clip.tokenizer, names, templates)
        ).to(self.device)

    def class_text(self, text: TextSet | None, classes, background) -> TextSet:
        if text is not None:
            return text
        if classes is None:
            names = read_class_file(self.cfg.classes)
            return self.encode_text(names.names, names.background if background is None else background)
        if isinstance(classes, str):
            from .text import parse_class_names

            classes = parse_class_names(classes)
        return self.encode_text(classes, background)

    # --- stages ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def clip_features(self, image, cfg: CLIPerConfig | None = None) -> ClipFeatures:
        """Stage 1 (image, size, sliding window geometry): preprocess and walk the first L-1 blocks."""
        cfg = cfg or self.cfg
        clip = self.clip
        array = np.asarray(to_pil(image))
        x = preprocess_image(array, cfg.size, clip.patch_size, clip.mean, clip.std).to(self.device)
        x = x.to(resolve_dtype(cfg.dtype))
        depth = clip.num_layers - 1
        walk = walk_layers(clip.visual, x[None], num_blocks=depth)
        crop_walk = None
        if cfg.sliding_crop_size > 0:
            crop_walk = elf.walk_crops(clip.visual, x, cfg.sliding_crop_size, cfg.sliding_stride)
        return ClipFeatures(array, x, walk, crop_walk, cfg.sliding_crop_size, cfg.sliding_stride)

    @torch.no_grad()
    def fusion(self, features: ClipFeatures, cfg: CLIPerConfig | None = None) -> FusedLayers:
        """Stage 2 (fuse_layers, normalization_rounds, last_layer_attention)."""
        cfg = cfg or self.cfg
        fuse = None if cfg.fuse_layers is None else range(cfg.fuse_layers[0], cfg.fuse_layers[1] + 1)
        args = (fuse, cfg.normalization_rounds, cfg.last_layer_attention)
        whole = elf.fuse_layers(self.clip.visual, features.walk, *args)
        crops = elf.fuse_layers(self.clip.visual, features.crop_walk, *args) if features.crop_walk else None
        return FusedLayers(whole, crops)

    @torch.no_grad()
    def layer_maps(self, features: ClipFeatures, fused: FusedLayers, text: TextSet,
                   cfg: CLIPerConfig | None = None) -> LayerMaps:
        """Stage 3 (text, logit_scale): per-layer maps S_k, with the sliding-window blend."""
        cfg = cfg or self.cfg
        text_set = text.softmax_set().to(self.device)
        c = text.num_classes
        logits = elf.layer_logits(fused.whole.embeddings, text_set, cfg.logit_scale, fused.whole.grid)[:, 0]
        whole = elf.logits_to_maps(logits, c)  # (L, C, h, w)
        sliding = None
        blended = whole
        if fused.crops is not None:
            sliding = elf.sliding_window_from_fused(
                fused.crops, features.input.shape[1:], text_set, c, self.clip.patch_size,
                features.crop_size, features.stride, cfg.logit_scale,
            )
            blended = 0.5 * sliding.maps + 0.5 * whole
        return LayerMaps(whole, sliding, blended)

    @torch.no_grad()
    def coarse(self, maps: LayerMaps, fused: FusedLayers, cfg: CLIPerConfig | None = None):
        """Stage 4 (select_layer, attention_thr): (S_c, thresholded S_sel), each (C, h, w)."""
        cfg = cfg or self.cfg
        attention = elf.mean_patch_attention(fused.whole.last_attention)[0]
        return elf.coarse_map(maps.blended, attention, cfg.select_layer, cfg.attention_thr)

    @torch.no_grad()
    def sd_attention(self, image) -> torch.Tensor:
        """Stage 5 (image): the SD self-attention head maps (m, T, T) in the authors' order."""
        if self.sd is None:
            raise RuntimeError("this CLIPer was built without Stable Diffusion (refinement: none)")
        return self.sd(image)

    @torch.no_grad()
    def refine(self, coarse: torch.Tensor, head_maps: torch.Tensor | None, cfg: CLIPerConfig | None = None):
        """Stage 6 (refinement, attention_thr / sd_attention_thr, selection_head): S_f (C, s, s); S_c itself when refinement is none."""
        cfg = cfg or self.cfg
        if cfg.refinement == "none" or head_maps is None:
            return coarse.float()
        from .refine import refine_coarse_maps

        return refine_coarse_maps(coarse.float(), head_maps, cfg.refinement, cfg.effective_sd_attention_thr,
                                  cfg.selection_head)

    @torch.no_grad()
    def labels(self, refined: torch.Tensor, coarse: torch.Tensor, image_size: tuple[int, int],
               cfg: CLIPerConfig | None = None):
        """Stage 7 (score_threshold, bkg_thre, is_normalize): scores (C,), scaled maps (C, H0, W0), labels (H0, W0)."""
        cfg = cfg or self.cfg
        scores = class_scores(refined.float(), coarse.float())
        maps = scaled_maps(refined, scores, image_size)
        labels = labels_from_maps(maps, scores, cfg.score_threshold, cfg.bkg_thre, cfg.is_normalize)
        return scores, maps, labels

    # --- everything --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def segment(self, image, classes: Sequence[str] | str | None = None, background: Sequence[str] | None = None,
                text: TextSet | None = None, cfg: CLIPerConfig | None = None,
                head_maps: torch.Tensor | None = None) -> SegmentationResult:
        """Segment one image (PIL, HxWx3 uint8 array, or (3,H,W) float tensor in [0,1]) into the given classes.

        `classes` defaults to the config's class file; `text` (from `encode_text`) skips encoding;
        `head_maps` lets a caller pass SD head maps it already has.
        """
        cfg = cfg or self.cfg
        timings: dict[str, float] = {}
        with _timed(timings, "text"):
            text = self.class_text(text, classes, background)
        with _timed(timings, "clip_walk"):
            features = self.clip_features(image, cfg)
        with _timed(timings, "fusion"):
            fused = self.fusion(features, cfg)
        with _timed(timings, "layer_maps"):
            maps = self.layer_maps(features, fused, text, cfg)
        with _timed(timings, "coarse"):
            coarse, select_map = self.coarse(maps, fused, cfg)
        summary: dict[str, Any] = {}
        if cfg.refinement != "none" and head_maps is None:
            with _timed(timings, "sd_attention"):
                head_maps = self.sd_attention(features.image)
        if head_maps is not None and cfg.refinement != "none":
            summary = {"count": int(head_maps.shape[0]), "tokens": int(head_maps.shape[-1]),
                       "layers": list(cfg.sd_layers)}
        with _timed(timings, "refine"):
            refined = self.refine(coarse, head_maps, cfg)
        image_size = features.image.shape[:2]
        with _timed(timings, "labels"):
            scores, scaled, labels = self.labels(refined, coarse, image_size, cfg)
        fused_attention = fused.whole.last_attention[0]
        return SegmentationResult(
            class_names=text.names, background=text.background, image_size=tuple(image_size),
            grid=fused.whole.grid, layer_embeddings=fused.whole.embeddings[:, 0],
            fused_attention=fused_attention, fused_attention_mean=fused_attention.mean(0)[1:, 1:],
            layer_maps_whole=maps.whole, layer_maps=maps.blended, sliding=maps.sliding, select_map=select_map,
            coarse=coarse, refined=refined, head_maps_summary=summary, scores=scores, maps=scaled,
            labels=labels.cpu(), timings=timings,
        )
