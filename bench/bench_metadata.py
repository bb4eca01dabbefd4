"""Metadata reading and offline reverse geocoding: load time and throughput.

    python bench/bench_metadata.py [--photos N]

Measures, in one run: the gazetteer's first load (a fresh process, so nothing is cached
in memory), reverse-geocoding lookups per second in batches and one at a time, and
`read_metadata` / the full metadata facts (geocoding included) per photo on toy-world
JPEGs with EXIF.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--lookups", type=int, default=50_000)
    args = ap.parse_args()
    print(f"# {machine()}; load {os.getloadavg()[0]:.1f}")
    code = ("import time; t = time.perf_counter(); from clipsearch.places import reverse_geocode; "
            "reverse_geocode(38.72, -9.14); print(time.perf_counter() - t)")
    from clipsearch.places import _cache_path

    _cache_path().unlink(missing_ok=True)
    first = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    load_s = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    from clipsearch.places import reverse_geocode, reverse_geocode_many

    reverse_geocode(0.0, 0.0)
    rng = np.random.default_rng(0)
    pts = list(zip(rng.uniform(-60, 70, args.lookups).tolist(), rng.uniform(-180, 180, args.lookups).tolist()))
    t, c = time.perf_counter(), time.process_time()
    reverse_geocode_many(pts)
    batch, batch_cpu = len(pts) / (time.perf_counter() - t), len(pts) / (time.process_time() - c)
    t, c = time.perf_counter(), time.process_time()
    for p in pts[:5000]:
        reverse_geocode(*p)
    single, single_cpu = 5000 / (time.perf_counter() - t), 5000 / (time.process_time() - c)
    print(f"gazetteer load in a fresh process, imports included: {first:.2f} s the first time (JSON parsed, "
          f"arrays cached), {load_s:.2f} s after")
    print(f"reverse geocoding: {batch:,.0f} lookups/s in one batch of {len(pts):,} ({batch_cpu:,.0f} per CPU-second); "
          f"{single:,.0f}/s one at a time ({single_cpu:,.0f} per CPU-second)")

    from clipsearch import toyworld as tw
    from clipsearch.metadata import METADATA_READER, read_metadata

    with tempfile.TemporaryDirectory() as tmp:
        tw.generate(tmp, args.photos, split="seen", seed=9, workers=1, progress=False)
        files = sorted(str(p) for p in Path(tmp, "images").iterdir())
        t = time.perf_counter()
        for f in files:
            read_metadata(f)
        per_read = (time.perf_counter() - t) / len(files)
        t = time.perf_counter()
        for f in files:
            METADATA_READER.read(f, None)
        per_fact = (time.perf_counter() - t) / len(files)
    print(f"read_metadata: {1000 * per_read:.2f} ms per photo; metadata facts with the place: "
          f"{1000 * per_fact:.2f} ms per photo ({len(files)} toy-world JPEGs with EXIF)")


if __name__ == "__main__":
    main()
