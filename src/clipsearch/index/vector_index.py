"""`VectorIndex`: a FAISS index keyed by catalog ids, searched by inner product; its faiss construction.

`hnsw` removals are tombstones: FAISS cannot remove from an HNSW graph, so removed ids
are filtered out at search and purged by rebuilding the graph from its own stored
vectors once they pass `HNSW_MAX_DELETED` of it. IVF kinds remove in place.

Flat and HNSW indexes sit in an `IndexIDMap2`; IVF kinds hold catalog ids in their
inverted lists instead, because `IndexIDMap2.remove_ids` over an IVF index compacts the
id map while the lists keep the old positions, so every id after a removed one would
come back wrong.

Kinds whose codes lose much (`RERANK_DEPTH`: SQ6, SQ4 and the product-quantised ones)
re-rank their candidates with the exact vectors when the index is given a source of them
(`VectorIndex.exact_vectors`; a library hands its catalog, which stores every vector): a
deeper candidate list is scored exactly and the best `k` kept.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from clipsearch.index.choose import (
    INDEX_KINDS, RECALL_K, IndexConfigError, IndexSpec, predict_bytes, spec_fields, spec_for, unknown_kind,
)
from clipsearch.index.exact import exact_search
from clipsearch.index.idset import IdSet
from clipsearch.index.store import IndexMeta, read_index_file, write_index_file


def _unique(values: np.ndarray) -> np.ndarray:
    """np.unique for a 1-d array, without importing numpy.ma (np.unique does, ~15 ms of a cold query)."""
    out = np.sort(np.asarray(values).ravel())
    if out.size < 2:
        return out
    keep = np.empty(out.size, bool)
    keep[0] = True
    np.not_equal(out[1:], out[:-1], out=keep[1:])
    return out[keep]

log = logging.getLogger(__name__)

KMEANS_ITERATIONS = 10
HNSW_EF_CONSTRUCTION = 40
# Tombstones in an HNSW graph past this fraction trigger a rebuild of the graph.
HNSW_MAX_DELETED = 0.2
# Filtered HNSW search with fewer allowed ids than this fraction is done exactly.
HNSW_EXACT_FILTER = 0.05
# Candidates re-ranked with exact vectors per 10 results asked, for lossy codes. From an
# exploratory run at the nprobe tuned before re-ranking, on 100k CLIP-like vectors with
# text-like queries (bench/common.py): ivfpq
# 0.45 -> 0.86 (top 100) / 0.88 (top 200); pca-ivfpq 0.51 -> 0.88 / 0.90; ivfsq4 0.78 ->
# 0.94 (top 50; deeper adds nothing); ivfsq6 0.92 -> 0.95 (the rest is nprobe's). Tuned
# with re-ranking, at 1M: ivfsq4 0.974, ivfpq 0.901, pca-ivfpq 0.936 (docs/performance.md).
RERANK_DEPTH = {"ivfsq6": 50, "ivfsq4": 50, "ivfpq": 200, "pca-ivfpq": 200}


def new_faiss_index(spec: IndexSpec, dim: int) -> Any:
    """An empty faiss index of `spec` by inner product: IVF kinds bare (ids in their lists), others in an IDMap2."""
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



def train_index(index: Any, spec: IndexSpec, train: np.ndarray) -> None:
    """Train the empty faiss `index` of `spec` (from `new_faiss_index`) on the sample `train`."""
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



class VectorIndex:
    """A FAISS index keyed by int64 catalog ids, searched by inner product."""

    def __init__(self, index: Any, meta: IndexMeta) -> None:
        self.faiss_index = index
        self.meta = meta
        self._deleted = _unique(np.asarray(meta.deleted, dtype=np.int64))
        # ids -> (ids found, their exact vectors), in any order: see `rerank_depth`.
        self.exact_vectors: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    @classmethod
    def create(cls, dim: int, kind: str = "flat") -> "VectorIndex":
        """An empty index of a kind that needs no training (flat, hnsw); `build_index` makes the others."""
        spec = spec_for(kind, 0, dim) if kind in INDEX_KINDS else None
        if spec is None:
            raise IndexConfigError(unknown_kind(kind))
        if spec.needs_training:
            raise IndexConfigError(f"a {kind} index must be trained on vectors: build it with build_index")
        meta = IndexMeta(kind=kind, dim=dim, spec=spec_fields(spec), factory=spec.factory(dim),
                         ef_search=64 if kind == "hnsw" else 0, recall_at_10=1.0 if kind == "flat" else None)
        index = cls(new_faiss_index(spec, dim), meta)
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

        ids = _unique(np.ascontiguousarray(ids, dtype=np.int64))
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
        fresh = new_faiss_index(self.spec, self.dim)
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

    def _params(self, sel: Any, fraction: float, k: int, effort: float = 1.0) -> Any:
        import faiss

        if self.spec.needs_training:
            # Keep the expected number of allowed candidates scanned as without a filter.
            nprobe = math.ceil((self.meta.nprobe or 1) * effort)
            if fraction < 1.0:
                nprobe = math.ceil(nprobe / max(fraction, 1e-9))
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(min(self.spec.nlist, nprobe)))
        if self.kind == "hnsw":
            ef = max(math.ceil((self.meta.ef_search or 64) * effort), k)
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(min(4096, ef / max(fraction, 1e-9))))
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def search(self, queries: np.ndarray, k: int, allowed_ids: "np.ndarray | IdSet | None" = None, *,
               effort: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row; missing results are id -1. `allowed_ids` restricts the candidates.

        An `IdSet` goes to FAISS as an `IDSelectorBitmap` (one bit lookup per candidate,
        nothing to sort or hash), an array of ids as an `IDSelectorBatch`.

        `effort` multiplies the tuned search parameter (nprobe, efSearch) for this call: a
        deep list (hundreds of hits, filtered afterwards) needs more than the top 10 it was
        tuned for (measured: docs/performance.md, "Filtered search").
        """
        import faiss

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), max(self.ntotal, 1)))
        sel = None
        keep_alive: list[Any] = []  # faiss selectors hold raw pointers to these
        fraction = 1.0
        if isinstance(allowed_ids, IdSet):
            id_set = allowed_ids.without(self._deleted) if len(self._deleted) else allowed_ids
            if not len(id_set):
                return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
            fraction = len(id_set) / max(self.ntotal, 1)
            if self.kind == "hnsw" and fraction < HNSW_EXACT_FILTER:
                return self._exact_among(queries, k, id_set.ids)
            sel, bitmap = id_set.selector()
            keep_alive.append(bitmap)
        elif allowed_ids is not None:
            allowed = _unique(np.ascontiguousarray(allowed_ids, dtype=np.int64))
            if len(self._deleted):
                allowed = np.setdiff1d(allowed, self._deleted, assume_unique=True)
            if not len(allowed):
                return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
            fraction = len(allowed) / max(self.ntotal, 1)
            if self.kind == "hnsw" and fraction < HNSW_EXACT_FILTER:
                return self._exact_among(queries, k, allowed)
            sel = faiss.IDSelectorBatch(allowed)
        elif len(self._deleted):
            inner = faiss.IDSelectorBatch(self._deleted)
            keep_alive.append(inner)
            sel = faiss.IDSelectorNot(inner)
        depth = min(self.rerank_depth(k), max(self.ntotal, 1))
        fetch = max(k, depth)
        params = self._params(sel, fraction, fetch, effort)
        if params is None and effort != 1.0 and self.spec.needs_training:
            params = faiss.SearchParametersIVF(nprobe=int(min(self.spec.nlist, math.ceil((self.meta.nprobe or 1) * effort))))
        scores, ids = self.faiss_index.search(queries, fetch, params=params)
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
        wanted = _unique(candidates[candidates >= 0])
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
        self.meta.dim, self.meta.count, self.meta.generation = self.dim, self.ntotal, generation
        self.meta.deleted = self._deleted.tolist()
        write_index_file(path, self.faiss_index, self.meta)

    @classmethod
    def load(cls, path: str | Path) -> "VectorIndex":
        """Read an index saved by `save`; IndexFileError if it is missing or damaged."""
        index, meta = read_index_file(path)
        out = cls(index, meta)
        out._apply_search_params()
        return out


__all__ = ["HNSW_MAX_DELETED", "RERANK_DEPTH", "VectorIndex", "new_faiss_index", "train_index"]
