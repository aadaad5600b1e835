"""The layer walk is faithful: unmodified, it reproduces open_clip's own encode_image."""

from __future__ import annotations

import open_clip
import pytest
import torch

from cliper_lib.method.clip_backbone import (
    interpolate_pos_embedding,
    preprocess_image,
    project_tokens,
    resized_shape,
    walk_layers,
)


@torch.no_grad()
def encode_image_from_walk(visual: torch.nn.Module, walk) -> torch.Tensor:
    """open_clip's pooled image embedding (B, E) from a complete walk: the CLS token, ln_post,
    proj."""
    assert visual.attn_pool is None and not visual.final_ln_after_pool and visual.pool_type == "tok"
    return project_tokens(visual, walk.output[:, 0])


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).eval()


def test_walk_reproduces_encode_image_vit_b16(vit_b16):
    images = torch.randn(2, 3, 224, 224)
    walk = walk_layers(vit_b16.visual, images)
    ours = encode_image_from_walk(vit_b16.visual, walk)
    with torch.no_grad():
        theirs = vit_b16.encode_image(images)
    assert ours.shape == theirs.shape == (2, 512)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_walk_keeps_per_head_probabilities(vit_b16):
    walk = walk_layers(vit_b16.visual, torch.randn(1, 3, 224, 320))
    assert walk.grid == (14, 20)
    assert len(walk.attentions) == len(walk.normalized_inputs) == 12
    assert len(walk.residual_inputs) == 13
    a = walk.attentions[3]
    assert a.shape == (1, 12, 281, 281)
    torch.testing.assert_close(a.sum(-1), torch.ones(1, 12, 281))
    # X_i is ln_1 of the residual stream entering block i
    block = vit_b16.visual.transformer.resblocks[3]
    torch.testing.assert_close(walk.normalized_inputs[3], block.ln_1(walk.residual_inputs[3]))


def test_position_embedding_square_grid_is_untouched(vit_b16):
    pos = vit_b16.visual.positional_embedding
    assert interpolate_pos_embedding(pos, (14, 14)) is pos


def test_position_embedding_interpolation_keeps_cls_and_matches_bilinear():
    pos = torch.randn(1 + 4 * 4, 8)
    out = interpolate_pos_embedding(pos, (2, 6))
    assert out.shape == (1 + 12, 8)
    torch.testing.assert_close(out[0], pos[0])
    grid = pos[1:].T.reshape(1, 8, 4, 4)
    expected = torch.nn.functional.interpolate(
        grid, size=(2, 6), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(out[1:], expected.reshape(8, 12).T)


@pytest.mark.parametrize(
    "w,h,size,patch,expected",
    [
        (451, 300, 224, 16, (224, 336)),
        (640, 480, 336, 14, (336, 448)),
        (500, 500, 336, 16, (336, 336)),
    ],
)
def test_resized_shape_rounds_to_patch_multiples(w, h, size, patch, expected):
    assert resized_shape(w, h, size, patch) == expected


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_image(torch.zeros(5, 5, 3).numpy(), 224, 16, (0, 0, 0), (1, 1, 1))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-L-14", "ViT-H-14"])
def test_walk_reproduces_encode_image_large_backbones(name):
    """The other two paper backbones (random weights): the walk is exact there too, and ELF runs at
    336x448."""
    from cliper_lib.method import fusion as elf

    torch.manual_seed(0)
    model = open_clip.create_model(
        name, pretrained=None, force_quick_gelu=name != "ViT-H-14"
    ).eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        theirs = model.encode_image(images)
    torch.testing.assert_close(
        encode_image_from_walk(model.visual, walk_layers(model.visual, images)),
        theirs,
        rtol=1e-5,
        atol=1e-5,
    )
    depth = len(model.visual.transformer.resblocks)
    walk = walk_layers(model.visual, torch.randn(1, 3, 336, 448), num_blocks=depth - 1)
    fused = elf.fuse_layers(model.visual, walk)
    assert fused.embeddings.shape[:3] == (depth, 1, 1 + 24 * 32)
    torch.testing.assert_close(fused.last_attention.sum(-1), torch.ones(1, 16, 1 + 24 * 32))
