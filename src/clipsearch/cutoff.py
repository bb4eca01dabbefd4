"""`min:auto`: the cosine score above which a photo matches a query, calibrated per model and library, set per query.

Date order (`sort:date`) lists every relevant photo instead of the top k by score, so it
needs to know where relevance ends, and a raw cosine means different things for
different models, libraries and queries. A photo matches a query when it passes two tests:

* **The library holds something like it** (one score per model and library): the
  calibration scores a background of captions that describe nothing in particular in
  the library (for the bundled toy-world model, descriptions of random toy-world scenes,
  almost none of which a library holds exactly; for other models `GENERIC_CAPTIONS`)
  against a sample of its photos and takes each caption's best photo score. A photo
  must beat the `BACKGROUND_QUANTILE` (0.75) of those (`Calibration.threshold`): three
  unrelated captions in four find no photo scoring that high.
* **It is among the query's own best** (set per query): most photos have nothing to do
  with any one query, so the query's scores over a sample of the library say where its
  "not this" ends: the `TAIL_QUANTILE` (0.9) of them, which stays put while up to one
  photo in ten is relevant. A photo must lie within the top `1 - RELATIVE` (a tenth) of
  the way from there to the query's best photo: a scene that differs from the described
  one in one detail scores almost as high as the scene itself, and lower than it. The
  measure is the query's own, so it holds for a model whose cosines run at 0.3 as for
  one whose run at 0.9.

The cutoff is then one score per query, `max(threshold, q90 + RELATIVE * (best - q90))`,
so search code only compares scores. A library with fewer than `MIN_TAIL_PHOTOS` photos
has no tail to speak of and uses `threshold` alone. The parameters were set on
toy-world libraries and query seeds other than the ones reported: docs/metadata.md
("The relevance cutoff"), `bench/bench_cutoff.py`. Calibrations are cached per library
state and model, in memory and in the library folder (`CALIBRATION_FILE`), so a date-order
query from a cold shell does not encode the background captions again (for ViT-B-32 that
was 2 s of a 3 s query).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from clipsearch.concepts import LIBRARY_SAMPLE

if TYPE_CHECKING:
    from clipsearch.search import Searcher

log = logging.getLogger(__name__)

__all__ = ["BACKGROUND_QUANTILE", "CALIBRATION_FILE", "Calibration", "GENERIC_CAPTIONS", "MIN_TAIL_PHOTOS", "RELATIVE", "TAIL_QUANTILE",
           "auto_cutoff", "background_captions", "calibrate", "calibration_for", "load_calibration",
           "save_calibration", "tail_start"]

BACKGROUND_QUANTILE = 0.75
BACKGROUND_SIZE = 128
SAMPLE_MAX = LIBRARY_SAMPLE  # photos scored against the background captions: the library's sample
QUERY_SAMPLE = 4096     # photos each query is scored against for its own tail (kept in memory)
TAIL_QUANTILE = 0.9
RELATIVE = 0.9
MIN_TAIL_PHOTOS = 100
CALIBRATION_FILE = "cutoff-calibration.npz"  # in the library folder, beside the catalog

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


def tail_start(scores: np.ndarray, quantile: float = TAIL_QUANTILE) -> float:
    """Where a query's tail starts: the `quantile` of its scores (linear interpolation, as `np.quantile`),
    by one partial sort (4x faster than `np.quantile`)."""
    scores = np.asarray(scores, np.float32).ravel()
    if not len(scores):
        raise ValueError("no scores to take a quantile of")
    position = quantile * (len(scores) - 1)
    lo = int(np.floor(position))
    hi = min(lo + 1, len(scores) - 1)
    part = np.partition(scores, [lo, hi])
    return float(part[lo] + (position - lo) * (part[hi] - part[lo]))


@dataclass(frozen=True)
class Calibration:
    """A library's calibrated cutoff.

    `threshold`: the score a photo must beat for any query (the `quantile` of the best
    scores of `captions` background captions over `photos` sampled photos); `sample`: the
    photo vectors each query's tail is measured on (None when the library has fewer than
    `MIN_TAIL_PHOTOS` photos: then `threshold` alone decides).
    """

    threshold: float
    captions: int
    photos: int
    quantile: float
    generation: int
    model: str
    sample: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def per_query(self) -> bool:
        """True when the cutoff is also set per query (a library with enough photos)."""
        return self.sample is not None

    def cutoff(self, vector: np.ndarray, best: float | None) -> float:
        """The score a photo needs to match the query `vector`, whose best photo in the library scores `best`
        (None: the library has no photo for it, and nothing matches)."""
        if best is None:
            return float("inf")
        if self.sample is None:
            return self.threshold
        # einsum, not BLAS: on a busy machine BLAS's thread pool turns this 0.1 ms product into 20-50 ms.
        tail = tail_start(np.einsum("ij,j->i", self.sample, np.asarray(vector, np.float32)))
        return max(self.threshold, tail + RELATIVE * (best - tail))


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


def calibrate(searcher: "Searcher", *, quantile: float = BACKGROUND_QUANTILE, seed: int = 0) -> Calibration:
    """Score the background captions against the library's sample (`Searcher.library_sample`, at most SAMPLE_MAX
    photos): the cutoff for any query is the `quantile` of each caption's best score; keep a sample of those
    photos to measure each query's tail on."""
    encoder, generation = searcher.encoder, searcher.catalog.generation
    vectors = np.asarray(searcher.library_sample(), np.float32)
    if not len(vectors):
        return Calibration(1.0, 0, 0, quantile, generation, encoder.name)
    rng = np.random.default_rng(seed)
    captions = background_captions(encoder.name)
    text_vectors = np.asarray(encoder.encode_texts(captions), np.float32)
    best = np.empty(len(captions), np.float32)
    for start in range(0, len(vectors), 8192):
        block = (vectors[start:start + 8192] @ text_vectors.T).max(axis=0)
        best = block if start == 0 else np.maximum(best, block)
    threshold = float(np.quantile(best, quantile))
    kept = None
    if len(vectors) >= MIN_TAIL_PHOTOS:
        kept = vectors if len(vectors) <= QUERY_SAMPLE else vectors[np.sort(rng.choice(len(vectors), QUERY_SAMPLE,
                                                                                       replace=False))]
        kept = np.ascontiguousarray(kept)
    log.info("relevance cutoff for %s: %.4f%s (%d background captions over %d photos)", encoder.name, threshold,
             ", and per query" if kept is not None else " for every query", len(captions), len(vectors))
    return Calibration(threshold, len(captions), len(vectors), quantile, generation, encoder.name, kept)


_lock = threading.Lock()


def calibration_for(searcher: "Searcher") -> Calibration:
    """The searcher's calibration, (re)made when the library or the model changed."""
    cached = searcher.calibration
    if cached is None or cached.generation != searcher.catalog.generation or cached.model != searcher.encoder.name:
        with _lock:
            path = searcher.catalog.path.parent / CALIBRATION_FILE
            cached = load_calibration(path, searcher.catalog.generation, _model_tag(searcher))
            if cached is None:
                cached = calibrate(searcher)
                save_calibration(cached, path, _model_tag(searcher))
            searcher.calibration = cached
    return cached


def _model_tag(searcher: "Searcher") -> str:
    encoder = searcher.encoder
    return f"{encoder.name}|{encoder.pretrained}|{encoder.dim}"


def _parameters() -> str:
    # What a saved calibration was made with: a change of any of these makes it stale.
    return json.dumps([BACKGROUND_QUANTILE, BACKGROUND_SIZE, SAMPLE_MAX, QUERY_SAMPLE, MIN_TAIL_PHOTOS])


def save_calibration(calibration: Calibration, path: "str | os.PathLike", model_tag: str) -> bool:
    """Keep `calibration` in `path` (a cache: written atomically, not fsynced); False when it cannot be written."""
    from clipsearch.atomic import atomic_writer

    head = {"format": 1, "parameters": _parameters(), "model_tag": model_tag, "threshold": calibration.threshold,
            "captions": calibration.captions, "photos": calibration.photos, "quantile": calibration.quantile,
            "generation": calibration.generation, "model": calibration.model}
    sample = calibration.sample if calibration.sample is not None else np.zeros((0, 0), np.float32)
    try:
        with atomic_writer(path, "wb", durable=False) as fh:
            np.savez(fh, head=np.array(json.dumps(head)), sample=np.asarray(sample, np.float32))
    except OSError as exc:  # a read-only library: calibrated again by the next process
        log.debug("relevance cutoff not kept in %s (%s)", path, exc)
        return False
    return True


def load_calibration(path: "str | os.PathLike", generation: int, model_tag: str) -> Calibration | None:
    """The calibration kept in `path` if it was made for this library state, model and parameters, else None."""
    try:
        with np.load(path, allow_pickle=False) as data:
            head = json.loads(str(data["head"]))
            sample = np.ascontiguousarray(data["sample"], np.float32)
        if (head.get("format") != 1 or head.get("parameters") != _parameters() or head.get("model_tag") != model_tag
                or head.get("generation") != generation):
            return None
        return Calibration(float(head["threshold"]), int(head["captions"]), int(head["photos"]),
                           float(head["quantile"]), int(head["generation"]), str(head["model"]),
                           sample if sample.size else None)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:  # damaged or foreign: made again
        log.debug("relevance cutoff in %s not used (%s)", path, exc)
        return None


def auto_cutoff(searcher: "Searcher", vector: np.ndarray, exclude_ids: Sequence[int] = ()) -> float:
    """The score above which a photo matches the query `vector` in the searcher's library (`min:auto`).

    `exclude_ids` are photos that do not count as the query's best match (the query image itself in
    image-to-image search).
    """
    calibration = calibration_for(searcher)
    excluded = {int(i) for i in exclude_ids}
    scores, ids = searcher.nearest(np.asarray(vector, np.float32), 1 + len(excluded))
    best = next((float(s) for s, i in zip(scores[0], ids[0]) if i >= 0 and int(i) not in excluded), None)
    return calibration.cutoff(vector, best)
