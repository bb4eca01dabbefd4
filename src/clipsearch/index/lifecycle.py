"""`LibraryIndex`: one library's index, kept in step with its catalog.

The catalog is the source of truth; the index is derived from the vectors it stores. This
module owns the index's lifecycle in a library: load it or rebuild it at open, reconcile
an index that lags the catalog after a crash, pick the kind the library's size and
setting call for (`fit`), build from the stored vectors and install the result (saved
atomically, stamped with the catalog generation it matches). The single-machine
`Library` and the Ray path (`clipsearch.distributed`) both go through it.

The library's write lock stays the library's: methods that write the index file assume
the caller holds it, except `save_repaired`, which takes it only if it is free.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager

import numpy as np

from clipsearch.atomic import remove_stale_temp_files
from clipsearch.errors import ClipSearchError, IndexFileError
from clipsearch.index.choose import (
    AUTO, INDEX_KINDS, RECALL_QUERIES, TRAIN_MAX, IndexConfigError, IndexSpec, choose_index, needs_rebuild,
    unknown_kind,
)
from clipsearch.index.store import saved_generation
from clipsearch.index.tuning import build_index, recall_queries
from clipsearch.index.vector_index import VectorIndex
from clipsearch.sizes import parse_size

if TYPE_CHECKING:
    from clipsearch.catalog import Catalog

log = logging.getLogger(__name__)

CHOICE_META = "index_choice"  # catalog meta: {"kind": ..., "max_memory": bytes or null}
SUMMARY_META = "index"        # catalog meta: the installed index's IndexMeta.summary()

ExactVectors = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def exact_vectors_from(catalog: "Catalog", dim: int) -> ExactVectors:
    """The catalog as the index's source of exact vectors, for re-ranking lossy codes."""
    return functools.partial(catalog.vectors_of, dim=dim)


# -- the library's index setting ------------------------------------------------------------
def read_choice(catalog: "Catalog") -> tuple[str, int | None]:
    """The library's index setting: (kind or "auto", memory budget in bytes or None)."""
    raw = json.loads(catalog.get_meta(CHOICE_META) or "{}")
    return raw.get("kind", AUTO), raw.get("max_memory") or None


def parse_budget(max_memory: int | str | None, old: int | None = None) -> int | None:
    """A memory budget in bytes from an int or "600MB"; None (no budget) for 0, "none" or ""; `old` when None."""
    if max_memory is None:
        return old
    if isinstance(max_memory, str):
        if max_memory.strip().lower() in ("none", "0", ""):
            return None
        try:
            return parse_size(max_memory)
        except ValueError as exc:
            raise IndexConfigError(f"max_memory: {exc}") from None
    return int(max_memory) or None


def stored_spec(catalog: "Catalog", dim: int) -> IndexSpec:
    """The index the library's setting asks for at its current size; flat if the setting can't be met."""
    kind, budget = read_choice(catalog)
    try:
        return choose_index(catalog.count("ok"), dim, kind, budget)
    except IndexConfigError as exc:
        log.warning("%s; using a flat index", exc)
        return IndexSpec("flat")


# -- building from the catalog --------------------------------------------------------------
def build_sample(catalog: "Catalog", dim: int, size: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(a seeded sample of up to `size` stored vectors, held-out queries for tuning and recall).

    The queries are `recall_queries` made from the sample, plus up to a fifth of them from
    the text collection (real text embeddings) when it has any, shuffled so texts fall in
    both the tuning and the measuring half. Both executors build from this sample.
    """
    ids = catalog.ok_ids()
    sample_ids = np.sort(rng.choice(ids, min(len(ids), size), replace=False))
    found = catalog.vectors_for(sample_ids.tolist(), dim)
    sample = np.stack([found[i] for i in sample_ids.tolist() if i in found]).astype(np.float32)
    queries = recall_queries(sample, RECALL_QUERIES, seed=1)
    _, _, text_vecs = catalog.text_vectors(dim)
    if len(text_vecs):
        take = rng.choice(len(text_vecs), min(len(text_vecs), RECALL_QUERIES // 5), replace=False)
        queries[: len(take)] = text_vecs[take]
        queries = queries[rng.permutation(len(queries))]  # texts in both the tuning and the measuring half
    return sample, queries


def build_from_catalog(catalog: "Catalog", dim: int, spec: IndexSpec | None = None) -> VectorIndex:
    """Build an index from the stored vectors: trained on a seeded sample, tuned and measured on held-out queries.

    `spec` defaults to what the library's setting asks for (`stored_spec`). See `build_sample`.
    """
    spec = spec or stored_spec(catalog, dim)
    n = catalog.count("ok")
    if spec.needs_training and not n:
        spec = IndexSpec("flat")  # nothing to train on yet; the next index run fits it
    train = queries = None
    if spec.kind != "flat" and n:
        sample, queries = build_sample(catalog, dim, TRAIN_MAX if spec.needs_training else 20_000,
                                       np.random.default_rng(0))
        train = sample if spec.needs_training else None
    return build_index(spec, dim, catalog.iter_vectors(dim), train=train, queries=queries,
                       exact_vectors=exact_vectors_from(catalog, dim))


def reconcile(index: VectorIndex, catalog: "Catalog", dim: int) -> None:
    """Bring `index` in line with the catalog: add what's missing, drop what's gone (after a crash)."""
    have = index.ids()
    want = catalog.ok_ids()
    extra = np.setdiff1d(have, want)
    missing = np.setdiff1d(want, have)
    if len(extra):
        index.remove(extra)
    for ids, vecs in catalog.iter_vectors(dim, ids=missing.tolist()):
        index.add(ids, vecs)
    log.info("index reconciled with catalog: %d added, %d removed", len(missing), len(extra))


def load_or_rebuild(path: Path, catalog: "Catalog", dim: int) -> VectorIndex:
    """The saved index if it matches the catalog; otherwise it is repaired from stored vectors."""
    if not path.exists():
        if catalog.count("ok"):
            log.warning("index file %s is missing; rebuilding it from %d stored vectors", path, catalog.count("ok"))
        return build_from_catalog(catalog, dim)
    try:
        index = VectorIndex.load(path)
    except IndexFileError as exc:
        log.warning("%s; rebuilding it from the stored vectors", exc)
        return build_from_catalog(catalog, dim)
    if index.dim != dim:
        log.warning("index %s has dimension %d, catalog %d; rebuilding", path, index.dim, dim)
        return build_from_catalog(catalog, dim)
    if index.meta.generation != catalog.generation:
        reconcile(index, catalog, dim)
    return index


# -- the object -----------------------------------------------------------------------------
class LibraryIndex:
    """The index of one library: the `VectorIndex` in memory, its file at `path`, and the catalog it derives from.

    `on_swap` is called with each index that replaces the current one (a rebuild, a
    reload), so holders of the old one (a `Searcher`) follow.
    """

    def __init__(self, path: Path, catalog: "Catalog", index: VectorIndex, *,
                 on_swap: Callable[[VectorIndex], None] | None = None) -> None:
        self.path = Path(path)
        self.catalog = catalog
        self.on_swap = on_swap
        self.index = index
        index.exact_vectors = exact_vectors_from(catalog, index.dim)

    @classmethod
    def open(cls, path: Path, catalog: "Catalog", dim: int,
             try_lock: Callable[[], ContextManager | None] | None = None) -> "LibraryIndex":
        """Load the index at `path` or repair it from the catalog; a repair is saved when `try_lock()` gives the lock."""
        out = cls(path, catalog, load_or_rebuild(Path(path), catalog, dim))
        if out.index.meta.generation != catalog.generation:
            out.save_repaired(try_lock)
        return out

    @property
    def dim(self) -> int:
        return self.index.dim

    def use(self, index: VectorIndex) -> None:
        """Make `index` the current one in memory (not saved): wired to the catalog's exact vectors."""
        index.exact_vectors = exact_vectors_from(self.catalog, index.dim)
        self.index = index
        if self.on_swap is not None:
            self.on_swap(index)

    def save(self) -> None:
        """Write the index to disk atomically, stamped with the catalog generation it matches."""
        self.index.save(self.path, self.catalog.generation)

    def install(self, index: VectorIndex) -> None:
        """Make `index` the library's: use it, save it, record its summary in the catalog. Caller holds the write lock."""
        self.use(index)
        self.save()
        self.catalog.set_meta(SUMMARY_META, index.meta.summary())

    # -- under the write lock ---------------------------------------------------------------
    def catch_up(self) -> bool:
        """On taking the write lock: drop a killed writer's temp files and reload the index if another
        process wrote since this one read it (else its next save would drop that work); True if reloaded."""
        remove_stale_temp_files(self.path)
        if self.index.meta.generation == self.catalog.generation:
            return False
        log.info("library %s changed since it was read; reloading its index", self.path.parent)
        self.use(load_or_rebuild(self.path, self.catalog, self.dim))
        return True

    def choice(self) -> tuple[str, int | None]:
        """The library's index setting: (kind or "auto", memory budget in bytes or None)."""
        return read_choice(self.catalog)

    def set_choice(self, kind: str | None, max_memory: int | str | None) -> None:
        """Change the library's index setting (None keeps that part); IndexConfigError for an unknown kind or bad budget."""
        if kind is None and max_memory is None:
            return
        old_kind, old_budget = self.choice()
        kind = old_kind if kind is None else kind
        if kind != AUTO and kind not in INDEX_KINDS:
            raise IndexConfigError(unknown_kind(kind))
        self.catalog.set_meta(CHOICE_META, {"kind": kind, "max_memory": parse_budget(max_memory, old_budget)})

    def wanted_spec(self, n: int | None = None, *, from_current: bool = True) -> IndexSpec:
        """The index the setting asks for at `n` vectors (default: the catalog's count).

        `from_current`: judged from the current index, so a library near a threshold doesn't
        flip at every run (see `choose_index`); IndexConfigError when the budget can't be met.
        """
        kind, budget = self.choice()
        n = self.catalog.count("ok") if n is None else n
        return choose_index(n, self.dim, kind, budget, current=self.index.spec if from_current else None)

    def needs_rebuild(self, n: int | None = None) -> IndexSpec | None:
        """The spec to rebuild as when `n` vectors call for another index than the current one, else None."""
        wanted = self.wanted_spec(n)
        n = self.catalog.count("ok") if n is None else n
        if wanted.needs_training and not n:
            return None  # nothing to train on yet
        return wanted if needs_rebuild(self.index.spec, wanted) else None

    def fit(self) -> bool:
        """Rebuild the index when the library's size or setting calls for another one; True if it did."""
        wanted = self.needs_rebuild()
        if wanted is None:
            return False
        log.info("library of %d images: rebuilding the %s index as %s", self.catalog.count("ok"),
                 self.index.kind, wanted.describe(self.dim))
        self.install(build_from_catalog(self.catalog, self.dim, wanted))
        return True

    def rebuild(self, spec: IndexSpec | None = None) -> VectorIndex:
        """Rebuild (and retrain) from the stored vectors as `spec` (default: what the setting asks for) and install it."""
        self.install(build_from_catalog(self.catalog, self.dim, spec or self.wanted_spec(from_current=False)))
        return self.index

    # -- readers ----------------------------------------------------------------------------
    def saved_is_current(self) -> bool:
        """Whether the file on disk was saved for the catalog's current state and differs from the one in memory."""
        generation = self.catalog.generation
        return generation != self.index.meta.generation and saved_generation(self.path) == generation

    def reload(self) -> bool:
        """Load the saved index in place of the one in memory; False (with a warning) if it is unreadable or foreign."""
        try:
            index = VectorIndex.load(self.path)
        except IndexFileError as exc:
            log.warning("%s; searching the index loaded before", exc)
            return False
        if index.dim != self.dim:
            return False
        self.use(index)
        return True

    def save_repaired(self, try_lock: Callable[[], ContextManager | None] | None) -> None:
        """Write an index repaired at open back, so the next open doesn't repeat the repair.

        Only when `try_lock()` gives the library's write lock (a writer saves its own
        index); otherwise the repaired index serves this process from memory.
        """
        if not self.index.ntotal and not self.path.exists():
            return  # a new, empty library
        lock = try_lock() if try_lock is not None else contextlib.nullcontext()
        if lock is None:
            log.info("library %s is being written by another process; the repaired index is kept in memory",
                     self.path.parent)
            return
        with lock:
            remove_stale_temp_files(self.path)
            reconcile(self.index, self.catalog, self.dim)  # a writer may have committed since the repair
            try:
                self.index.save(self.path, self.catalog.generation)
            except ClipSearchError as exc:
                log.warning("%s; the repaired index is used from memory", exc)


__all__ = [
    "LibraryIndex", "build_from_catalog", "build_sample", "exact_vectors_from", "load_or_rebuild", "parse_budget",
    "read_choice", "reconcile", "stored_spec",
]
