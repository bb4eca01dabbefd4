"""`Library`: the public façade over one library folder (catalog + index + model).

    with Library.open("my-library") as lib:
        lib.index("~/Pictures")
        hits = lib.search("a red car at night", k=20)

A library folder holds everything clipsearch writes: `catalog.sqlite` (paths, vectors,
texts, metadata), `index.faiss` (+ `.json` sidecar), `lock`, and caches.

Longer than most modules on purpose: it is the one public surface, a method per
operation (index, search, describe, duplicates, concepts, texts, info...), each a few lines
that open, lock and delegate; the work lives in the modules it wires (the index lifecycle
in `index.lifecycle`, indexing in `pipeline` and `indexer`, queries in `search`).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from clipsearch.catalog import LIBRARY_KEYS, Catalog, ImageRow
from clipsearch.concepts import Concept
from clipsearch.errors import (CatalogError, ClipSearchError, ConceptError, ConceptExistsError, LibraryLockedError,
                               ModelMismatchError)
from clipsearch.facts import default_readers
from clipsearch.index import AUTO, IndexConfigError, VectorIndex
from clipsearch.index.lifecycle import LibraryIndex
from clipsearch.errors import QueryError
from clipsearch.query import Query, parse
from clipsearch.scan import FileRecord
from clipsearch.search import Hit, Searcher, TextHit

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.duplicates import DuplicateGroup, DuplicateOptions, DuplicateReport
    from clipsearch.duplicates.moves import MoveJournal

    from clipsearch.encoder import Encoder
    from clipsearch.facts import FactReader
    from clipsearch.indexer import IndexReport

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite"
INDEX_FILE = "index.faiss"
LOCK_FILE = "lock"
_UNSET: Any = object()


@dataclass(frozen=True)
class LibraryInfo:
    """What `clipsearch info` shows."""

    folder: str
    model: str
    pretrained: str | None
    dim: int
    images: int
    failed: int
    texts: int
    index_kind: str
    index_count: int
    roots: list[str]
    last_report: dict | None
    index_factory: str = "Flat"                                   # the faiss index, e.g. "IVF1024,SQ8"
    index_params: dict = field(default_factory=dict)              # nprobe / efSearch and structure
    index_bytes: int = 0                                          # predicted serialized size
    index_setting: str = AUTO                                     # what was asked: auto, auto under a budget, a kind
    index_max_memory: int | None = None
    index_recall: float | None = None                             # recall@10 vs exact search; 1.0 for flat
    index_recall_note: str = ""                                   # how index_recall was measured
    image_precision: str = "fp32"                                 # what encoded the vectors: fp32, int8 or mixed
    image_precision_note: str = ""                                # how close int8 and fp32 measured, when used
    videos: int = 0                                               # indexed videos (counted in images)
    video_frames: int = 0                                         # their sampled frames beyond each first


def _pretrained_key(value: str | None) -> str:
    """How the catalog records a pretrained value: "none" for random weights, a checkpoint by absolute path."""
    from clipsearch.encoder import pretrained_name

    value = pretrained_name(value)
    if value is None:
        return "none"
    return os.path.abspath(value) if os.path.isfile(value) else value


class Library:
    """One library folder. Use `Library.open`; close it (or use `with`) when done."""

    def __init__(self, folder: Path, catalog: Catalog, index: VectorIndex | LibraryIndex, *, model: str,
                 pretrained: str | None, encoder: "Encoder | None" = None, device: str | None = None,
                 image_backend: str | None = None, fast_path: bool | None = None,
                 readers: "Sequence[FactReader] | None" = None) -> None:
        self.folder = folder
        self.catalog = catalog
        self.indexes = index if isinstance(index, LibraryIndex) else LibraryIndex(folder / INDEX_FILE, catalog, index)
        self.indexes.on_swap = self._index_swapped
        self.model = model
        self.pretrained = pretrained
        self.device = device
        self.image_backend = image_backend  # for the encoder loaded on first use: see load_encoder
        self.fast_path = fast_path  # texts without torch: see clipsearch.encoder.LazyEncoder
        self.readers: tuple[FactReader, ...] = tuple(default_readers() if readers is None else readers)
        self._encoder = encoder
        self._writing = False  # this object holds the write lock (see refresh)
        self._swapping = threading.Lock()  # refresh's swap vs a writer taking over
        self.searcher = Searcher(catalog, self.indexes.index, lambda: self.encoder)

    @property
    def vector_index(self) -> VectorIndex:
        """The index searched now (it is replaced by rebuilds and reloads: don't keep it)."""
        return self.indexes.index

    def _index_swapped(self, index: VectorIndex) -> None:
        self.searcher.index = index

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike, model: str | None = None, pretrained: str | None = _UNSET, *,
             encoder: "Encoder | None" = None, device: str | None = None, create: bool = True,
             image_backend: str | None = None, fast_path: bool | None = None,
             readers: "Sequence[FactReader] | None" = None) -> "Library":
        """Open (or create) the library in `folder`.

        A new library uses `model`/`pretrained` (default: the bundled toyworld model); an
        existing one uses the model it was built with, and naming another is a
        ModelMismatchError. Pass `encoder` to use an already loaded (or fake) encoder.
        `image_backend` ("auto", "torch", "onnxruntime"; default $CLIPSEARCH_IMAGE_BACKEND,
        else auto) is how a loaded model encodes images: see `clipsearch.encoder.load_encoder`.
        The library's own model loads only as far as work needs it: queries encode texts
        without torch once the model's text tower is exported (`fast_path=False`, or
        $CLIPSEARCH_FAST_PATH=0, keeps them on torch), and a sync with nothing new to encode
        loads no model at all; see `clipsearch.encoder.LazyEncoder`.
        `readers`: the per-file fact readers (default `default_readers()`): their catalog
        columns are added at open, they run on every file indexed, and `index` back-fills
        the rows they have not read (see `clipsearch.facts`).
        """
        from clipsearch.encoder import DEFAULT_MODEL, default_pretrained, pretrained_name

        folder = Path(os.path.expanduser(os.fspath(folder))).absolute()
        db = folder / CATALOG_FILE
        if not db.exists() and not create:
            raise ClipSearchError(f"no clipsearch library in {folder}; index a folder first "
                                  f"(clipsearch index PHOTOS --library {folder})")
        folder.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(db)
        try:
            stored_model = _check_settings(catalog, folder)
            if encoder is not None:
                model = model or encoder.name
                pretrained = encoder.pretrained if pretrained is _UNSET else pretrained
            if stored_model is None:
                model = model or DEFAULT_MODEL
                if pretrained is _UNSET:
                    pretrained = default_pretrained(model)
                if encoder is None:
                    encoder = _lazy_encoder(model, pretrained, device, image_backend, fast_path,
                                            full=_load_encoder(model, pretrained, device, image_backend=image_backend))
                # All of the library's settings in one transaction: a crash leaves a new library or none.
                if not catalog.create_library(model, _pretrained_key(pretrained), encoder.dim):
                    stored_model = catalog.get_meta("model")  # another process created it meanwhile
            if stored_model is not None:
                stored_pre = catalog.get_meta("pretrained")
                if model is not None and model != stored_model or (
                        pretrained is not _UNSET and _pretrained_key(pretrained) != stored_pre):
                    asked = model or stored_model
                    if pretrained is not _UNSET:
                        asked += f"/{_pretrained_key(pretrained)}"
                    raise ModelMismatchError(
                        f"library {folder} was built with model {stored_model}/{stored_pre}, not {asked}: "
                        "open it without --model/--pretrained, or use another --library folder for the other model")
                model, pretrained = stored_model, pretrained_name(stored_pre)
            dim = int(catalog.get_meta("dim") or 0)
            if encoder is not None and encoder.dim != dim:
                raise ModelMismatchError(f"encoder gives {encoder.dim}-d vectors but library {folder} holds {dim}-d ones")
            readers = tuple(default_readers() if readers is None else readers)
            _ensure_columns(catalog, readers)
            index = LibraryIndex.open(folder / INDEX_FILE, catalog, dim, try_lock=lambda: _try_write_lock(folder))
        except BaseException:
            catalog.close()
            raise
        return cls(folder, catalog, index, model=model, pretrained=pretrained, encoder=encoder, device=device,
                   image_backend=image_backend, fast_path=fast_path, readers=readers)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def encoder(self) -> "Encoder":
        """The model, loaded as far as each use needs and kept for every later query (see LazyEncoder)."""
        if self._encoder is None:
            self._encoder = _lazy_encoder(self.model, self.pretrained, self.device, self.image_backend, self.fast_path,
                                          dim=self.dim)
        return self._encoder

    @property
    def dim(self) -> int:
        return self.vector_index.dim

    # -- writing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def write_lock(self, wait: float = 0.0) -> Iterator[None]:
        """The library's write lock, waiting up to `wait` seconds for another writer (then LibraryLockedError).

        For writers outside this class (the Ray path): everything that changes the catalog
        or the index file runs under it.

        Once held, the index in memory is brought up to what is on disk if another process
        wrote since this one last read or wrote it: otherwise its next save would drop that
        process's work from the index.
        """
        fh = open(self.folder / LOCK_FILE, "a+")
        try:
            deadline = time.monotonic() + max(0.0, wait)
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        waited = f" (waited {wait:g} s)" if wait > 0 else ""
                        raise LibraryLockedError(
                            f"another clipsearch process is writing to library {self.folder}{waited}; "
                            "wait for it to finish and run this again, or pass --wait SECONDS") from None
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            with self._swapping:
                self._writing = True
                self.indexes.catch_up()
            yield
        finally:
            self._writing = False
            fh.close()

    def refresh(self) -> bool:
        """Take in what another process wrote since this one read the library; True if the index was reloaded.

        Searches call it, so a long-lived reader (the web UI) finds the photos a scheduled
        `clipsearch index` added. Cheap when nothing changed (one SQLite read). The index is
        reloaded only once the writer has saved it for the catalog's current state: a
        writer's run in progress is picked up at its next save (every 30 s, and at the
        end); meanwhile hits the catalog no longer has are dropped as usual.
        """
        if self._writing or not self.indexes.saved_is_current():
            return False
        with self._swapping:
            # A writer of this process may have taken over, or another search reloaded it.
            if self._writing or not self.indexes.saved_is_current() or not self.indexes.reload():
                return False
        log.info("library %s: reloaded the index saved by another process (%d images)", self.folder,
                 self.vector_index.ntotal)
        return True

    def save_index(self) -> None:
        """Write the index to disk atomically, stamped with the catalog generation it matches."""
        self.indexes.save()

    def index(self, root: str | os.PathLike, *, progress: bool = False, allow_empty: bool = False,
              exclude: Iterable[str | os.PathLike] = (), batch_size: int = 64, index_kind: str | None = None,
              max_memory: int | str | None = None, wait: float = 0.0, retry_failed: bool = False,
              defer: Callable[[FileRecord], bool] | None = None, stop: threading.Event | None = None) -> "IndexReport":
        """Index the photos under `root` incrementally: only new and changed files are encoded.

        Files stored as failed are tried again when they change, when the decoders were
        upgraded since, or with `retry_failed`. A failure that is not the file's own (a
        decoder killed, a timeout, an encoder error) is never stored: the next run tries
        the file again. Every file of a batch failing that way raises IndexingError.

        `index_kind` ("auto" or one of INDEX_KINDS) and `max_memory` (bytes or "600MB"; 0
        or "none" for no budget) change the library's index choice, kept for later runs.
        When the library has outgrown its index (or shrunk below it), the index is rebuilt
        from the stored vectors after the sync: see `clipsearch.index.choose_index`.
        `wait`: seconds to wait for another process writing to the library (then
        LibraryLockedError), for scheduled runs that may overlap. `defer` and `stop`: see
        `Indexer.sync` (the watcher's files still being written, and its stop request).
        """
        with self.write_lock(wait):
            self.indexes.set_choice(index_kind, max_memory)
            encoder = self.encoder
            held = self.held_precision()
            if isinstance(getattr(type(encoder), "library_precision", None), property):
                encoder.library_precision = "fp32" if held == "mixed" else held  # type: ignore[attr-defined]
            from clipsearch import indexer as indexing  # imported here: a search does not need it

            indexer = indexing.Indexer(self.catalog, self.vector_index, encoder, save_index=self.save_index,
                                       batch_size=batch_size, readers=self.readers)
            try:
                report = indexer.sync(root, exclude=[self.folder, *exclude], progress=progress,
                                      allow_empty=allow_empty, retry_failed=retry_failed, defer=defer, stop=stop)
            finally:
                self._record_precision(held)
            roots = set(self.roots())
            roots.add(report.root)
            if report.moved:  # a renamed root: the old name has nothing left and is not there
                roots = {r for r in roots if r == report.root or os.path.isdir(r) or self.catalog.images_under(r)}
            self.catalog.set_meta("roots", sorted(roots))
            clock = indexing.StageClock(report.stages)
            try:
                self.indexes.fit()
            except IndexConfigError as exc:
                # The photos are indexed; only the index choice failed (a budget the grown library no longer fits).
                log.warning("%s; keeping the %s index", exc, self.vector_index.describe())
            finally:
                clock.lap("fit_index")
                self.catalog.set_meta("last_report", report.to_dict())
        return report

    def held_precision(self) -> str | None:
        """What the library's image vectors are: "fp32", "int8", "mixed", or None for an empty library."""
        return self.catalog.get_meta("image_precision") or ("fp32" if self.catalog.count("ok") else None)

    def _record_precision(self, held: str | None) -> None:
        from clipsearch.encoder import LazyEncoder, precision_of

        encoder = self.encoder
        if isinstance(encoder, LazyEncoder) and not encoder.loaded:
            return  # nothing was encoded
        cosine = getattr(encoder, "int8_cosine", None)
        self.record_precision(held, precision_of(getattr(encoder, "image_backend", "torch")), int8_cosine=cosine)

    def record_precision(self, held: str | None, used: str, *, int8_cosine: float | None = None) -> None:
        """Record that image vectors of precision `used` were added to a library that held `held` (`held_precision()`
        before the run); a mix of int8 and fp32 is logged and shown by `info`.

        Only the int8 tower that measured within INT8_MIN_COSINE of fp32 ever encodes, so a
        mix stays within that tolerance; `auto` never mixes (it keeps to `held`).
        """
        from clipsearch.encoder import INT8_MIN_COSINE

        if not self.catalog.count("ok"):
            return
        if int8_cosine is not None:
            self.catalog.set_meta("int8_cosine", f"{int8_cosine:.6f}")
        if held is None or held == used:
            if held is None:
                self.catalog.set_meta("image_precision", used)
            return
        if held == "mixed":
            return
        measured = self.catalog.get_meta("int8_cosine")
        bound = f"{float(measured):.4f}" if measured else f"{INT8_MIN_COSINE}"
        log.warning("library %s now holds %s and %s image vectors (int8 measured within cosine %s of fp32); "
                    "re-index with one --image-backend to make them uniform", self.folder, held, used, bound)
        self.catalog.set_meta("image_precision", "mixed")

    def rebuild_index(self, index_kind: str | None = None, max_memory: int | str | None = None,
                      wait: float = 0.0) -> int:
        """Rebuild (and retrain) the index from the stored vectors, no re-encoding; returns the count.

        `index_kind`, `max_memory` and `wait` as for `index`.
        """
        with self.write_lock(wait):
            self.indexes.set_choice(index_kind, max_memory)
            self.indexes.rebuild()
        return self.vector_index.ntotal

    def backfill_facts(self, root: str | os.PathLike | None = None, *, progress: bool = False,
                       wait: float = 0.0) -> int:
        """Read the facts the library's readers have not read (at their current version) for indexed photos
        (under `root`); no model is loaded, nothing is re-encoded. Returns the photos updated.

        `Library.index` does this for its root at the end of every run.
        """
        from clipsearch.indexer import backfill_facts

        where = os.path.abspath(os.path.expanduser(os.fspath(root))) if root is not None else None
        with self.write_lock(wait):
            return backfill_facts(self.catalog, self.readers, where, progress=progress)

    def index_choice(self) -> tuple[str, int | None]:
        """The library's index setting: (kind or "auto", memory budget in bytes or None)."""
        return self.indexes.choice()

    def add_texts(self, texts: Sequence[str]) -> int:
        """Add captions or labels to the text collection (for image→text); returns how many were new."""
        from clipsearch.texts import clean_texts

        clean = clean_texts(texts)
        if not clean:
            return 0
        vectors = self.encoder.encode_texts(clean)
        return self.catalog.add_texts(clean, vectors)

    def remove_texts(self, texts: Sequence[str]) -> int:
        return self.catalog.remove_texts(list(texts))

    def texts(self) -> list[str]:
        return self.catalog.texts()

    # -- personal concepts --------------------------------------------------------------
    def add_concept(self, name: str, examples: Sequence["str | os.PathLike | bytes | Image.Image | int"], *,
                    replace: bool = False) -> Concept:
        """Teach the library a name from a few example photos; then use it like a word in queries.

        `examples`: indexed image ids (int or "#12"), image files (a file already indexed
        uses its stored vector), bytes or PIL images. No training run: see
        `clipsearch.concepts.build_concept`. The concept is stored in the catalog, so it
        survives re-indexing and index rebuilds. ConceptExistsError if the name exists (pass
        `replace=True`) or an example cannot be read. A concept whose examples look like
        different things comes back with `weak=True`.
        """
        from clipsearch.concepts import build_concept, check_name, concept_from_row

        key = check_name(name)
        if not examples:
            raise ConceptError(f"concept {key!r} needs at least one example photo ('#ID' of an indexed photo, "
                               "or an image file)")
        vectors, sources = [], []
        for example in examples:
            vec, source = self._example_vector(example)
            vectors.append(vec)
            sources.append(source)
        stacked = np.stack(vectors).astype(np.float32)
        vector, params = build_concept(stacked, self.searcher.library_sample())
        signature = self.catalog.model_signature()
        if not self.catalog.put_concept(key, vector, stacked, sources, signature, params, replace=replace):
            raise ConceptExistsError(f"concept {key!r} already exists: pass --replace (replace=True) to make it again "
                               "from these examples, or choose another name")
        row = next(r for r in self.catalog.concepts(self.dim) if r.name == key)
        concept = concept_from_row(row, signature)
        if concept.weak:
            log.warning("concept %r is weak (coherence %.2f): its examples look like different things",
                        key, concept.coherence)
        return concept

    def _example_vector(self, example: Any) -> tuple[np.ndarray, str]:
        if isinstance(example, str) and example.startswith("#") and example[1:].isdigit():
            example = int(example[1:])
        if isinstance(example, (int, np.integer)):
            found = self.catalog.vectors_for([int(example)], self.dim).get(int(example))
            row = self.catalog.get_image(int(example))
            if found is None or row is None:
                raise ConceptError(f"no indexed photo #{example}: use an id that `clipsearch search` prints, "
                                   "or give the image file")
            return found, f"#{int(example)} {row.path}"
        if isinstance(example, (str, os.PathLike)):
            path = os.path.abspath(os.path.expanduser(os.fspath(example)))
            row = self.catalog.find_path(path)
            if row is not None and row.status == "ok":
                found = self.catalog.vectors_for([row.id], self.dim).get(row.id)
                if found is not None:
                    return found, f"#{row.id} {path}"
            if not os.path.isfile(path):
                raise ConceptError(f"example {example} is neither an indexed photo '#ID' nor an image file")
            return self.searcher.image_vector(path), path
        return self.searcher.image_vector(example), "(image)"

    def concepts(self) -> list[Concept]:
        """The library's personal concepts, by name (`stale` ones were made with another model)."""
        return list(self.searcher.concepts().values())

    def concept(self, name: str) -> Concept:
        """One concept by name; ConceptError if the library has none by that name."""
        from clipsearch.concepts import check_name

        key = check_name(name)
        found = self.searcher.concepts().get(key)
        if found is None:
            known = ", ".join(self.searcher.concepts()) or "none yet"
            raise ConceptError(f"no concept named {key!r} in library {self.folder} (concepts: {known})")
        return found

    def remove_concept(self, name: str) -> bool:
        """Forget a concept; False if there was none by that name."""
        from clipsearch.concepts import check_name

        return self.catalog.remove_concept(check_name(name))

    # -- reading ------------------------------------------------------------------------
    def search(self, query: "str | Query", k: int = 20, *, min_score: float | None = None,
               folder: str | os.PathLike | None = None) -> list[Hit]:
        """Text→image search with the query language of `clipsearch.query`.

        Words may use arithmetic (`beach + sunset - people`, `2:dog`, `photo.jpg + night`)
        and filters (`after:2019-06 place:Lisbon camera:"Pixel 7" sort:date`); a `Query`
        built in Python works the same. `min_score` and `folder` add to the query's own.
        """
        self.refresh()
        return self.searcher.run(self._query(query, min_score, folder), k)

    def _query(self, query: "str | Query | None", min_score: float | None, folder: str | os.PathLike | None
               ) -> Query:
        q = parse(query or "") if not isinstance(query, Query) else query
        if min_score is not None:
            q = replace(q, min_score=min_score)
        if folder:
            path = os.path.abspath(os.path.expanduser(os.fspath(folder)))
            if q.filters.folders and path not in q.filters.folders:
                raise QueryError(f"two folder filters ({q.filters.folders[0]} and {path}): give one")
            q = q.with_filters(folders=(path,))
        return q

    def search_image(self, image: "str | os.PathLike | bytes | Image.Image | int", k: int = 20, *,
                     text: str | None = None, text_weight: float = 1.0, min_score: float | None = None,
                     folder: str | os.PathLike | None = None, exclude_self: bool = True,
                     query: "str | Query | None" = None) -> list[Hit]:
        """Image→image search. `image` is a path, bytes, a PIL image or an indexed id (or "#ID"); `text` modifies it
        ("at night").

        `query` brings filters, order and cutoff (`place:Lisbon sort:date`); its words, if
        any, modify the image as `text` does.
        """
        from clipsearch.search import combine, image_ref

        self.refresh()
        image = image_ref(image)
        q = self._query(query, min_score, folder)
        vec = self.searcher.image_vector(image)
        for words in (text, q.text):
            if words:
                vec = combine(np.stack([vec, self.searcher.query_vector(words)]), [1.0, text_weight])
        exclude = ()
        if exclude_self:
            exclude = (int(image),) if isinstance(image, (int, np.integer)) else self._ids_of_path(image)
        return self.searcher.run(q, k, vector=vec, exclude_ids=exclude)

    def _ids_of_path(self, image: object) -> tuple[int, ...]:
        if isinstance(image, (str, os.PathLike)):
            row = self.catalog.find_path(os.path.abspath(os.path.expanduser(os.fspath(image))))
            if row is not None and row.status == "ok":
                return (row.id,)
        return ()

    def search_vector(self, vector: np.ndarray, k: int = 20, **filters: Any) -> list[Hit]:
        self.refresh()
        return self.searcher.search_vector(np.asarray(vector, np.float32), k, **filters)

    def query_vector(self, query: str) -> np.ndarray:
        """The unit vector a query string maps to (for maps and custom search)."""
        return self.searcher.query_vector(query)

    def warm_up(self) -> None:
        """Load what text queries need, ready to answer many (a server calls this before it serves).

        A process that asks one question (a `clipsearch search`) is better off without: the
        text tower then starts on a session that is cheaper to create (docs/performance.md,
        "A query from a cold shell"). ModelError as for a query.
        """
        warm = getattr(self.encoder, "warm_up", None)
        if callable(warm):
            warm()
        self.query_vector("a photo")

    def describe(self, image: "str | os.PathLike | bytes | Image.Image | int", k: int = 5) -> list[TextHit]:
        """Image→text: the closest entries of the text collection (`image` as for `search_image`)."""
        return self.searcher.describe_vector(self.searcher.image_vector(image), k)

    def nearest_texts(self, vectors: np.ndarray) -> list[str]:
        """The closest text of the collection to each row of `vectors` (to label many photos at once)."""
        return self.searcher.nearest_texts(vectors)

    def paths(self, ids: Sequence[int]) -> list[str | None]:
        """The path of each image id, in one catalog query (None for an id the catalog no longer has)."""
        rows = self.catalog.get_images(ids)
        return [rows[int(i)].path if int(i) in rows else None for i in ids]

    def get_image(self, image_id: int) -> ImageRow | None:
        return self.catalog.get_image(image_id)

    def facts(self, image_id: int, columns: Sequence[str] | None = None) -> dict[str, Any]:
        """The stored per-file facts of one catalogued file (metadata: `taken_at`, `place_city`, `camera`, ...).

        `columns`: the facts wanted (default: all); ones this library does not store are left
        out, so a library indexed before a fact existed answers without it. {} when none.
        """
        stored = self.catalog.fact_columns
        wanted = [c for c in (stored if columns is None else columns) if c in stored]
        if not wanted:
            return {}
        return self.catalog.facts([int(image_id)], sorted(wanted)).get(int(image_id), {})

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stored (ids, vectors) of indexed images, all or the given ids."""
        return self.catalog.vectors_of(ids, self.dim)

    def duplicates(self, level: str = "copies", *, folder: str | os.PathLike | None = None,
                   options: "DuplicateOptions | None" = None, progress: bool = False,
                   report: "DuplicateReport | None" = None) -> "list[DuplicateGroup]":
        """Groups of copies of one picture (`level="copies"`) or of shots of one moment (`"moments"`).

        Each group names a suggested keeper and why. Candidates come from the stored vectors
        and the photos' hashes (read once per file version and cached in the library folder),
        never all pairs; see `clipsearch.duplicates` and docs/duplicates.md. Nothing is
        deleted or moved: see `move_duplicates`.
        """
        from clipsearch.duplicates import FactsCache, find_duplicates

        self.refresh()
        cache = FactsCache.for_library(self.folder)
        try:
            return find_duplicates(self.catalog, self.dim, level=level,
                                   folder=os.fspath(folder) if folder else None, options=options, cache=cache,
                                   progress=progress, report=report)
        finally:
            cache.close()

    def move_duplicates(self, groups: "Sequence[DuplicateGroup]", dest: str | os.PathLike, *, dry_run: bool = False,
                        wait: float = 0.0) -> "MoveJournal":
        """Move every member but the keeper of each group under `dest`, journalled; the catalog follows.

        The journal (returned; written to `dest` before the first move) lists every move;
        `undo_moves(journal_path)` puts every file back. With `dry_run` nothing is moved and
        no journal is written: the returned journal says what would happen.
        """
        from clipsearch.duplicates.moves import move_others

        with self.write_lock(wait):
            return move_others(self.catalog, groups, dest, roots=self.roots(), dry_run=dry_run)

    def undo_moves(self, journal: str | os.PathLike, *, wait: float = 0.0) -> "MoveJournal":
        """Put back every file a `move_duplicates` journal moved; the catalog follows. Returns the journal as undone."""
        from clipsearch.duplicates.moves import undo

        with self.write_lock(wait):
            return undo(self.catalog, journal)

    def image_ids(self) -> np.ndarray:
        """Ids of every indexed image, ascending."""
        return self.catalog.ok_ids()

    def text_vectors(self) -> tuple[list[str], np.ndarray]:
        """The text collection and its stored vectors (to label many images at once)."""
        _, texts, vecs = self.catalog.text_vectors(self.dim)
        return texts, vecs

    def folders(self) -> list[str]:
        """Every folder under the roots that holds indexed images, with its parents up to the root; sorted."""
        out: set[str] = set()
        for root in self.roots():
            for path, row in self.catalog.images_under(root).items():
                if row.status != "ok":
                    continue
                folder = os.path.dirname(path)
                while folder not in out and len(folder) >= len(root):
                    out.add(folder)
                    folder = os.path.dirname(folder)
        return sorted(out)

    def roots(self) -> list[str]:
        return json.loads(self.catalog.get_meta("roots") or "[]")

    def last_report(self) -> "IndexReport | None":
        raw = self.catalog.get_meta("last_report")
        from clipsearch.indexer import IndexReport

        return IndexReport.from_dict(json.loads(raw)) if raw else None

    def _precision_info(self) -> dict[str, str]:
        precision = self.catalog.get_meta("image_precision") or "fp32"
        return {"image_precision": precision,
                "image_precision_note": _precision_note(precision, self.catalog.get_meta("int8_cosine"))}

    def info(self) -> LibraryInfo:
        raw = self.catalog.get_meta("last_report")
        meta = self.vector_index.meta
        kind, budget = self.index_choice()
        if meta.kind == "flat":
            recall, note = 1.0, "exact search"
        elif meta.recall_at_10 is None:
            recall, note = None, "not measured (run clipsearch rebuild-index)"
        else:
            recall, note = meta.recall_at_10, (f"vs exact search, {meta.recall_queries} held-out queries, "
                                               f"measured at build over {meta.recall_vectors} vectors")
        params = {k: v for k, v in (("nprobe", meta.nprobe), ("efSearch", meta.ef_search),
                                    ("rerank", self.vector_index.rerank_depth(10))) if v}
        if params.get("rerank") and recall is not None:
            note += f", top {params['rerank']} candidates re-ranked with the stored vectors"
        videos, frames = self.catalog.count_videos()
        return LibraryInfo(
            folder=str(self.folder), model=self.model, pretrained=self.pretrained, dim=self.dim,
            images=self.catalog.count("ok") - frames, failed=self.catalog.count("error"),
            texts=self.catalog.text_count(), videos=videos, video_frames=frames,
            index_kind=meta.kind, index_count=self.vector_index.ntotal, roots=self.roots(),
            last_report=json.loads(raw) if raw else None,
            index_factory=meta.factory, index_params={**meta.spec, **params},
            index_bytes=self.vector_index.predicted_bytes(), index_setting=kind, index_max_memory=budget,
            index_recall=recall, index_recall_note=note, **self._precision_info(),
        )


def _check_settings(catalog: Catalog, folder: Path) -> str | None:
    """The library's stored model, or None for a new library; a clear error for one missing its settings."""
    missing = catalog.missing_library_keys()
    if not missing:
        return catalog.get_meta("model")
    if catalog.is_empty():
        if len(missing) < len(LIBRARY_KEYS):
            log.warning("library %s was not completely created (no %s recorded); creating it again",
                        folder, ", ".join(missing))
            catalog.forget_library_keys()
        return None
    raise CatalogError(
        f"the catalog {catalog.path} holds photos but no record of its {', '.join(missing)}, so its vectors "
        f"cannot be read safely: move the folder {folder} aside and index your photos into a new library "
        "(the photos themselves are untouched)")


def _load_encoder(model: str, pretrained: str | None, device: str | None, *,
                  image_backend: str | None = None) -> "Encoder":
    from clipsearch.encoder import load_encoder

    return load_encoder(model, pretrained, device=device, image_backend=image_backend)


def _precision_note(precision: str, cosine: str | None) -> str:
    if precision == "fp32":
        return "torch or onnxruntime fp32"
    measured = f"cosine to fp32 >= {float(cosine):.4f} on probe images" if cosine else "cosine to fp32 not measured"
    if precision == "int8":
        return f"onnx-int8 image tower, {measured}"
    return f"fp32 and int8 vectors mixed: {measured}; re-index with one --image-backend to make them uniform"


def _lazy_encoder(model: str, pretrained: str | None, device: str | None, image_backend: str | None,
                  fast_path: bool | None, *, full: "Encoder | None" = None, dim: int | None = None) -> "Encoder":
    from clipsearch.encoder import LazyEncoder

    return LazyEncoder(model, pretrained, full.dim if full is not None else int(dim or 0), device=device,
                       image_backend=image_backend, fast_path=fast_path, full=full,
                       load=lambda: _load_encoder(model, pretrained, device, image_backend=image_backend))


def _ensure_columns(catalog: Catalog, readers: "Sequence[FactReader]") -> None:
    """Add the readers' catalog columns; a read-only library is searched without them (a warning)."""
    try:
        catalog.ensure_columns(readers)
    except CatalogError as exc:
        if not catalog.path.parent.exists() or os.access(catalog.path.parent, os.W_OK):
            raise
        log.warning("%s; the library is read-only, so its new fact columns were not added", exc)


def _try_write_lock(folder: Path) -> IO[str] | None:
    """The library's write lock if no process holds it (close the file to release it), else None."""
    try:
        fh = open(folder / LOCK_FILE, "a+")
    except OSError:
        return None  # a read-only library folder: nothing can be written anyway
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh
