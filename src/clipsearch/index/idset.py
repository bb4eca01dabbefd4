"""`IdSet`: the ids a filtered search may return, as a boolean mask over id space.

A filter letting half of a million photos through is half a million ids: held as a
sorted array, every search would sort it, hash it into a FAISS `IDSelectorBatch` or
`np.isin` its candidates against it, tens of milliseconds each. As a mask, membership is
one lookup, the FAISS selector is an `IDSelectorBitmap` over the packed mask (125 kB for
a million ids), and the sorted ids are made only when someone asks (a narrow set's exact
search does).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["IdSet"]


class IdSet:
    """A set of non-negative integer ids held as `mask` (mask[i] is True when id i is in the set).

    Ids at or past `len(mask)` are not in the set. Treat it as immutable: the count, the
    sorted ids and the FAISS bitmap are computed once, when first asked for.
    """

    __slots__ = ("mask", "_count", "_ids", "_bitmap")

    def __init__(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.ndim != 1:
            raise ValueError(f"an IdSet mask is a 1-d boolean array, got {mask.dtype} with shape {mask.shape}")
        self.mask = mask
        self._count: int | None = None
        self._ids: np.ndarray | None = None
        self._bitmap: np.ndarray | None = None

    @classmethod
    def from_ids(cls, ids: Iterable[int] | np.ndarray, size: int = 0) -> "IdSet":
        """The set of `ids` (repeats allowed; ValueError for a negative id), over at least `size` ids."""
        arr = np.asarray(ids if isinstance(ids, np.ndarray) else np.fromiter(ids, np.int64), dtype=np.int64).ravel()
        if len(arr) and int(arr.min()) < 0:
            raise ValueError(f"ids must be non-negative, got {int(arr.min())}")
        mask = np.zeros(max(int(size), int(arr.max()) + 1 if len(arr) else 0), np.bool_)
        mask[arr] = True
        return cls(mask)

    def __len__(self) -> int:
        if self._count is None:
            self._count = int(np.count_nonzero(self.mask))
        return self._count

    def __repr__(self) -> str:
        return f"IdSet({len(self)} ids of {len(self.mask)})"

    @property
    def ids(self) -> np.ndarray:
        """The ids in the set, sorted, int64."""
        if self._ids is None:
            self._ids = np.flatnonzero(self.mask).astype(np.int64)
        return self._ids

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Whether each of `ids` is in the set (False for -1 padding and ids past the mask), same shape."""
        ids = np.asarray(ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < len(self.mask))
        out = np.zeros(ids.shape, np.bool_)
        out[inside] = self.mask[ids[inside]]
        return out

    def without(self, ids: np.ndarray) -> "IdSet":
        """A new set: this one less `ids`."""
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < len(self.mask))]
        if not len(ids) or not self.contains(ids).any():
            return self
        mask = self.mask.copy()
        mask[ids] = False
        return IdSet(mask)

    def __and__(self, other: "IdSet") -> "IdSet":
        n = min(len(self.mask), len(other.mask))
        return IdSet(self.mask[:n] & other.mask[:n])

    def bitmap(self) -> np.ndarray:
        """The mask packed 8 ids a byte, low bit first: the layout of FAISS's `IDSelectorBitmap`.

        Keep the array alive as long as a selector made from it is in use (FAISS holds a raw pointer).
        """
        if self._bitmap is None:
            self._bitmap = np.packbits(self.mask, bitorder="little")
        return self._bitmap

    def selector(self) -> tuple[object, np.ndarray]:
        """A FAISS `IDSelectorBitmap` for the set and the array it points into (keep both alive while searching)."""
        import faiss

        bitmap = self.bitmap()
        return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap
