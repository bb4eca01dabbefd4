"""Personal concepts: a name ("bella") taught by a few example photos, used like a word in queries.

A concept is a stored query vector, made without any training run from the examples'
image vectors (see `build_concept` for the method and docs/concepts.md for the
measurements that chose it). In a query the name is a term resolver: `bella` alone
searches with the concept's vector; `bella on a beach` adds the concept's vector to the
text vector of the words around it (`on a beach`), as query arithmetic adds terms.

Everything here is numpy: resolving a concept at query time needs no model and no torch,
only the text vectors of the surrounding words that the query path computes anyway.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from clipsearch.errors import ConceptError

# How much the concept counts against the words around it in a sentence, per method. Of
# 0.5, 1 and 2, these measured best (bench/bench_concepts.py, docs/concepts.md).
SENTENCE_WEIGHT = {"whitened-prototype": 2.0, "centred-prototype": 1.0}
# Shrinkage of the library covariance toward a multiple of the identity when whitening
# (0.3 measured; see build_concept).
SHRINKAGE = 0.3
# Whitening needs a covariance estimated from this many photos per dimension; a smaller
# library gets the centred prototype (in a 130-photo test library whitening did worse).
WHITEN_MIN_PER_DIM = 4
# Examples whose mean pairwise cosine (after removing the library's mean) is under this
# are too unlike each other to be one thing: the concept is reported weak. On toy-world
# example sets (docs/concepts.md), 0.15 keeps 90% of consistent 5-example sets and flags
# 79% of sets mixing two unrelated things (10 examples: 95% and 89%).
WEAK_COHERENCE = 0.15
# The library sample the concept is measured against (mean vector, describe threshold).
LIBRARY_SAMPLE = 20_000

_NAME = re.compile(r"^[^\W\d_][\w-]{0,39}$")
_WORD = re.compile(r"[\w-]+")


@dataclass(frozen=True)
class Concept:
    """A personal concept: its query vector and what it was made from.

    `coherence` is the mean pairwise cosine of the examples once the library's mean is
    removed (1: identical, about 0: unrelated photos; None for one example); `weak` is
    True when it is under `WEAK_COHERENCE`. `threshold` is the score from which a photo
    fits the concept (for describe). `stale` is True when the library's model is not the
    one the concept was made with: it must then be made again. `weight`: how much it
    counts against the words around it in a sentence.
    """

    name: str
    vector: np.ndarray
    examples: int
    sources: tuple[str, ...]
    coherence: float | None
    weak: bool
    threshold: float
    model: str
    method: str
    created_at: float
    stale: bool = False
    weight: float = 1.0

    def summary(self) -> str:
        spread = "spread unknown (one example)" if self.coherence is None else f"coherence {self.coherence:.2f}"
        flags = (", WEAK: the examples look like different things; remove the odd ones out"
                 if self.weak else "")
        stale = ", STALE: made with another model; add it again" if self.stale else ""
        return f"{self.name}: {self.examples} example{'s' if self.examples != 1 else ''}, {spread}{flags}{stale}"


def check_name(name: str) -> str:
    """The normalised (lower-case) concept name; ConceptError if it cannot be used as a query word."""
    clean = (name or "").strip().lower()
    if not _NAME.match(clean):
        raise ConceptError(f"concept name {name!r} is not one word: use letters, digits, '-' or '_', "
                           "starting with a letter (e.g. bella, grandma, our-house)")
    return clean


def unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n < 1e-8:
        raise ConceptError("the examples cancel each other out; give other example photos")
    return (v / n).astype(np.float32)


def coherence(examples: np.ndarray, library_mean: np.ndarray) -> float | None:
    """Mean pairwise cosine of the examples after removing the library's mean; None for one example."""
    if len(examples) < 2:
        return None
    centred = examples - library_mean[None, :]
    centred = centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-8)
    sims = centred @ centred.T
    k = len(examples)
    return float((sims.sum() - np.trace(sims)) / (k * (k - 1)))


def build_concept(examples: np.ndarray, library_sample: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The concept's query vector and its parameters, from example image vectors.

    The method, chosen by measurement against the plain prototype (docs/concepts.md): the
    mean of the examples minus the mean of the library's images, which drops what every
    photo shares (the image side of the image–text modality gap, the typical background);
    then, for a library of at least WHITEN_MIN_PER_DIM × dim photos, whitened by the
    library's covariance shrunk toward the identity, so the directions in which photos
    differ most (settings, times of day) count less and the words around the name decide
    them; normalised. A smaller library keeps the centred prototype (no whitening).
    """
    examples = np.asarray(examples, np.float32)
    if examples.ndim != 2 or not len(examples):
        raise ConceptError("a concept needs at least one example photo")
    mean = (library_sample.mean(axis=0) if len(library_sample) else np.zeros(examples.shape[1], np.float32))
    direction = examples.mean(axis=0) - mean
    method = "centred-prototype"
    if len(library_sample) >= WHITEN_MIN_PER_DIM * examples.shape[1]:
        method = "whitened-prototype"
        centred = library_sample - mean
        cov = centred.T @ centred / len(library_sample)
        shrunk = (1 - SHRINKAGE) * cov + SHRINKAGE * float(np.trace(cov)) / len(cov) * np.eye(len(cov))
        direction = np.linalg.solve(shrunk, direction)
    vector = unit(direction)
    coh = coherence(examples, mean)
    example_scores = examples @ vector
    library_scores = library_sample @ vector if len(library_sample) else np.zeros(1, np.float32)
    # A photo fits when it scores like the examples: at least the weakest example, less a
    # quarter of the way back toward a typical library photo.
    low, typical = float(example_scores.min()), float(np.median(library_scores))
    threshold = low - 0.25 * max(0.0, low - typical)
    params = {"method": method, "weight": SENTENCE_WEIGHT[method], "coherence": coh, "threshold": threshold,
              "weak": bool(coh is not None and coh < WEAK_COHERENCE), "library_sample": int(len(library_sample))}
    return vector, params


def concept_from_row(row: Any, model: str) -> Concept:
    """A `Concept` from a catalog row (`clipsearch.catalog.ConceptRow`); `model` is the library's signature now."""
    p = row.params
    return Concept(name=row.name, vector=row.vector, examples=len(row.examples), sources=tuple(row.sources),
                   coherence=p.get("coherence"), weak=bool(p.get("weak")), threshold=float(p.get("threshold", 1.0)),
                   model=row.model, method=p.get("method", "centred-prototype"), created_at=row.created_at,
                   stale=row.model != model, weight=float(p.get("weight", 1.0)))


def find_names(text: str, names: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """(name, start, end) of each concept name used as a word in `text` (case-insensitive)."""
    found = []
    for m in _WORD.finditer(text):
        word = m.group(0).lower().strip("-")
        if word in names:
            found.append((word, m.start(), m.end()))
    return found


def resolve_text(text: str, concepts: Mapping[str, Concept], text_vector: Callable[[str], np.ndarray],
                 *, weight: float | None = None) -> np.ndarray | None:
    """The unit vector of a text term that names concepts, or None when it names none.

    `bella` is the concept's vector; `bella on a beach` is the normalised sum of
    `weight` (default: the concept's own `weight`) × the concept's vector and the text
    vector of the words left when the names are removed ("on a beach"). Several concepts
    in one term add up the same way.
    ConceptError for a stale concept (made with another model).
    """
    used = find_names(text, concepts)
    if not used:
        return None
    parts = []
    for name, _, _ in used:
        concept = concepts[name]
        if concept.stale:
            raise ConceptError(f"concept {name!r} was made with model {concept.model}, not the library's model "
                               f"now: add it again (clipsearch concept add {name} --replace EXAMPLES...)")
        parts.append((concept.weight if weight is None else weight) * concept.vector)
    rest = text
    for _, start, end in reversed(used):
        rest = rest[:start] + rest[end:]
    rest = " ".join(rest.split())
    total = np.sum(parts, axis=0)
    if rest:
        total = total + text_vector(rest)
    return unit(total)
