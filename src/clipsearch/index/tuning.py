"""Building an index from blocks of vectors, tuning its search parameter, measuring its recall.

After a build, the search parameter (`nprobe`, `efSearch`) is the smallest that reaches
`TARGET_RECALL` recall@10 against exact search on held-out queries, and the recall
reached on a second, separate half of them is stored with the index. Kinds that re-rank
(see `vector_index.RERANK_DEPTH`) are tuned and measured re-ranked, which is what a
library's queries get.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

import numpy as np

from clipsearch.index.choose import RECALL_K, TARGET_RECALL, IndexConfigError, IndexSpec, spec_fields
from clipsearch.index.exact import ExactTopK
from clipsearch.index.store import IndexMeta
from clipsearch.index.vector_index import VectorIndex, new_faiss_index, train_index

log = logging.getLogger(__name__)

# How far the held-out queries are from stored vectors (see `recall_queries`).
QUERY_OFFSET = 2.0
QUERY_NOISE = 1.5


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
    index = new_faiss_index(spec, dim)
    if spec.needs_training:
        if train is None or not len(train):
            raise IndexConfigError(f"a {spec.kind} index needs training vectors")
        train_index(index, spec, np.ascontiguousarray(train, dtype=np.float32))
    meta = IndexMeta(kind=spec.kind, dim=dim, spec=spec_fields(spec), factory=spec.factory(dim),
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
        tune(out, exact.queries, exact.result()[1], target_recall, k)
    elif spec.kind == "hnsw":
        out.set_search_param(64)
    elif spec.needs_training:
        out.set_search_param(max(1, spec.nlist // 64))
    meta.build_seconds = round(time.monotonic() - started, 3)
    log.info("built %s over %d vectors in %.1fs, recall@%d %s", out.describe(), out.ntotal, meta.build_seconds, k,
             meta.recall_at_10)
    return out



def tune(index: VectorIndex, queries: np.ndarray, true_ids: np.ndarray, target: float = TARGET_RECALL,
         k: int = RECALL_K) -> None:
    """Set `index`'s search parameter from the first half of `queries` (exact answers `true_ids`); store the recall on the second."""
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


__all__ = ["QUERY_NOISE", "QUERY_OFFSET", "build_index", "recall_at_k", "recall_queries", "tune"]
