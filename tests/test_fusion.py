"""Early-layer fusion against independent computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cliper_lib.method import fusion as elf
from cliper_lib.method.clip_backbone import preprocess_image, walk_layers
from cliper_lib.method.text import softmax_text_set


def random_attention(heads=2, n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a sum of 3 layers
    return torch.rand(1, heads, n, n, generator=g, dtype=torch.float64).softmax(-1) * 3


@pytest.mark.parametrize("per_head", [False, True])
def test_fused_attention_is_row_stochastic_and_nonnegative(per_head):
    for fused in elf.iter_fused_attentions(random_attention(), num_outputs=4, per_head=per_head):
        assert (fused >= 0).all()
        torch.testing.assert_close(fused.sum(-1), torch.ones(1, 2, 9, dtype=torch.float64))


def test_cumulative_rounds_match_explicit_loop():
    a = random_attention()
    outputs = list(elf.iter_fused_attentions(a, num_outputs=3, rounds="cumulative"))
    for k, fused in enumerate(outputs):
        m = a.clone()
        for _ in range(k + 1):  # output k sees k+1 column/row rounds
            m = m / m.sum(-2, keepdim=True)
            m = m / m.sum(-1, keepdim=True)
        m = (m + m.transpose(-1, -2)) / 2
        m = m - m.mean(-2, keepdim=True)
        m = m.clamp(min=0)
        m = m / m.sum(-1, keepdim=True)
        torch.testing.assert_close(fused, m)
    assert not torch.allclose(outputs[0], outputs[2])  # the rounds really change the result


@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("rounds", ["cumulative", 2])
def test_reused_buffer_gives_the_same_outputs_bit_for_bit(rounds, per_head):
    a = random_attention(heads=3, n=17, seed=4).float()
    fresh = list(elf.iter_fused_attentions(a, num_outputs=4, rounds=rounds, per_head=per_head))
    reused = [
        fused.clone()
        for fused in elf.iter_fused_attentions(
            a, num_outputs=4, rounds=rounds, reuse=True, per_head=per_head
        )
    ]
    assert all(torch.equal(x, y) for x, y in zip(fresh, reused, strict=True))
    # without reuse, kept ones stay
    assert len({id(x) for x in fresh}) == (4 if rounds == "cumulative" else 1)


@pytest.mark.parametrize("per_head", [True, False])
@pytest.mark.parametrize("rounds", ["cumulative", 3])
def test_per_head_balancing_equals_whole_tensor_steps_bit_for_bit(rounds, per_head):
    """The per-head path (the CPU's schedule) balances and finishes head by head; the same steps on
    the whole (B, H, N, N) give the same bits, as does the whole-tensor path."""
    a = random_attention(heads=3, n=17, seed=5).float().expand(2, -1, -1, -1).contiguous()
    a[1] = a[1].flip(-1)  # two different images of a batch
    got = [
        fused.clone()
        for fused in elf.iter_fused_attentions(a, num_outputs=4, rounds=rounds, per_head=per_head)
    ]
    balanced, expected = a.clone(), []
    for k in range(4):
        for _ in range(1 if rounds == "cumulative" else (rounds if k == 0 else 0)):
            balanced.div_(balanced.sum(dim=-2, keepdim=True)).div_(
                balanced.sum(dim=-1, keepdim=True)
            )
        expected.append(elf.finish_fused_attention(balanced))
    assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))


def test_fuse_layers_per_head_equals_whole_tensor_bit_for_bit(golden_clip, cat_image):
    x = preprocess_image(cat_image, 224, 16, golden_clip.mean, golden_clip.std)
    walk = walk_layers(golden_clip.visual, x[None], num_blocks=3)
    whole = elf.fuse_layers(golden_clip.visual, walk, per_head=False)
    per_head = elf.fuse_layers(golden_clip.visual, walk, per_head=True)
    assert torch.equal(whole.last_attention, per_head.last_attention)
    assert torch.equal(whole.embeddings, per_head.embeddings)


def test_fixed_rounds_give_identical_outputs():
    outs = list(elf.iter_fused_attentions(random_attention(), num_outputs=3, rounds=2))
    cumulative = list(elf.iter_fused_attentions(random_attention(), num_outputs=3))
    torch.testing.assert_close(outs[0], outs[2])
    torch.testing.assert_close(outs[0], cumulative[1])


def naive_variant(block, normed, kind):
    """Per-head, per-query loop over the MultiheadAttention weights."""
    attn = block.attn
    heads, dim = attn.num_heads, normed.shape[-1]
    d = dim // heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    x = normed[0]
    q, k, v = (
        x @ w[:dim].T + b[:dim],
        x @ w[dim : 2 * dim].T + b[dim : 2 * dim],
        x @ w[2 * dim :].T + b[2 * dim :],
    )
    n = x.shape[0]
    out = torch.zeros(heads, n, n)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        left, right = {"vanilla": (q, k), "q-q": (q, q), "k-k": (k, k), "v-v": (v, v)}.get(
            kind, (None, None)
        )
        for i in range(n):
            if kind == "identity":
                out[h, i, i] = 1.0
                continue
            scores = torch.stack([(left[i, sl] * right[j, sl]).sum() / d**0.5 for j in range(n)])
            out[h, i] = scores.softmax(0)
    return out[None]


@pytest.mark.parametrize("kind", ["vanilla", "q-q", "k-k", "v-v", "identity"])
def test_last_layer_variants_match_naive_loop(golden_clip, kind):
    block = golden_clip.visual.transformer.resblocks[-1]
    normed = block.ln_1(torch.randn(1, 10, 128))
    with torch.no_grad():
        ours = elf.variant_attention(block, normed, kind)
        torch.testing.assert_close(ours, naive_variant(block, normed, kind), rtol=1e-4, atol=1e-5)


def test_vanilla_value_path_equals_multihead_attention(golden_clip):
    block = golden_clip.visual.transformer.resblocks[-1]
    normed = block.ln_1(torch.randn(1, 10, 128))
    with torch.no_grad():
        ours = elf.value_path(block, normed, elf.variant_attention(block, normed, "vanilla"))
        theirs = block.attn(normed, normed, normed, need_weights=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_value_path_matches_explicit_per_head_product(golden_clip):
    block = golden_clip.visual.transformer.resblocks[-1]
    normed = block.ln_1(torch.randn(1, 7, 128))
    attention = torch.rand(1, 2, 7, 7).softmax(-1)
    dim = 128
    # (N, D)
    v = normed[0] @ block.attn.in_proj_weight[2 * dim :].T + block.attn.in_proj_bias[2 * dim :]
    heads = [attention[0, h] @ v[:, h * 64 : (h + 1) * 64] for h in range(2)]
    expected = block.attn.out_proj(torch.cat(heads, dim=-1))
    with torch.no_grad():
        torch.testing.assert_close(
            elf.value_path(block, normed, attention)[0], expected, rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("kind", ["fused", "vanilla", "identity"])
def test_fuse_layers_shapes(golden_clip, cat_image, kind):
    x = preprocess_image(cat_image, 224, 16, golden_clip.mean, golden_clip.std)
    walk = walk_layers(golden_clip.visual, x[None], num_blocks=3)
    out = elf.fuse_layers(golden_clip.visual, walk, last_layer_attention=kind)
    assert out.embeddings.shape == (4, 1, 295, 64)
    assert out.last_attention.shape == (1, 2, 295, 295)


def test_fuse_layers_rejects_bad_layers(golden_clip, cat_image):
    x = preprocess_image(cat_image, 224, 16, golden_clip.mean, golden_clip.std)
    walk = walk_layers(golden_clip.visual, x[None], num_blocks=3)
    with pytest.raises(ValueError, match="must lie in 0 .. 2"):
        elf.fuse_layers(golden_clip.visual, walk, fuse=[0, 3])


def test_fused_layer_range_changes_the_attention(golden_clip, cat_image):
    x = preprocess_image(cat_image, 224, 16, golden_clip.mean, golden_clip.std)
    walk = walk_layers(golden_clip.visual, x[None], num_blocks=3)
    all_layers = elf.fuse_layers(golden_clip.visual, walk)
    first_only = elf.fuse_layers(golden_clip.visual, walk, fuse=[0])
    assert not torch.allclose(all_layers.last_attention, first_only.last_attention)


def test_crop_boxes_cover_the_image_flush():
    boxes = elf.crop_boxes(224, 336, 112, 112)
    assert len(boxes) == 6 and boxes[-1] == (112, 224, 224, 336)
    boxes = elf.crop_boxes(224, 300, 224, 112)  # last column flush with the right edge
    assert boxes == [(0, 224, 0, 224), (0, 224, 76, 300)]
    assert elf.crop_boxes(100, 100, 224, 112) == [(0, 100, 0, 100)]


def test_sliding_window_with_crop_covering_image_equals_whole_image_path(golden, golden_clip):
    """One crop = the whole image: the accumulated logits and attention are the whole image's
    own."""
    x = golden["input"]
    case = golden["cases"]["select=-1|slide=0"]
    text = softmax_text_set(case["text_fg"], case["text_bg"])
    sw = elf.sliding_window_maps(
        golden_clip.visual, x, text, 20, 16, crop=336, stride=112, logit_scale=100.0
    )
    walk = walk_layers(golden_clip.visual, x[None], num_blocks=3)
    whole = elf.fuse_layers(golden_clip.visual, walk)
    whole_logits = elf.layer_logits(whole.embeddings, text, 100.0, whole.grid)[:, 0]
    torch.testing.assert_close(sw.logits, whole_logits, rtol=1e-5, atol=1e-4)
    attention = elf.mean_patch_attention(whole.last_attention)[0]
    torch.testing.assert_close(
        sw.attention, attention / attention.sum(-1, keepdim=True), rtol=1e-4, atol=1e-6
    )
    layers, t, h, w = whole_logits.shape
    mixed = whole_logits.reshape(layers, t, h * w) @ sw.attention
    expected = mixed.reshape(layers, t, h, w).softmax(1)[:, :20]
    torch.testing.assert_close(sw.maps, expected, rtol=1e-4, atol=1e-6)


def test_sliding_window_accumulation_matches_per_crop_loop(golden, golden_clip):
    """Batched crops + index accumulation == running each crop on its own and adding into the
    grid."""
    x = golden["input"]
    case = golden["cases"]["select=-1|slide=112"]
    text = softmax_text_set(case["text_fg"], case["text_bg"])
    sw = elf.sliding_window_maps(
        golden_clip.visual, x, text, 20, 16, crop=112, stride=112, logit_scale=100.0
    )
    logit_sum = torch.zeros(4, text.shape[0], 14, 21)
    count = torch.zeros(14, 21)
    for y1, y2, x1, x2 in elf.crop_boxes(224, 336, 112, 112):
        walk = walk_layers(golden_clip.visual, x[None, :, y1:y2, x1:x2], num_blocks=3)
        out = elf.fuse_layers(golden_clip.visual, walk)
        logit_sum[:, :, y1 // 16 : y2 // 16, x1 // 16 : x2 // 16] += elf.layer_logits(
            out.embeddings, text, 100.0, out.grid
        )[:, 0]
        count[y1 // 16 : y2 // 16, x1 // 16 : x2 // 16] += 1
    torch.testing.assert_close(sw.logits, logit_sum / count, rtol=1e-5, atol=1e-4)
    assert torch.allclose(sw.attention.sum(-1), torch.ones(294))


def test_coarse_map_thresholds_and_refines():
    maps = torch.rand(3, 2, 2, 3)
    attention = torch.rand(6, 6).softmax(-1)
    coarse, select = elf.coarse_map(maps, attention, select_layer=-1, attention_thr=0.5)
    peak = maps[-1].flatten(1).amax(1)[:, None, None]
    expected_select = torch.where(maps[-1] < 0.5 * peak, 0.0, maps[-1])
    torch.testing.assert_close(select, expected_select)
    stacked = torch.cat([maps[:-1], expected_select[None]])
    refined = torch.einsum("cp,pq->cq", expected_select.reshape(2, 6), attention).reshape(2, 2, 3)
    torch.testing.assert_close(coarse, refined + stacked.mean(0))
    assert torch.equal(maps[-1], maps[-1].clone())  # the input is not modified


def test_layer_logits_are_scaled_cosines():
    emb = torch.randn(2, 1, 1 + 6, 4)
    text = F.normalize(torch.randn(3, 4), dim=-1)
    logits = elf.layer_logits(emb, text, 10.0, (2, 3))
    assert logits.shape == (2, 1, 3, 2, 3)
    cos = F.cosine_similarity(emb[1, 0, 1 + 4][None], text, dim=-1)  # token 4 -> row 1, col 1
    torch.testing.assert_close(logits[1, 0, :, 1, 1], 10.0 * cos)
