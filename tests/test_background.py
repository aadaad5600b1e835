"""Background words for free-form classes: ';' syntax,
collisions with the classes, duplicates, `auto`."""

from __future__ import annotations

import pytest
import torch

from cliper_lib import CLIPer
from cliper_lib.suite.toolkit import background as bg
from cliper_lib.suite.toolkit.background import general_vocabulary, resolve_vocabulary, split_terms
from cliper_lib.vocab import read_class_file


@pytest.fixture(scope="module")
def model(smoke_coarse_model) -> CLIPer:
    return smoke_coarse_model


def test_background_takes_the_class_syntax():
    assert split_terms("dining table; wooden floor") == ["dining table", "wooden floor"]
    assert split_terms(" dining  table ;\nwooden floor; ") == ["dining table", "wooden floor"]
    assert split_terms("floor, wall") == [
        "floor",
        "wall",
    ]  # no ';': the class file's first-line form
    assert split_terms("person, people; sky") == [
        "person, people",
        "sky",
    ]  # with ';' a comma stays in its term


def test_user_classes_and_their_synonyms_leave_the_background(model):
    preset_words = read_class_file("voc21").background
    assert {"sky", "wall"} <= set(preset_words)
    vocab = resolve_vocabulary(model, "rocket; Sky;  stone WALL ; wall", None)
    assert vocab.classes == ["rocket", "Sky", "stone WALL", "wall"]
    assert vocab.background == [w for w in preset_words if w not in ("sky", "wall")]
    assert len(vocab.notices) == 1 and "wall, sky" in vocab.notices[0]  # in the preset's order
    # a synonym written on a class line counts as the class
    vocab = resolve_vocabulary(model, "person, people, human; dog", "people; ground; dog; tree")
    assert vocab.background == ["ground", "tree"]
    # an explicit empty background means no word; nothing to remove, no notice
    vocab = resolve_vocabulary(model, "cat", "")
    assert vocab.background == [] and vocab.notices == []


def test_duplicate_classes_are_merged_with_a_notice(model, tmp_path):
    vocab = resolve_vocabulary(model, "cat; sofa; Cat ;  sofa", "ground")
    assert vocab.classes == ["cat", "sofa"]
    assert len(vocab.notices) == 1 and "Cat" in vocab.notices[0]
    # the scores of `segment` have one key per class
    import json

    import numpy as np
    from PIL import Image

    from cliper_lib.suite.cli.commands import main

    path = tmp_path / "grey.png"
    Image.fromarray(np.full((40, 56, 3), 120, np.uint8)).save(path)
    args = [
        "segment",
        str(path),
        "--classes",
        "cat; sofa; cat",
        "--background",
        "sky; sofa",
        "--profile",
        "smoke",
        "--device",
        "cpu",
        "--refinement",
        "none",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    assert main(args) == 0
    record = json.loads((tmp_path / "out" / "grey_scores.json").read_text())
    assert list(record["scores"]) == ["cat", "sofa"] and record["background"] == ["sky"]


def test_auto_picks_the_closest_terms_and_leaves_out_near_synonyms(model):
    vocabulary = general_vocabulary()
    assert (
        len(vocabulary) == len({t.lower() for t in vocabulary}) > 300
    )  # the benchmarks' names, de-duplicated
    assert "cat" in vocabulary and "sofa" in vocabulary and "background" not in vocabulary
    classes = ["cat", "wooden spoon"]
    bank = model.encode_text(list(vocabulary), [], model.cfg).fg.float()
    fg = model.encode_text(classes, [], model.cfg).fg.float()
    cosine = (bank @ fg.T).max(dim=1).values
    # a threshold just under the closest non-identical term: that term must be left out
    # as a near-synonym
    order = [
        i
        for i in torch.argsort(cosine, descending=True, stable=True).tolist()
        if vocabulary[i] != "cat"
    ]
    nearest = order[0]
    threshold = float(cosine[nearest]) - 1e-6
    words, notices = bg.auto_background(
        model, classes, model.cfg, auto_words=5, synonym_cosine=threshold
    )
    assert vocabulary[nearest] not in words and "cat" not in words
    expected = [vocabulary[i] for i in order if float(cosine[i]) < threshold][:5]
    assert words == expected
    assert "near-synonyms" in notices[0]
    # deterministic: the same words from a fresh encoding (the in-process bank dropped)
    bg._ENCODED.clear()
    vocab = resolve_vocabulary(
        model, "cat; wooden spoon", "auto", auto_words=5, synonym_cosine=threshold
    )
    assert vocab.background == words
