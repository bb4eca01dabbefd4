"""FAISS vector index over catalog ids: choice, build, add, remove, search, atomic save and load.

Ids in the index are catalog ids, scores are inner products of L2-normalised vectors
(cosine similarity). The index knows nothing about paths.

Index kinds (`INDEX_KINDS`) and how `choose_index` picks one for `auto`:

* under `FLAT_MAX_VECTORS` vectors: `flat`, exact search (a scan of 100 MB or less
  per query at 512-d: a few milliseconds);
* above it: `ivfsq8` (inverted lists of 1-byte-per-dimension codes), trained on a sample
  of the stored vectors: as fast as `ivf` and as accurate once nprobe is tuned, at a
  quarter of the memory;
* with a memory budget (a cap, not a target): that choice if its predicted size fits,
  else the first of `ivfsq4` and `pca-ivfpq` with ever smaller codes that fits (see
  `_BUDGET_LADDER`; a library re-ranks their candidates with its stored vectors). `ivf`
  (exact vectors in the lists), `ivfsq6` and `ivfpq` are there for the asking.

`hnsw` is never picked by `auto`: FAISS cannot remove from an HNSW graph, so removals
here are tombstones, filtered out at search and purged by rebuilding the graph from its
own stored vectors once they pass `HNSW_MAX_DELETED` of it. IVF kinds remove in place.

Flat and HNSW indexes sit in an `IndexIDMap2`; IVF kinds hold catalog ids in their
inverted lists instead, because `IndexIDMap2.remove_ids` over an IVF index compacts the
id map while the lists keep the old positions, so every id after a removed one would
come back wrong.

After a build, the search parameter (`nprobe`, `efSearch`) is the smallest that reaches
`TARGET_RECALL` recall@10 against exact search on held-out queries, and the recall
reached on a second, separate half of them is stored with the index.

Kinds whose codes lose much (`RERANK_DEPTH`: SQ6, SQ4 and the product-quantised ones)
re-rank their candidates with the exact vectors when the index is given a source of them
(`VectorIndex.exact_vectors`; a library hands its catalog, which stores every vector): a
deeper candidate list is scored exactly and the best `k` kept. Tuning and the stored
recall then measure the re-ranked search, which is what a library's queries get.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from clipsearch.errors import IndexFileError

log = logging.getLogger(__name__)

# faiss and torch each bring their own OpenMP runtime, and by default an idle OpenMP
# thread spins for a while before it sleeps. In one process that encodes a query (torch)
# and then searches (faiss), each pool's spinning threads take the cores the other needs:
# on 2 cores a ViT-B-32 text query took 720 ms at p50 instead of 80 ms
# (docs/performance.md, "Query latency"). Sleeping waits cost microseconds per call.
# Both runtimes read this when they load, which clipsearch does lazily, after this module;
# a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Exact search up to here: above, a flat scan per query costs more than an ANN's recall loss is worth.
FLAT_MAX_VECTORS = 50_000
# Search parameters are tuned to the smallest that gives this recall@10 against exact search.
TARGET_RECALL = 0.96  # 0.95 wanted, with room for the estimate's error (about ±0.01)
RECALL_K = 10
# Held-out queries for tuning (first half) and for the stored recall figure (second half).
RECALL_QUERIES = 1000
# How far the held-out queries are from stored vectors (see `recall_queries`).
QUERY_OFFSET = 2.0
QUERY_NOISE = 1.5
# k-means and PQ training sample; more costs minutes on a laptop for little recall.
TRAIN_MAX = 100_000
KMEANS_ITERATIONS = 10
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
# Tombstones in an HNSW graph past this fraction trigger a rebuild of the graph.
HNSW_MAX_DELETED = 0.2
# Filtered HNSW search with fewer allowed ids than this fraction is done exactly.
_HNSW_EXACT_FILTER = 0.05
# Candidates re-ranked with exact vectors per 10 results asked, for lossy codes. From an
# exploratory run at the nprobe tuned before re-ranking, on 100k CLIP-like vectors with
# text-like queries (bench/common.py): ivfpq
# 0.45 -> 0.86 (top 100) / 0.88 (top 200); pca-ivfpq 0.51 -> 0.88 / 0.90; ivfsq4 0.78 ->
# 0.94 (top 50; deeper adds nothing); ivfsq6 0.92 -> 0.95 (the rest is nprobe's). Tuned
# with re-ranking, at 1M: ivfsq4 0.974, ivfpq 0.901, pca-ivfpq 0.936 (docs/performance.md).
RERANK_DEPTH = {"ivfsq6": 50, "ivfsq4": 50, "ivfpq": 200, "pca-ivfpq": 200}

AUTO = "auto"

INDEX_KINDS: dict[str, str] = {
    "flat": "exact search over every vector",
    "hnsw": "HNSW graph: fast, exact vectors; removals are tombstones until the graph is rebuilt",
    "ivf": "inverted lists over exact vectors (IVF-Flat): trained, removes in place",
    "ivfsq8": "inverted lists, 1 byte per dimension (IVF-SQ8): 4x smaller than ivf",
    "ivfsq6": "inverted lists, 6 bits per dimension (IVF-SQ6)",
    "ivfsq4": "inverted lists, 4 bits per dimension (IVF-SQ4): 8x smaller than ivf",
    "ivfpq": "inverted lists with product-quantised codes (IVF-PQ): smallest, least exact",
    "pca-ivfpq": "PCA to half the dimensions, then IVF-PQ",
}
_SQ_KINDS = {"ivfsq8": 8, "ivfsq6": 6, "ivfsq4": 4}
_IVF_KINDS = frozenset({"ivf", *_SQ_KINDS, "ivfpq", "pca-ivfpq"})


class IndexConfigError(IndexFileError):
    """An index kind, memory budget or build parameter cannot be used.

    A subclass of IndexFileError, which an unknown kind raised before index choice existed.
    """


# -- sizes ------------------------------------------------------------------------------
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """Bytes from "600MB", "2GB", "1.5G", "512MiB" or "123456"; ValueError saying what is accepted."""
    m = _SIZE.match(str(text))
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(f"invalid size {text!r}: use a number with a unit, like 600MB, 2GB or 512MiB")
    number, unit, binary = float(m.group(1)), m.group(2).lower(), bool(m.group(3))
    value = int(number * (1024 if binary else 1000) ** _POWERS[unit])
    if value <= 0:
        raise ValueError(f"invalid size {text!r}: it must be more than zero")
    return value


def format_size(n: float) -> str:
    """A byte count for people: 536.9 MB."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


# -- choosing ---------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexSpec:
    """An index configuration: a kind and the structural parameters it is built with."""

    kind: str = "flat"
    nlist: int = 0          # IVF: number of inverted lists
    pca_dim: int = 0        # pca-*: dimensions kept
    pq_m: int = 0           # *pq: sub-quantisers per vector (bytes per vector at 8 bits)
    pq_bits: int = 8        # *pq: bits per sub-quantiser code
    hnsw_m: int = 0         # hnsw: graph degree

    @property
    def needs_training(self) -> bool:
        """Whether the kind must be trained on a sample before vectors can be added."""
        return self.kind in _IVF_KINDS

    def factory(self, dim: int) -> str:
        """The faiss index_factory string (without the id map)."""
        pca = f"PCAR{self.pca_dim}," if self.kind.startswith("pca-") else ""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m}"
        if self.kind in ("ivf",):
            return f"IVF{self.nlist},Flat"
        if self.kind in _SQ_KINDS:
            return f"IVF{self.nlist},SQ{_SQ_KINDS[self.kind]}"
        if self.kind in ("ivfpq", "pca-ivfpq"):
            return f"{pca}IVF{self.nlist},PQ{self.pq_m}x{self.pq_bits}"
        raise IndexConfigError(_unknown_kind(self.kind))

    def describe(self, dim: int) -> str:
        return f"{self.kind} ({self.factory(dim)})"


def _unknown_kind(kind: str) -> str:
    return f"unknown index kind {kind!r}; choose one of: {AUTO}, {', '.join(INDEX_KINDS)}"


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(x, 1.0)))))


def nlist_for(n: int) -> int:
    """Inverted lists for `n` vectors: the power of two nearest 4·√n, with at least 39 training points per list."""
    if n <= 0:
        return 1
    nlist = 1 << max(0, round(math.log2(4 * math.sqrt(n))))
    return max(1, min(nlist, _pow2_floor(min(n, TRAIN_MAX) / 39), 65536))


def _divisor_at_most(dim: int, target: int) -> int:
    target = max(1, min(dim, target))
    while dim % target:
        target -= 1
    return target


def _spec(kind: str, n: int, dim: int, pq_ratio: int = 8) -> IndexSpec:
    """The structural parameters of `kind` for `n` vectors of `dim` dimensions."""
    if kind == "flat":
        return IndexSpec("flat")
    if kind == "hnsw":
        return IndexSpec("hnsw", hnsw_m=HNSW_M)
    if kind not in _IVF_KINDS:
        raise IndexConfigError(_unknown_kind(kind))
    nlist = nlist_for(n)
    if kind == "ivf" or kind in _SQ_KINDS:
        return IndexSpec(kind, nlist=nlist)
    pca_dim = max(1, dim // 2)
    inner = pca_dim if kind == "pca-ivfpq" else dim
    m = _divisor_at_most(inner, max(1, dim // pq_ratio))
    # 2**bits centroids per sub-quantiser need a few points each to train.
    bits = int(min(8, max(1, math.floor(math.log2(max(2, min(n, TRAIN_MAX) / 4))))))
    return IndexSpec(kind, nlist=nlist, pca_dim=pca_dim if kind == "pca-ivfpq" else 0, pq_m=m, pq_bits=bits)


# Under a memory budget, the first of these whose predicted size fits, most exact first.
# (kind, pq_ratio): pq_ratio sets the code size of the *pq kinds to dim / pq_ratio bytes.
# Measured order (docs/performance.md): SQ4 beats PCA to half the dimensions at the same
# size, and PQ after PCA beats plain PQ at the same code size. With re-ranking (which a
# library always does for these), SQ4 matched SQ6 at 100k (0.959 both) at 2/3 of the
# size and faster (SQ6 re-ranked was not run at 1M; SQ4 re-ranked gave 0.974 there):
# SQ6 is there only by name.
_BUDGET_LADDER: tuple[tuple[str, int], ...] = (
    ("ivfsq8", 0), ("ivfsq4", 0), ("pca-ivfpq", 8), ("pca-ivfpq", 16), ("pca-ivfpq", 32),
)
# Without a budget, above FLAT_MAX_VECTORS: the ladder's first rung.
_AUTO_ANN = _BUDGET_LADDER[0][0]


def predict_bytes(spec: IndexSpec, n: int, dim: int) -> int:
    """The serialized size of an index of `spec` holding `n` vectors (what `faiss.serialize_index` returns)."""
    header = 1024
    if spec.kind == "flat":
        return header + n * (4 * dim + 8)
    if spec.kind == "hnsw":
        # Level 0 has 2M neighbours, upper levels M, on 1/(M-1) levels on average; int32 each,
        # plus an 8-byte offset and a 4-byte level per vector.
        m = spec.hnsw_m or HNSW_M
        return header + n * (4 * dim + 8 + 4 * (2 * m + m / (m - 1)) + 12)
    inner = spec.pca_dim if spec.kind.startswith("pca-") else dim
    size = header + 4 * spec.nlist * inner + 16 * spec.nlist  # centroids, list sizes
    if spec.kind.startswith("pca-"):
        size += 4 * (2 * dim * dim + 2 * dim + spec.pca_dim * dim + spec.pca_dim)  # PCA matrices
    if spec.kind == "ivf":
        code = 4 * dim
    elif spec.kind in _SQ_KINDS:
        code, size = math.ceil(inner * _SQ_KINDS[spec.kind] / 8), size + 8 * inner
    else:
        code = math.ceil(spec.pq_m * spec.pq_bits / 8)
        size += 4 * (1 << spec.pq_bits) * inner  # PQ centroids
    return int(size + n * (code + 8))


def choose_index(n: int, dim: int, kind: str = AUTO, max_memory: int | None = None,
                 current: IndexSpec | None = None) -> IndexSpec:
    """The index configuration for `n` vectors of `dim` dimensions.

    `kind` "auto": flat under FLAT_MAX_VECTORS (or under half of it when `current` is
    already an ANN index, so a library near the threshold doesn't flip at every run),
    IVF-SQ8 above; with `max_memory` (bytes), the first of these whose predicted size
    fits, else the first rung of `_BUDGET_LADDER` that does. A named kind is built as asked; a budget then only sizes its
    product codes, and IndexConfigError says so when nothing fits.
    """
    if kind != AUTO and kind not in INDEX_KINDS:
        raise IndexConfigError(_unknown_kind(kind))
    if kind != AUTO:
        spec = _spec(kind, n, dim)
        if max_memory and predict_bytes(spec, n, dim) > max_memory and kind in ("ivfpq", "pca-ivfpq"):
            for ratio in (16, 32, 64):
                spec = _spec(kind, n, dim, ratio)
                if predict_bytes(spec, n, dim) <= max_memory:
                    break
        if max_memory and predict_bytes(spec, n, dim) > max_memory:
            raise IndexConfigError(
                f"a {kind} index of {n} {dim}-d vectors needs about {format_size(predict_bytes(spec, n, dim))}, "
                f"more than --max-memory {format_size(max_memory)}; raise the budget or use --index auto")
        return spec
    threshold = FLAT_MAX_VECTORS // 2 if current is not None and current.kind != "flat" else FLAT_MAX_VECTORS
    candidates: list[IndexSpec] = [IndexSpec("flat")] if n < threshold else []
    if not max_memory:
        return candidates[0] if candidates else _spec(_AUTO_ANN, n, dim)
    candidates += [_spec(k, n, dim, ratio or 8) for k, ratio in _BUDGET_LADDER]
    for spec in candidates:
        if predict_bytes(spec, n, dim) <= max_memory:
            return spec
    smallest = candidates[-1]
    raise IndexConfigError(
        f"--max-memory {format_size(max_memory)} is too small for {n} {dim}-d vectors: the smallest index "
        f"({smallest.describe(dim)}) needs about {format_size(predict_bytes(smallest, n, dim))}")


def needs_rebuild(current: IndexSpec, wanted: IndexSpec) -> bool:
    """Whether an index of `current` should be rebuilt as `wanted` (another kind or code, or 4x the size it was trained for)."""
    if (current.kind, current.pca_dim, current.pq_m, current.pq_bits) != (
            wanted.kind, wanted.pca_dim, wanted.pq_m, wanted.pq_bits):
        return True
    if current.needs_training and current.nlist:
        # nlist grows with √n: doubling means the library grew 4x since the lists were trained.
        return wanted.nlist >= 2 * current.nlist or wanted.nlist * 4 <= current.nlist
    return False


# -- metadata and files ------------------------------------------------------------------
@dataclass
class IndexMeta:
    """What the sidecar JSON records next to the index file."""

    kind: str = "flat"
    dim: int = 0
    count: int = 0
    generation: int = -1  # the catalog generation this index matches
    extra: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)  # IndexSpec fields
    factory: str = "Flat"
    nprobe: int = 0
    ef_search: int = 0
    recall_at_10: float | None = None   # vs exact search, held-out queries; 1.0 for flat
    recall_queries: int = 0
    recall_vectors: int = 0             # vectors in the index when recall was measured
    build_seconds: float = 0.0
    built_at: float = 0.0
    deleted: list[int] = field(default_factory=list)  # HNSW tombstones

    @property
    def index_spec(self) -> IndexSpec:
        known = {f.name for f in fields(IndexSpec)}
        return IndexSpec(**{k: v for k, v in {"kind": self.kind, **self.spec}.items() if k in known})

    def summary(self) -> dict[str, Any]:
        """What the catalog records about the index (everything but tombstones)."""
        out = asdict(self)
        out.pop("deleted")
        out["deleted_count"] = len(self.deleted)
        return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_stale_temp_files(path: str | Path) -> int:
    """Delete the temp files of `atomic_write_bytes(path)` (and of its sidecar) left by a killed process.

    Only safe while no other process can be writing `path` (the library's write lock).
    """
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d temp files a killed process left next to %s", removed, path)
    return removed


# -- the index -----------------------------------------------------------------------------
def _new_faiss_index(spec: IndexSpec, dim: int) -> Any:
    import faiss

    if spec.needs_training:
        index = faiss.index_factory(dim, spec.factory(dim), faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.niter = KMEANS_ITERATIONS
        if isinstance(ivf, faiss.IndexIVFPQ):
            # On by default, it reorders codes for Hamming pre-filtering we never use, and takes most of the training time.
            ivf.do_polysemous_training = False
            ivf.pq.cp.niter = KMEANS_ITERATIONS
        return index
    index = faiss.index_factory(dim, f"IDMap2,{spec.factory(dim)}", faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index


class VectorIndex:
    """A FAISS index keyed by int64 catalog ids, searched by inner product."""

    def __init__(self, index: Any, meta: IndexMeta) -> None:
        self.faiss_index = index
        self.meta = meta
        self._deleted = np.unique(np.asarray(meta.deleted, dtype=np.int64))
        # ids -> (ids found, their exact vectors), in any order: see `rerank_depth`.
        self.exact_vectors: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    @classmethod
    def create(cls, dim: int, kind: str = "flat") -> "VectorIndex":
        """An empty index of a kind that needs no training (flat, hnsw); `build_index` makes the others."""
        spec = _spec(kind, 0, dim) if kind in INDEX_KINDS else None
        if spec is None:
            raise IndexConfigError(_unknown_kind(kind))
        if spec.needs_training:
            raise IndexConfigError(f"a {kind} index must be trained on vectors: build it with build_index")
        meta = IndexMeta(kind=kind, dim=dim, spec=_spec_fields(spec), factory=spec.factory(dim),
                         ef_search=64 if kind == "hnsw" else 0, recall_at_10=1.0 if kind == "flat" else None)
        index = cls(_new_faiss_index(spec, dim), meta)
        index._apply_search_params()
        return index

    @property
    def spec(self) -> IndexSpec:
        return self.meta.index_spec

    @property
    def kind(self) -> str:
        return self.meta.kind

    @property
    def dim(self) -> int:
        return int(self.faiss_index.d)

    @property
    def stored(self) -> int:
        """Vectors held, tombstoned ones included."""
        return int(self.faiss_index.ntotal)

    @property
    def ntotal(self) -> int:
        """Vectors a search can return."""
        return self.stored - len(self._deleted)

    def describe(self) -> str:
        """Kind, faiss factory string and search parameter, e.g. "ivf (IVF1024,Flat, nprobe 16)"."""
        param = (f", nprobe {self.meta.nprobe}" if self.meta.nprobe else
                 f", efSearch {self.meta.ef_search}" if self.meta.ef_search else "")
        if self.rerank_depth(RECALL_K):
            param += f", top {self.rerank_depth(RECALL_K)} re-ranked exactly"
        return f"{self.kind} ({self.meta.factory}{param})"

    def predicted_bytes(self) -> int:
        return predict_bytes(self.spec, self.stored, self.dim)

    def rerank_depth(self, k: int) -> int:
        """Candidates a search for `k` re-ranks with exact vectors; 0 when it does not re-rank."""
        base = RERANK_DEPTH.get(self.kind, 0)
        if not base or self.exact_vectors is None:
            return 0
        return base * max(1, math.ceil(k / RECALL_K))

    def _ivf(self) -> Any:
        import faiss

        return faiss.extract_index_ivf(self.faiss_index)

    def _hnsw(self) -> Any:
        import faiss

        return faiss.downcast_index(self.faiss_index.index)

    def ids(self) -> np.ndarray:
        """Every searchable id: in insertion order for flat and hnsw, by inverted list for IVF kinds."""
        import faiss

        if self.spec.needs_training:
            invlists = self._ivf().invlists
            parts = [np.zeros(0, np.int64)]
            for lst in range(invlists.nlist):
                size = invlists.list_size(lst)
                if size:
                    ptr = invlists.get_ids(lst)
                    parts.append(faiss.rev_swig_ptr(ptr, size).copy())
                    invlists.release_ids(lst, ptr)
            return np.concatenate(parts).astype(np.int64)
        ids = faiss.vector_to_array(self.faiss_index.id_map).astype(np.int64)
        if len(self._deleted):
            ids = ids[~np.isin(ids, self._deleted)]
        return ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors of shape {vectors.shape} do not fit an index of dimension {self.dim}")
        if not len(ids):
            return
        if not self.faiss_index.is_trained:
            raise IndexConfigError(f"the {self.kind} index is not trained; build it with build_index")
        if len(self._deleted) and np.isin(ids, self._deleted).any():
            self.compact()  # a tombstoned id coming back must not find its old vector still in the graph
        self.faiss_index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids; returns how many were in the index. HNSW: tombstones, compacted past HNSW_MAX_DELETED."""
        import faiss

        ids = np.unique(np.ascontiguousarray(ids, dtype=np.int64))
        if not len(ids):
            return 0
        if self.kind == "hnsw":
            present = ids[np.isin(ids, self.ids())]
            if len(present):
                self._deleted = np.union1d(self._deleted, present)
                self.meta.deleted = self._deleted.tolist()
                if len(self._deleted) > HNSW_MAX_DELETED * max(self.stored, 1):
                    self.compact()
            return int(len(present))
        return int(self.faiss_index.remove_ids(faiss.IDSelectorBatch(ids)))

    def compact(self) -> None:
        """Purge HNSW tombstones by rebuilding the graph from its own (exact) stored vectors."""
        import faiss

        if not len(self._deleted):
            return
        started = time.monotonic()
        all_ids = faiss.vector_to_array(self.faiss_index.id_map).astype(np.int64)
        keep = np.flatnonzero(~np.isin(all_ids, self._deleted))
        vectors = self._hnsw().storage.reconstruct_n(0, self.stored)[keep]
        fresh = _new_faiss_index(self.spec, self.dim)
        if len(keep):
            fresh.add_with_ids(vectors, all_ids[keep])
        log.info("HNSW graph rebuilt without %d removed vectors in %.1fs", len(self._deleted),
                 time.monotonic() - started)
        self.faiss_index = fresh
        self._deleted = np.zeros(0, np.int64)
        self.meta.deleted = []
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        if self.spec.needs_training and self.meta.nprobe:
            self._ivf().nprobe = self.meta.nprobe
        elif self.kind == "hnsw" and self.meta.ef_search:
            self._hnsw().hnsw.efSearch = self.meta.ef_search

    def set_search_param(self, value: int) -> None:
        """Set nprobe (IVF kinds) or efSearch (hnsw); flat has none."""
        if self.spec.needs_training:
            self.meta.nprobe = int(max(1, min(value, self.spec.nlist)))
        elif self.kind == "hnsw":
            self.meta.ef_search = int(max(1, value))
        self._apply_search_params()

    def _params(self, sel: Any, fraction: float, k: int) -> Any:
        import faiss

        if self.spec.needs_training:
            # Keep the expected number of allowed candidates scanned as without a filter.
            nprobe = self.meta.nprobe or 1
            if fraction < 1.0:
                nprobe = math.ceil(nprobe / max(fraction, 1e-9))
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(min(self.spec.nlist, nprobe)))
        if self.kind == "hnsw":
            ef = max(self.meta.ef_search or 64, k)
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(min(4096, ef / max(fraction, 1e-9))))
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row; missing results are id -1. `allowed_ids` restricts the candidates."""
        import faiss

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), max(self.ntotal, 1)))
        sel = None
        keep_alive: list[Any] = []  # faiss selectors hold raw pointers to these
        fraction = 1.0
        if allowed_ids is not None:
            allowed = np.unique(np.ascontiguousarray(allowed_ids, dtype=np.int64))
            if len(self._deleted):
                allowed = np.setdiff1d(allowed, self._deleted, assume_unique=True)
            if not len(allowed):
                return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
            fraction = len(allowed) / max(self.ntotal, 1)
            if self.kind == "hnsw" and fraction < _HNSW_EXACT_FILTER:
                return self._exact_among(queries, k, allowed)
            sel = faiss.IDSelectorBatch(allowed)
        elif len(self._deleted):
            inner = faiss.IDSelectorBatch(self._deleted)
            keep_alive.append(inner)
            sel = faiss.IDSelectorNot(inner)
        depth = min(self.rerank_depth(k), max(self.ntotal, 1))
        fetch = max(k, depth)
        scores, ids = self.faiss_index.search(queries, fetch, params=self._params(sel, fraction, fetch))
        del keep_alive
        if depth > k:
            return self._rerank(queries, ids, k)
        return scores, ids

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int, chunk: int = 32
                ) -> tuple[np.ndarray, np.ndarray]:
        """The best `k` of each row of `candidates` by exact inner product with its query.

        A candidate whose vector the source does not have (a stale entry) is dropped.
        """
        assert self.exact_vectors is not None
        wanted = np.unique(candidates[candidates >= 0])
        got_ids, got_vecs = self.exact_vectors(wanted)
        order = np.argsort(got_ids)
        got_ids, got_vecs = np.asarray(got_ids, np.int64)[order], np.asarray(got_vecs, np.float32)[order]
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_ids = np.full((len(queries), k), -1, np.int64)
        if not len(got_ids):
            return out_scores, out_ids
        for start in range(0, len(queries), chunk):  # bounded memory: chunk x depth x dim floats
            cand = candidates[start:start + chunk]
            pos = np.minimum(np.searchsorted(got_ids, cand), len(got_ids) - 1)
            valid = (cand >= 0) & (got_ids[pos] == cand)
            exact = np.einsum("qrd,qd->qr", got_vecs[pos], queries[start:start + chunk])
            exact[~valid] = -np.inf
            best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            rows = np.arange(len(cand))[:, None]
            top_scores = exact[rows, best]
            top_ids = np.where(np.isfinite(top_scores), cand[rows, best], -1)
            out_scores[start:start + chunk, :best.shape[1]] = top_scores
            out_ids[start:start + chunk, :best.shape[1]] = top_ids
        return out_scores, out_ids

    def _exact_among(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # A graph walk under a small filter visits mostly rejected nodes; a few thousand exact dot products are cheaper.
        import faiss

        all_ids = faiss.vector_to_array(self.faiss_index.id_map).astype(np.int64)
        rows = np.flatnonzero(np.isin(all_ids, allowed))
        vectors = self._hnsw().storage.reconstruct_batch(rows)
        scores, ids = exact_search(vectors, all_ids[rows], queries, k)
        if scores.shape[1] < k:
            pad = k - scores.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores.astype(np.float32), ids.astype(np.int64)

    def save(self, path: str | Path, generation: int) -> None:
        """Write the index and its sidecar atomically (temp file, fsync, rename)."""
        import faiss

        path = Path(path)
        self.meta.dim, self.meta.count, self.meta.generation = self.dim, self.ntotal, generation
        self.meta.deleted = self._deleted.tolist()
        data = faiss.serialize_index(self.faiss_index).tobytes()
        try:
            # Index first: a crash between the two leaves a sidecar with an older generation,
            # which only makes the next open reconcile the index with the catalog.
            atomic_write_bytes(path, data)
            atomic_write_bytes(_sidecar(path), json.dumps(asdict(self.meta), indent=1).encode())
        except OSError as exc:
            raise IndexFileError(
                f"could not save the index {path} ({exc.strerror or exc}); the index saved before is kept and "
                "the next open brings it up to date from the catalog: free some disk space and run again"
            ) from exc

    @classmethod
    def load(cls, path: str | Path) -> "VectorIndex":
        """Read an index saved by `save`; IndexFileError if it is missing or damaged."""
        import faiss

        path = Path(path)
        try:
            # By file, so an index built on Ray finds its memory-mapped .ivfdata beside it, wherever the folder moved.
            index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
        except (OSError, RuntimeError, ValueError) as exc:
            raise IndexFileError(f"index file {path} is missing or damaged ({exc})") from exc
        ivf = None if isinstance(index, faiss.IndexIDMap2) else _ivf_or_none(index)
        if not isinstance(index, faiss.IndexIDMap2) and ivf is None:
            raise IndexFileError(f"index file {path} is not a clipsearch index (no id map)")
        known = {f.name for f in fields(IndexMeta)}
        try:
            raw = json.loads(_sidecar(path).read_text())
            meta = IndexMeta(**{k: v for k, v in raw.items() if k in known})
        except (OSError, ValueError, TypeError):
            meta = _meta_from_index(index)  # sidecar lost: a reconcile will follow
        if not _sidecar_fits(index, ivf, meta):
            # A save killed between the index file and its sidecar: the sidecar's tombstones and
            # kind may be another file's. The file's own facts, and an unknown generation (so the
            # library reconciles it with the catalog), are safe.
            log.warning("index sidecar of %s (%s, %d vectors) does not describe the file beside it; trusting the file",
                        path, meta.kind, meta.count)
            meta = _meta_from_index(index)
        out = cls(index, meta)
        out._apply_search_params()
        return out


def saved_generation(path: str | Path) -> int | None:
    """The catalog generation the index saved at `path` matches, from its sidecar; None if unreadable."""
    try:
        return int(json.loads(_sidecar(Path(path)).read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sidecar_fits(index: Any, ivf: Any, meta: IndexMeta) -> bool:
    """Whether `meta` was saved with this index: the same family of kind and the same number of vectors."""
    import faiss

    if (ivf is not None) != (meta.kind in _IVF_KINDS):
        return False
    if ivf is None and isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW) != (meta.kind == "hnsw"):
        return False
    return meta.count + len(meta.deleted) == index.ntotal


def _ivf_or_none(index: Any) -> Any:
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, ValueError):
        return None


def _meta_from_index(index: Any) -> IndexMeta:
    """A best guess at the metadata of an index whose sidecar is gone."""
    import faiss

    ivf = _ivf_or_none(index)
    if ivf is not None:
        pre = isinstance(index, faiss.IndexPreTransform)
        inner = faiss.downcast_index(ivf)
        if isinstance(inner, faiss.IndexIVFPQ):
            kind, spec = ("pca-ivfpq" if pre else "ivfpq"), {"pq_m": inner.pq.M, "pq_bits": inner.pq.nbits}
        elif isinstance(inner, faiss.IndexIVFScalarQuantizer):
            bits = {faiss.ScalarQuantizer.QT_6bit: 6, faiss.ScalarQuantizer.QT_4bit: 4}.get(inner.sq.qtype, 8)
            kind, spec = f"ivfsq{bits}", {}
        else:
            kind, spec = "ivf", {}
        spec["nlist"] = ivf.nlist
        if pre:
            spec["pca_dim"] = ivf.d
        return IndexMeta(kind=kind, dim=index.d, count=index.ntotal, spec=spec, nprobe=ivf.nprobe,
                         factory=IndexSpec(kind, **spec).factory(index.d))
    sub = faiss.downcast_index(index.index)
    if isinstance(sub, faiss.IndexHNSW):
        m = sub.hnsw.nb_neighbors(1)
        return IndexMeta(kind="hnsw", dim=index.d, count=index.ntotal, spec={"hnsw_m": m},
                         factory=f"HNSW{m}", ef_search=sub.hnsw.efSearch)
    return IndexMeta(dim=index.d, count=index.ntotal, recall_at_10=1.0)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".json")


def _spec_fields(spec: IndexSpec) -> dict[str, Any]:
    return {k: v for k, v in asdict(spec).items() if k != "kind" and v}


# -- building -------------------------------------------------------------------------------
def build_index(spec: IndexSpec, dim: int, blocks: Iterable[tuple[np.ndarray, np.ndarray]], *,
                train: np.ndarray | None = None, queries: np.ndarray | None = None,
                target_recall: float = TARGET_RECALL, k: int = RECALL_K,
                exact_vectors: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None) -> VectorIndex:
    """Build an index of `spec` from (ids, vectors) blocks, tune it and measure its recall.

    Trained kinds need `train`, a sample of the vectors. With `queries`, the exact top-k of
    each is gathered while the blocks are added; the first half of the queries picks the
    smallest nprobe / efSearch reaching `target_recall`, the second half measures the
    recall@k stored in the metadata. Flat is exact: recall 1.0, no queries needed.
    `exact_vectors` (see `VectorIndex.exact_vectors`) is set on the index before tuning,
    so that kinds in `RERANK_DEPTH` are tuned and measured as they will search.
    """
    started = time.monotonic()
    index = _new_faiss_index(spec, dim)
    if spec.needs_training:
        if train is None or not len(train):
            raise IndexConfigError(f"a {spec.kind} index needs training vectors")
        _train(index, spec, np.ascontiguousarray(train, dtype=np.float32))
    meta = IndexMeta(kind=spec.kind, dim=dim, spec=_spec_fields(spec), factory=spec.factory(dim),
                     built_at=time.time())
    out = VectorIndex(index, meta)
    out.exact_vectors = exact_vectors
    exact = ExactTopK(queries, k) if queries is not None and len(queries) and spec.kind != "flat" else None
    for ids, vectors in blocks:
        out.add(ids, vectors)
        if exact is not None:
            exact.add(ids, vectors)
    if spec.kind == "flat":
        meta.recall_at_10, meta.recall_vectors = 1.0, out.ntotal
    elif exact is not None and out.ntotal:
        _tune(out, exact.queries, exact.result()[1], target_recall, k)
    elif spec.kind == "hnsw":
        out.set_search_param(64)
    elif spec.needs_training:
        out.set_search_param(max(1, spec.nlist // 64))
    meta.build_seconds = round(time.monotonic() - started, 3)
    log.info("built %s over %d vectors in %.1fs, recall@%d %s", out.describe(), out.ntotal, meta.build_seconds, k,
             meta.recall_at_10)
    return out


def _train(index: Any, spec: IndexSpec, train: np.ndarray) -> None:
    import faiss

    if spec.kind.startswith("pca-"):
        # PCA in faiss centres the data, and a centred projection changes inner products:
        # x·q becomes (x-m)·(q-m). Trained on the sample and its mirror image, the mean is
        # zero and the projection keeps the directions of the raw second moment (the CLIP
        # cone's shared direction included), so inner products are preserved.
        pre = faiss.downcast_index(index)
        pca = faiss.downcast_VectorTransform(pre.chain.at(0))
        half = train[: max(1, pca.max_points_per_d * train.shape[1] // 2)]  # faiss would subsample more
        pca.train(np.concatenate([half, -half]))
    index.train(train)


def _tune(index: VectorIndex, queries: np.ndarray, true_ids: np.ndarray, target: float, k: int) -> None:
    half = max(1, len(queries) // 2)
    tune_q, tune_ids = queries[:half], true_ids[:half]
    test_q, test_ids = (queries[half:], true_ids[half:]) if len(queries) > 1 else (tune_q, tune_ids)
    if index.spec.needs_training:
        nlist = index.spec.nlist
        # Steps of about 1.5x: doubling nprobe doubles the cost, so a coarser grid wastes speed.
        candidates = sorted({min(nlist, v) for i in range(0, 17) for v in (1 << i, 3 << i >> 1) if v >= 1})
    else:
        candidates = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]
    tried: list[tuple[int, float]] = []
    for value in candidates:
        index.set_search_param(max(value, k) if index.kind == "hnsw" else value)
        recall = recall_at_k(index.search(tune_q, k)[1], tune_ids, k)
        tried.append((value, recall))
        if recall >= target:
            break
        # Product codes cap recall below the target: stop once more probing stops helping.
        if len(tried) >= 3 and recall - tried[-3][1] < 0.005:
            break
    best = max(r for _, r in tried)
    chosen = next(v for v, r in tried if r >= min(target, best - 0.005))
    index.set_search_param(max(chosen, k) if index.kind == "hnsw" else chosen)
    index.meta.recall_at_10 = round(recall_at_k(index.search(test_q, k)[1], test_ids, k), 4)
    index.meta.recall_queries = len(test_q)
    index.meta.recall_vectors = index.ntotal
    log.debug("tuning %s: %s", index.kind, tried)


def recall_queries(vectors: np.ndarray, n: int | None = None, *, seed: int = 0) -> np.ndarray:
    """`n` text-like queries made from a sample of stored vectors; none of them is a stored vector.

    Each is a blend of two stored vectors (weights 0.5-1 and the rest: "a dog on a beach"),
    shifted by one offset common to all queries (norm QUERY_OFFSET, a stand-in for the
    text-image modality gap, whose direction is unknown here), plus isotropic noise of norm
    QUERY_NOISE, renormalised. Their best cosine to a stored vector is ~0.35, as for real
    CLIP text queries, and they are at least as hard for an IVF index as the benchmark's
    text-like queries (docs/performance.md); vectors near stored ones would be far easier
    and overstate recall.
    """
    rng = np.random.default_rng(seed)
    vectors = np.asarray(vectors, np.float32)
    n = len(vectors) if n is None else n
    a, b = vectors[rng.integers(0, len(vectors), n)], vectors[rng.integers(0, len(vectors), n)]
    w = rng.uniform(0.5, 1.0, (n, 1)).astype(np.float32)
    q = _unit_rows(w * a + (1 - w) * b)
    mean = vectors.mean(axis=0)
    offset = rng.standard_normal(vectors.shape[1]).astype(np.float32)
    if np.linalg.norm(mean) > 1e-6:
        mean /= np.linalg.norm(mean)
        offset -= (offset @ mean) * mean  # shifting along the shared direction would change no ranking
    offset *= QUERY_OFFSET / max(float(np.linalg.norm(offset)), 1e-12)
    eps = rng.standard_normal(q.shape).astype(np.float32)
    eps *= QUERY_NOISE / np.maximum(np.linalg.norm(eps, axis=1, keepdims=True), 1e-12)
    return _unit_rows(q + offset + eps)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def recall_at_k(found: np.ndarray, true: np.ndarray, k: int = RECALL_K) -> float:
    """Mean fraction of each row's true top-k found in its returned top-k (-1 ids never count)."""
    found, true = np.asarray(found)[:, :k], np.asarray(true)[:, :k]
    hits = total = 0
    for f, t in zip(found, true):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / total if total else 1.0


class ExactTopK:
    """Exact top-k by inner product accumulated over blocks of (ids, vectors): the oracle, streamed."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        self.k = k
        self.scores = np.full((len(self.queries), 0), -np.inf, np.float32)
        self.ids = np.zeros((len(self.queries), 0), np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray, chunk: int = 16384) -> None:
        ids = np.asarray(ids, np.int64)
        vectors = np.asarray(vectors, np.float32)
        # In chunks, so 1000 queries x a 100k block never materialise as a 400 MB score matrix.
        for start in range(0, len(ids), chunk):
            scores = self.queries @ vectors[start:start + chunk].T
            block_ids = ids[start:start + chunk]
            if scores.shape[1] > self.k:
                part = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
                scores, cand = np.take_along_axis(scores, part, 1), block_ids[part]
            else:
                cand = np.broadcast_to(block_ids, scores.shape)
            self._merge(scores, cand)

    def _merge(self, scores: np.ndarray, ids: np.ndarray) -> None:
        scores = np.concatenate([self.scores, scores], axis=1)
        ids = np.concatenate([self.ids, ids], axis=1)
        if scores.shape[1] > self.k:
            part = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
            scores, ids = np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
        self.scores, self.ids = scores, ids

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-self.scores, axis=1, kind="stable")
        return np.take_along_axis(self.scores, order, 1), np.take_along_axis(self.ids, order, 1)


def exact_search(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product in numpy: the oracle every fast path is checked against."""
    queries = np.atleast_2d(queries).astype(np.float32)
    scores = queries @ np.asarray(vectors, np.float32).T
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.asarray(ids)[order]


__all__ = [
    "AUTO", "FLAT_MAX_VECTORS", "INDEX_KINDS", "IndexConfigError", "IndexMeta", "IndexSpec", "VectorIndex",
    "ExactTopK", "atomic_write_bytes", "build_index", "choose_index", "exact_search", "format_size",
    "needs_rebuild", "nlist_for", "parse_size", "predict_bytes", "recall_at_k", "recall_queries",
    "remove_stale_temp_files", "RERANK_DEPTH", "saved_generation",
]
