"""Personal concepts: a name ("bella") taught by a few example photos, used like a word in queries.

A concept is a stored query vector, made without any training run from the examples'
image vectors (see `build_concept` for the method and docs/concepts.md for the
measurements that chose it). In a query the name is a term resolver: `bella` alone
searches with the concept's vector; in `bella on a beach` the words around the name are
carried over to the image side first (`context_vector`: the photos they find, as the
concept's examples are photos) and the two sides are added in units of their spread over
the library (`compose`), so neither drowns the other.

Everything here is numpy: resolving a concept at query time needs no model and no torch,
only the text vectors of the surrounding words that the query path computes anyway, and
a few nearest-neighbour lookups in the library.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from clipsearch.errors import ConceptError

# How much the concept counts against the words around it in a sentence when they are
# added as plain vectors (`resolve_text` without a library space, and the "sum" rows of
# bench/bench_concepts.py): of 0.5, 1 and 2, these measured best.
SENTENCE_WEIGHT = {"whitened-prototype": 2.0, "centred-prototype": 1.0}
# The words around a concept name become an image-side vector by pseudo-relevance
# feedback: the prototype of the photos the words find, found again from that prototype
# (CONTEXT_ROUNDS times), over the best CONTEXT_PHOTOS photos (fewer in a small library:
# one per CONTEXT_PER_PHOTOS photos, at least 3). Measured: docs/concepts.md.
CONTEXT_ROUNDS = 2
CONTEXT_PHOTOS = 30
CONTEXT_PER_PHOTOS = 64
# A query that is one concept-and-words term is re-ranked: its best AND_DEPTH photos by the
# composed vector are ordered by `and_scores`, so a photo must fit every part (0: no re-ranking).
AND_DEPTH = 200
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


@dataclass(frozen=True)
class LibrarySpace:
    """How a library's image vectors are spread: their mean and covariance, from a sample.

    `direction` turns a few image vectors into a query vector the way a concept is made
    (their mean minus the library mean, whitened when the sample is large enough);
    `spread` is the standard deviation over the library of the scores a query vector
    gives, the unit in which `compose` adds the parts of a sentence.
    """

    mean: np.ndarray
    cov: np.ndarray
    count: int
    _inverse: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_sample(cls, sample: np.ndarray, dim: int | None = None) -> "LibrarySpace":
        """The space of a library sample (n, dim); an empty sample gives a zero mean and identity covariance."""
        sample = np.asarray(sample, np.float32)
        if not len(sample):
            d = int(dim if dim is not None else sample.shape[-1])
            return cls(np.zeros(d, np.float32), np.eye(d, dtype=np.float64), 0)
        mean = sample.mean(axis=0)
        centred = (sample - mean).astype(np.float64)
        return cls(mean.astype(np.float32), centred.T @ centred / len(sample), len(sample))

    @property
    def whitened(self) -> bool:
        """Whether directions are whitened: only from a sample of at least WHITEN_MIN_PER_DIM × dim photos."""
        return self.count >= WHITEN_MIN_PER_DIM * len(self.mean)

    def whitener(self) -> np.ndarray:
        """The inverse of the covariance shrunk SHRINKAGE of the way toward a multiple of the identity (cached)."""
        if "w" not in self._inverse:
            cov = self.cov
            shrunk = (1 - SHRINKAGE) * cov + SHRINKAGE * float(np.trace(cov)) / len(cov) * np.eye(len(cov))
            self._inverse["w"] = np.linalg.inv(shrunk)
        return self._inverse["w"]

    def direction(self, vectors: np.ndarray) -> np.ndarray:
        """The unit query vector of a few image vectors: mean minus the library mean, whitened when `whitened`."""
        direction = np.asarray(vectors, np.float32).mean(axis=0) - self.mean
        if self.whitened:
            direction = self.whitener() @ direction
        return unit(direction)

    def spread(self, vector: np.ndarray) -> float:
        """The standard deviation of `vector`'s scores over the library (from the covariance)."""
        v = np.asarray(vector, np.float64)
        return float(np.sqrt(max(v @ self.cov @ v, 1e-12)))


def context_vector(words: np.ndarray, space: LibrarySpace,
                   neighbours: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """The words around a concept name, carried to the image side: pseudo-relevance feedback.

    `words` is their text vector; `neighbours(vector, m)` returns the stored vectors of the
    library's m best photos for a vector. The photos the words find are made into a
    prototype the way a concept is made (`LibrarySpace.direction`), and that prototype
    finds photos again, CONTEXT_ROUNDS times. A text vector and an image prototype live on
    two sides of the modality gap; summed, the image side wins by its scale alone, while
    two image-side prototypes add up as peers.
    """
    m = min(CONTEXT_PHOTOS, max(3, space.count // CONTEXT_PER_PHOTOS))
    vector = words
    for _ in range(CONTEXT_ROUNDS):
        found = neighbours(vector, m)
        if not len(found):
            return words
        vector = space.direction(found)
    return vector


def compose(parts: Sequence[np.ndarray], space: LibrarySpace) -> np.ndarray:
    """The unit sum of query vectors, each divided by the spread of its scores over the library.

    Ranking by it is ranking by the sum of each part's z-score: each part counts by how far
    it sets a photo apart from the library's typical photo, whatever the scale of its
    scores (a text vector's are a fraction of an image prototype's). `and_scores` goes
    further and asks a photo to stand out on every part.
    """
    return unit(np.sum([p / space.spread(p) for p in parts], axis=0))


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
    space = LibrarySpace.from_sample(library_sample, examples.shape[1])
    method = "whitened-prototype" if space.whitened else "centred-prototype"
    vector = space.direction(examples)
    coh = coherence(examples, space.mean)
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


def _names_and_rest(text: str, concepts: Mapping[str, Concept]) -> tuple[list[str], str]:
    used = find_names(text, concepts)
    for name, _, _ in used:
        concept = concepts[name]
        if concept.stale:
            raise ConceptError(f"concept {name!r} was made with model {concept.model}, not the library's model "
                               f"now: add it again (clipsearch concept add {name} --replace EXAMPLES...)")
    rest = text
    for _, start, end in reversed(used):
        rest = rest[:start] + rest[end:]
    return [name for name, _, _ in used], " ".join(rest.split())


def sentence_parts(text: str, concepts: Mapping[str, Concept], text_vector: Callable[[str], np.ndarray],
                   space: LibrarySpace, neighbours: Callable[[np.ndarray, int], np.ndarray]
                   ) -> list[np.ndarray] | None:
    """The parts of a text term that names concepts among other words, in a library large enough to whiten.

    Each named concept's vector, then the other words carried to the image side
    (`context_vector`); None when the term names no concept, names nothing else, or the
    library is too small to whiten. ConceptError for a stale concept.
    """
    return _sentence_parts(*_names_and_rest(text, concepts), concepts, text_vector, space, neighbours)


def _sentence_parts(names: Sequence[str], rest: str, concepts: Mapping[str, Concept],
                    text_vector: Callable[[str], np.ndarray], space: LibrarySpace,
                    neighbours: Callable[[np.ndarray, int], np.ndarray]) -> list[np.ndarray] | None:
    if not names or not rest or not space.whitened:
        return None
    return [*(concepts[name].vector for name in names), context_vector(text_vector(rest), space, neighbours)]


def and_scores(vectors: np.ndarray, parts: Sequence[np.ndarray], space: LibrarySpace) -> np.ndarray:
    """Per photo, the soft minimum (-log Σ exp(-z)) of its z-scores on each part: high only when all are high.

    z is the photo's score minus the library mean's, over the part's spread
    (`LibrarySpace.spread`).
    """
    vectors = np.asarray(vectors, np.float32)
    z = np.stack([(vectors @ p - float(space.mean @ p)) / space.spread(p) for p in parts])
    return -np.logaddexp.reduce(-z, axis=0)


def resolve_text(text: str, concepts: Mapping[str, Concept], text_vector: Callable[[str], np.ndarray],
                 *, weight: float | None = None, space: LibrarySpace | None = None,
                 neighbours: Callable[[np.ndarray, int], np.ndarray] | None = None) -> np.ndarray | None:
    """The unit vector of a text term that names concepts, or None when it names none.

    `bella` is the concept's vector. In `bella on a beach`, with the library's `space` (one
    large enough to be whitened) and `neighbours` (the query path's), the words left when
    the names are removed ("on a beach") are carried to the image side (`context_vector`)
    and composed with the concepts' vectors in units of their spread (`compose`). Without
    them, the plain sum of `weight` (default: the concept's own `weight`) × each concept's
    vector and the words' text vector. ConceptError for a stale concept (made with
    another model).
    """
    names, rest = _names_and_rest(text, concepts)
    if not names:
        return None
    if space is not None and neighbours is not None:
        parts = _sentence_parts(names, rest, concepts, text_vector, space, neighbours)
        if parts is not None:
            return compose(parts, space)
    total = np.sum([(concepts[n].weight if weight is None else weight) * concepts[n].vector for n in names], axis=0)
    if rest:
        total = total + text_vector(rest)
    return unit(total)
