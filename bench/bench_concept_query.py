"""What a concept costs a query: `bella on a road at night` against plain words, on a real library.

    python bench/bench_concept_query.py             # 1,200 toy-world photos at 64 px, bundled model

Indexes the photos into a temporary library (torch-free text path as in normal use),
teaches it a concept from 5 photos, then times, in one process and side by side:
the first concept-in-a-sentence query (it computes the library's mean and covariance,
`Searcher.library_space`), then warm queries of the concept alone, the concept in a
sentence (three nearest-neighbour searches and a re-ranking of the best 200), and the
same sentence in plain words. Prints medians over --repeat runs, the CPU and the load.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clipsearch import Library
from clipsearch import toyworld as tw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=1200, help="photos in the library (1200)")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per query (20)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "photos").mkdir()
        scenes = tw.plan_scenes(args.photos, "seen", seed=5, variants=False)
        for i, scene in enumerate(scenes):
            tw.render(scene, np.random.default_rng([1, i]), 64).save(root / "photos" / f"{i:05d}.jpg", quality=90)
        started = time.perf_counter()
        with Library.open(root / "lib") as lib:
            lib.index(root / "photos")
            indexed = time.perf_counter() - started
            ids = [lib.catalog.find_path(str(root / "photos" / f"{i:05d}.jpg")).id
                   for i, s in enumerate(scenes) if ("red", "car") in s.objects][:5]
            lib.add_concept("bella", [f"#{i}" for i in ids], replace=True)
            lib.search("a red car", k=10)  # the text path warm
            first = time.perf_counter()
            lib.search("bella on a road at night", k=10)
            first = time.perf_counter() - first
            rows = []
            for label, query in (("concept alone", "bella"), ("concept in a sentence", "bella on a road at night"),
                                 ("words", "a red car on a road at night")):
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    lib.search(query, k=10)
                    times.append(time.perf_counter() - t)
                rows.append((label, statistics.median(times)))
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"# {cpu.split(':')[-1].strip()}, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f} (shared machine)")
    print(f"{args.photos} photos indexed in {indexed:.0f} s; first concept-in-a-sentence query {first * 1000:.0f} ms")
    base = dict(rows)["words"]
    for label, seconds in rows:
        print(f"{label:<24} {seconds * 1000:7.1f} ms median   {seconds / base:5.2f}x words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
