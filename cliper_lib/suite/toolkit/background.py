"""Which words compete as background for free-form classes: one rule for `segment`, `demo`, the app
and notebook 00.

    vocab = resolve_vocabulary(model, "cat; sofa; wall", background=None)
    vocab.classes, vocab.background, vocab.notices
    # ['cat', 'sofa', 'wall'], the preset's words minus 'wall', 1 line

Rules (README "Background words"):
- classes and background take the same syntax: terms separated by ';' (or newlines), multi-word
  terms kept. A background text without ';' may also separate its terms by commas (the form of a
  class file's first line).
- `background=None` is the preset's vocabulary (the first line of its class file): the presets'
  thresholds (`score_threshold`, `bkg_thre`) were tuned against it. `""` is no background word at
  all.
- a background word that is one of the user's classes, or a synonym written on a class's line
  (`person, people`), is dropped with a one-line notice: otherwise the class competes with itself
  and its score drops.
- a class named twice (case and spacing ignored) is kept once, with a notice: two rows would split
  its score.
- `background="auto"`: distractors chosen for these classes from a general vocabulary (the class
  names of the eight benchmarks, de-duplicated), encoded once per model: the `auto_words` terms
  closest to the classes by cosine, leaving out any term whose cosine with a class reaches
  `synonym_cosine` (a near-synonym would take the class's pixels). Ties go to the earlier vocabulary
  term, so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from ...config import DATA_DIR
from ...vocab import parse_class_names, read_class_file

#: `auto`: how many distractors, and the cosine (with any class) from which a term counts as a
#: near-synonym.
AUTO_WORDS = 24
SYNONYM_COSINE = 0.9
AUTO = "auto"


@dataclass
class Vocabulary:
    """The classes (label k = classes[k-1]), the background words they compete with, and what was
    changed."""

    classes: list[str]
    background: list[str]
    notices: list[str] = field(default_factory=list)


def split_terms(text: str) -> list[str]:
    """'dining table; wooden floor' -> ['dining table', 'wooden floor'], by the class names' own
    rule (vocab.parse_class_names: without ';', commas and new lines separate); spaces tidied."""
    if not text.strip():
        return []
    return [" ".join(part.split()) for part in parse_class_names(text)]


def _key(term: str) -> str:
    return " ".join(term.lower().split())


def class_aliases(line: str) -> set[str]:
    """The normalised names a class line stands for: the whole line and each comma-separated synonym
    on it."""
    return {_key(line), *(_key(part) for part in line.split(",") if part.strip())}


def merge_duplicates(classes: Sequence[str]) -> tuple[list[str], list[str]]:
    """Keep the first of classes that differ only in case or spacing; one notice if any was
    merged."""
    kept: dict[str, str] = {}
    merged = []
    for name in classes:
        if _key(name) in kept:
            merged.append(name)
        else:
            kept[_key(name)] = name
    notices = (
        [f"merged duplicate class name(s): {', '.join(merged)} (one score per class)"]
        if merged
        else []
    )
    return list(kept.values()), notices


def drop_collisions(
    classes: Sequence[str], background: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Remove background words that name one of the classes (or a synonym on its line); one notice
    if any."""
    aliases = set().union(*(class_aliases(c) for c in classes)) if classes else set()
    kept = [word for word in background if _key(word) not in aliases]
    dropped = [word for word in background if _key(word) in aliases]
    notices = (
        [f"removed from the background words because they are classes: {', '.join(dropped)}"]
        if dropped
        else []
    )
    return kept, notices


@lru_cache(maxsize=1)
def general_vocabulary() -> tuple[str, ...]:
    """The benchmarks' class names (each class line's first name) and background words,
    de-duplicated, in order."""
    seen: dict[str, str] = {}
    for path in sorted((DATA_DIR / "classes").glob("*.txt")):
        class_file = read_class_file(path)
        for term in [*(line.split(",")[0] for line in class_file.names), *class_file.background]:
            term = " ".join(term.split())
            if term and term.lower() != "background":
                seen.setdefault(_key(term), term)
    return tuple(seen.values())


#: encoded vocabularies, one per (weights, templates): encoded once per model and kept for the
#: process.
_ENCODED: dict[tuple[str, str], torch.Tensor] = {}


def encoded_vocabulary(model: Any, cfg: Any) -> torch.Tensor:
    """(V, E) L2-normalised embeddings of `general_vocabulary()` for this model (the model's disk
    cache as well)."""
    key = (model.clip.weights_id, id(model.clip.model), cfg.templates)
    if key not in _ENCODED:
        _ENCODED[key] = model.encode_text(list(general_vocabulary()), [], cfg).fg.float().cpu()
    return _ENCODED[key]


def auto_background(
    model: Any,
    classes: Sequence[str],
    cfg: Any,
    auto_words: int = AUTO_WORDS,
    synonym_cosine: float = SYNONYM_COSINE,
) -> tuple[list[str], list[str]]:
    """Distractors for `classes`: the `auto_words` vocabulary terms closest to them, near-synonyms
    excluded."""
    vocabulary = general_vocabulary()
    bank = encoded_vocabulary(model, cfg)  # (V, E)
    fg = model.encode_text(list(classes), [], cfg).fg.float().cpu()  # (C, E)
    cosine = (bank @ fg.T).max(dim=1).values  # (V,) closeness of each term to its nearest class
    aliases = set().union(*(class_aliases(c) for c in classes))
    allowed = [
        i
        for i, term in enumerate(vocabulary)
        if float(cosine[i]) < synonym_cosine and _key(term) not in aliases
    ]
    # the closest first; equal cosines keep vocabulary order (sorted is stable), so the choice is
    # deterministic
    chosen = sorted(allowed, key=lambda i: -float(cosine[i]))[:auto_words]
    excluded = len(vocabulary) - len(allowed)
    notice = (
        f"background auto: {len(chosen)} distractors from {len(vocabulary)} terms "
        f"({excluded} left out as near-synonyms, cosine ≥ {synonym_cosine})"
    )
    return [vocabulary[i] for i in chosen], [notice]


def resolve_vocabulary(
    model: Any,
    classes: str | Sequence[str],
    background: str | Sequence[str] | None = None,
    cfg: Any = None,
    auto_words: int = AUTO_WORDS,
    synonym_cosine: float = SYNONYM_COSINE,
) -> Vocabulary:
    """Apply the rules of this module: classes and background as given by a user, to what the model
    encodes."""
    cfg = cfg or model.cfg
    names = (
        parse_class_names(classes)
        if isinstance(classes, str)
        else [c.strip() for c in classes if c.strip()]
    )
    if not names:
        raise ValueError("give at least one class name (separate several with ';')")
    names, notices = merge_duplicates(names)
    if isinstance(background, str) and background.strip().lower() == AUTO:
        words, more = auto_background(model, names, cfg, auto_words, synonym_cosine)
        return Vocabulary(names, words, notices + more)
    if background is None:
        words = read_class_file(cfg.classes).background
    elif isinstance(background, str):
        words = split_terms(background)
    else:
        words = [" ".join(w.split()) for w in background if w.strip()]
    # a repeated background word only adds a copy of the same row
    words, _ = merge_duplicates(words)
    words, more = drop_collisions(names, words)
    return Vocabulary(names, words, notices + more)
