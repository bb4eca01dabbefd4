"""How long duplicate groups take from stored vectors at 100k and 1M photos, end to end.

CLIP-like vectors (bench/common.py) with planted duplicates: a share of the photos get
copies (the vector plus a little noise, cosine ~0.97-0.99; the hash with 0-2 bits
flipped, a quarter of them turned by 90 degrees, so only the hash can find those) and
bursts (cosine ~0.93, hash 6-14 bits away). Every other hash is random.

The fixture is a real catalog (SQLite: the images with their `phash` column, the vectors)
built once and kept under --cache (1M photos: ~3 GB, ~10 minutes to build), plus a facts
cache holding the planted photos' facts, as a first run leaves it (the keeper's evidence;
without it the grouped photos' files are read once). The measured run is
`find_all_duplicates(verify="fast")` for both levels, from opening the catalog to the
groups with their keepers, with each stage's wall time (`DuplicateReport.seconds`). The
pixel comparison reads files and is measured per pair by bench_duplicates_quality.py.

    python bench/bench_duplicates_scale.py --n 100000 --cache /tmp/dupscale          # builds, then measures
    /usr/bin/time -v python bench/bench_duplicates_scale.py --n 1000000 --cache /tmp/dupscale --measure-only
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import ClipLikeMixture, machine, peak_rss_gb  # noqa: E402


def planted(n: int, seed: int = 0, copy_share: float = 0.03, burst_share: float = 0.02):
    """(vectors, hashes, copy pairs (C, 2), burst pairs (B, 2)) as positions."""
    from clipsearch.duplicates.candidates import rotated_hashes

    rng = np.random.default_rng(seed)
    base = ClipLikeMixture(dim=512, clusters=max(100, n // 1000), seed=seed).images(n)
    hashes = rng.integers(0, 2 ** 63 - 1, n, dtype=np.int64)
    n_copy, n_burst = int(n * copy_share), int(n * burst_share)
    targets = rng.choice(n, n_copy + n_burst, replace=False)
    sources = rng.choice(np.setdiff1d(np.arange(n), targets), n_copy + n_burst, replace=False)
    truth = np.stack([np.minimum(sources, targets), np.maximum(sources, targets)], 1)
    is_copy = np.arange(len(targets)) < n_copy
    noise = np.where(is_copy, 0.03, 0.05)[:, None] * 8 / np.sqrt(512)
    v = base[sources] + noise * rng.standard_normal((len(sources), 512)).astype(np.float32)
    base[targets] = v / np.linalg.norm(v, axis=1, keepdims=True)
    h = hashes[sources].copy()
    for k in range(len(targets)):
        nflip = int(rng.integers(0, 3)) if is_copy[k] else int(rng.integers(6, 15))
        for f in rng.choice(63, nflip, replace=False):
            h[k] ^= np.int64(1) << np.int64(f)
    turned = is_copy & (rng.random(len(targets)) < 0.25)
    h[turned] = rotated_hashes(h[turned])[:, 1]          # turned by 90 degrees
    # CLIP can't see a turned copy: it gets another photo's vector
    base[targets[turned]] = base[rng.integers(0, n, int(turned.sum()))]
    hashes[targets] = h
    return base, hashes, truth[is_copy], truth[~is_copy]


def build(n: int, folder: Path) -> None:
    from clipsearch.catalog import Catalog, NewImage
    from clipsearch.duplicates import PHASH_READER, FactsCache, PhotoFacts

    t = time.perf_counter()
    vectors, hashes, copies, bursts = planted(n)
    np.savez(folder / "truth.npz", copies=copies, bursts=bursts)
    print(f"  fixture: vectors made in {time.perf_counter() - t:.0f} s", flush=True)
    tmp = folder / "catalog.sqlite.part"
    tmp.unlink(missing_ok=True)
    cat = Catalog(tmp)
    cat.create_library("bench", "synthetic", 512)
    cat.ensure_columns([PHASH_READER])
    for start in range(0, n, 20_000):
        cat.add_images([NewImage(f"/photos/{i // 1000:04d}/{i:07d}.jpg", 2_000_000 + i % 1000, 1, vectors[i], 4000, 3000,
                                 {"phash": int(hashes[i]), "sharpness": 100.0})
                        for i in range(start, min(n, start + 20_000))])
    ids = cat.ok_ids()
    rows = cat.get_images(ids[np.unique(np.concatenate([copies, bursts]))].tolist())
    cat.close()
    cache = FactsCache(folder / "facts.sqlite")
    cache.put((r, PhotoFacts(0, 100.0, 4000, 3000, "jpeg", r.size, True, None)) for r in rows.values())
    cache.close()
    tmp.rename(folder / "catalog.sqlite")
    print(f"  fixture: catalog of {n:,} photos built in {time.perf_counter() - t:.0f} s", flush=True)


def measure(n: int, folder: Path) -> dict:
    """Run and print the measurement; returns its figures."""
    from clipsearch.catalog import Catalog
    from clipsearch.duplicates import DuplicateOptions, DuplicateReport, FactsCache, find_all_duplicates

    truth = np.load(folder / "truth.npz")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    cat = Catalog(folder / "catalog.sqlite")
    cache = FactsCache(folder / "facts.sqlite")
    rep = DuplicateReport()
    groups = find_all_duplicates(cat, 512, options=DuplicateOptions(verify="fast"), cache=cache, report=rep)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    ids = cat.ok_ids()
    pos_of = np.full(ids.max() + 1, -1)
    pos_of[ids] = np.arange(len(ids))

    def together(level: str, pairs: np.ndarray) -> tuple[float, int, int]:
        label = np.full(len(ids), -1)
        for g, grp in enumerate(groups[level]):
            label[pos_of[[m.id for m in grp.members]]] = g
        found = (label[pairs[:, 0]] >= 0) & (label[pairs[:, 0]] == label[pairs[:, 1]])
        planted_members = set(np.unique(pairs).tolist())
        strays = sum(1 for g in groups[level] if not planted_members.issuperset(pos_of[[m.id for m in g.members]].tolist()))
        return float(found.mean()), strays, len(groups[level])

    rc, sc, gc = together("copies", truth["copies"])
    rm, sm, gm = together("moments", truth["bursts"])
    stages = ", ".join(f"{k} {v:.1f} ({rep.cpu_seconds[k]:.1f} CPU, peak so far {rep.peak_rss_gb.get(k, 0):.2f} GB)"
                       for k, v in rep.seconds.items())
    print(f"n={n:,}: {rep.clip_pairs:,} CLIP + {rep.hash_pairs:,} hash candidate pairs; "
          f"{gc:,} copy groups ({sc} with an unplanted member), {gm:,} moment groups ({sm} with an unplanted member)")
    print(f"  planted copy pairs grouped as copies {rc:.4f} of {len(truth['copies']):,}; "
          f"planted bursts grouped as moments {rm:.4f} of {len(truth['bursts']):,}")
    print(f"  seconds: {stages}; total {wall:.1f} wall, {cpu:.1f} CPU; peak RSS {peak_rss_gb():.2f} GB; "
          f"load {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    return {"copies_recall": rc, "bursts_recall": rm, "copy_groups": gc, "copy_strays": sc, "moment_groups": gm,
            "clip_pairs": rep.clip_pairs, "hash_pairs": rep.hash_pairs, "wall": wall, "cpu": cpu}


if __name__ == "__main__":
    from clipsearch.runtime import configure_process

    configure_process()
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[100_000])
    ap.add_argument("--cache", default="/tmp/clipsearch-dupscale", help="where the fixtures are kept")
    ap.add_argument("--measure-only", action="store_true", help="fail rather than build a missing fixture")
    ap.add_argument("--build-only", action="store_true")
    args = ap.parse_args()
    print(machine(), flush=True)
    for n in args.n:
        folder = Path(args.cache) / str(n)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "catalog.sqlite").exists():
            if args.measure_only:
                sys.exit(f"no fixture for n={n} under {folder}: run without --measure-only first")
            build(n, folder)
        if not args.build_only:
            measure(n, folder)
