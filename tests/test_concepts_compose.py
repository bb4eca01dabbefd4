"""How a concept composes with the words around it, on a synthetic library where the truth is known.

Photos show one of five objects (one of them "bella") in one of five settings; image
vectors share an image-side offset and text vectors a text-side one (the modality gap),
and a text matches its photos only weakly, as CLIP's texts do. Adding the concept's vector
to the text vector of "on a road" lets the concept drown the words; carrying the words to
the image side first (`context_vector`) and adding both in units of spread (`compose`)
finds bella on the road.
"""
from __future__ import annotations

import numpy as np

from clipsearch.concepts import LibrarySpace, and_scores, build_concept, compose, context_vector, resolve_text

DIM = 16
BELLA, ROAD = 1, 6          # object axes 1-5, setting axes 6-10; 0: images' offset, 15: texts' offset


def _library(rng: np.random.Generator, n: int = 800) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    objects = rng.integers(1, 6, n)
    settings = rng.integers(6, 11, n)
    X = rng.normal(0, 0.08, (n, DIM))
    X[:, 0] += 1.0
    X[np.arange(n), objects] += 0.6
    X[np.arange(n), settings] += 0.6
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), objects, settings


def _text(rng: np.random.Generator, axis: int) -> np.ndarray:
    t = np.zeros(DIM, np.float32)
    t[15], t[axis] = 1.0, 0.25
    return (t / np.linalg.norm(t)).astype(np.float32)


class _Bella:
    stale = False
    weight = 2.0

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector


def test_library_space_direction_is_the_whitened_prototype() -> None:
    rng = np.random.default_rng(0)
    X, objects, _ = _library(rng)
    space = LibrarySpace.from_sample(X)
    assert space.whitened and space.count == len(X)
    examples = X[objects == BELLA][:5]
    vector, params = build_concept(examples, X)
    np.testing.assert_allclose(space.direction(examples), vector, atol=1e-5)
    assert params["method"] == "whitened-prototype"
    # The spread is the standard deviation of the scores over the library.
    assert abs(space.spread(vector) - float((X @ vector).std())) < 1e-4
    # Too few photos to estimate a covariance: the centred prototype, unwhitened.
    small = LibrarySpace.from_sample(X[:40])
    assert not small.whitened
    centred = examples.mean(axis=0) - X[:40].mean(axis=0)
    np.testing.assert_allclose(small.direction(examples), centred / np.linalg.norm(centred), atol=1e-5)


def test_words_around_a_concept_are_carried_to_the_image_side_and_composed() -> None:
    rng = np.random.default_rng(3)
    X, objects, settings = _library(rng)
    truth = set(np.flatnonzero((objects == BELLA) & (settings == ROAD)).tolist())
    assert len(truth) >= 10
    examples = X[objects == BELLA][:5]
    bella = _Bella(build_concept(examples, X)[0])
    space = LibrarySpace.from_sample(X)
    calls = []

    def neighbours(vector: np.ndarray, m: int) -> np.ndarray:
        calls.append(m)
        return X[np.argsort(-(X @ vector))[:m]]

    texts = {"on a road": _text(rng, ROAD)}

    def hits(query: np.ndarray) -> int:
        return len(truth.intersection(np.argsort(-(X @ query))[:10].tolist()))

    composed = resolve_text("bella on a road", {"bella": bella}, texts.__getitem__,  # type: ignore[dict-item]
                            space=space, neighbours=neighbours)
    summed = resolve_text("bella on a road", {"bella": bella}, texts.__getitem__)  # type: ignore[dict-item]
    assert calls == [min(30, len(X) // 64)] * 2  # two rounds of feedback over the best photos
    assert hits(composed) >= 9, hits(composed)
    assert hits(summed) <= 5, hits(summed)  # the concept drowns the words
    context = context_vector(texts["on a road"], space, neighbours)
    assert int(np.argmax(np.abs(context[6:11]))) + 6 == ROAD  # the words' setting, on the image side
    np.testing.assert_allclose(composed, compose([bella.vector, context], space), atol=1e-6)
    # A concept alone is its own vector; in a library too small to whiten, the plain sum.
    alone = resolve_text("bella", {"bella": bella}, texts.__getitem__, space=space, neighbours=neighbours)
    np.testing.assert_allclose(alone, bella.vector, atol=1e-6)
    small = LibrarySpace.from_sample(X[:40])
    np.testing.assert_allclose(resolve_text("bella on a road", {"bella": bella}, texts.__getitem__,
                                            space=small, neighbours=neighbours), summed, atol=1e-6)


def test_composition_finds_the_concept_in_the_setting_in_other_libraries_too() -> None:
    for seed in (1, 2, 4):
        rng = np.random.default_rng(seed)
        X, objects, settings = _library(rng)
        truth = set(np.flatnonzero((objects == BELLA) & (settings == ROAD)).tolist())
        bella = _Bella(build_concept(X[objects == BELLA][:5], X)[0])
        query = resolve_text("bella on a road", {"bella": bella}, {"on a road": _text(rng, ROAD)}.__getitem__,
                             space=LibrarySpace.from_sample(X),  # type: ignore[dict-item]
                             neighbours=lambda v, m: X[np.argsort(-(X @ v))[:m]])
        assert len(truth.intersection(np.argsort(-(X @ query))[:10].tolist())) >= 9, seed


def test_and_scores_need_every_part() -> None:
    rng = np.random.default_rng(0)
    X, objects, settings = _library(rng)
    space = LibrarySpace.from_sample(X)
    bella = build_concept(X[objects == BELLA][:5], X)[0]
    road = space.direction(X[settings == ROAD][:30])
    both = X[(objects == BELLA) & (settings == ROAD)]
    one = X[(objects == BELLA) & (settings != ROAD)]
    other = X[(objects != BELLA) & (settings == ROAD)]
    scores = [and_scores(v, [bella, road], space) for v in (both, one, other)]
    assert scores[0].min() > max(scores[1].max(), scores[2].max())
    # The z-score: a photo's score less the library mean's, over the spread.
    z = and_scores(X[:3], [bella], space)
    np.testing.assert_allclose(z, (X[:3] @ bella - X.mean(axis=0) @ bella) / (X @ bella).std(), atol=1e-3)
