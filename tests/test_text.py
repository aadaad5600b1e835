"""Text side: class files, templates, embeddings, on-disk cache."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from cliper_lib.method.text import TextEmbeddingCache, encode_class_names, softmax_text_set
from cliper_lib.vocab import (
    load_templates,
    parse_class_names,
    read_class_file,
    split_background_line,
)
from cliper_lib.weights.clip import TINY_CLIP_NAME, register_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip():
    register_tiny_clip()
    torch.manual_seed(0)
    return open_clip.create_model(TINY_CLIP_NAME, pretrained=None).eval(), open_clip.get_tokenizer(
        TINY_CLIP_NAME
    )


def test_background_vocabulary_is_split_into_words():
    assert split_background_line("ground, land, grass tree") == ["ground", "land", "grass", "tree"]
    assert split_background_line("background") == ["background"]


@pytest.mark.parametrize(
    "name,count,first",
    [
        ("voc21", 20, "aeroplane"),
        ("context60", 59, "aeroplane"),
        ("coco_object81", 80, None),
        ("coco_stuff171", 171, None),
        ("ade150", 150, None),
        ("cityscapes19", 19, "road"),
    ],
)
def test_bundled_class_files(name, count, first):
    classes = read_class_file(name)
    assert len(classes.names) == count
    if first:
        assert classes.names[0] == first
    assert classes.background and all(" " not in w and "," not in w for w in classes.background)


def test_voc_background_matches_reference(golden):
    classes = read_class_file("voc21")
    assert classes.background == golden["background"]


def test_templates():
    assert len(load_templates("cliper")) == 15
    assert len(load_templates("openai")) == 80
    with pytest.raises(ValueError, match="unknown template set"):
        load_templates("nope")


def test_parse_class_names():
    assert parse_class_names("cat; sofa ;; person with clothes") == [
        "cat",
        "sofa",
        "person with clothes",
    ]
    with pytest.raises(ValueError):
        parse_class_names(" ; ")


def test_unknown_class_file_lists_the_bundled_ones():
    with pytest.raises(FileNotFoundError, match="voc21"):
        read_class_file("no_such_set")


def test_embedding_is_normalised_mean_of_normalised_templates(tiny_clip):
    model, tokenizer = tiny_clip
    templates = ["a photo of a {}.", "a {} in the scene"]
    ours = encode_class_names(
        model, tokenizer, ["cat", "person with clothes"], templates, batch_size=3
    )
    with torch.no_grad():
        per = F.normalize(
            model.encode_text(tokenizer([t.format("person with clothes") for t in templates])),
            dim=-1,
        )
    torch.testing.assert_close(ours[1], F.normalize(per.mean(0), dim=0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(2))


def test_cache_hit_returns_identical_tensors(tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    cache = TextEmbeddingCache(tmp_path)
    key = cache.key("tiny", "abc", ["a {}"], ["cat", "dog"])
    first = cache.get_or_compute(
        key, lambda: encode_class_names(model, tokenizer, ["cat", "dog"], ["a {}"])
    )
    second = cache.get_or_compute(key, lambda: pytest.fail("the cache should have been hit"))
    assert torch.equal(first, second)
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.key("tiny", "abc", ["a {}"], ["cat"]) != key
    assert cache.key("tiny", "other-weights", ["a {}"], ["cat", "dog"]) != key


def test_corrupt_cache_file_is_recomputed(tmp_path):
    cache = TextEmbeddingCache(tmp_path)
    (tmp_path / "k.pt").write_bytes(b"not a tensor")
    value = cache.get_or_compute("k", lambda: torch.ones(2))
    assert torch.equal(value, torch.ones(2)) and cache.misses == 1


def test_softmax_set_order():
    fg, bg = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(2, 4), dim=-1)
    t = softmax_text_set(fg, bg)
    assert t.shape == (6, 4)
    torch.testing.assert_close(t[:3], fg)
    torch.testing.assert_close(t[5], F.normalize(fg.mean(0), dim=0))
