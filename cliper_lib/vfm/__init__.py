"""Vision foundation models (DINO, DINOv2) in place of CLIPer's own attention: the alternatives the
paper argues against, as tensor functions. `affinity` holds the maths on features, `encoder` runs a
VFM on images.

This layer sits between `method` and the bottom of the package: it imports only config/images/files,
and `method` wires it into the stage graph (stages `proxy` and `vfm`).
"""

from .affinity import (
    REFINE_MEAN_WEIGHT,
    REFINE_SCALE,
    cosine_similarity,
    proxy_attention,
    refine_with_features,
    refinement_probabilities,
)
from .encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VFMEncoder,
    encoder_of,
    proxy_attentions,
    proxy_input,
    refinement_features,
    vfm_pixels,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REFINE_MEAN_WEIGHT",
    "REFINE_SCALE",
    "VFMEncoder",
    "cosine_similarity",
    "encoder_of",
    "proxy_attention",
    "proxy_attentions",
    "proxy_input",
    "refine_with_features",
    "refinement_features",
    "refinement_probabilities",
    "vfm_pixels",
]
