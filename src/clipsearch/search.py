"""Queries: text, image, arithmetic on meaning, image→text; results as `Hit`s.

Query arithmetic adds and subtracts embeddings: `beach + sunset - people`,
`2:dog + 0.5:night`, `photo.jpg + at night`, `#42 - snow + desert` (`#42` is the
indexed image with catalog id 42). Operators need a space on both sides, so
`t-shirt` and `3-year-old` stay words.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from clipsearch.catalog import Catalog
from clipsearch.concepts import (AND_DEPTH, Concept, LibrarySpace, and_scores, compose, concept_from_row,
                                 find_names, resolve_text, sentence_parts)
from clipsearch.errors import QueryError
from clipsearch.query import AUTO, Filters, Query, filters_where, parse
from clipsearch.images import is_supported, load_image
from clipsearch.places import place_label
from clipsearch.filter_columns import FilterColumns
from clipsearch.index import IdSet, VectorIndex
from clipsearch.moments import group_moments

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.cutoff import Calibration
    from clipsearch.encoder import Encoder

log = logging.getLogger(__name__)

# Filters letting through at most this many photos are searched exactly over their stored
# vectors (read from the catalog) instead of through the index with an id selector. The
# measured crossover (docs/performance.md, "Filtered search"): at 100,000 photos the
# catalog's vectors cost ~0.09 ms each (0.6 ms for 101, 94 ms for 1,000) and the selector
# search 17-27 ms whatever the set: equal near 200-300 ids.
EXACT_FILTER_MAX = 256
# Filters letting through at least this fraction of the library: the index is searched
# deeper without a selector and the hits filtered after (falling back to the selector when
# too few pass).
BROAD_FILTER = 0.05
# ... with the index's search parameter (nprobe) doubled: the tuned one serves the top 10,
# and recall of the filtered top 10 was capped at 0.92-0.94 by it at 100,000 photos, 0.97+
# doubled, whatever the depth (4x to 16x k / fraction).
BROAD_EFFORT = 2.0
# A date-ordered query orders at most this many of its best photos above the cutoff.
DATE_ORDER_MAX = 10_000
_HIT_FACTS = ("taken_at", "place_city", "place_country", "camera")

# The operator keeps its following space in the next piece, so "a +  + b" and "a +" leave an empty term.
_SPLIT = re.compile(r"\s+([+-])(?=\s|$)")
_WEIGHT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*:\s*(.+)$")
_IMAGE_ID = re.compile(r"^#(\d+)$")


@dataclass(frozen=True)
class Hit:
    """An image result: its path, cosine score (None when a query of filters alone listed it) and catalog id.

    For a video, `path` is the video file, `id` its best-matching frame, `time` that
    frame's second and `segment` the matching stretch (start, end) in seconds; both are
    None for photos. `taken_at` (ISO 8601, with the UTC offset when known), `place`
    ("Lisbon, Portugal") and `camera` ("Google Pixel 7") come from the file's metadata,
    when it has them.
    """

    path: str
    score: float | None
    id: int
    time: float | None = None
    segment: tuple[float, float] | None = None
    moments: tuple[tuple[float, float], ...] = ()  # a video's other good stretches, best first
    taken_at: str | None = None
    place: str | None = None
    camera: str | None = None


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


def names_image_file(query: str) -> bool:
    """True when a query's words name an image by file path (`beach + ~/a.jpg`), judged by the extension
    alone, so the answer never says whether such a file exists. For servers, which read no file a visitor
    names; QueryError when the query does not parse."""
    words = parse(query).text  # filters (place:Lisbon, after:2019) name no file
    return bool(words) and any(t.image_path for t in parse_query(words, is_image_file=is_supported))


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
        self._space: LibrarySpace | None = None
        self.calibration: "Calibration | None" = None  # min:auto's cutoff for this library (clipsearch.cutoff)
        self.filter_columns = FilterColumns(catalog)  # filters resolved in memory, reloaded when the catalog changes

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

    def library_sample(self) -> np.ndarray:
        """The stored vectors of up to `concepts.LIBRARY_SAMPLE` indexed photos (a seeded sample), by id: what
        concepts are made against and what the relevance cutoff is calibrated on."""
        from clipsearch.concepts import LIBRARY_SAMPLE

        ids = self.catalog.ok_ids()
        if len(ids) > LIBRARY_SAMPLE:
            ids = np.sort(np.random.default_rng(0).choice(ids, LIBRARY_SAMPLE, replace=False))
        return self.catalog.vectors_of(ids.tolist(), self.index.dim)[1]

    def library_space(self) -> LibrarySpace:
        """The spread of the library's image vectors (`concepts.LibrarySpace`), cached until the index grows or
        shrinks by a twentieth."""
        count = self.index.ntotal
        if self._space is None or abs(count - self._space.count) > max(1, self._space.count) / 20:
            self._space = LibrarySpace.from_sample(self.library_sample(), self.index.dim)
        return self._space

    def neighbour_vectors(self, vector: np.ndarray, k: int) -> np.ndarray:
        """The stored vectors of the k indexed photos nearest to a unit vector, (at most k, dim)."""
        _, ids = self.nearest(np.asarray(vector, np.float32), k)
        found = [int(i) for i in ids[0] if i >= 0]
        by_id = self.catalog.vectors_for(found, self.index.dim)
        rows = [by_id[i] for i in found if i in by_id]
        return np.stack(rows) if rows else np.zeros((0, self.index.dim), np.float32)

    def text_term_vector(self, text: str) -> np.ndarray:
        """The unit vector of a text term: personal concepts it names resolve first (`bella on a beach`)."""
        concepts = self.concepts()
        if concepts and find_names(text, concepts):
            vec = resolve_text(text, concepts, self.text_vector, space=self.library_space(),
                               neighbours=self.neighbour_vectors)
            if vec is not None:
                return vec
        return self.text_vector(text)

    def concept_parts(self, query: str) -> list[np.ndarray] | None:
        """The parts of a query that is one concept-and-words term (`bella on a road at night`), else None.

        See `concepts.sentence_parts`: each concept's vector and the words' image-side
        vector; `run` re-ranks such a query's best photos so that they fit every part.
        """
        concepts = self.concepts()
        if not concepts or not find_names(query, concepts):
            return None
        terms = parse_query(query)
        if len(terms) != 1 or terms[0].text is None or terms[0].weight <= 0:
            return None
        return sentence_parts(terms[0].text, concepts, self.text_vector, self.library_space(),
                              self.neighbour_vectors)

    def and_rerank(self, hits: list[Hit], parts: Sequence[np.ndarray]) -> list[Hit]:
        """`hits` ordered by `concepts.and_scores` of their stored vectors on `parts` (best first; scores kept)."""
        if len(hits) < 2:
            return hits
        by_id = self.catalog.vectors_for([h.id for h in hits], self.index.dim)
        known = [h for h in hits if h.id in by_id]
        fused = and_scores(np.stack([by_id[h.id] for h in known]), parts, self.library_space())
        order = np.argsort(-fused, kind="stable")
        return [known[i] for i in order] + [h for h in hits if h.id not in by_id]

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

    # -- queries (clipsearch.query) ------------------------------------------------------
    def id_set(self, filters: Filters) -> IdSet | None:
        """The indexed photos `filters` lets through; None when nothing is filtered.

        Resolved over in-memory columns (`clipsearch.filter_columns`), with the same
        answer as the SQL of `filters_where` (`Catalog.ids_where`), in a fraction of its
        time for a broad filter.
        """
        if not filters:
            return None
        from clipsearch.metadata import METADATA_COLUMNS

        needs_metadata = filters.after or filters.before or filters.places or filters.countries or filters.cameras \
            or filters.lenses or filters.types or filters.near
        have = self.catalog.fact_columns
        if needs_metadata and not all(name in have for name, _ in METADATA_COLUMNS):
            raise QueryError("this library has no photo metadata yet: run `clipsearch index` on its folders once "
                             "(it reads the metadata of the photos already indexed, without re-encoding them)")
        return self.filter_columns.id_set(filters)

    def run(self, query: "Query | str", k: int = 20, *, vector: np.ndarray | None = None,
            exclude_ids: Sequence[int] = ()) -> list[Hit]:
        """The hits of a query: its words ranked by score, or in date order above a cutoff; filters alone by date.

        `vector`, when given, stands for the query's words (image→image search with filters).
        """
        if isinstance(query, str):
            query = parse(query)
        if vector is None and not query.has_words and not query.filters:
            raise QueryError("empty query: type some words, an image path, an expression like 'beach + sunset - people', "
                             "or filters like 'place:Lisbon after:2019'")
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        allowed = self.id_set(query.filters)
        if allowed is not None and not len(allowed):
            return []
        words = vector is not None or query.has_words
        order = query.sort if words else query.effective_sort
        if not words:
            where, params = filters_where(query.filters)
            ids = self.catalog.ordered_ids(where, params, "taken_ts", descending=order != "oldest", limit=k)
            rows = self.catalog.get_images(ids)
            return self._with_facts([Hit(rows[i].path, None, i) for i in ids if i in rows])
        parts = None
        if vector is None:
            vector, parts = self.words_vector(query.text)
        cutoff = query.min_score if query.min_score is not None else (AUTO if order != "score" else None)
        if cutoff == AUTO:
            cutoff = self.auto_cutoff(vector, exclude_ids)
        if order == "score":
            hits = self.search_vector(vector, max(k, AND_DEPTH) if parts and AND_DEPTH else k, min_score=cutoff,
                                      allowed_ids=allowed, exclude_ids=exclude_ids)
            if parts and AND_DEPTH:
                hits = self.and_rerank(hits, parts)[:k]
            return self._with_facts(hits)
        hits = self._above(vector, cutoff, allowed, exclude_ids)
        if not hits:
            return []
        hits = group_moments(self.catalog, hits, vector, self.index.dim, exclude=set(int(i) for i in exclude_ids))
        of = self._fact_ids(hits)  # a video's moment is dated by the video
        by_id = {of[h.id]: h for h in hits}
        ids = self.catalog.ordered_ids("1", [], "taken_ts", descending=order == "newest", ids=list(by_id), limit=k)
        return self._with_facts([by_id[i] for i in ids])

    def words_vector(self, text: str) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """The vector a query's words search with, and the parts of a sentence with a personal concept in it
        (None for other words): such a sentence searches with its parts' composed vector."""
        parts = self.concept_parts(text)
        return (compose(parts, self.library_space()) if parts else self.query_vector(text)), parts

    def relevance_cutoff(self, text: str) -> float:
        """The `min:auto` cutoff date order applies to a query's words (inf: no photo can match)."""
        return self.auto_cutoff(self.words_vector(text)[0])

    def auto_cutoff(self, vector: np.ndarray, exclude_ids: Sequence[int] = ()) -> float:
        """The score above which a photo matches the query vector (`min:auto`): set for this query from its own
        scores over the library, calibrated for this library's model (clipsearch.cutoff). `exclude_ids` do not
        count as the query's best match."""
        from clipsearch.cutoff import auto_cutoff

        return auto_cutoff(self, vector, exclude_ids)

    def _above(self, vector: np.ndarray, cutoff: float | None, allowed: IdSet | None,
               exclude_ids: Sequence[int]) -> list[Hit]:
        """Every photo scoring at least `cutoff` (at most DATE_ORDER_MAX of the best), best first."""
        excluded = set(int(i) for i in exclude_ids)
        fetch = min(256, DATE_ORDER_MAX)
        while True:
            scores, ids = self.nearest(vector, fetch + len(excluded), allowed)
            found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
            kept = [(s, i) for s, i in found if i not in excluded and (cutoff is None or s >= cutoff)]
            exhausted = len(found) < fetch + len(excluded) or (cutoff is not None and found and found[-1][0] < cutoff)
            if exhausted or fetch >= DATE_ORDER_MAX:
                if not exhausted:
                    log.info("date order: more than %d photos pass the cutoff; ordering the best %d", DATE_ORDER_MAX,
                             DATE_ORDER_MAX)
                rows = self.catalog.get_images(i for _, i in kept)  # a stale index entry is never a hit
                return [Hit(rows[i].path, s, i) for s, i in kept if i in rows][:DATE_ORDER_MAX]
            fetch = min(fetch * 4, DATE_ORDER_MAX)

    def nearest(self, vector: np.ndarray, k: int, allowed: IdSet | np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) rows for one vector, among `allowed` ids when given (-1 ids pad a short result).

        A narrow set (at most `EXACT_FILTER_MAX` ids) is searched exactly over its stored
        vectors; a larger one through the index with a FAISS id selector (a bitmap, which
        for IVF kinds probes proportionally more lists, see `VectorIndex.search`); one
        holding `BROAD_FILTER` of the library or more by a deeper search without selector,
        filtered after. The crossovers were measured: docs/performance.md, "Filtered search".
        """
        if allowed is None:
            return self.index.search(vector[None, :], k)
        if not isinstance(allowed, IdSet):
            allowed = IdSet.from_ids(np.asarray(allowed, np.int64))
        count = len(allowed)
        if count > EXACT_FILTER_MAX:
            fraction = count / max(self.index.ntotal, 1)
            if fraction >= BROAD_FILTER:
                # Most photos pass: search without a selector for a deeper list and keep the allowed
                # ones (cheaper than checking each of the index's candidates against the set).
                fetch = min(self.index.ntotal, int(np.ceil(4 * k / fraction)) + 8)
                scores, ids = self.index.search(vector[None, :], fetch, effort=BROAD_EFFORT)
                keep = allowed.contains(ids[0])
                if keep.sum() >= k or fetch >= self.index.ntotal:
                    got_s, got_i = scores[0][keep][:k], ids[0][keep][:k]
                    pad = k - len(got_i)
                    return (np.pad(got_s, (0, pad), constant_values=-np.inf)[None, :].astype(np.float32),
                            np.pad(got_i, (0, pad), constant_values=-1)[None, :].astype(np.int64))
            return self.index.search(vector[None, :], k, allowed_ids=allowed)
        ids, vecs = self.catalog.vectors_of(allowed.ids.tolist(), self.index.dim)
        from clipsearch.index import exact_search

        if not len(ids):
            return np.full((1, k), -np.inf, np.float32), np.full((1, k), -1, np.int64)
        scores, found = exact_search(vecs, ids, vector, k)
        pad = k - scores.shape[1]
        if pad > 0:
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
        return scores.astype(np.float32), found.astype(np.int64)

    def _with_facts(self, hits: Sequence[Hit]) -> list[Hit]:
        """The hits with their capture time, place and camera (from the catalog's metadata columns)."""
        columns = [c for c in _HIT_FACTS if c in self.catalog.fact_columns]  # none in a library without metadata
        of = self._fact_ids(hits)
        facts = self.catalog.facts(set(of.values()), columns) if columns else {}
        out = []
        for h in hits:
            f = facts.get(of[h.id], {})
            place = place_label(f.get("place_city"), f.get("place_country"))
            out.append(dataclasses.replace(h, taken_at=f.get("taken_at"), place=place, camera=f.get("camera")))
        return out

    def _fact_ids(self, hits: Sequence[Hit]) -> dict[int, int]:
        """{hit id: the row holding its facts}: itself, or for a video's moment the video's own row."""
        moments = self.catalog.moments([h.id for h in hits if h.segment is not None])
        return {h.id: moments[h.id][0] if h.id in moments else h.id for h in hits}

    # -- image search -----------------------------------------------------------------
    def search_vector(self, vector: np.ndarray, k: int = 20, *, min_score: float | None = None,
                      folder: str | None = None, exclude_ids: Sequence[int] = (),
                      allowed_ids: IdSet | np.ndarray | None = None) -> list[Hit]:
        """Nearest indexed images to a unit vector, best first; only among `allowed_ids` when given."""
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        allowed = allowed_ids
        if allowed is not None and not isinstance(allowed, IdSet):
            allowed = IdSet.from_ids(np.asarray(allowed, np.int64))
        if folder:
            under = IdSet.from_ids(self.catalog.ids_under(os.path.abspath(os.path.expanduser(folder))))
            allowed = under if allowed is None else allowed & under
        if allowed is not None and not len(allowed):
            return []
        excluded = set(int(i) for i in exclude_ids)
        fetch = k + len(excluded)
        while True:
            scores, ids = self.nearest(vector, fetch, allowed)
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
