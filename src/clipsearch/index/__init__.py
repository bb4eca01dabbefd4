"""FAISS vector index over catalog ids: choice, build, add, remove, search, atomic save and load.

Ids in the index are catalog ids, scores are inner products of L2-normalised vectors
(cosine similarity). The index knows nothing about paths. One module per job:

| module | holds |
|---|---|
| `choose` | the kinds (`INDEX_KINDS`), `IndexSpec`, predicted sizes, `choose_index` under a memory budget |
| `vector_index` | `VectorIndex` (add, remove, search, re-rank, HNSW tombstones) and faiss construction |
| `store` | the index file and its JSON sidecar (`IndexMeta`): atomic save, defensive load |
| `tuning` | `build_index`: train, add, tune nprobe / efSearch to a target recall, measure recall@10 |
| `exact` | brute-force top-k, the oracle every fast path is checked against |
| `idset` | `IdSet`: the ids a filtered search may return, a mask over id space (FAISS bitmap selector) |
| `lifecycle` | `LibraryIndex`: one library's index kept in step with its catalog (load or rebuild, reconcile, fit, install) |

Everything public is importable from `clipsearch.index` itself.
"""
from __future__ import annotations

from clipsearch.atomic import atomic_write_bytes, remove_stale_temp_files
from clipsearch.index.choose import (
    AUTO, FLAT_MAX_VECTORS, HNSW_M, INDEX_KINDS, RECALL_K, RECALL_QUERIES, TARGET_RECALL, TRAIN_MAX,
    IndexConfigError, IndexSpec, choose_index, needs_rebuild, nlist_for, predict_bytes, spec_fields,
)
from clipsearch.index.exact import ExactTopK, exact_search
from clipsearch.index.idset import IdSet
from clipsearch.index.lifecycle import LibraryIndex, build_from_catalog, exact_vectors_from
from clipsearch.index.store import IndexMeta, saved_generation
from clipsearch.index.tuning import build_index, recall_at_k, recall_queries, tune
from clipsearch.index.vector_index import (
    HNSW_MAX_DELETED, RERANK_DEPTH, VectorIndex, new_faiss_index, train_index,
)
from clipsearch.sizes import format_size, parse_size

__all__ = [
    "AUTO", "FLAT_MAX_VECTORS", "HNSW_M", "HNSW_MAX_DELETED", "INDEX_KINDS", "RECALL_K", "RECALL_QUERIES",
    "RERANK_DEPTH", "TARGET_RECALL", "TRAIN_MAX", "ExactTopK", "IdSet", "IndexConfigError", "IndexMeta", "IndexSpec",
    "LibraryIndex", "VectorIndex", "atomic_write_bytes", "build_from_catalog", "build_index", "choose_index", "exact_search", "exact_vectors_from", "format_size",
    "needs_rebuild", "new_faiss_index", "nlist_for", "parse_size", "predict_bytes", "recall_at_k",
    "recall_queries", "remove_stale_temp_files", "saved_generation", "spec_fields", "train_index", "tune",
]
