"""CLIPer end to end: config + models -> segment(image, classes) -> a result with each intermediate.

Each stage is a method that takes the previous stages' outputs and a config (what it needs and
reads is declared once, in `stages.GRAPH`); `run` evaluates the graph up to any stage, `segment`
runs all of it.

The models are injected (a CLIP bundle and, unless the refinement is none, an SD extractor):
`cliper_lib.CLIPer.from_config` builds them from a config, tests and benchmarks build them by hand.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import CLIPerConfig
from ..files import default_cache_dir
from ..heap import release_free_memory
from ..images import content_id, rgb_array
from ..vocab import check_class_names, load_templates, read_class_file, split_background_line
from . import fusion as elf
from .clip_backbone import ClipBundle, preprocess_image, resized_shape, walk_layers
from .labels import label_map
from .result import ClipFeatures, CoarseMap, FusedLayers, LabelMap, LayerMaps, SegmentationResult
from .stages import StageStore, run_stages
from .text import TextEmbeddingCache, TextSet, encode_class_names, model_fingerprint

#: the stages a `segment` result holds: what its accessors read. The layer walk (a few hundred MB)
#: and the SD head maps (640 MB at 512 px) are not kept, so the walk holds only the attention sum
#: fusion reads, and SFSA applies each head map as the UNet yields it.
SEGMENT_KEEPS = ("text", "fusion", "layer_maps", "coarse", "refine", "labels")


@dataclass(frozen=True)
class Schedule:
    """How the stages traverse their largest tensors on one device (same operations, same bits)."""

    # balance and finish one head's (B, N, N) of the fused attention at a time
    fusion_per_head: bool
    chain_band: int | None  # rows of an SD head map normalised and applied at a time (None: all)

    @classmethod
    def for_device(cls, device: torch.device) -> Schedule:
        """On a CPU a head, or a band of 256 rows, stays in cache through its passes.

        Elsewhere whole tensors make few, large kernels.
        """
        on_cpu = device.type == "cpu"
        return cls(fusion_per_head=on_cpu, chain_band=256 if on_cpu else None)


class CLIPer:
    """The CLIPer method on injected models: a CLIP bundle, and what the refinements need.

    That is an SD extractor and a provider of VFM encoders (name -> vfm.VFMEncoder), for the
    refinements that need them.
    """

    def __init__(
        self,
        cfg: CLIPerConfig,
        clip: ClipBundle,
        sd: Any | None = None,
        text_cache_dir: str | None | bool = True,
        vfm: Any | None = None,
    ):
        cfg.check_against_depth(clip.num_layers)
        self.cfg, self.clip, self.sd, self.vfm = cfg, clip, sd, vfm
        self.device = next(clip.model.parameters()).device
        self.schedule = Schedule.for_device(self.device)
        folder = (
            default_cache_dir() / "text" if text_cache_dir is True else (text_cache_dir or None)
        )
        self.text_cache = TextEmbeddingCache(folder)

    # --- text -------------------------------------------------------------------------------------
    def encode_text(
        self,
        classes: Sequence[str] | None = None,
        background: Sequence[str] | None = None,
        cfg: CLIPerConfig | None = None,
    ) -> TextSet:
        """Encode class lines and background words; each defaults to the config's class file."""
        cfg = cfg or self.cfg
        if classes is None or background is None:
            class_file = read_class_file(cfg.classes)
            classes = class_file.names if classes is None else classes
            background = class_file.background if background is None else background
        classes = check_class_names(classes)
        background = [b.strip() for b in background if b and b.strip()]
        templates = load_templates(cfg.templates)
        fg = self._encode_names(classes, templates)
        if background:
            bg = self._encode_names(background, templates)
        else:
            bg = fg.new_zeros(0, fg.shape[1])
        return TextSet(names=list(classes), background=list(background), fg=fg, bg=bg)

    def _encode_names(self, names: list[str], templates: list[str]) -> torch.Tensor:
        model = self.clip.model
        key = self.text_cache.key(self.clip.weights_id, model_fingerprint(model), templates, names)
        return self.text_cache.get_or_compute(
            key, lambda: encode_class_names(model, self.clip.tokenizer, names, templates)
        ).to(self.device)

    # --- stages -----------------------------------------------------------------------------------
    @torch.no_grad()
    def clip_features(
        self,
        image,
        cfg: CLIPerConfig | None = None,
        summed_layers: Sequence[int] | None = None,
    ) -> ClipFeatures:
        """Stage clip_walk: preprocess and walk the first L-1 blocks (and the sliding-window crops).

        `summed_layers`: keep only the float32 sum of those layers' attentions, not every A_i.
        """
        cfg = cfg or self.cfg
        clip = self.clip
        array = rgb_array(image)
        x = preprocess_image(array, cfg.size, clip.patch_size, clip.mean, clip.std).to(self.device)
        x = x.to(next(clip.model.parameters()).dtype)  # the input in the weights' dtype
        walk = walk_layers(clip.visual, x[None], clip.num_layers - 1, summed_layers)
        crop, stride = cfg.sliding_crop_size, cfg.sliding_stride
        crop_walk = None
        if crop > 0:
            crop_walk = elf.walk_crops(clip.visual, x, crop, stride, summed_layers)
        return ClipFeatures(array, x, walk, crop_walk, crop, stride)

    @torch.no_grad()
    def fusion(
        self, features: ClipFeatures, cfg: CLIPerConfig | None = None, proxy=None
    ) -> FusedLayers:
        """Stage fusion: ELF on the image and its crops; `proxy`: stage proxy's output, if run."""
        cfg = cfg or self.cfg
        args = (
            cfg.fused_layers(self.clip.num_layers),
            cfg.normalization_rounds,
            cfg.last_layer_attention,
        )
        whole_proxy, crops_proxy = proxy or (None, None)  # (1, 1, N, N), (K, 1, N', N')
        per_head = self.schedule.fusion_per_head
        visual = self.clip.visual
        whole = elf.fuse_layers(visual, features.walk, *args, whole_proxy, per_head)
        crops = None
        if features.crop_walk is not None:
            crops = elf.fuse_layers(visual, features.crop_walk, *args, crops_proxy, per_head)
        return FusedLayers(whole, crops)

    @torch.no_grad()
    def layer_maps(
        self,
        features: ClipFeatures,
        fused: FusedLayers,
        text: TextSet,
        cfg: CLIPerConfig | None = None,
    ) -> LayerMaps:
        """Stage layer_maps: per-layer maps S_k, with the sliding-window blend."""
        cfg = cfg or self.cfg
        text_set = text.softmax_set().to(self.device)
        c = text.num_classes
        whole_logits = elf.layer_logits(
            fused.whole.embeddings, text_set, cfg.logit_scale, fused.whole.grid
        )[:, 0]
        whole = elf.logits_to_maps(whole_logits, c)  # (L, C, h, w)
        if fused.crops is None:
            return LayerMaps(whole, None, whole)
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
        return LayerMaps(whole, sliding, 0.5 * sliding.maps + 0.5 * whole)

    @torch.no_grad()
    def coarse(
        self, maps: LayerMaps, fused: FusedLayers, cfg: CLIPerConfig | None = None
    ) -> CoarseMap:
        """Stage coarse: S_c and the thresholded S_sel, each (C, h, w)."""
        cfg = cfg or self.cfg
        attention = elf.mean_patch_attention(fused.whole.last_attention)[0]
        coarse, select_map = elf.coarse_map(
            maps.blended, attention, cfg.select_layer, cfg.attention_thr
        )
        return CoarseMap(coarse, select_map)

    def _sd(self) -> Any:
        if self.sd is None:
            raise RuntimeError("this CLIPer was built without Stable Diffusion (refinement: none)")
        return self.sd

    @torch.no_grad()
    def sd_latents(self, image, cfg: CLIPerConfig | None = None) -> torch.Tensor:
        """Stage sd_latents: the image's VAE latents (1, 4, s/8, s/8)."""
        return self._sd().latents([image], cfg or self.cfg)

    @torch.no_grad()
    def sd_attention(self, latents: torch.Tensor, cfg: CLIPerConfig | None = None) -> torch.Tensor:
        """Stage sd_attention: one image's SD self-attention head maps (m, T, T), authors' order."""
        return self._sd().head_maps(latents, cfg or self.cfg)[0]

    @torch.no_grad()
    def labels(
        self,
        refined: torch.Tensor,
        coarse: torch.Tensor,
        image_size: tuple[int, int],
        cfg: CLIPerConfig | None = None,
    ) -> LabelMap:
        """Stage labels: scores (C,) and labels (H0, W0), upsampled in tiles (labels.label_map)."""
        return label_map(refined, coarse, image_size, cfg or self.cfg)

    # --- the graph --------------------------------------------------------------------------------
    @torch.no_grad()
    def run(
        self,
        image,
        classes: Sequence[str] | str | None = None,
        background: Sequence[str] | str | None = None,
        *,
        cfg: CLIPerConfig | None = None,
        until: str | Sequence[str] = "labels",
        keep: Sequence[str] | None = None,
        given: Mapping[str, Any] | None = None,
        store: StageStore | None = None,
        image_id: Hashable | None = None,
    ) -> SegmentationResult:
        """Run the stage graph up to `until` (a stage, or several) and return every stage it kept.

        `classes` is a list or a ';'-separated string (default: the config's class file),
        `background` a list or a comma-separated string (default: the class file's vocabulary).
        `keep` names the stages the result holds besides `until` (default: every stage reached).
        `given` maps a stage to a value the caller already has, used instead of computing it: "text"
        (from `encode_text`), "sd_attention" (head maps), "clip_walk" (ClipFeatures). `store`
        memoises stages under `image_id` (default: a hash of the pixels).
        """
        cfg = (cfg or self.cfg).validate()  # a config edited after construction is checked here
        array = rgb_array(image)  # (H0, W0, 3) uint8: what both halves see
        # the size limit, before any stage
        resized_shape(array.shape[1], array.shape[0], cfg.size, self.clip.patch_size)
        given = dict(given or {})
        classes = None if classes is None else check_class_names(classes)  # splits a ';' string
        if "text" not in given and (classes is None or background is None):
            read_class_file(cfg.classes)  # a missing or malformed class file fails now, not later
        if isinstance(background, str):
            background = split_background_line(background)
        background = None if background is None else list(background)
        if image_id is None:
            image_id = content_id(array) if store is not None else ("object", id(array))
        input_keys = {
            "image": image_id,
            "classes": None if classes is None else tuple(classes),
            "background": None if background is None else tuple(background),
        }
        inputs = {"image": array, "classes": classes, "background": background}
        targets = (until,) if isinstance(until, str) else tuple(until)
        return run_stages(
            self, cfg, inputs, input_keys, targets, keep=keep, store=store, given=given_keys(given)
        )

    @torch.no_grad()
    def segment(
        self,
        image,
        classes: Sequence[str] | str | None = None,
        background: Sequence[str] | str | None = None,
        *,
        cfg: CLIPerConfig | None = None,
        given: Mapping[str, Any] | None = None,
    ) -> SegmentationResult:
        """Segment one image (PIL, HxWx3 uint8 array or (3,H,W) float tensor in [0,1]) into classes.

        `classes` defaults to the config's class file.
        `given` is as in `run` (an encoded text set, say).
        """
        result = self.run(image, classes, background, cfg=cfg, keep=SEGMENT_KEEPS, given=given)
        # the next image starts from the weights, not this one's freed buffers
        release_free_memory()
        return result


def given_keys(given: Mapping[str, Any]) -> dict[str, tuple[Hashable, Any]]:
    """Each given stage value with the key that identifies it in a run (and in a store)."""
    keyed = {}
    for name, value in given.items():
        if name == "text":
            key = ("encoded", tuple(value.names), tuple(value.background), id(value))
        else:
            key = ("given", id(value))
        keyed[name] = (key, value)
    return keyed
