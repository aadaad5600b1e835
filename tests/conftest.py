"""Shared fixtures: the golden tiny CLIP (authors' weights), seeded tiny models, sample images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

# The authors' outputs on a tiny model (clip_side_tiny.pt, computed with their published code), xz-compressed to
# keep the repository small (7.1 MB -> 3.1 MB); the digest is the original file's.
GOLDEN = Path(__file__).parent / "golden" / "clip_side_tiny.pt.xz"
GOLDEN_SHA256 = "729edce7e54f6ab6e35a22ddbd2db89dca53442621daf95f2a13e743360dc98f"
# The same for the diffusion half (sd_side_tiny.pt, 2.7 MB -> 1.9 MB).
GOLDEN_SD = Path(__file__).parent / "golden" / "sd_side_tiny.pt.xz"
GOLDEN_SD_SHA256 = "bf3ac1368c6606c907e301239fa689516d27e1454e0fbc87a6a930937b28b78a"


def _load_golden(path: Path, digest: str) -> dict:
    import hashlib
    import io
    import lzma

    raw = lzma.decompress(path.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == digest, f"{path} is damaged"
    return torch.load(io.BytesIO(raw), weights_only=True)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def golden() -> dict:
    return _load_golden(GOLDEN, GOLDEN_SHA256)


@pytest.fixture(scope="session")
def golden_sd() -> dict:
    return _load_golden(GOLDEN_SD, GOLDEN_SD_SHA256)


@pytest.fixture(scope="session")
def golden_clip(golden):
    """A ClipBundle holding the golden tiny ViT with the authors' weights (fp32)."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from cliper_lib.method.clip_backbone import ClipBundle
    from cliper_lib.weights.clip import TINY_CLIP_CONFIG, TINY_CLIP_NAME, register_tiny_clip

    assert json.loads(golden["model_config"]) == TINY_CLIP_CONFIG
    register_tiny_clip()
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None).eval()
    state = {k[len("visual.") :]: v.float() for k, v in golden["visual_state_dict"].items()}
    model.visual.load_state_dict(state, strict=True)
    return ClipBundle(
        model=model,
        tokenizer=open_clip.get_tokenizer(TINY_CLIP_NAME),
        name=TINY_CLIP_NAME,
        weights_id="golden",
        patch_size=16,
        mean=tuple(OPENAI_DATASET_MEAN),
        std=tuple(OPENAI_DATASET_STD),
    )


@pytest.fixture(scope="session")
def cat_image() -> np.ndarray:
    """The bundled sample photo of Chelsea the cat (CC0, from scikit-image), 300×451×3 uint8."""
    from PIL import Image

    from cliper_lib.config import DATA_DIR

    with Image.open(DATA_DIR / "samples" / "chelsea.jpg") as image:
        return np.asarray(image.convert("RGB"))
