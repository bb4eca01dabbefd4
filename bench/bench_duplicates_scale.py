"""How long duplicate groups take from stored vectors at 100k and 1M photos.

CLIP-like vectors (bench/common.py) with planted duplicates: a share of the photos get
copies (the vector plus a little noise, cosine ~0.97-0.99; the hash with 0-2 bits
flipped, a quarter of them turned by 90 degrees, so only the hash can find those) and
bursts (cosine ~0.93, hash 6-14 bits away). Every other hash is random. Measured, in one
run, side by side: the CLIP neighbour search, the hash buckets, the decision per pair
with stored evidence (`verify="fast"`), and the grouping. The pixel comparison reads
files and is measured per pair by bench_duplicates_quality.py.

    python bench/bench_duplicates_scale.py --n 100000 1000000
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import ClipLikeMixture, machine, peak_rss_gb  # noqa: E402

from clipsearch.duplicates import DuplicateOptions, group_pairs  # noqa: E402
from clipsearch.duplicates.groups import fast_levels  # noqa: E402
from clipsearch.duplicates.candidates import clip_pairs, hash_distances, hash_pairs, rotated_hashes  # noqa: E402


def planted(n: int, seed: int = 0, copy_share: float = 0.03, burst_share: float = 0.02):
    rng = np.random.default_rng(seed)
    base = ClipLikeMixture(dim=512, clusters=max(100, n // 1000), seed=seed).images(n)
    hashes = rng.integers(0, 2 ** 63 - 1, n, dtype=np.int64)
    truth_copy, truth_moment = [], []
    n_copy, n_burst = int(n * copy_share), int(n * burst_share)
    targets = rng.choice(n, n_copy + n_burst, replace=False)
    sources = rng.choice(np.setdiff1d(np.arange(n), targets), n_copy + n_burst, replace=False)
    for k, (src, dst) in enumerate(zip(sources, targets)):
        is_copy = k < n_copy
        noise = 0.03 if is_copy else 0.09
        v = base[src] + noise * rng.standard_normal(512).astype(np.float32) / np.sqrt(512) * 8
        base[dst] = v / np.linalg.norm(v)
        flips = rng.choice(63, int(rng.integers(0, 3) if is_copy else rng.integers(6, 15)), replace=False)
        h = int(hashes[src])
        for f in flips:
            h ^= 1 << int(f)
        if is_copy and rng.random() < 0.25:
            h = int(rotated_hashes(np.array([h]))[0, 1])   # turned by 90 degrees
            base[dst] = base[int(rng.integers(n))]  # CLIP can't see a turned copy: another photo's vector
        hashes[dst] = h
        (truth_copy if is_copy else truth_moment).append((min(src, dst), max(src, dst)))
    return base, hashes, set(truth_copy), set(truth_moment)


def run(n: int) -> None:
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    vectors, hashes, truth_copy, truth_moment = planted(n)
    t_gen = time.perf_counter() - t0
    cpu0 = time.process_time()
    opts = DuplicateOptions(verify="fast")
    t = time.perf_counter()
    cp, _ = clip_pairs(vectors, opts.k, opts.min_similarity)
    t_clip = time.perf_counter() - t
    t = time.perf_counter()
    hp, _ = hash_pairs(hashes, opts.max_hash_distance)
    t_hash = time.perf_counter() - t
    t = time.perf_counter()
    pairs = np.unique(np.concatenate([cp, hp]), axis=0)
    sims = np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    hd, rot = hash_distances(hashes, pairs, with_rotation=True)
    nan = np.full(len(pairs), np.nan)
    levels = [lv or None for lv in fast_levels(sims, hd, rot, nan, nan, opts).tolist()]
    t_decide = time.perf_counter() - t
    t = time.perf_counter()
    copies = group_pairs(n, pairs, levels, "copies")
    moments = group_pairs(n, pairs, levels, "moments")
    t_group = time.perf_counter() - t
    found = {tuple(p) for p, lv in zip(pairs.tolist(), levels) if lv == "copy"}
    total = t_clip + t_hash + t_decide + t_group
    cpu = time.process_time() - cpu0
    print(f"n={n:,}: candidates {len(cp):,} CLIP + {len(hp):,} hash -> {len(pairs):,} pairs; "
          f"{len(copies):,} copy groups, {len(moments):,} moment groups; planted copy pairs found "
          f"{len(found & truth_copy) / max(1, len(truth_copy)):.3f}")
    print(f"  seconds: CLIP neighbours {t_clip:.1f}, hash buckets {t_hash:.1f}, decisions {t_decide:.1f}, "
          f"groups {t_group:.1f}; total {total:.1f} wall, {cpu:.1f} CPU (vectors made in {t_gen:.1f}); "
          f"peak RSS {peak_rss_gb():.1f} GB; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    from clipsearch.runtime import configure_process

    configure_process()
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[100_000])
    args = ap.parse_args()
    print(machine())
    for n in args.n:
        run(n)
