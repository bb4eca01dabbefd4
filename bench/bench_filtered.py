"""Filtered search at scale: a date filter resolved in SQLite, then the vector search among its ids.

    python bench/bench_filtered.py --n 100000 1000000 --queries 100

Builds a real library folder per size (catalog with CLIP-like vectors from
bench/common.py and a capture time per photo; the index `auto` picks, built and tuned as a
library builds it), then for filters `after:DATE` letting 0.1 %, 1 %, 10 % and 50 % of the
photos through measures, per query, one at a time:

* **sql**: resolving the filter to an id set in SQLite (`Catalog.ids_where`);
* **auto**: `Searcher.nearest` with that set: exact search over the set's stored vectors
  when it holds at most `EXACT_FILTER_MAX` ids, else the index with a FAISS id selector;
* **selector** / **exact**: each of the two ways forced, to place the crossover;
* **unfiltered**: the same queries without a filter, in the same run (the ratios).

Recall@10 is against exact filtered search (brute force over every vector, masked).
Prints a markdown table; absolute times depend on the machine's load, ratios less.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import ClipLikeMixture, machine  # noqa: E402

SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
YEAR = 365.25 * 86400


class _Encoder:
    """Stands in for a model: the benchmark brings its own vectors and never encodes."""

    def __init__(self, dim: int) -> None:
        self.name, self.pretrained, self.dim = "bench", "none", dim

    def encode_texts(self, texts, batch_size: int = 256):  # pragma: no cover - never called
        raise AssertionError("the benchmark encodes nothing")

    encode_images = encode_texts


def build(folder: Path, n: int, dim: int, seed: int = 0):
    from clipsearch.catalog import NewImage
    from clipsearch.library import Library
    from clipsearch.metadata import METADATA_READER

    mix = ClipLikeMixture(dim=dim, seed=seed)
    if not (folder / "catalog.sqlite").exists():
        started = time.perf_counter()
        lib = Library.open(folder, encoder=_Encoder(dim))
        rng = np.random.default_rng(seed + 1)
        vectors = mix.images(n)
        ts = rng.uniform(0, 10 * YEAR, n) + 1_300_000_000  # ten years of capture times, uniform
        for start in range(0, n, 20_000):
            rows = [NewImage(f"/bench/{i:07d}.jpg", 1000, 0, vectors[i], facts={
                "taken_ts": float(ts[i]), "facts_metadata_version": METADATA_READER.version})
                for i in range(start, min(n, start + 20_000))]
            lib.catalog.add_images(rows)
        lib.close()
        print(f"# catalog of {n} built in {time.perf_counter() - started:.0f} s", flush=True)
        del vectors
    started = time.perf_counter()
    lib = Library.open(folder, encoder=_Encoder(dim))  # builds (and tunes) the index auto picks, once
    print(f"# index {lib.vector_index.describe()} ready in {time.perf_counter() - started:.0f} s", flush=True)
    return lib, mix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--data", default="/tmp/clipsearch-filtered-bench")
    ap.add_argument("--keep", action="store_true", help="keep the library folders for another run")
    args = ap.parse_args()

    from clipsearch.index import exact_search, recall_at_k
    from clipsearch.query import Filters, filters_where
    from clipsearch.search import EXACT_FILTER_MAX

    print(f"# {machine()}; load at start {os.getloadavg()[0]:.1f}; EXACT_FILTER_MAX {EXACT_FILTER_MAX}")
    print("| n | filter lets through | ids | sql p50 ms | **auto p50 ms** | selector p50 ms | exact p50 ms "
          "| unfiltered p50 ms | auto / unfiltered | **auto recall@10** | selector recall@10 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.n:
        folder = Path(args.data) / f"n{n}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        lib, mix = build(folder, n, args.dim)
        searcher = lib.searcher
        queries = mix.text_queries(args.queries)
        all_ids, all_vecs = lib.vectors()
        ts = np.array([v["taken_ts"] for _, v in sorted(lib.catalog.facts(all_ids.tolist(), ["taken_ts"]).items())])
        for fraction in SELECTIVITIES:
            cut = float(np.quantile(ts, 1 - fraction))
            day = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=cut)
            after = day.strftime("%Y-%m-%dT%H:%M")
            where, params = filters_where(Filters(after=after))
            times = {k: [] for k in ("sql", "auto", "selector", "exact", "unfiltered")}
            found = {k: [] for k in ("auto", "selector")}
            allowed = None
            for q in queries:
                t0 = time.perf_counter()
                allowed = lib.catalog.ids_where(where, params)
                times["sql"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                found["auto"].append(searcher.nearest(q, 10, allowed)[1][0])
                times["auto"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                found["selector"].append(lib.vector_index.search(q[None, :], 10, allowed_ids=allowed)[1][0])
                times["selector"].append(time.perf_counter() - t0)
                if len(allowed) <= 2_000:  # beyond, the forced exact path takes seconds a query
                    t0 = time.perf_counter()
                    ids, vecs = lib.catalog.vectors_of(allowed.tolist(), lib.dim)
                    exact_search(vecs, ids, q, 10)
                    times["exact"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                lib.vector_index.search(q[None, :], 10)
                times["unfiltered"].append(time.perf_counter() - t0)
            mask = np.isin(all_ids, allowed)
            _, truth = exact_search(all_vecs[mask], all_ids[mask], queries, 10)
            p50 = {k: 1000 * float(np.median(v)) if v else float("nan") for k, v in times.items()}
            rec = {k: recall_at_k(np.stack(v), truth, 10) for k, v in found.items()}
            print(f"| {n:,} | {100 * fraction:g} % | {len(allowed):,} | {p50['sql']:.1f} | **{p50['auto']:.1f}** | "
                  f"{p50['selector']:.1f} | {p50['exact']:.1f} | {p50['unfiltered']:.1f} | "
                  f"{p50['auto'] / p50['unfiltered']:.1f}x | **{rec['auto']:.3f}** | {rec['selector']:.3f} |",
                  flush=True)
        lib.close()
        if not args.keep:
            shutil.rmtree(folder)
    print(f"# load at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
