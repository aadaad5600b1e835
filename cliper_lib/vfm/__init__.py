"""Vision foundation models (DINO, DINOv2) in place of CLIPer's own attention: the alternatives the
paper argues against, as tensor functions. `affinity` holds the maths on features, `encoder` runs a
VFM on images, `positions` resizes its position embeddings as the authors' hub models do.

This layer sits between `method` and the bottom of the package: it imports only config/images/files,
and `method` wires it into the stage graph (stages `proxy` and `vfm`).
"""

from .affinity import (
    REFINE_MEAN_WEIGHT,
    REFINE_SCALE,
    fp16_stored,
    proxy_attention,
    refine_with_features,
    refinement_probabilities,
)
from .encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VFMEncoder,
    VFMInput,
    encoder_of,
    patch_multiple,
    proxy_attentions,
    proxy_input,
    refinement_features,
    vfm_features,
    vfm_pixels,
)
from .positions import POSITION_RESIZES, positions_resized, scale_factor_positions

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REFINE_MEAN_WEIGHT",
    "REFINE_SCALE",
    "POSITION_RESIZES",
    "VFMEncoder",
    "VFMInput",
    "encoder_of",
    "fp16_stored",
    "patch_multiple",
    "positions_resized",
    "proxy_attention",
    "proxy_attentions",
    "proxy_input",
    "refine_with_features",
    "refinement_features",
    "refinement_probabilities",
    "scale_factor_positions",
    "vfm_features",
    "vfm_pixels",
]
