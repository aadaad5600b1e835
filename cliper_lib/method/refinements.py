"""The refinements of fine-grained compensation (docs/method.md 3.10, 3.14), each registered once.

`REFINEMENTS[name]` is the only dispatch on `cfg.refinement`: the refine stage of the graph,
`CLIPer.segment`, the explorer's stage cache and batched evaluation all go through it. An entry says
which model part it needs, which stage's output it reads, the config fields it reads, and how it
runs for one image and for a batch:

- `none`: S_f = S_c (float32). It also runs when the model lacks the part a refinement needs.
- `sfsa`, `mean`, `selection`: SD self-attention head maps (stage sd_attention). sfsa can also
  refine straight from the VAE latents (stage sd_latents), applying each head map as the UNet yields
  it, so the m maps are never all held: the refine stage does so whenever the caller does not keep
  the head maps.
- each VFM (`dino-b8`, `dinov2-b14`, ...): the VFM's patch affinities (stage vfm).

Shapes: S_c (C, h, w); head maps (m, T, T), T = s*s; VFM features (fh, fw, D);
S_f (C, s, s) or (C, fh, fw).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import VFM_MODELS
from ..vfm import VFMInput, encoder_of, refine_with_features, refinement_features
from .refine import HeadChain, refine_mean, refine_selection, refine_sfsa

#: fields of the SD extraction a streamed refinement reads (it runs the UNet pass itself).
SD_PASS_FIELDS = ("sd_layers", "sd_timestep_index", "sd_num_steps", "seed")

OneImage = Callable[[Any, Any, torch.Tensor, Any], torch.Tensor]
Batch = Callable[[Any, Any, Sequence[np.ndarray], Sequence[torch.Tensor]], list[torch.Tensor]]
Streamed = Callable[[Any, Any, Sequence[torch.Tensor], torch.Tensor], list[torch.Tensor]]


@dataclass(frozen=True)
class Refinement:
    """One kind of refinement: what it needs and reads, and how it runs per image and per batch."""

    name: str
    part: str | None  # the model part it needs ("sd" or "vfm"); without it, `none` runs
    source: str | None  # the stage whose output it reads ("sd_attention", "vfm"), None for none
    fields: tuple[str, ...]  # the config fields it reads besides `refinement`
    settings: Callable[[Any], Hashable]  # cfg -> the effective values of `fields`
    one: OneImage  # (model, cfg, S_c, the source stage's output) -> S_f
    # (model, cfg, images (H0, W0, 3) uint8, S_c per image) -> S_f per image;
    # each network pass batched
    batch: Batch | None = None
    # (model, cfg, S_c per image, VAE latents (B, 4, s/8, s/8)) -> S_f per image;
    # the maps applied as they come
    streamed: Streamed | None = None


REFINEMENTS: dict[str, Refinement] = {}


def register(refinement: Refinement) -> Refinement:
    """Add a kind to the registry (its name must be new)."""
    if refinement.name in REFINEMENTS:
        raise ValueError(f"a refinement named {refinement.name!r} is registered already")
    REFINEMENTS[refinement.name] = refinement
    return refinement


def refinement_in_effect(model: Any, cfg: Any) -> Refinement:
    """The refinement that runs: the configured one, or `none` if the model lacks its part."""
    kind = REFINEMENTS[cfg.refinement]
    if kind.part is not None and getattr(model, kind.part) is None:
        return REFINEMENTS["none"]
    return kind


def sd_threshold(cfg: Any) -> float:
    return float(cfg.effective_sd_attention_thr)


# --- none -----------------------------------------------------------------------------------------
register(
    Refinement(
        name="none",
        part=None,
        source=None,
        fields=(),
        settings=lambda cfg: (),
        one=lambda model, cfg, coarse, source: coarse.float(),
        batch=lambda model, cfg, images, coarse: [c.float() for c in coarse],
    )
)


# --- Stable Diffusion self-attention --------------------------------------------------------------
def sfsa_streamed(model: Any, cfg: Any, coarse: Sequence[torch.Tensor], latents: torch.Tensor):
    """S_f for B coarse maps from one UNet pass over their B latents.

    The chain takes each head map as it comes.
    """
    chain = HeadChain(
        [c.float() for c in coarse], cfg.sd_layers, sd_threshold(cfg), model.schedule.chain_band
    )
    model.sd.capture(latents, chain, cfg)
    return list(chain.refined)


def sfsa_batch(model: Any, cfg: Any, images: Sequence[np.ndarray], coarse: Sequence[torch.Tensor]):
    return sfsa_streamed(model, cfg, coarse, model.sd.latents(images, cfg))


def sd_maps_batch(
    model: Any, cfg: Any, images: Sequence[np.ndarray], coarse: Sequence[torch.Tensor]
):
    """A refinement reading whole head maps: one VAE encode and UNet pass for the B images."""
    kind = REFINEMENTS[cfg.refinement]
    maps = model.sd.head_maps(model.sd.latents(images, cfg), cfg)  # B x (m, T, T)
    return [kind.one(model, cfg, c, m) for c, m in zip(coarse, maps, strict=True)]


register(
    Refinement(
        name="sfsa",
        part="sd",
        source="sd_attention",
        fields=("attention_thr", "sd_attention_thr", *SD_PASS_FIELDS),
        settings=lambda cfg: (sd_threshold(cfg),),
        one=lambda model, cfg, coarse, maps: refine_sfsa(
            coarse.float(), maps, sd_threshold(cfg), model.schedule.chain_band
        ),
        batch=sfsa_batch,
        streamed=sfsa_streamed,
    )
)
register(
    Refinement(
        name="mean",
        part="sd",
        source="sd_attention",
        fields=("attention_thr", "sd_attention_thr"),
        settings=lambda cfg: (sd_threshold(cfg),),
        one=lambda model, cfg, coarse, maps: refine_mean(coarse.float(), maps, sd_threshold(cfg)),
        batch=sd_maps_batch,
    )
)
register(
    Refinement(
        name="selection",
        part="sd",
        source="sd_attention",
        fields=("attention_thr", "sd_attention_thr", "selection_head"),
        settings=lambda cfg: (sd_threshold(cfg), cfg.selection_head),
        one=lambda model, cfg, coarse, maps: refine_selection(
            coarse.float(), maps, sd_threshold(cfg), cfg.selection_head
        ),
        batch=sd_maps_batch,
    )
)


# --- vision foundation models (the alternative the paper argues against) --------------------------
def vfm_batch(model: Any, cfg: Any, images: Sequence[np.ndarray], coarse: Sequence[torch.Tensor]):
    """A VFM refinement of B images: one VFM pass per image (each at its own size)."""
    encoder, how = encoder_of(model.vfm, cfg.refinement), VFMInput.of(cfg)
    return [
        refine_with_features(c.float(), refinement_features(encoder, image, how))
        for image, c in zip(images, coarse, strict=True)
    ]


for _name in VFM_MODELS:
    register(
        Refinement(
            name=_name,
            part="vfm",
            source="vfm",
            fields=(),
            settings=lambda cfg: (),
            one=lambda model, cfg, coarse, features: refine_with_features(coarse.float(), features),
            batch=vfm_batch,
        )
    )
