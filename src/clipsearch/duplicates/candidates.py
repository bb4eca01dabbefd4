"""Candidate pairs for duplicate detection, never all pairs: CLIP neighbours and hash buckets.

* `clip_pairs`: each photo's `k` nearest neighbours by cosine similarity of the stored
  vectors, kept above a threshold. Exact (flat) search up to `FLAT_MAX`, above it an
  inverted-file index over the same vectors with a few probed lists: duplicates sit far
  closer together than anything the coarse quantiser could split.
* `hash_pairs`: photos whose 63-bit DCT hashes are within a Hamming distance under any of
  the four rotations (a pixel-rotated copy is far from its original in CLIP space). Found
  by multi-index hashing: the hash is cut into `HASH_PARTS` parts and two hashes within
  distance `HASH_PARTS - 1` share at least one part exactly (more often than not up to
  about twice that).

Both return unique (i, j) position pairs with i < j. faiss is imported lazily; no torch.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

FLAT_MAX = 50_000          # exact k-NN up to here (a few seconds at 50k); IVF above
IVF_NPROBE = 8
HASH_PARTS = 4
MAX_BUCKET = 64            # a hash part shared by more photos than this says nothing (blank frames)


def clip_pairs(vectors: np.ndarray, k: int = 16, min_similarity: float = 0.8, *,
               batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (P, 2) int64 positions with i < j, similarities (P,)) of each row's neighbours above the threshold."""
    import faiss

    n, dim = vectors.shape
    if n < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    k = min(k + 1, n)
    if n <= FLAT_MAX:
        index = faiss.IndexFlatIP(dim)
        index.add(x)
    else:
        nlist = int(2 ** round(np.log2(4 * np.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train = x[rng.choice(n, min(n, 64 * nlist), replace=False)]
        index.train(train)
        index.add(x)
        index.nprobe = IVF_NPROBE
    rows: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    for start in range(0, n, batch):
        d, i = index.search(x[start:start + batch], k)
        q = np.repeat(np.arange(start, start + len(d)), k).reshape(len(d), k)
        keep = (i >= 0) & (i != q) & (d >= min_similarity)
        a, b = q[keep], i[keep]
        rows.append(np.stack([np.minimum(a, b), np.maximum(a, b)], 1))
        sims.append(d[keep])
    pairs = np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)
    sim = np.concatenate(sims) if sims else np.zeros(0, np.float32)
    pairs, first = np.unique(pairs, axis=0, return_index=True)
    return pairs.astype(np.int64), sim[first].astype(np.float32)


# -- hashes ------------------------------------------------------------------------------
def _rotation_tables() -> list[tuple[np.ndarray, np.ndarray]]:
    """For 0/90/180/270 degrees: (source bit of each bit, flip mask) of the rotated hash."""
    from clipsearch.duplicates.pixels import HASH_BITS, rotate_hash

    n = len(HASH_BITS)
    tables = []
    for deg in (0, 90, 180, 270):
        flip = rotate_hash(0, deg)
        src = np.zeros(n, np.int64)
        for i in range(n):
            out = rotate_hash(1 << i, deg) ^ flip
            src[out.bit_length() - 1] = i
        tables.append((src, np.array([(flip >> b) & 1 for b in range(n)], np.uint8)))
    return tables


def _unpack(hashes: np.ndarray, n: int) -> np.ndarray:
    return ((hashes[:, None].astype(np.uint64) >> np.arange(n, dtype=np.uint64)[None, :]) & np.uint64(1)).astype(np.uint8)


def _pack(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint64) << np.arange(bits.shape[1], dtype=np.uint64)[None, :]).sum(axis=1).astype(np.int64)


def rotated_hashes(hashes: np.ndarray) -> np.ndarray:
    """(N, 4) the hashes of each picture turned by 0, 90, 180 and 270 degrees."""
    from clipsearch.duplicates.pixels import HASH_BITS

    n = len(HASH_BITS)
    bits = _unpack(np.asarray(hashes, np.int64), n)
    return np.stack([_pack(bits[:, src] ^ flip[None, :]) for src, flip in _rotation_tables()], 1)


def popcount(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.uint64)
    out = np.zeros(x.shape, np.int64)
    for shift in range(0, 64, 8):
        out += _POP8[((x >> np.uint64(shift)) & np.uint64(255)).astype(np.int64)]
    return out


_POP8 = np.array([bin(i).count("1") for i in range(256)], np.int64)


def hash_distances(hashes: np.ndarray, pairs: np.ndarray, *, with_rotation: bool = False
                   ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Smallest Hamming distance over the four rotations of the second hash, per pair
    (and, `with_rotation`, the degrees of the rotation that gives it; 0 on ties)."""
    rot = rotated_hashes(hashes)
    a = np.asarray(hashes, np.int64)[pairs[:, 0]]
    d = np.stack([popcount(a ^ rot[pairs[:, 1], r]) for r in range(4)], 1)
    best = d.min(axis=1)
    if not with_rotation:
        return best
    return best, 90 * np.argmin(d, axis=1)


def hash_pairs(hashes: np.ndarray, max_distance: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (P, 2) positions with i < j, distances) of hashes within `max_distance` under a rotation.

    Rows whose hash is negative (unknown) take no part.
    """
    from clipsearch.duplicates.pixels import HASH_BITS

    h = np.asarray(hashes, np.int64)
    known = np.flatnonzero(h >= 0)
    if len(known) < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    rot = rotated_hashes(h[known])                     # (M, 4)
    owner = np.repeat(np.arange(len(known)), 4)
    flat = rot.ravel()
    n = len(HASH_BITS)
    bounds = np.linspace(0, n, HASH_PARTS + 1).astype(int)
    found: list[np.ndarray] = []
    limit = 4 * MAX_BUCKET  # four rotations per photo
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = (flat >> lo) & ((1 << (hi - lo)) - 1)
        order = np.argsort(part, kind="stable")
        key, who = part[order], owner[order]
        _, counts = np.unique(key, return_counts=True)
        size = np.repeat(counts, counts)
        usable = (size >= 2) & (size <= limit)
        # Entries of one bucket sit next to each other: pair each with the ones d places on.
        for d in range(1, limit):
            same = usable[:-d] & (key[:-d] == key[d:])
            if not same.any():
                break
            a, b = who[:-d][same], who[d:][same]
            other = a != b
            found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], 1)[other])
    if not found:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.concatenate(found), axis=0)
    dist = hash_distances(h[known], pairs)
    keep = dist <= max_distance
    pairs = known[pairs[keep]]
    return np.stack([pairs.min(1), pairs.max(1)], 1), dist[keep]
