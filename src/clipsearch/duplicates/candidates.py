"""Candidate pairs for duplicate detection, never all pairs: CLIP neighbours and hash buckets.

* `clip_pairs`: each photo's `k` nearest neighbours above a cosine threshold among the
  stored vectors. Exact up to `FLAT_MAX` photos; above it a *cluster join*: √(8n) k-means
  centroids trained on a sample (in a 128-d PCA projection), every photo filed under its
  nearest centroid and compared, by one matrix product per centroid, with the photos
  filed under its `nprobe` nearest centroids. That is the work of an inverted-file index
  searched with the whole library as queries, but done as dense matrix products (BLAS,
  single-threaded, one worker thread per core) instead of one memory-bound scan per query;
  it grows as n·√n (2 min of CPU at 1M photos on 2 cores, docs/duplicates.md). Duplicates
  sit far closer together than anything the centroids split.
* `hash_pairs`: photos whose 63-bit DCT hashes are within a Hamming distance under any of
  the four rotations (a pixel-rotated copy is far from its original in CLIP space). Found
  by multi-index hashing: the hash is cut into parts; each rotation of each hash is looked
  up, part by part, among the unrotated hashes sorted by that part, and the candidates
  that share a part are kept when the whole hash is near enough. With p parts every pair
  within p - 1 bits shares a part (pigeonhole), most pairs up to twice that. Fewer, longer
  parts meet fewer unrelated hashes by chance: `hash_pairs` uses 4 parts while the
  buckets stay small (up to ~300k photos of random hashes) and 3 (then 2) above.

Both return unique (i, j) position pairs with i < j as int32 arrays: nothing per pair is a
Python object, so a million photos' ~10 million candidate pairs take ~80 MB. faiss is
imported lazily; no torch.
"""
from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

FLAT_MAX = 5_000           # exact k-NN up to here (a fraction of a second); the cluster join above
NPROBE = 8                 # centroids each photo is compared under (its nearest and the next 7)
PCA_DIM = 128              # the cells are found in a projection this wide
HASH_PARTS = (4, 3, 2)     # multi-index hashing: the most parts whose join stays under HASH_BUDGET
HASH_BUDGET = 64           # ... candidate hash pairs per photo
MAX_BUCKET = 64            # a hash part shared by more photos than this says nothing (blank frames)


def _empty_pairs() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 2), np.int32), np.zeros(0, np.float32)


def _unique_pairs(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique (min, max) pairs as int32 (P, 2), index of each one's first occurrence)."""
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    key, first = np.unique(lo * n + hi, return_index=True)
    return np.stack([key // n, key % n], 1).astype(np.int32), first


def _top_k(q: np.ndarray, j: np.ndarray, s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k most similar (q, j, s) rows of each q (only the rows of a q with more than k are sorted)."""
    crowded = np.bincount(q)[q] > k
    if not crowded.any():
        return q, j, s
    cq, cj, cs = q[crowded], j[crowded], s[crowded]
    # One integer key sorts by q, then by similarity, highest first (s is a cosine: 2 - s is in [1, 3]).
    order = np.argsort((cq.astype(np.int64) << 32) | ((2.0 - cs.astype(np.float64)) * 2 ** 30).astype(np.int64))
    cq, cj, cs = cq[order], cj[order], cs[order]
    start = np.r_[0, np.flatnonzero(cq[1:] != cq[:-1]) + 1]
    rank = np.arange(len(cq)) - np.repeat(start, np.diff(np.r_[start, len(cq)]))
    keep = rank < k
    calm = ~crowded
    return (np.concatenate([q[calm], cq[keep]]), np.concatenate([j[calm], cj[keep]]),
            np.concatenate([s[calm], cs[keep]]))


def clip_pairs(vectors: np.ndarray, k: int = 16, min_similarity: float = 0.8, *,
               nprobe: int = NPROBE, flat_max: int = FLAT_MAX, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (P, 2) int32 positions with i < j, similarities (P,) float32): each row's k most
    similar other rows at cosine >= `min_similarity` (rows are unit vectors).

    Exact up to `flat_max` rows, the cluster join above (module docstring).
    """
    n, dim = vectors.shape
    if n < 2:
        return _empty_pairs()
    if n <= flat_max:
        everyone = np.arange(n)
        blocks = iter([(everyone, everyone)])
    else:
        blocks = _cell_blocks(vectors, nprobe, seed)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def join(block: tuple[np.ndarray, np.ndarray]) -> None:
        members, queries = block
        if len(queries) == 0 or len(members) == 0:
            return
        db = np.asarray(vectors[members], np.float32)
        for start in range(0, len(queries), 2048):
            rows = queries[start:start + 2048]
            sim = np.asarray(vectors[rows], np.float32) @ db.T
            hit = sim >= min_similarity
            hit &= rows[:, None] != members[None, :]
            crowded = np.flatnonzero(hit.sum(axis=1) > k)
            if len(crowded):
                # At most each row's k most similar of this block: the k-th largest is its floor.
                part = np.where(hit[crowded], sim[crowded], -np.inf)
                floor = -np.partition(-part, k - 1, axis=1)[:, k - 1]
                hit[crowded] &= part >= floor[:, None]
            r, c = np.nonzero(hit)
            # One append of the three (list.append is atomic): the worker threads share the list.
            found.append((rows[r].astype(np.int32), members[c].astype(np.int32), sim[r, c]))

    # Many small matrix products: one single-threaded BLAS call per worker thread. A
    # multi-threaded BLAS synchronises its threads in every small product, and on a busy
    # machine that cost 8x the CPU time (docs/performance.md).
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    held, limit = 0, 2 * k * n + 1_000_000
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(max(1, min(workers(), 8))) as pool:
        while True:
            batch = [b for _, b in zip(range(64), blocks)]
            if not batch:
                break
            list(pool.map(join, batch))
            held += sum(len(f[0]) for f in found)
            kept += found
            found.clear()
            if held > limit:   # each row's k best so far: memory stays ~12 bytes x 2kn
                q, j, s = _top_k(*(np.concatenate([f[i] for f in kept]) for i in range(3)), k)
                kept, held = [(q, j, s)], len(q)
                limit = 2 * held + k * n + 1_000_000
    if not kept:
        return _empty_pairs()
    q, j, s = _top_k(*(np.concatenate([f[i] for f in kept]) for i in range(3)), k)
    del kept
    order = np.argsort(-s, kind="stable")           # keep each pair's similarity from its best side
    pairs, first = _unique_pairs(q[order], j[order], n)
    return pairs, s[order][first].astype(np.float32)


def workers() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def _cell_blocks(vectors: np.ndarray, nprobe: int, seed: int):
    """Yield (the photos filed under a centroid, the photos that probe it) for every centroid.

    Centroids: k-means on a sample. Each photo is filed under its nearest centroid and
    probes its `nprobe` nearest, found in a 128-d PCA projection (the join itself compares
    the full vectors).
    """
    import faiss

    n, dim = vectors.shape
    nprobe = max(1, nprobe)
    nlist = max(16, int(np.sqrt(nprobe * n)))          # balances filing against comparing
    rng = np.random.default_rng(seed)
    sample = np.asarray(vectors[np.sort(rng.choice(n, min(n, 32 * nlist), replace=False))], np.float32)
    if dim > PCA_DIM:
        pca = faiss.PCAMatrix(dim, PCA_DIM)
        pca.train(sample)
        project = pca.apply_py
    else:
        def project(x: np.ndarray) -> np.ndarray:
            return x
    sample = project(sample)
    km = faiss.Kmeans(sample.shape[1], nlist, niter=10, seed=seed, min_points_per_centroid=1,
                      max_points_per_centroid=32)
    km.train(sample)
    del sample
    index = faiss.IndexFlatL2(km.centroids.shape[1])
    index.add(km.centroids)
    probe = np.empty((n, nprobe), np.int32)
    for start in range(0, n, 32768):
        _, probe[start:start + 32768] = index.search(project(np.asarray(vectors[start:start + 32768], np.float32)),
                                                     nprobe)
    home = probe[:, 0]
    by_home = np.argsort(home, kind="stable").astype(np.int32)
    home_bounds = np.searchsorted(home[by_home], np.arange(nlist + 1))
    flat = probe.ravel()
    by_probe = np.argsort(flat, kind="stable")
    probe_bounds = np.searchsorted(flat[by_probe], np.arange(nlist + 1))
    asker = (by_probe // nprobe).astype(np.int32)
    del flat, by_probe, probe
    log.debug("duplicates: cluster join of %d vectors over %d centroids, %d probed", n, nlist, nprobe)
    for c in range(nlist):
        yield by_home[home_bounds[c]:home_bounds[c + 1]], asker[probe_bounds[c]:probe_bounds[c + 1]]


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


def rotated_hashes(hashes: np.ndarray, batch: int = 262_144) -> np.ndarray:
    """(N, 4) the hashes of each picture turned by 0, 90, 180 and 270 degrees."""
    from clipsearch.duplicates.pixels import HASH_BITS

    nbits = len(HASH_BITS)
    h = np.asarray(hashes, np.int64)
    tables = _rotation_tables()
    out = np.empty((len(h), 4), np.int64)
    shifts = np.arange(nbits, dtype=np.uint64)
    for start in range(0, len(h), batch):
        bits = ((h[start:start + batch, None].astype(np.uint64) >> shifts[None, :]) & np.uint64(1)).astype(np.uint8)
        for r, (src, flip) in enumerate(tables):
            turned = (bits[:, src] ^ flip[None, :]).astype(np.uint64)
            out[start:start + batch, r] = (turned << shifts[None, :]).sum(axis=1).astype(np.int64)
    return out


_POP8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each (64-bit) integer."""
    x = np.asarray(x)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x.astype(np.uint64)).astype(np.int64)
    u = x.astype(np.uint64)
    out = np.zeros(u.shape, np.int64)
    for shift in range(0, 64, 8):
        out += _POP8[((u >> np.uint64(shift)) & np.uint64(255)).astype(np.int64)]
    return out


def hash_distances(hashes: np.ndarray, pairs: np.ndarray, *, with_rotation: bool = False
                   ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Smallest Hamming distance over the four rotations of the second hash, per pair
    (and, `with_rotation`, the degrees of the rotation that gives it; 0 on ties)."""
    h = np.asarray(hashes, np.int64)
    used = np.unique(pairs[:, 1]) if len(pairs) else np.zeros(0, np.int64)
    rot = np.zeros((len(h), 4), np.int64)
    rot[used] = rotated_hashes(h[used])      # only the second members are turned
    best = np.empty(len(pairs), np.int64)
    turn = np.empty(len(pairs), np.int64)
    for start in range(0, len(pairs), 1_000_000):
        p = pairs[start:start + 1_000_000]
        d = np.stack([popcount(h[p[:, 0]] ^ rot[p[:, 1], r]) for r in range(4)], 1)
        best[start:start + len(p)] = d.min(axis=1)
        turn[start:start + len(p)] = 90 * np.argmin(d, axis=1)
    if not with_rotation:
        return best
    return best, turn


def _part_bounds(parts: int, nbits: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, nbits, parts + 1).astype(int)
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def hash_pairs(hashes: np.ndarray, max_distance: int = 10, *, budget: int = HASH_BUDGET
               ) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (P, 2) int32 positions with i < j, distances) of hashes within `max_distance` under a rotation.

    Rows whose hash is negative (unknown) take no part. Every pair within (parts - 1) bits
    is found, most up to twice that (module docstring); `budget` bounds the candidates per photo.
    """
    from clipsearch.duplicates.pixels import HASH_BITS

    h = np.asarray(hashes, np.int64)
    known = np.flatnonzero(h >= 0)
    m = len(known)
    if m < 2:
        return np.zeros((0, 2), np.int32), np.zeros(0, np.int64)
    table = h[known]
    rot = rotated_hashes(table)                       # (m, 4): the queries
    nbits = len(HASH_BITS)
    chosen = None
    for parts in HASH_PARTS:
        plan = []
        total = 0
        for lo, hi in _part_bounds(parts, nbits):
            mask = (1 << (hi - lo)) - 1
            tkey = (table >> lo) & mask
            order = np.argsort(tkey, kind="stable")
            skey = tkey[order]
            qkey = ((rot >> lo) & mask).ravel()
            left = np.searchsorted(skey, qkey, "left")
            count = np.searchsorted(skey, qkey, "right") - left
            count[count > MAX_BUCKET] = 0
            total += int(count.sum())
            plan.append((order, left, count))
        chosen = parts, plan
        if total <= budget * m + 10_000:
            break
    parts, plan = chosen
    log.debug("duplicates: hash buckets of %d photos in %d parts (%d candidates)", m, parts,
              sum(int(c.sum()) for _, _, c in plan))
    flat_rot = rot.ravel()
    found_pairs: list[np.ndarray] = []
    found_dist: list[np.ndarray] = []
    for order, left, count in plan:
        queries = np.flatnonzero(count)
        for start in range(0, len(queries), 1_000_000):
            qi = queries[start:start + 1_000_000]
            c = count[qi]
            qrep = np.repeat(qi, c)
            offset = np.arange(len(qrep)) - np.repeat(np.cumsum(c) - c, c)
            ti = order[np.repeat(left[qi], c) + offset]
            owner = qrep // 4
            d = popcount(flat_rot[qrep] ^ table[ti])
            keep = (d <= max_distance) & (owner != ti)
            if keep.any():
                found_pairs.append(np.stack([owner[keep], ti[keep]], 1))
                found_dist.append(d[keep])
    if not found_pairs:
        return np.zeros((0, 2), np.int32), np.zeros(0, np.int64)
    pairs = np.concatenate(found_pairs)
    dist = np.concatenate(found_dist)
    order = np.argsort(dist, kind="stable")        # keep each pair's smallest distance
    pairs, dist = pairs[order], dist[order]
    uniq, first = _unique_pairs(known[pairs[:, 0]], known[pairs[:, 1]], len(h))
    return uniq, dist[first]
