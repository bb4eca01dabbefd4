"""Exact top-k by inner product: the brute-force oracle every fast path is checked against."""
from __future__ import annotations

import numpy as np


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


__all__ = ["ExactTopK", "exact_search"]
