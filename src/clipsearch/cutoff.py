"""`min:auto`: the cosine score above which a photo counts as a match, calibrated per model and library.

Date order (`sort:date`) lists every relevant photo instead of the top k by score, so it
needs to know where relevance ends, and a raw cosine means different things for
different models (and libraries). The calibration asks the library itself what "no good
match" looks like: it scores a background of captions that describe nothing in
particular in it (unrelated captions) against a sample of its photos and takes, for
each caption, the best photo's score: the score an unrelated caption's best photo
reaches. A photo matches a query when it beats the `BACKGROUND_QUANTILE` of those (three
unrelated captions in four find no photo scoring that high).

The background captions are the model's own kind of text: for the bundled toy-world
model, descriptions of random toy-world scenes (almost none of which a library holds
exactly); for other models, `GENERIC_CAPTIONS`. Calibrations are cached per library
state and model. Measured precision and recall on toy-world queries: docs/metadata.md
("The relevance cutoff"), `bench/bench_cutoff.py`.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from clipsearch.search import Searcher

log = logging.getLogger(__name__)

__all__ = ["BACKGROUND_QUANTILE", "Calibration", "GENERIC_CAPTIONS", "auto_cutoff", "background_captions",
           "calibrate"]

BACKGROUND_QUANTILE = 0.75
BACKGROUND_SIZE = 128
SAMPLE_MAX = 20_000

GENERIC_CAPTIONS: tuple[str, ...] = (
    "a photo of a kitchen sink", "a screenshot of a spreadsheet", "a close-up of a keyboard", "a parking ticket",
    "a plate of spaghetti", "a bowl of soup", "a receipt from a shop", "a cat asleep on a sofa",
    "a dog catching a frisbee", "a crowd at a concert", "a snowy mountain peak", "a city skyline at night",
    "a bride and groom", "a birthday cake with candles", "a child on a swing", "an empty classroom",
    "a football match in a stadium", "a tractor in a field", "a sailing boat on a lake", "a horse in a stable",
    "a red sports car", "a bicycle leaning on a wall", "a bookshelf full of books", "a laptop on a desk",
    "a cup of coffee", "a hospital corridor", "a train at a platform", "an aeroplane in the sky",
    "a whiteboard with equations", "a bunch of bananas", "a lighthouse on a cliff", "a desert with dunes",
    "a tropical beach with palm trees", "a forest path in autumn", "a waterfall", "fireworks over a river",
    "a museum painting", "a pile of laundry", "a selfie in a mirror", "a group photo of friends",
    "a map of a city", "a handwritten letter", "a passport photo", "a bird on a branch", "a fish in an aquarium",
    "a flower garden", "a rainy street", "a traffic jam", "a chessboard", "a pair of shoes",
)


@dataclass(frozen=True)
class Calibration:
    """A library's calibrated cutoff: `threshold`, from `captions` unrelated captions over `photos` sampled photos."""

    threshold: float
    captions: int
    photos: int
    quantile: float
    generation: int
    model: str


def background_captions(model: str, n: int = BACKGROUND_SIZE) -> list[str]:
    """Captions unrelated to any particular photo, in the model's own kind of text."""
    if model == "toyworld":
        from clipsearch import toyworld as tw

        rng = np.random.default_rng(12345)
        out: list[str] = []
        while len(out) < n:
            text = tw.canonical(tw.sample_scene(rng, "seen" if rng.random() < 0.67 else "test"))
            if text not in out:
                out.append(text)
        return out
    return list(GENERIC_CAPTIONS)[:n]


def calibrate(searcher: "Searcher", *, quantile: float = BACKGROUND_QUANTILE, sample: int = SAMPLE_MAX,
              seed: int = 0) -> Calibration:
    """Score the background captions against a sample of the library's photos; the cutoff is the
    `quantile` of each caption's best score."""
    catalog, encoder = searcher.catalog, searcher.encoder
    ids = catalog.ok_ids()
    generation = catalog.generation
    if not len(ids):
        return Calibration(1.0, 0, 0, quantile, generation, encoder.name)
    rng = np.random.default_rng(seed)
    if len(ids) > sample:
        ids = np.sort(rng.choice(ids, sample, replace=False))
    _, vectors = catalog.vectors_of(ids.tolist(), searcher.index.dim)
    captions = background_captions(encoder.name)
    text_vectors = np.stack([searcher.text_vector(c) for c in captions])
    best = np.empty(len(captions), np.float32)
    for start in range(0, len(vectors), 8192):
        block = (vectors[start:start + 8192] @ text_vectors.T).max(axis=0)
        best = block if start == 0 else np.maximum(best, block)
    threshold = float(np.quantile(best, quantile))
    log.info("relevance cutoff for %s: %.4f (%d background captions over %d photos)", encoder.name, threshold,
             len(captions), len(vectors))
    return Calibration(threshold, len(captions), len(vectors), quantile, generation, encoder.name)


_lock = threading.Lock()


def auto_cutoff(searcher: "Searcher", vector: np.ndarray) -> float:
    """The calibrated cutoff for the searcher's library (recalibrated when the library changes)."""
    cached = searcher.calibration
    if cached is None or cached.generation != searcher.catalog.generation or cached.model != searcher.encoder.name:
        with _lock:
            cached = searcher.calibration = calibrate(searcher)
    return cached.threshold
