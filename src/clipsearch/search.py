"""Queries: text, image, arithmetic on meaning, image→text; results as `Hit`s.

Query arithmetic adds and subtracts embeddings: `beach + sunset - people`,
`2:dog + 0.5:night`, `photo.jpg + at night`, `#42 - snow + desert` (`#42` is the
indexed image with catalog id 42). Operators need a space on both sides, so
`t-shirt` and `3-year-old` stay words.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from clipsearch.catalog import Catalog
from clipsearch.concepts import Concept, concept_from_row, resolve_text
from clipsearch.errors import QueryError
from clipsearch.images import is_supported, load_image
from clipsearch.index import VectorIndex
from clipsearch.moments import group_moments

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.encoder import Encoder

log = logging.getLogger(__name__)

# The operator keeps its following space in the next piece, so "a +  + b" and "a +" leave an empty term.
_SPLIT = re.compile(r"\s+([+-])(?=\s|$)")
_WEIGHT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*:\s*(.+)$")
_IMAGE_ID = re.compile(r"^#(\d+)$")


@dataclass(frozen=True)
class Hit:
    """An image result: its path, cosine score and catalog id.

    For a video, `path` is the video file, `id` its best-matching frame, `time` that
    frame's second and `segment` the matching stretch (start, end) in seconds; both are
    None for photos.
    """

    path: str
    score: float
    id: int
    time: float | None = None
    segment: tuple[float, float] | None = None
    moments: tuple[tuple[float, float], ...] = ()  # a video's other good stretches, best first


@dataclass(frozen=True)
class TextHit:
    """An image→text result: a text of the collection, or (kind "concept") a personal concept that fits."""

    text: str
    score: float
    id: int
    kind: str = "text"


@dataclass(frozen=True)
class QueryTerm:
    """One signed, weighted term of a query: text, an image file, or an indexed image id."""

    weight: float
    text: str | None = None
    image_path: str | None = None
    image_id: int | None = None


def parse_query(query: str, *, is_image_file: Callable[[str], bool] | None = None) -> list[QueryTerm]:
    """Split a query into weighted terms. A term naming an existing image file becomes an image term."""
    if is_image_file is None:
        is_image_file = _is_image_file
    query = query.strip()
    if not query:
        raise QueryError("empty query: type some words, an image path, or an expression like 'beach + sunset - people'")
    sign = 1.0
    if query[0] in "+-" and len(query) > 1 and query[1].isspace():
        sign, query = (-1.0 if query[0] == "-" else 1.0), query[1:].strip()
    pieces = _SPLIT.split(query)
    terms: list[QueryTerm] = []
    for i in range(0, len(pieces), 2):
        if i > 0:
            sign = -1.0 if pieces[i - 1] == "-" else 1.0
        raw = pieces[i].strip()
        weight = 1.0
        m = _WEIGHT.match(raw)
        if m and not is_image_file(raw):
            weight, raw = float(m.group(1)), m.group(2).strip()
        if not raw:
            raise QueryError(f"empty term in query {query!r}: remove the stray '+' or '-'")
        ref = image_ref(raw)
        if isinstance(ref, int):
            terms.append(QueryTerm(sign * weight, image_id=ref))
        elif is_image_file(raw):
            terms.append(QueryTerm(sign * weight, image_path=os.path.abspath(os.path.expanduser(raw))))
        else:
            terms.append(QueryTerm(sign * weight, text=raw))
    return terms


def image_ref(image: "str | os.PathLike | bytes | Image.Image | int") -> "str | os.PathLike | bytes | Image.Image | int":
    """The one reading of "#42": indexed image 42 (an int); anything else is returned as it is (a path, bytes...).

    Used for the terms of a query and for every image argument (CLI, Library, web UI).
    """
    if isinstance(image, str):
        m = _IMAGE_ID.match(image.strip())
        if m:
            return int(m.group(1))
    return image


def _is_image_file(term: str) -> bool:
    path = os.path.expanduser(term)
    return is_supported(path) and os.path.isfile(path)


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of unit vectors, renormalised; QueryError when the terms cancel out."""
    total = (np.asarray(weights, np.float32)[:, None] * np.asarray(vectors, np.float32)).sum(axis=0)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise QueryError("the query's terms cancel each other out; change a weight or a term")
    return (total / norm).astype(np.float32)


class Searcher:
    """Runs queries against a catalog and its index with an encoder handed in by the caller."""

    def __init__(self, catalog: Catalog, index: VectorIndex, encoder: Callable[[], "Encoder"]) -> None:
        self.catalog = catalog
        self.index = index
        self._encoder = encoder  # a callable, so the model loads only when a query needs it
        self._text_cache: dict[str, np.ndarray] = {}
        self._texts: tuple[np.ndarray, list[str], np.ndarray] | None = None
        self._texts_version = -1
        self._concepts: dict[str, Concept] = {}
        self._concepts_version = -1

    @property
    def encoder(self) -> "Encoder":
        return self._encoder()

    # -- turning queries into vectors -------------------------------------------------
    def text_vector(self, text: str) -> np.ndarray:
        """The unit vector of a text, cached: repeated queries cost nothing."""
        vec = self._text_cache.get(text)
        if vec is None:
            vec = self.encoder.encode_texts([text])[0]
            if len(self._text_cache) > 4096:
                self._text_cache.clear()
            self._text_cache[text] = vec
        return vec

    def image_vector(self, image: "str | os.PathLike | bytes | Image.Image | int") -> np.ndarray:
        """The unit vector of an image file, bytes, PIL image, or indexed image id or "#ID" (stored vector, no re-encode)."""
        image = image_ref(image)
        if isinstance(image, (int, np.integer)):
            vec = self.catalog.vectors_for([int(image)], self.index.dim).get(int(image))
            if vec is None:
                raise QueryError(f"no indexed image with id {image}")
            return vec
        if not hasattr(image, "convert"):
            image = load_image(image)
        return self.encoder.encode_images([image])[0]

    def concepts(self) -> dict[str, Concept]:
        """The library's personal concepts by name, re-read when any process changed them."""
        version = self.catalog.concepts_version
        if version != self._concepts_version:
            signature = self.catalog.model_signature()
            self._concepts = {row.name: concept_from_row(row, signature) for row in self.catalog.concepts(self.index.dim)}
            self._concepts_version = version
        return self._concepts

    def text_term_vector(self, text: str) -> np.ndarray:
        """The unit vector of a text term: personal concepts it names resolve first (`bella on a beach`)."""
        concepts = self.concepts()
        if concepts:
            vec = resolve_text(text, concepts, self.text_vector)
            if vec is not None:
                return vec
        return self.text_vector(text)

    def query_vector(self, query: str) -> np.ndarray:
        """The unit vector of a query string, arithmetic and personal concepts included."""
        terms = parse_query(query)
        vectors = []
        for term in terms:
            if term.text is not None:
                vectors.append(self.text_term_vector(term.text))
            elif term.image_id is not None:
                vectors.append(self.image_vector(term.image_id))
            else:
                vectors.append(self.image_vector(term.image_path))
        return combine(np.stack(vectors), [t.weight for t in terms])

    # -- image search -----------------------------------------------------------------
    def search_vector(self, vector: np.ndarray, k: int = 20, *, min_score: float | None = None,
                      folder: str | None = None, exclude_ids: Sequence[int] = ()) -> list[Hit]:
        """Nearest indexed images to a unit vector, best first."""
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        allowed = None
        if folder:
            allowed = self.catalog.ids_under(os.path.abspath(os.path.expanduser(folder)))
            if not len(allowed):
                return []
        excluded = set(int(i) for i in exclude_ids)
        fetch = k + len(excluded)
        while True:
            scores, ids = self.index.search(vector[None, :], fetch, allowed_ids=allowed)
            found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
            pairs = [(s, i) for s, i in found if i not in excluded and (min_score is None or s >= min_score)]
            rows = self.catalog.get_images(i for _, i in pairs)
            # An id the catalog no longer has is a stale index entry (another process is
            # writing): never return it, and look further so it does not cost a result.
            hits = [Hit(rows[i].path, s, i) for s, i in pairs if i in rows]
            hits = group_moments(self.catalog, hits, vector, self.index.dim, exclude=excluded)  # a video once
            below_min = min_score is not None and bool(found) and found[-1][0] < min_score
            if len(hits) >= k or len(found) < fetch or below_min:
                return hits[:k]
            fetch *= 2

    def search(self, query: str, k: int = 20, **filters: object) -> list[Hit]:
        return self.search_vector(self.query_vector(query), k, **filters)  # type: ignore[arg-type]

    # -- image → text -------------------------------------------------------------------
    def _text_table(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """The text collection (ids, texts, vectors), cached until any process changes it."""
        version = self.catalog.texts_version  # changed by any add or remove, in any process
        if self._texts is None or version != self._texts_version:
            self._texts, self._texts_version = self.catalog.text_vectors(self.index.dim), version
        return self._texts

    def nearest_texts(self, vectors: np.ndarray, chunk: int = 4096) -> list[str]:
        """For each row of `vectors`, the closest text of the collection (exact), in one pass over them.

        For labelling many photos at once (the web UI's map); QueryError when the collection is empty.
        """
        _, texts, text_vecs = self._text_table()
        if not texts:
            raise QueryError("the text collection is empty: add captions or labels first "
                             "(`clipsearch texts add FILE` or Library.add_texts)")
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        best = [np.argmax(vectors[i:i + chunk] @ text_vecs.T, axis=1) for i in range(0, len(vectors), chunk)]
        return [texts[int(j)] for j in (np.concatenate(best) if best else [])]

    def describe_vector(self, vector: np.ndarray, k: int = 5) -> list[TextHit]:
        """Closest texts of the text collection to a unit vector (exact search), then the concepts that fit it.

        A personal concept fits when the vector scores at least the concept's threshold
        (about what its example photos score); fitting concepts follow the texts, best first.
        """
        ids, texts, vecs = self._text_table()
        fitting = self.fitting_concepts(vector)
        if not len(texts) and not fitting and not self.concepts():
            raise QueryError("the text collection is empty: add captions or labels first "
                             "(`clipsearch texts add FILE` or Library.add_texts)")
        scores = vecs @ vector
        order = np.argsort(-scores, kind="stable")[:k]
        return [TextHit(texts[i], float(scores[i]), int(ids[i])) for i in order] + fitting

    def fitting_concepts(self, vector: np.ndarray) -> list[TextHit]:
        """The personal concepts an image vector fits (score at least the concept's threshold), best first."""
        hits = []
        for concept in self.concepts().values():
            if concept.stale:
                continue
            score = float(concept.vector @ vector)
            if score >= concept.threshold:
                hits.append(TextHit(concept.name, score, -1, kind="concept"))
        return sorted(hits, key=lambda h: -h.score)
