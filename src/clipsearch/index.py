"""FAISS vector index over catalog ids: build, add, remove, search, atomic save and load.

Ids in the index are catalog ids (an `IndexIDMap2`), scores are inner products of
L2-normalised vectors (cosine similarity). The index knows nothing about paths.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.errors import IndexFileError

log = logging.getLogger(__name__)

# Index kinds by the name users type, as faiss index_factory strings (wrapped in IDMap2).
INDEX_KINDS: dict[str, str] = {
    "flat": "Flat",
}


@dataclass
class IndexMeta:
    """What the sidecar JSON records next to the index file."""

    kind: str = "flat"
    dim: int = 0
    count: int = 0
    generation: int = -1  # the catalog generation this index matches
    extra: dict[str, Any] = field(default_factory=dict)


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


class VectorIndex:
    """A FAISS index keyed by int64 ids, searched by inner product."""

    def __init__(self, index: Any, meta: IndexMeta) -> None:
        self.faiss_index = index
        self.meta = meta

    @classmethod
    def create(cls, dim: int, kind: str = "flat") -> "VectorIndex":
        import faiss

        if kind not in INDEX_KINDS:
            raise IndexFileError(f"unknown index kind {kind!r}; choose one of: {', '.join(INDEX_KINDS)}")
        index = faiss.index_factory(dim, f"IDMap2,{INDEX_KINDS[kind]}", faiss.METRIC_INNER_PRODUCT)
        return cls(index, IndexMeta(kind=kind, dim=dim))

    @property
    def dim(self) -> int:
        return int(self.faiss_index.d)

    @property
    def ntotal(self) -> int:
        return int(self.faiss_index.ntotal)

    def ids(self) -> np.ndarray:
        """Every id in the index, in insertion order."""
        import faiss

        return faiss.vector_to_array(self.faiss_index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors of shape {vectors.shape} do not fit an index of dimension {self.dim}")
        if len(ids):
            self.faiss_index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        import faiss

        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return 0
        return int(self.faiss_index.remove_ids(faiss.IDSelectorBatch(ids)))

    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row; missing results are id -1. `allowed_ids` restricts the candidates."""
        import faiss

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), max(self.ntotal, 1)))
        params = None
        if allowed_ids is not None:
            allowed_ids = np.ascontiguousarray(allowed_ids, dtype=np.int64)
            if not len(allowed_ids):
                return (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed_ids))
        scores, ids = self.faiss_index.search(queries, k, params=params)
        return scores, ids

    def save(self, path: str | Path, generation: int) -> None:
        """Write the index and its sidecar atomically (temp file, fsync, rename)."""
        import faiss

        path = Path(path)
        self.meta.dim, self.meta.count, self.meta.generation = self.dim, self.ntotal, generation
        data = faiss.serialize_index(self.faiss_index).tobytes()
        atomic_write_bytes(path, data)
        atomic_write_bytes(_sidecar(path), json.dumps(asdict(self.meta), indent=1).encode())

    @classmethod
    def load(cls, path: str | Path) -> "VectorIndex":
        """Read an index saved by `save`; IndexFileError if it is missing or damaged."""
        import faiss

        path = Path(path)
        try:
            data = np.fromfile(path, dtype=np.uint8)
            index = faiss.deserialize_index(data)
        except (OSError, RuntimeError, ValueError) as exc:
            raise IndexFileError(f"index file {path} is missing or damaged ({exc})") from exc
        if not isinstance(index, faiss.IndexIDMap2):
            raise IndexFileError(f"index file {path} is not a clipsearch index (no id map)")
        try:
            raw = json.loads(_sidecar(path).read_text())
            meta = IndexMeta(**{k: raw[k] for k in ("kind", "dim", "count", "generation", "extra") if k in raw})
        except (OSError, ValueError, TypeError):
            meta = IndexMeta(dim=index.d, count=index.ntotal)  # sidecar lost: a reconcile will follow
        return cls(index, meta)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".json")


def exact_search(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k by inner product in numpy: the oracle every fast path is checked against."""
    queries = np.atleast_2d(queries).astype(np.float32)
    scores = queries @ np.asarray(vectors, np.float32).T
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.asarray(ids)[order]
