"""Shared fixtures: the golden tiny CLIP (authors' weights), the smoke models built once per
session, sample images, the command line on a counting model builder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from helpers import MODEL_FIELDS, photo, save, smoke_config

if TYPE_CHECKING:
    from cliper_lib import CLIPer, CLIPerConfig

# The authors' outputs on a tiny model (clip_side_tiny.pt, computed with their published code),
# xz-compressed to keep the repository small (7.1 MB -> 3.1 MB); the digest is the original file's.
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


# --- the smoke models, built once for the session -------------------------------------------------
@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory) -> CLIPer:
    """The full method (SD loaded) on the smoke preset: `CLIPer.from_config(smoke_config())`."""
    from cliper_lib import CLIPer

    return CLIPer.from_config(smoke_config(), text_cache_dir=tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="session")
def smoke_variant(smoke_model) -> Callable[..., CLIPer]:
    """`smoke_variant(cfg)` or `smoke_variant(**overrides)`: a CLIPer with `cfg` (or the smoke
    preset with `overrides`) on the session's smoke models. It is what `CLIPer.from_config` would
    build (SD only for an SD refinement, the config's VFMs loaded), without building anything again;
    a config that changes the models themselves (a field in MODEL_FIELDS) is refused."""

    def variant(cfg: CLIPerConfig | None = None, **overrides) -> CLIPer:
        cfg = smoke_config(**overrides) if cfg is None else cfg.replace(**overrides)
        changed = [f for f in MODEL_FIELDS if getattr(cfg, f) != getattr(smoke_model.cfg, f)]
        assert not changed, f"{changed} change the models: build them with CLIPer.from_config"
        return smoke_model.reconfigured(cfg)

    return variant


@pytest.fixture(scope="session")
def smoke_coarse_model(smoke_variant) -> CLIPer:
    """The smoke preset without a refinement: CLIP only (no SD), the coarse map is the result."""
    return smoke_variant(refinement="none")


# --- the command line, its model builder counted -------------------------------------------------
@pytest.fixture(scope="session")
def cli_text_cache(tmp_path_factory) -> Path:
    """One text-embedding cache for the command-line runs of `cliper`:
    each run builds a fresh model."""
    return tmp_path_factory.mktemp("text-cache")


@pytest.fixture()
def cliper(golden_clip, monkeypatch, cli_text_cache):
    """main() with the model builder replaced by the tiny coarse model;
    `.builds` counts the model loads."""
    import cliper_lib.suite.cli.commands as cli
    from cliper_lib.method.pipeline import CLIPer

    class Runner:
        builds = 0

        def __call__(self, *argv: str) -> int:
            return cli.main([*argv])

        @staticmethod
        def segment(*argv: str) -> int:
            return cli.main(
                [
                    "segment",
                    *argv,
                    "--profile",
                    "smoke",
                    "--refinement",
                    "none",
                    "--quiet",
                    "--background",
                    "sky",
                    "--set",
                    "size=32",
                    "--set",
                    "sliding_crop_size=0",
                ]
            )

    runner = Runner()

    def build(cfg):
        runner.builds += 1
        return CLIPer(cfg, golden_clip, None, text_cache_dir=str(cli_text_cache))

    monkeypatch.setattr(cli, "build_model", build)
    return runner


@pytest.fixture()
def pictures(tmp_path) -> Path:
    """A folder of two photos: a.png (24 x 40) and b.jpg (30 x 30)."""
    folder = tmp_path / "in"
    folder.mkdir()
    save(folder / "a.png", photo(24, 40, 1))
    save(folder / "b.jpg", photo(30, 30, 2))
    return folder
