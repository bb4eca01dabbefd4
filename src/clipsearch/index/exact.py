"""Exact top-k by inner product: the brute-force oracle every fast path is checked against."""
from __future__ import annotations

import numpy as np


def block_top_k(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of `queries` among one block of (ids, vectors), by `faiss.knn`.

    (scores, ids), each (n queries, k), best first; missing results are id -1 (score -3.4e38).
    """
    import faiss

    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    scores, pos = faiss.knn(queries, np.ascontiguousarray(vectors, dtype=np.float32), k,
                            metric=faiss.METRIC_INNER_PRODUCT)
    ids = np.asarray(ids, np.int64)
    return scores, np.where(pos >= 0, ids[np.maximum(pos, 0)] if len(ids) else -1, -1)


class ExactTopK:
    """Exact top-k by inner product accumulated over blocks of (ids, vectors): the oracle, streamed.

    Each block's top-k comes from `block_top_k`, and the blocks are merged in a
    `faiss.ResultHeap`.
    """

    def __init__(self, queries: np.ndarray, k: int) -> None:
        import faiss

        self.queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        self.k = k
        self._heap = faiss.ResultHeap(len(self.queries), k, keep_max=True)
        self._result: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, ids: np.ndarray, vectors: np.ndarray, chunk: int = 16384) -> None:
        ids = np.asarray(ids, np.int64)
        vectors = np.asarray(vectors, np.float32)
        if self._result is not None:
            raise ValueError("ExactTopK.add after result()")
        # In chunks, so 1000 queries x a 100k block never materialise as a 400 MB score matrix.
        for start in range(0, len(ids), chunk):
            self._heap.add_result(*block_top_k(self.queries, vectors[start:start + chunk], ids[start:start + chunk],
                                               self.k))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n queries, k), best first; id -1 where fewer than k vectors were added."""
        if self._result is None:
            self._heap.finalize()
            self._result = (self._heap.D, self._heap.I)
        return self._result


def exact_search(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product in numpy: the oracle every fast path is checked against."""
    queries = np.atleast_2d(queries).astype(np.float32)
    scores = queries @ np.asarray(vectors, np.float32).T
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.asarray(ids)[order]


__all__ = ["ExactTopK", "block_top_k", "exact_search"]
