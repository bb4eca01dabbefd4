"""Choosing an index: the kinds, their structural parameters, their predicted size, and `choose_index`.

Index kinds (`INDEX_KINDS`) and how `choose_index` picks one for `auto`:

* under `FLAT_MAX_VECTORS` vectors: `flat`, exact search (a scan of 100 MB or less
  per query at 512-d: a few milliseconds);
* above it: `ivfsq8` (inverted lists of 1-byte-per-dimension codes), trained on a sample
  of the stored vectors: as fast as `ivf` and as accurate once nprobe is tuned, at a
  quarter of the memory;
* with a memory budget (a cap, not a target): that choice if its predicted size fits,
  else the first of `ivfsq4` and `pca-ivfpq` with ever smaller codes that fits (see
  `BUDGET_LADDER`; a library re-ranks their candidates with its stored vectors). `ivf`
  (exact vectors in the lists), `ivfsq6` and `ivfpq` are there for the asking.

`hnsw` is never picked by `auto`: FAISS cannot remove from an HNSW graph, so removals
here are tombstones, filtered out at search and purged by rebuilding the graph from its
own stored vectors once they pass `HNSW_MAX_DELETED` of it. IVF kinds remove in place.

"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from clipsearch.errors import IndexFileError
from clipsearch.sizes import format_size

# Exact search up to here: above, a flat scan per query costs more than an ANN's recall loss is worth.
FLAT_MAX_VECTORS = 50_000
# Search parameters are tuned to the smallest that gives this recall@10 against exact search.
TARGET_RECALL = 0.96  # 0.95 wanted, with room for the estimate's error (about ±0.01)
RECALL_K = 10
# Held-out queries for tuning (first half) and for the stored recall figure (second half).
RECALL_QUERIES = 1000
# k-means and PQ training sample; more costs minutes on a laptop for little recall.
TRAIN_MAX = 100_000
HNSW_M = 32

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
SQ_BITS = {"ivfsq8": 8, "ivfsq6": 6, "ivfsq4": 4}
IVF_KINDS = frozenset({"ivf", *SQ_BITS, "ivfpq", "pca-ivfpq"})


class IndexConfigError(IndexFileError):
    """An index kind, memory budget or build parameter cannot be used.

    A subclass of IndexFileError, which an unknown kind raised before index choice existed.
    """


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
        return self.kind in IVF_KINDS

    def factory(self, dim: int) -> str:
        """The faiss index_factory string (without the id map)."""
        pca = f"PCAR{self.pca_dim}," if self.kind.startswith("pca-") else ""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m}"
        if self.kind in ("ivf",):
            return f"IVF{self.nlist},Flat"
        if self.kind in SQ_BITS:
            return f"IVF{self.nlist},SQ{SQ_BITS[self.kind]}"
        if self.kind in ("ivfpq", "pca-ivfpq"):
            return f"{pca}IVF{self.nlist},PQ{self.pq_m}x{self.pq_bits}"
        raise IndexConfigError(unknown_kind(self.kind))

    def describe(self, dim: int) -> str:
        return f"{self.kind} ({self.factory(dim)})"


def unknown_kind(kind: str) -> str:
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


def spec_for(kind: str, n: int, dim: int, pq_ratio: int = 8) -> IndexSpec:
    """The structural parameters of `kind` for `n` vectors of `dim` dimensions."""
    if kind == "flat":
        return IndexSpec("flat")
    if kind == "hnsw":
        return IndexSpec("hnsw", hnsw_m=HNSW_M)
    if kind not in IVF_KINDS:
        raise IndexConfigError(unknown_kind(kind))
    nlist = nlist_for(n)
    if kind == "ivf" or kind in SQ_BITS:
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
BUDGET_LADDER: tuple[tuple[str, int], ...] = (
    ("ivfsq8", 0), ("ivfsq4", 0), ("pca-ivfpq", 8), ("pca-ivfpq", 16), ("pca-ivfpq", 32),
)
# Without a budget, above FLAT_MAX_VECTORS: the ladder's first rung.
_AUTO_ANN = BUDGET_LADDER[0][0]


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
    elif spec.kind in SQ_BITS:
        code, size = math.ceil(inner * SQ_BITS[spec.kind] / 8), size + 8 * inner
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
    fits, else the first rung of `BUDGET_LADDER` that does. A named kind is built as asked; a budget then only sizes its
    product codes, and IndexConfigError says so when nothing fits.
    """
    if kind != AUTO and kind not in INDEX_KINDS:
        raise IndexConfigError(unknown_kind(kind))
    if kind != AUTO:
        spec = spec_for(kind, n, dim)
        if max_memory and predict_bytes(spec, n, dim) > max_memory and kind in ("ivfpq", "pca-ivfpq"):
            for ratio in (16, 32, 64):
                spec = spec_for(kind, n, dim, ratio)
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
        return candidates[0] if candidates else spec_for(_AUTO_ANN, n, dim)
    candidates += [spec_for(k, n, dim, ratio or 8) for k, ratio in BUDGET_LADDER]
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


def spec_fields(spec: IndexSpec) -> dict[str, Any]:
    """The structural parameters of `spec` that are set, as stored in `IndexMeta.spec`."""
    return {k: v for k, v in asdict(spec).items() if k != "kind" and v}


__all__ = [
    "AUTO", "BUDGET_LADDER", "FLAT_MAX_VECTORS", "HNSW_M", "INDEX_KINDS", "IVF_KINDS", "IndexConfigError", "IndexSpec",
    "RECALL_K", "RECALL_QUERIES", "SQ_BITS", "TARGET_RECALL", "TRAIN_MAX", "choose_index", "needs_rebuild",
    "nlist_for", "predict_bytes", "spec_fields", "spec_for", "unknown_kind",
]
