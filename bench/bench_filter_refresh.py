"""The first filtered query after photos were added: the cached filter columns take in the new rows alone.

    python bench/bench_filter_refresh.py --n 100000 1000000

A library whose catalog another process keeps adding to (a scheduled `clipsearch index`,
`clipsearch watch`) while someone searches with filters. `clipsearch.filter_columns`
caches the columns filters read; before, any write to the catalog dropped them all, and
the next filtered query read them again (0.8-5.4 s at 1,000,000 photos). Now a write that
only added rows makes the cache read those rows alone.

Builds (once, kept under `--data`) a catalog of `--n` photos with the synthetic metadata of
bench_filtered.py (tiny vectors: only the facts matter here), reads every column the
filters below need, then `--rounds` times: another connection adds `--add` photos (new
paths, cities and cameras of the same kinds, a new folder), and the filters are resolved
once through the cache (**extend**: the added rows read into the cached columns) and once
from a cache dropped on purpose (**reload**: what every such query cost before), side by
side. Both answers are checked against SQL (`Catalog.ids_where`). Prints the medians
and their ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_filtered import _Encoder, synthetic_facts  # noqa: E402
from common import cpu_model  # noqa: E402

FILTERS = ('after:2016 before:2017', 'camera:"pixel 7"', "type:raw|heic", "folder:/bench/2016",
           "near:38.72,-9.14,5km", "country:JP after:2020 camera:canon")
DIM = 8


def build(folder: Path, n: int) -> None:
    from clipsearch.catalog import NewImage
    from clipsearch.library import Library

    if (folder / "catalog.sqlite").exists():
        return
    started = time.perf_counter()
    Library.open(folder, encoder=_Encoder(DIM)).close()  # the schema, metadata columns included
    from clipsearch.catalog import Catalog

    cat = Catalog(folder / "catalog.sqlite")
    paths, cols = synthetic_facts(n, 1)
    names = list(cols)
    vector = np.ones(DIM, np.float32) / np.sqrt(DIM)
    for start in range(0, n, 50_000):
        cat.add_images([NewImage(paths[i], 1000, 0, vector, facts={c: cols[c][i] for c in names})
                        for i in range(start, min(n, start + 50_000))])
    cat.close()
    print(f"# catalog of {n:,} built in {time.perf_counter() - started:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100_000])
    ap.add_argument("--add", type=int, default=100, help="photos added between two queries")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--data", default="/tmp/clipsearch-filter-refresh-bench")
    args = ap.parse_args()

    from clipsearch.catalog import Catalog, NewImage
    from clipsearch.filter_columns import FilterColumns
    from clipsearch.query import filters_where, parse

    filters = [parse(f).filters for f in FILTERS]
    print(f"# CPU: {cpu_model()}; load {os.getloadavg()[0]:.1f}; filters: {', '.join(FILTERS)}; "
          f"{args.add} photos added before each query")
    print("| photos | first query after the addition: extend (p50) | reload (p50, as before) | reload / extend "
          "| the next query, nothing added (p50) |")
    print("|---|---|---|---|---|")
    for n in args.n:
        folder = Path(args.data) / f"n{n}"
        build(folder, n)
        cat, writer = Catalog(folder / "catalog.sqlite"), Catalog(folder / "catalog.sqlite")
        columns, cold = FilterColumns(cat), FilterColumns(cat)
        for f in filters:
            columns.id_set(f)
        extend_s, reload_s, cached_s = [], [], []
        for r in range(args.rounds):
            paths, cols = synthetic_facts(args.add, 100 + r)
            stamp = time.time_ns()
            writer.add_images([NewImage(f"/bench/new-{stamp}{p}", 1000, 0, np.ones(DIM, np.float32) / np.sqrt(DIM),
                                        facts={c: cols[c][i] for c in cols}) for i, p in enumerate(paths)])
            for cache, times in ((columns, extend_s), (cold, reload_s)):
                if cache is cold:
                    cache.clear()
                started = time.perf_counter()
                got = [cache.id_set(f).ids for f in filters]
                times.append(time.perf_counter() - started)
                for f, ids in zip(filters, got):
                    want = np.unique(cat.ids_where(*filters_where(f)))
                    assert np.array_equal(ids, want), (f, len(ids), len(want))
            started = time.perf_counter()
            for f in filters:
                columns.id_set(f)
            cached_s.append(time.perf_counter() - started)
        assert columns.extended == args.rounds, columns.extended
        e, rl, c = (1000 * float(np.median(t)) for t in (extend_s, reload_s, cached_s))
        print(f"| {n:,} | **{e:.1f} ms** | {rl:,.0f} ms | {rl / e:,.0f}x | {c:.1f} ms |", flush=True)
        writer.close()
        cat.close()


if __name__ == "__main__":
    main()
