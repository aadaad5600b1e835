"""CLIPer end to end: config + models -> segment(image, classes) -> a result holding every intermediate.

Each stage is a method that takes the previous stages' outputs and a config (what it needs and reads is declared
once, in `stages.GRAPH`); `run` evaluates the graph up to any stage, `segment` runs all of it. The models are
injected (a CLIP bundle and, unless the refinement is none, an SD extractor): `cliper_lib.CLIPer.from_config`
builds them from a config, tests and benchmarks build them by hand.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import VFM_REFINEMENTS, CLIPerConfig
from ..files import default_cache_dir
from ..heap import release_free_memory
from ..images import content_id, rgb_array
from ..vfm import refine_with_features
from ..vocab import check_class_names, load_templates, read_class_file, split_background_line
from . import fusion as elf
from .clip_backbone import ClipBundle, LayerWalk, preprocess_image, resized_shape, walk_layers
from .labels import class_scores, labels_from_maps, scaled_maps
from .refine import HeadChain, refine_coarse_maps
from .stages import StageRun, StageStore, run_stages
from .text import TextEmbeddingCache, TextSet, encode_class_names, model_fingerprint

# Set by `run` while nobody keeps the walk: the layers whose attentions fusion sums (the walk keeps only the sum).
_WALK_SUMS: ContextVar[tuple[int, ...] | None] = ContextVar("walk_sums", default=None)


@dataclass
class ClipFeatures:
    """Stage clip_walk: what the image (and the CLIP input geometry) determines."""

    image: np.ndarray  # (H0, W0, 3) uint8, the original image
    input: torch.Tensor  # (3, h*p, w*p) normalised CLIP input
    walk: LayerWalk  # first L-1 blocks of the whole image (batch 1)
    crop_walk: (
        LayerWalk | None
    )  # first L-1 blocks of the sliding-window crops (batch K), if sliding
    crop_size: int
    stride: int


@dataclass
class FusedLayers:
    """Stage fusion: ELF on the whole image (and the crops)."""

    whole: elf.FusionOutput
    crops: elf.FusionOutput | None


@dataclass
class LayerMaps:
    """Stage layer_maps: per-layer class maps S_k (L, C, h, w)."""

    whole: torch.Tensor  # from the whole image
    sliding: elf.SlidingWindowOutput | None
    blended: torch.Tensor  # 0.5·sliding + 0.5·whole when sliding, else whole


@dataclass
class StreamedHeadMaps:
    """Stage sd_attention when nobody keeps the maps: `refine` runs the UNet and applies each map as it comes."""

    image: np.ndarray
    cfg: CLIPerConfig  # the run's whole config (the refine stage's view does not hold the sd_* fields)
    shape: tuple[int, ...] = ()  # (m, T, T) once refined
    seconds: float = 0.0  # the UNet pass (and the VAE if not done before), chain inside it (the rest is refine's)
    latents: torch.Tensor | None = (
        None  # (1, 4, s/8, s/8), and its seconds: encoded before the CLIP side (`run`)
    )
    encode_seconds: float = 0.0


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
    head_maps_summary: dict[
        str, Any
    ]  # shapes / layers of the SD head maps (the maps themselves are large)
    scores: torch.Tensor  # (C,)
    maps: torch.Tensor  # (C, H0, W0): score-scaled maps at image size
    labels: torch.Tensor  # (H0, W0) int64: 0 background, k = class_names[k-1]
    timings: dict[str, float] = field(default_factory=dict)

    READS: ClassVar[tuple[str, ...]] = (
        "text",
        "fusion",
        "layer_maps",
        "coarse",
        "sd_attention",
        "refine",
        "labels",
    )

    @classmethod
    def from_run(cls, run: StageRun) -> SegmentationResult:
        """The result of a graph run that reached `labels`."""
        text, fused, maps = run["text"], run["fusion"], run["layer_maps"]
        coarse, select_map = run["coarse"]
        scores, scaled, labels = run["labels"]
        head_maps = run.values.get("sd_attention") if "sd_attention" in run.keys else None
        summary: dict[str, Any] = {}
        if head_maps is not None and head_maps.shape:
            summary = {
                "count": int(head_maps.shape[0]),
                "tokens": int(head_maps.shape[-1]),
                "layers": list(run.cfg.sd_layers),
            }
        timings = dict(run.recomputed)
        if isinstance(head_maps, StreamedHeadMaps) and "refine" in timings:
            timings["sd_attention"] = (
                head_maps.encode_seconds + head_maps.seconds
            )  # the VAE ran before the CLIP side
            timings["refine"] -= head_maps.seconds
        attention = fused.whole.last_attention[0]  # (H, N, N)
        return cls(
            class_names=text.names,
            background=text.background,
            image_size=tuple(run["image"].shape[:2]),
            grid=fused.whole.grid,
            layer_embeddings=fused.whole.embeddings[:, 0],
            fused_attention=attention,
            fused_attention_mean=attention.mean(0)[1:, 1:],
            layer_maps_whole=maps.whole,
            layer_maps=maps.blended,
            sliding=maps.sliding,
            select_map=select_map,
            coarse=coarse,
            refined=run["refine"],
            head_maps_summary=summary,
            scores=scores,
            maps=scaled,
            labels=labels.cpu(),
            timings=timings,
        )

    def present_classes(self) -> list[str]:
        ids = torch.unique(self.labels).tolist()
        return [self.class_names[i - 1] for i in ids if i > 0]


class CLIPer:
    """The CLIPer method on injected models: a CLIP bundle and (unless refinement is none) an SD extractor."""

    def __init__(
        self,
        cfg: CLIPerConfig,
        clip: ClipBundle,
        sd: Any | None = None,
        text_cache_dir: str | None | bool = True,
        vfm: Any | None = None,
    ):  # vfm: name -> vfm.VFMEncoder
        cfg.check_against_depth(clip.num_layers)
        self.cfg, self.clip, self.sd, self.vfm = cfg, clip, sd, vfm
        self.device = next(clip.model.parameters()).device
        folder = (
            default_cache_dir() / "text" if text_cache_dir is True else (text_cache_dir or None)
        )
        self.text_cache = TextEmbeddingCache(folder)

    # --- text --------------------------------------------------------------------------------------------------
    def encode_text(
        self,
        classes: Sequence[str] | None = None,
        background: Sequence[str] | None = None,
        cfg: CLIPerConfig | None = None,
    ) -> TextSet:
        """Encode class lines and background words; each defaults to the config's class file (names, vocabulary)."""
        cfg = cfg or self.cfg
        if classes is None or background is None:
            class_file = read_class_file(cfg.classes)
            classes = class_file.names if classes is None else classes
            background = class_file.background if background is None else background
        classes = check_class_names(classes)
        background = [b.strip() for b in background if b and b.strip()]
        templates = load_templates(cfg.templates)
        fg = self._encode_names(classes, templates)
        bg = (
            self._encode_names(background, templates)
            if background
            else fg.new_zeros(0, fg.shape[1])
        )
        return TextSet(names=list(classes), background=list(background), fg=fg, bg=bg)

    def _encode_names(self, names: list[str], templates: list[str]) -> torch.Tensor:
        model = self.clip.model
        key = self.text_cache.key(self.clip.weights_id, model_fingerprint(model), templates, names)
        return self.text_cache.get_or_compute(
            key, lambda: encode_class_names(model, self.clip.tokenizer, names, templates)
        ).to(self.device)

    # --- stages ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def clip_features(self, image, cfg: CLIPerConfig | None = None) -> ClipFeatures:
        """Stage clip_walk (image, size, sliding window geometry): preprocess and walk the first L-1 blocks."""
        cfg = cfg or self.cfg
        clip = self.clip
        array = rgb_array(image)
        x = preprocess_image(array, cfg.size, clip.patch_size, clip.mean, clip.std).to(self.device)
        x = x.to(next(clip.model.parameters()).dtype)  # the input in the weights' dtype
        sums = (
            _WALK_SUMS.get()
        )  # None: keep every A_i (a store, the explorer, a walk asked for as a target)
        walk = walk_layers(clip.visual, x[None], clip.num_layers - 1, sums)
        sliding = cfg.sliding_crop_size > 0
        crop_walk = (
            elf.walk_crops(clip.visual, x, cfg.sliding_crop_size, cfg.sliding_stride, sums)
            if sliding
            else None
        )
        return ClipFeatures(array, x, walk, crop_walk, cfg.sliding_crop_size, cfg.sliding_stride)

    @torch.no_grad()
    def fusion(
        self, features: ClipFeatures, cfg: CLIPerConfig | None = None, proxy=None
    ) -> FusedLayers:
        """Stage fusion (fuse_layers, normalization_rounds, last_layer_attention); `proxy`: stage proxy's output."""
        cfg = cfg or self.cfg
        fuse = (
            None if cfg.fuse_layers is None else range(cfg.fuse_layers[0], cfg.fuse_layers[1] + 1)
        )
        args = (fuse, cfg.normalization_rounds, cfg.last_layer_attention)
        whole_proxy, crops_proxy = proxy or (
            None,
            None,
        )  # stage proxy's (1, 1, N, N), (K, 1, N', N')
        whole = elf.fuse_layers(self.clip.visual, features.walk, *args, whole_proxy)
        crops = (
            elf.fuse_layers(self.clip.visual, features.crop_walk, *args, crops_proxy)
            if features.crop_walk
            else None
        )
        return FusedLayers(whole, crops)

    @torch.no_grad()
    def layer_maps(
        self,
        features: ClipFeatures,
        fused: FusedLayers,
        text: TextSet,
        cfg: CLIPerConfig | None = None,
    ) -> LayerMaps:
        """Stage layer_maps (text, logit_scale): per-layer maps S_k, with the sliding-window blend."""
        cfg = cfg or self.cfg
        text_set = text.softmax_set().to(self.device)
        c = text.num_classes
        logits = elf.layer_logits(
            fused.whole.embeddings, text_set, cfg.logit_scale, fused.whole.grid
        )[:, 0]
        whole = elf.logits_to_maps(logits, c)  # (L, C, h, w)
        sliding = None
        blended = whole
        if fused.crops is not None:
            sliding = elf.sliding_window_from_fused(
                fused.crops,
                features.input.shape[1:],
                text_set,
                c,
                self.clip.patch_size,
                features.crop_size,
                features.stride,
                cfg.logit_scale,
            )
            blended = 0.5 * sliding.maps + 0.5 * whole
        return LayerMaps(whole, sliding, blended)

    @torch.no_grad()
    def coarse(self, maps: LayerMaps, fused: FusedLayers, cfg: CLIPerConfig | None = None):
        """Stage coarse (select_layer, attention_thr): (S_c, thresholded S_sel), each (C, h, w)."""
        cfg = cfg or self.cfg
        attention = elf.mean_patch_attention(fused.whole.last_attention)[0]
        return elf.coarse_map(maps.blended, attention, cfg.select_layer, cfg.attention_thr)

    @torch.no_grad()
    def sd_attention(self, image, cfg: CLIPerConfig | None = None) -> torch.Tensor:
        """Stage sd_attention (image, sd_* fields, seed): SD self-attention head maps (m, T, T), authors' order."""
        if self.sd is None:
            raise RuntimeError("this CLIPer was built without Stable Diffusion (refinement: none)")
        return self.sd(image, cfg or self.cfg)

    @torch.no_grad()
    def refine(
        self, coarse: torch.Tensor, head_maps: torch.Tensor | None, cfg: CLIPerConfig | None = None
    ):
        """Stage refine (refinement, attention_thr / sd_attention_thr, selection_head): S_f (C, s, s); S_c itself
        when the refinement is none or there are no head maps."""
        cfg = cfg or self.cfg
        if (
            cfg.refinement in VFM_REFINEMENTS
        ):  # head_maps: stage vfm's patch features (fh, fw, D) -> S_f (C, fh, fw)
            return refine_with_features(coarse.float(), head_maps)
        if cfg.refinement == "none" or head_maps is None:
            return coarse.float()
        if isinstance(head_maps, StreamedHeadMaps):
            if cfg.refinement == "sfsa":
                start = time.perf_counter()
                chain = self.refine_streamed(
                    [head_maps.image], [coarse], head_maps.cfg, head_maps.latents
                )
                head_maps.seconds = time.perf_counter() - start
                head_maps.shape = (chain.count, chain.S.shape[1], chain.S.shape[1])
                return chain.refined[0]
            head_maps = self.sd(
                head_maps.image, head_maps.cfg
            )  # mean / selection read the maps as a whole
        return refine_coarse_maps(
            coarse.float(),
            head_maps,
            cfg.refinement,
            cfg.effective_sd_attention_thr,
            cfg.selection_head,
        )

    @torch.no_grad()
    def refine_streamed(
        self,
        images: Sequence[Any],
        coarse: Sequence[torch.Tensor],
        cfg: CLIPerConfig,
        latents: torch.Tensor | None = None,
    ) -> HeadChain:
        """sfsa for B images (their VAE `latents`, if encoded) in one UNet pass: B coarse maps -> the chain."""
        chain = HeadChain(
            [c.float() for c in coarse], cfg.sd_layers, cfg.effective_sd_attention_thr
        )
        self.sd.capture(images, chain, cfg=cfg, latents=latents)
        return chain

    @torch.no_grad()
    def labels(
        self,
        refined: torch.Tensor,
        coarse: torch.Tensor,
        image_size: tuple[int, int],
        cfg: CLIPerConfig | None = None,
    ):
        """Stage labels (score_threshold, bkg_thre, is_normalize): scores (C,), maps (C, H0, W0), labels (H0, W0)."""
        cfg = cfg or self.cfg
        scores = class_scores(refined.float(), coarse.float())
        maps = scaled_maps(refined, scores, image_size)
        labels = labels_from_maps(maps, scores, cfg.score_threshold, cfg.bkg_thre, cfg.is_normalize)
        return scores, maps, labels

    # --- the graph -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(
        self,
        image,
        classes: Sequence[str] | str | None = None,
        background: Sequence[str] | str | None = None,
        cfg: CLIPerConfig | None = None,
        until: str | Sequence[str] = "labels",
        *,
        text: TextSet | None = None,
        head_maps: torch.Tensor | None = None,
        image_id: Hashable | None = None,
        store: StageStore | None = None,
        features: ClipFeatures | None = None,
        keep: Sequence[str] | None = None,
    ) -> StageRun:
        """Run the stage graph up to `until` (a stage, or several) and return every stage reached.

        `classes` is a list or a ';'-separated string (default: the config's class file), `background` a list or
        a comma-separated string (default: the class file's vocabulary); `text` (from `encode_text`), `head_maps`
        and `features` (clip_walk) skip those stages; `store` memoises stages under `image_id` (default: a hash
        of the pixels). Without a store, head maps that are not a target are streamed (`StreamedHeadMaps`).
        `keep`: the only stages (besides `until`) whose values the run returns; the others are freed once read.
        """
        cfg = (
            cfg or self.cfg
        ).validate()  # a config edited after construction is checked where it is used
        array = rgb_array(image)  # (H0, W0, 3) uint8: what both halves see
        resized_shape(
            array.shape[1], array.shape[0], cfg.size, self.clip.patch_size
        )  # size limit, before any stage
        classes = (
            None if classes is None else check_class_names(classes)
        )  # a ';'-separated string is split
        if text is None and (classes is None or background is None):
            read_class_file(
                cfg.classes
            )  # a missing or malformed class file fails now, not after the VAE encode
        if isinstance(background, str):
            background = split_background_line(background)
        background = None if background is None else list(background)
        if image_id is None:
            image_id = content_id(array) if store is not None else ("object", id(array))
        keys = {
            "image": image_id,
            "classes": None if classes is None else tuple(classes),
            "background": None if background is None else tuple(background),
        }
        given = {}
        if text is not None:
            given["text"] = (("encoded", tuple(text.names), tuple(text.background), id(text)), text)
        targets = (until,) if isinstance(until, str) else tuple(until)
        if (
            head_maps is None
            and store is None
            and self.sd is not None
            and "sd_attention" not in targets
        ):
            head_maps = StreamedHeadMaps(
                array, cfg
            )  # nobody keeps the maps: stream them through refine
            if cfg.refinement == "sfsa" and any(t in ("refine", "labels") for t in targets):
                # VAE first, with only the weights in memory: its activations (0.6 GB at 512 px) peak the image
                start = time.perf_counter()
                head_maps.latents = self.sd.latents([array], cfg)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                head_maps.encode_seconds = time.perf_counter() - start
        if head_maps is not None:
            given["sd_attention"] = (("head_maps", id(head_maps)), head_maps)
        if features is not None:
            given["clip_walk"] = (("features", id(features)), features)
        inputs = {"image": array, "classes": classes, "background": background}
        sums = None
        if (
            store is None and features is None and "clip_walk" not in targets
        ):  # nobody reads the A_i but fusion
            lo, hi = (0, self.clip.num_layers - 2) if cfg.fuse_layers is None else cfg.fuse_layers
            sums = tuple(range(lo, hi + 1)) if cfg.last_layer_attention == "fused" else ()
        token = _WALK_SUMS.set(sums)
        try:
            return run_stages(self, cfg, inputs, keys, targets, store=store, given=given, keep=keep)
        finally:
            _WALK_SUMS.reset(token)

    @torch.no_grad()
    def segment(
        self,
        image,
        classes: Sequence[str] | str | None = None,
        background: Sequence[str] | None = None,
        text: TextSet | None = None,
        cfg: CLIPerConfig | None = None,
        head_maps: torch.Tensor | None = None,
    ) -> SegmentationResult:
        """Segment one image (PIL, HxWx3 uint8 array, or (3,H,W) float tensor in [0,1]) into the given classes.

        `classes` defaults to the config's class file; `text` (from `encode_text`) skips encoding;
        `head_maps` lets a caller pass SD head maps it already has.
        """
        run = self.run(
            image,
            classes,
            background,
            cfg,
            "labels",
            text=text,
            head_maps=head_maps,
            keep=SegmentationResult.READS,
        )  # the layer walk (whole image and crops) goes before the SD pass
        result = SegmentationResult.from_run(run)
        release_free_memory()  # the next image starts from the weights, not from this one's freed buffers
        return result
