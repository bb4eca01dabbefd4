"""An index on disk: the faiss file and its JSON sidecar (`IndexMeta`), written atomically, read defensively.

The index file is written first and the sidecar second: a crash between the two leaves a
sidecar with an older generation, which only makes the next open reconcile the index with
the catalog. A sidecar that does not describe the file beside it (lost, or another
save's) is replaced by what the file itself says, with an unknown generation.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from clipsearch import atomic
from clipsearch.errors import IndexFileError
from clipsearch.index.choose import IVF_KINDS, IndexSpec

log = logging.getLogger(__name__)


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


def write_index_file(path: str | Path, faiss_index: Any, meta: IndexMeta) -> None:
    """Write a faiss index and its sidecar atomically (temp file, fsync, rename); IndexFileError on failure."""
    import faiss

    path = Path(path)
    data = faiss.serialize_index(faiss_index).tobytes()
    try:
        # Index first: a crash between the two leaves a sidecar with an older generation,
        # which only makes the next open reconcile the index with the catalog.
        atomic.atomic_write_bytes(path, data)
        atomic.atomic_write_bytes(sidecar_path(path), json.dumps(asdict(meta), indent=1).encode())
    except OSError as exc:
        raise IndexFileError(
            f"could not save the index {path} ({exc.strerror or exc}); the index saved before is kept and "
            "the next open brings it up to date from the catalog: free some disk space and run again"
        ) from exc


def read_index_file(path: str | Path) -> tuple[Any, IndexMeta]:
    """The faiss index saved at `path` and its metadata; IndexFileError if it is missing or damaged."""
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
        raw = json.loads(sidecar_path(path).read_text())
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
    return index, meta


def saved_generation(path: str | Path) -> int | None:
    """The catalog generation the index saved at `path` matches, from its sidecar; None if unreadable."""
    try:
        return int(json.loads(sidecar_path(Path(path)).read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sidecar_fits(index: Any, ivf: Any, meta: IndexMeta) -> bool:
    """Whether `meta` was saved with this index: the same family of kind and the same number of vectors."""
    import faiss

    if (ivf is not None) != (meta.kind in IVF_KINDS):
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


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of the index file at `path`."""
    return path.with_suffix(path.suffix + ".json")


__all__ = ["IndexMeta", "read_index_file", "saved_generation", "sidecar_path", "write_index_file"]
