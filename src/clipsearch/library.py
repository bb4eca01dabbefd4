"""`Library`: the public façade over one library folder (catalog + index + model).

    with Library.open("my-library") as lib:
        lib.index("~/Pictures")
        hits = lib.search("a red car at night", k=20)

A library folder holds everything clipsearch writes: `catalog.sqlite` (paths, vectors,
texts, metadata), `index.faiss` (+ `.json` sidecar), `lock`, and caches.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from clipsearch.catalog import Catalog, ImageRow
from clipsearch.errors import ClipSearchError, IndexFileError, LibraryLockedError, ModelMismatchError
from clipsearch.index import (
    AUTO, INDEX_KINDS, RECALL_QUERIES, TRAIN_MAX, IndexConfigError, IndexSpec, VectorIndex, build_index,
    choose_index, needs_rebuild, parse_size, recall_queries, remove_stale_temp_files, saved_generation,
)
from clipsearch.indexer import Indexer, IndexReport
from clipsearch.search import Hit, Searcher, TextHit

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.encoder import Encoder

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


def _pretrained_key(value: str | None) -> str:
    if value is None or value.lower() in ("none", "random"):
        return "none"
    return os.path.abspath(value) if os.path.isfile(value) else value


class Library:
    """One library folder. Use `Library.open`; close it (or use `with`) when done."""

    def __init__(self, folder: Path, catalog: Catalog, index: VectorIndex, *, model: str,
                 pretrained: str | None, encoder: "Encoder | None" = None, device: str | None = None,
                 image_backend: str | None = None) -> None:
        self.folder = folder
        self.catalog = catalog
        self.vector_index = index
        index.exact_vectors = exact_vectors_from(catalog, index.dim)
        self.model = model
        self.pretrained = pretrained
        self.device = device
        self.image_backend = image_backend  # for the encoder loaded on first use: see load_encoder
        self._encoder = encoder
        self._writing = False  # this object holds the write lock (see refresh)
        self._swapping = threading.Lock()  # refresh's swap vs a writer taking over
        self.searcher = Searcher(catalog, index, lambda: self.encoder)

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike, model: str | None = None, pretrained: str | None = _UNSET, *,
             encoder: "Encoder | None" = None, device: str | None = None, create: bool = True,
             image_backend: str | None = None) -> "Library":
        """Open (or create) the library in `folder`.

        A new library uses `model`/`pretrained` (default: the bundled toyworld model); an
        existing one uses the model it was built with, and naming another is a
        ModelMismatchError. Pass `encoder` to use an already loaded (or fake) encoder.
        `image_backend` ("auto", "torch", "onnxruntime"; default $CLIPSEARCH_IMAGE_BACKEND,
        else auto) is how a loaded model encodes images: see `clipsearch.encoder.load_encoder`.
        """
        from clipsearch.encoder import DEFAULT_MODEL, default_pretrained

        folder = Path(os.path.expanduser(os.fspath(folder))).absolute()
        db = folder / CATALOG_FILE
        if not db.exists() and not create:
            raise ClipSearchError(f"no clipsearch library in {folder}; index a folder first "
                                  f"(clipsearch index PHOTOS --library {folder})")
        folder.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(db)
        try:
            stored_model = catalog.get_meta("model")
            if encoder is not None:
                model = model or encoder.name
                pretrained = encoder.pretrained if pretrained is _UNSET else pretrained
            if stored_model is None:
                model = model or DEFAULT_MODEL
                if pretrained is _UNSET:
                    pretrained = default_pretrained(model)
                if encoder is None:
                    encoder = _load_encoder(model, pretrained, device, image_backend=image_backend)
                catalog.set_meta("model", model)
                catalog.set_meta("pretrained", _pretrained_key(pretrained))
                catalog.set_meta("dim", str(encoder.dim))
            else:
                stored_pre = catalog.get_meta("pretrained")
                if model is not None and model != stored_model or (
                        pretrained is not _UNSET and _pretrained_key(pretrained) != stored_pre):
                    asked = model or stored_model
                    if pretrained is not _UNSET:
                        asked += f"/{_pretrained_key(pretrained)}"
                    raise ModelMismatchError(
                        f"library {folder} was built with model {stored_model}/{stored_pre}, not {asked}: "
                        "open it without --model/--pretrained, or use another --library folder for the other model")
                model, pretrained = stored_model, (None if stored_pre == "none" else stored_pre)
            dim = int(catalog.get_meta("dim") or 0)
            if encoder is not None and encoder.dim != dim:
                raise ModelMismatchError(f"encoder gives {encoder.dim}-d vectors but library {folder} holds {dim}-d ones")
            index = _load_or_rebuild_index(folder / INDEX_FILE, catalog, dim)
            if index.meta.generation != catalog.generation:
                _save_repaired(folder, catalog, index, dim)
        except BaseException:
            catalog.close()
            raise
        return cls(folder, catalog, index, model=model, pretrained=pretrained, encoder=encoder, device=device,
                   image_backend=image_backend)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def encoder(self) -> "Encoder":
        """The model, loaded on first use and kept for every later query."""
        if self._encoder is None:
            self._encoder = _load_encoder(self.model, self.pretrained, self.device, image_backend=self.image_backend)
        return self._encoder

    @property
    def dim(self) -> int:
        return self.vector_index.dim

    # -- writing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write_lock(self, wait: float = 0.0) -> Iterator[None]:
        """The library's write lock, waiting up to `wait` seconds for another writer.

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
                remove_stale_temp_files(self.folder / INDEX_FILE)
                if self.vector_index.meta.generation != self.catalog.generation:
                    log.info("library %s changed since it was read; reloading its index", self.folder)
                    self._use_index(_load_or_rebuild_index(self.folder / INDEX_FILE, self.catalog, self.dim))
            yield
        finally:
            self._writing = False
            fh.close()

    def _use_index(self, index: VectorIndex) -> None:
        index.exact_vectors = exact_vectors_from(self.catalog, index.dim)
        self.vector_index = self.searcher.index = index

    def refresh(self) -> bool:
        """Take in what another process wrote since this one read the library; True if the index was reloaded.

        Searches call it, so a long-lived reader (the web UI) finds the photos a scheduled
        `clipsearch index` added. Cheap when nothing changed (one SQLite read). The index is
        reloaded only once the writer has saved it for the catalog's current state: a
        writer's run in progress is picked up at its next save (every 30 s, and at the
        end); meanwhile hits the catalog no longer has are dropped as usual.
        """
        generation = self.catalog.generation
        if self._writing or generation == self.vector_index.meta.generation:
            return False
        path = self.folder / INDEX_FILE
        if saved_generation(path) != generation:
            return False
        with self._swapping:
            if self._writing or self.vector_index.meta.generation == generation:
                return False  # a writer of this process took over, or another search reloaded it
            try:
                index = VectorIndex.load(path)
            except IndexFileError as exc:
                log.warning("%s; searching the index loaded before", exc)
                return False
            if index.dim != self.dim:
                return False
            self._use_index(index)
        log.info("library %s: reloaded the index saved by another process (%d images)", self.folder, index.ntotal)
        return True

    def save_index(self) -> None:
        """Write the index to disk atomically, stamped with the catalog generation it matches."""
        self.vector_index.save(self.folder / INDEX_FILE, self.catalog.generation)

    def index(self, root: str | os.PathLike, *, progress: bool = False, allow_empty: bool = False,
              exclude: Iterable[str | os.PathLike] = (), batch_size: int = 64, index_kind: str | None = None,
              max_memory: int | str | None = None, wait: float = 0.0) -> IndexReport:
        """Index the photos under `root` incrementally: only new and changed files are encoded.

        `index_kind` ("auto" or one of INDEX_KINDS) and `max_memory` (bytes or "600MB"; 0
        or "none" for no budget) change the library's index choice, kept for later runs.
        When the library has outgrown its index (or shrunk below it), the index is rebuilt
        from the stored vectors after the sync: see `clipsearch.index.choose_index`.
        `wait`: seconds to wait for another process writing to the library (then
        LibraryLockedError), for scheduled runs that may overlap.
        """
        with self._write_lock(wait):
            self._set_index_choice(index_kind, max_memory)
            indexer = Indexer(self.catalog, self.vector_index, self.encoder, save_index=self.save_index,
                              batch_size=batch_size)
            report = indexer.sync(root, exclude=[self.folder, *exclude], progress=progress, allow_empty=allow_empty)
            roots = set(self.roots())
            roots.add(report.root)
            self.catalog.set_meta("roots", sorted(roots))
            self.catalog.set_meta("last_report", report.to_dict())
            try:
                self._fit_index()
            except IndexConfigError as exc:
                # The photos are indexed; only the index choice failed (a budget the grown library no longer fits).
                log.warning("%s; keeping the %s index", exc, self.vector_index.describe())
        return report

    def rebuild_index(self, index_kind: str | None = None, max_memory: int | str | None = None,
                      wait: float = 0.0) -> int:
        """Rebuild (and retrain) the index from the stored vectors, no re-encoding; returns the count.

        `index_kind`, `max_memory` and `wait` as for `index`.
        """
        with self._write_lock(wait):
            self._set_index_choice(index_kind, max_memory)
            self._install_index(_build_from_catalog(self.catalog, self.dim, self._wanted_spec(None)))
        return self.vector_index.ntotal

    def index_choice(self) -> tuple[str, int | None]:
        """The library's index setting: (kind or "auto", memory budget in bytes or None)."""
        raw = json.loads(self.catalog.get_meta("index_choice") or "{}")
        return raw.get("kind", AUTO), raw.get("max_memory") or None

    def _set_index_choice(self, kind: str | None, max_memory: int | str | None) -> None:
        if kind is None and max_memory is None:
            return
        old_kind, old_budget = self.index_choice()
        kind = old_kind if kind is None else kind
        if kind != AUTO and kind not in INDEX_KINDS:
            raise IndexConfigError(f"unknown index kind {kind!r}; choose one of: {AUTO}, {', '.join(INDEX_KINDS)}")
        if max_memory is None:
            budget = old_budget
        elif isinstance(max_memory, str):
            budget = None if max_memory.strip().lower() in ("none", "0", "") else _parse_budget(max_memory)
        else:
            budget = int(max_memory) or None
        self.catalog.set_meta("index_choice", {"kind": kind, "max_memory": budget})

    def _wanted_spec(self, current: IndexSpec | None) -> IndexSpec:
        kind, budget = self.index_choice()
        return choose_index(self.catalog.count("ok"), self.dim, kind, budget, current=current)

    def _fit_index(self) -> None:
        """Rebuild the index when the library's size or setting calls for another one."""
        current = self.vector_index.spec
        wanted = self._wanted_spec(current)
        if wanted.needs_training and not self.catalog.count("ok"):
            return  # nothing to train on yet
        if needs_rebuild(current, wanted):
            log.info("library of %d images: rebuilding the %s index as %s", self.catalog.count("ok"),
                     current.kind, wanted.describe(self.dim))
            self._install_index(_build_from_catalog(self.catalog, self.dim, wanted))

    def _install_index(self, index: VectorIndex) -> None:
        self._use_index(index)
        self.save_index()
        self.catalog.set_meta("index", index.meta.summary())

    def add_texts(self, texts: Sequence[str]) -> int:
        """Add captions or labels to the text collection (for image→text); returns how many were new."""
        clean = list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))
        if not clean:
            return 0
        vectors = self.encoder.encode_texts(clean)
        return self.catalog.add_texts(clean, vectors)

    def remove_texts(self, texts: Sequence[str]) -> int:
        return self.catalog.remove_texts(list(texts))

    def texts(self) -> list[str]:
        return self.catalog.texts()

    # -- reading ------------------------------------------------------------------------
    def search(self, query: str, k: int = 20, *, min_score: float | None = None,
               folder: str | os.PathLike | None = None) -> list[Hit]:
        """Text→image search; the query may use arithmetic (`beach + sunset - people`, `2:dog`, `photo.jpg + night`)."""
        self.refresh()
        return self.searcher.search_vector(self.searcher.query_vector(query), k, min_score=min_score,
                                           folder=os.fspath(folder) if folder else None)

    def search_image(self, image: "str | os.PathLike | bytes | Image.Image | int", k: int = 20, *,
                     text: str | None = None, text_weight: float = 1.0, min_score: float | None = None,
                     folder: str | os.PathLike | None = None, exclude_self: bool = True) -> list[Hit]:
        """Image→image search. `image` is a path, bytes, a PIL image or an indexed id; `text` modifies it ("at night")."""
        from clipsearch.search import combine

        self.refresh()
        vec = self.searcher.image_vector(image)
        if text:
            vec = combine(np.stack([vec, self.searcher.query_vector(text)]), [1.0, text_weight])
        exclude = ()
        if exclude_self:
            exclude = (int(image),) if isinstance(image, (int, np.integer)) else self._ids_of_path(image)
        return self.searcher.search_vector(vec, k, min_score=min_score, folder=os.fspath(folder) if folder else None,
                                           exclude_ids=exclude)

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

    def describe(self, image: "str | os.PathLike | bytes | Image.Image | int", k: int = 5) -> list[TextHit]:
        """Image→text: the closest entries of the text collection."""
        return self.searcher.describe_vector(self.searcher.image_vector(image), k)

    def get_image(self, image_id: int) -> ImageRow | None:
        return self.catalog.get_image(image_id)

    def vectors(self, ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stored (ids, vectors) of indexed images, all or the given ids."""
        return self.catalog.vectors_of(ids, self.dim)

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

    def last_report(self) -> IndexReport | None:
        raw = self.catalog.get_meta("last_report")
        return IndexReport.from_dict(json.loads(raw)) if raw else None

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
        return LibraryInfo(
            folder=str(self.folder), model=self.model, pretrained=self.pretrained, dim=self.dim,
            images=self.catalog.count("ok"), failed=self.catalog.count("error"), texts=self.catalog.text_count(),
            index_kind=meta.kind, index_count=self.vector_index.ntotal, roots=self.roots(),
            last_report=json.loads(raw) if raw else None,
            index_factory=meta.factory, index_params={**meta.spec, **params},
            index_bytes=self.vector_index.predicted_bytes(), index_setting=kind, index_max_memory=budget,
            index_recall=recall, index_recall_note=note,
        )


def _load_encoder(model: str, pretrained: str | None, device: str | None, *,
                  image_backend: str | None = None) -> "Encoder":
    from clipsearch.encoder import load_encoder

    return load_encoder(model, pretrained, device=device, image_backend=image_backend)


def _parse_budget(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise IndexConfigError(f"max_memory: {exc}") from None


def _stored_spec(catalog: Catalog, dim: int) -> IndexSpec:
    """The index the library's setting asks for at its current size; flat if the setting can't be met."""
    raw = json.loads(catalog.get_meta("index_choice") or "{}")
    try:
        return choose_index(catalog.count("ok"), dim, raw.get("kind", AUTO), raw.get("max_memory") or None)
    except IndexConfigError as exc:
        log.warning("%s; using a flat index", exc)
        return IndexSpec("flat")


def _build_from_catalog(catalog: Catalog, dim: int, spec: IndexSpec | None = None) -> VectorIndex:
    """Build an index from the stored vectors: trained on a seeded sample, tuned and measured on held-out queries.

    The queries for tuning and for the stored recall are `recall_queries` made from a
    sample of the stored vectors, plus up to a fifth of them from the text collection
    (real text embeddings) when it has any.
    """
    spec = spec or _stored_spec(catalog, dim)
    n = catalog.count("ok")
    if spec.needs_training and not n:
        spec = IndexSpec("flat")  # nothing to train on yet; the next index run fits it
    train = queries = None
    if spec.kind != "flat" and n:
        rng = np.random.default_rng(0)
        ids = catalog.ok_ids()
        sample_ids = np.sort(rng.choice(ids, min(n, TRAIN_MAX if spec.needs_training else 20_000), replace=False))
        found = catalog.vectors_for(sample_ids.tolist(), dim)
        sample = np.stack([found[i] for i in sample_ids.tolist() if i in found]).astype(np.float32)
        train = sample if spec.needs_training else None
        queries = recall_queries(sample, RECALL_QUERIES, seed=1)
        _, _, text_vecs = catalog.text_vectors(dim)
        if len(text_vecs):
            take = rng.choice(len(text_vecs), min(len(text_vecs), RECALL_QUERIES // 5), replace=False)
            queries[: len(take)] = text_vecs[take]
            queries = queries[rng.permutation(len(queries))]  # texts in both the tuning and the measuring half
    return build_index(spec, dim, catalog.iter_vectors(dim), train=train, queries=queries,
                       exact_vectors=exact_vectors_from(catalog, dim))


def exact_vectors_from(catalog: Catalog, dim: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The catalog as the index's source of exact vectors, for re-ranking lossy codes."""
    return functools.partial(catalog.vectors_of, dim=dim)


def _load_or_rebuild_index(path: Path, catalog: Catalog, dim: int) -> VectorIndex:
    """The saved index if it matches the catalog; otherwise it is repaired from stored vectors."""
    if not path.exists():
        if catalog.count("ok"):
            log.warning("index file %s is missing; rebuilding it from %d stored vectors", path, catalog.count("ok"))
        return _build_from_catalog(catalog, dim)
    try:
        index = VectorIndex.load(path)
    except IndexFileError as exc:
        log.warning("%s; rebuilding it from the stored vectors", exc)
        return _build_from_catalog(catalog, dim)
    if index.dim != dim:
        log.warning("index %s has dimension %d, catalog %d; rebuilding", path, index.dim, dim)
        return _build_from_catalog(catalog, dim)
    if index.meta.generation != catalog.generation:
        _reconcile(index, catalog, dim)
    return index


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


def _save_repaired(folder: Path, catalog: Catalog, index: VectorIndex, dim: int) -> None:
    """Write an index repaired at open back, so the next open doesn't repeat the repair.

    Only when no writer holds the lock (a writer saves its own index); otherwise the
    repaired index serves this process from memory.
    """
    path = folder / INDEX_FILE
    if not index.ntotal and not path.exists():
        return  # a new, empty library
    lock = _try_write_lock(folder)
    if lock is None:
        log.info("library %s is being written by another process; the repaired index is kept in memory", folder)
        return
    with lock:
        remove_stale_temp_files(path)
        _reconcile(index, catalog, dim)  # a writer may have committed since the repair, before we got the lock
        try:
            index.save(path, catalog.generation)
        except ClipSearchError as exc:
            log.warning("%s; the repaired index is used from memory", exc)


def _reconcile(index: VectorIndex, catalog: Catalog, dim: int) -> None:
    # After a crash the index may lag the catalog: add what's missing, drop what's gone.
    have = index.ids()
    want = catalog.ok_ids()
    extra = np.setdiff1d(have, want)
    missing = np.setdiff1d(want, have)
    if len(extra):
        index.remove(extra)
    for ids, vecs in catalog.iter_vectors(dim, ids=missing.tolist()):
        index.add(ids, vecs)
    log.info("index reconciled with catalog: %d added, %d removed", len(missing), len(extra))
