"""Filtered search at scale: a filter resolved to an id set, then the vector search among those ids.

    python bench/bench_filtered.py --n 100000 1000000 --build-only          # the library folders, once
    python bench/bench_filtered.py --n 100000 1000000 --queries 100 --keep

Builds a real library folder per size (a catalog of CLIP-like vectors from bench/common.py
with synthetic metadata: capture times over ten years, five cameras, five cities with GPS,
three file types, one photo in ten without EXIF; the index `auto` picks, built and tuned as
a library builds it), then for filters `after:DATE` letting 0.1 %, 1 %, 10 % and 50 % of
the photos through measures, per query, one at a time:

* **total**: what a filtered query costs before its hits are read: **ids**,
  `Searcher.id_set` (the filter resolved over in-memory columns,
  `clipsearch.filter_columns`), then **search**, `Searcher.nearest` with that set (exact
  search over the set's stored vectors when it holds at most `EXACT_FILTER_MAX` ids, the
  index with a FAISS bitmap selector, or for `BROAD_FILTER` and more a deeper search
  filtered after); the p50 of each of the three, over the same calls; **total CPU**: the
  process's CPU time in those calls (what they cost a core, whatever the wait for one);
* **run**: `Searcher.run` end to end (id set, search, the hits' paths and facts);
* **sql**: the same id set from SQLite (`Catalog.ids_where`, the source of truth, which
  `id_set` must equal: checked on every row);
* **bitmap** / **batch** / **exact**: the index with an `IDSelectorBitmap`, with an
  `IDSelectorBatch` of the ids, and exact search over the set's stored vectors, each forced;
* **unfiltered**: the same queries without a filter, in the same run (the ratios).

Recall@10 is against exact filtered search (brute force over every vector, masked). A
second table times other filters' id sets in memory and in SQLite. Prints markdown;
absolute times depend on the machine's load (printed per row), ratios less.
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


# Synthetic metadata, like a real library's: a few cameras, cities and file types, 1 photo
# in 10 without EXIF (NULL metadata), folders per year and month.
_CAMERAS = (("Google", "Pixel 7", 0.35), ("Apple", "iPhone 13", 0.3), ("Canon", "Canon EOS 5D Mark IV", 0.15),
            ("SONY", "ILCE-7M3", 0.1), ("FUJIFILM", "X-T3", 0.1))
_CITIES = (("Lisbon", "Lisbon", "Portugal", "PT", 38.72, -9.14, 0.3), ("São Paulo", "Sao Paulo", "Brazil", "BR",
           -23.55, -46.63, 0.2), ("Zürich", "Zurich", "Switzerland", "CH", 47.37, 8.54, 0.2),
           ("Kyoto", "Kyoto", "Japan", "JP", 35.01, 135.77, 0.2), ("Reykjavík", "Capital Region", "Iceland", "IS",
           64.15, -21.94, 0.1))
_TYPES = (("jpeg", 0.8), ("heic", 0.15), ("raw", 0.05))


def synthetic_facts(n: int, seed: int = 1) -> tuple[list[str], dict[str, list]]:
    """Paths and metadata columns for `n` photos (see `_CAMERAS`, `_CITIES`, `_TYPES`)."""
    from clipsearch.metadata import METADATA_READER
    from clipsearch.places import fold

    rng = np.random.default_rng(seed)
    ts = rng.uniform(0, 10 * YEAR, n) + 1_300_000_000  # ten years of capture times, uniform
    has_exif = rng.random(n) >= 0.1
    cam = rng.choice(len(_CAMERAS), n, p=[c[2] for c in _CAMERAS])
    city = rng.choice(len(_CITIES), n, p=[c[6] for c in _CITIES])
    ftype = rng.choice(len(_TYPES), n, p=[t[1] for t in _TYPES])
    lat = np.array([c[4] for c in _CITIES])[city] + rng.normal(0, 0.05, n)
    lon = np.array([c[5] for c in _CITIES])[city] + rng.normal(0, 0.05, n)
    month = ts.astype("datetime64[s]").astype("datetime64[M]").astype(str)  # "2016-04"
    # (camera, camera_key, model_key): the model key drops a leading brand, as clipsearch.metadata does.
    cams = []
    for make, model, _ in _CAMERAS:
        name = model if model.startswith(make) else f"{make} {model}"
        key = fold(model) or ""
        brand = fold(make) or ""
        cams.append((name, fold(name), key[len(brand) + 1:] if key.startswith(brand + " ") else key))
    places = [(c[0], c[2], c[3], fold(c[0]), fold(c[1]), fold(c[2])) for c in _CITIES]
    none6 = (None,) * 6
    paths = [f"/bench/{m[:4]}/{m[5:]}/{i:07d}.jpg" for i, m in enumerate(month)]
    cam_rows = [cams[c] if ok else (None, None, None) for c, ok in zip(cam.tolist(), has_exif.tolist())]
    place_rows = [places[c] if ok else none6 for c, ok in zip(city.tolist(), has_exif.tolist())]
    cols: dict[str, list] = {
        "taken_ts": ts.tolist(),  # every photo has a date (the file's mtime at worst)
        "camera": [r[0] for r in cam_rows], "camera_key": [r[1] for r in cam_rows],
        "model_key": [r[2] for r in cam_rows],
        "file_type": [_TYPES[t][0] for t in ftype.tolist()],
        "gps_lat": [float(x) if ok else None for x, ok in zip(lat.tolist(), has_exif.tolist())],
        "gps_lon": [float(x) if ok else None for x, ok in zip(lon.tolist(), has_exif.tolist())],
        "facts_metadata_version": [METADATA_READER.version] * n,
    }
    for j, name in enumerate(("place_city", "place_country", "country_code", "city_key", "region_key", "country_key")):
        cols[name] = [r[j] for r in place_rows]
    return paths, cols


def build(folder: Path, n: int, dim: int, seed: int = 0):
    from clipsearch.catalog import NewImage
    from clipsearch.library import Library

    mix = ClipLikeMixture(dim=dim, seed=seed)
    if not (folder / "catalog.sqlite").exists():
        started = time.perf_counter()
        lib = Library.open(folder, encoder=_Encoder(dim))
        vectors = mix.images(n)
        paths, cols = synthetic_facts(n, seed + 1)
        names = list(cols)
        for start in range(0, n, 20_000):
            rows = [NewImage(paths[i], 1000, 0, vectors[i], facts={c: cols[c][i] for c in names})
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
    ap.add_argument("--build-only", action="store_true", help="build the library folders (kept) and stop")
    args = ap.parse_args()
    from clipsearch.runtime import configure_process

    configure_process()  # OMP_WAIT_POLICY=PASSIVE before faiss loads, as the clipsearch command and the UI do
    if args.build_only:
        for n in args.n:
            build(Path(args.data) / f"n{n}", n, args.dim)[0].close()
        return

    from clipsearch.index import exact_search, recall_at_k
    from clipsearch.query import Filters, Query, filters_where, parse
    from clipsearch.search import BROAD_FILTER, EXACT_FILTER_MAX

    def p50(values: list[float]) -> float:
        return 1000 * float(np.median(values)) if values else float("nan")

    print(f"# {machine()}; load at start {os.getloadavg()[0]:.1f}; EXACT_FILTER_MAX {EXACT_FILTER_MAX}, "
          f"BROAD_FILTER {BROAD_FILTER}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    rows_other: list[str] = []
    for n in args.n:
        folder = Path(args.data) / f"n{n}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        lib, mix = build(folder, n, args.dim)
        searcher = lib.searcher
        queries = mix.text_queries(args.queries)
        started = time.perf_counter()
        all_ids, all_vecs = lib.vectors()
        print(f"# {len(all_ids):,} vectors read for the ground truth in {time.perf_counter() - started:.0f} s",
              flush=True)
        started = time.perf_counter()
        searcher.id_set(Filters(after="2000"))  # the first filter on a date loads the column
        print(f"# first date filter (loads taken_ts from the catalog): {time.perf_counter() - started:.2f} s",
              flush=True)
        ts = searcher.filter_columns.numeric("taken_ts")
        ts = ts[~np.isnan(ts)]
        print("| n | filter lets through | ids | **total p50 ms** | total CPU p50 ms | ids p50 ms | search p50 ms "
              "| run p50 ms | sql p50 ms | bitmap p50 ms | batch p50 ms | exact p50 ms | unfiltered p50 ms "
              "| total / unfiltered | **recall@10** | bitmap recall@10 | load |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for fraction in SELECTIVITIES:
            cut = float(np.quantile(ts, 1 - fraction))
            day = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=cut)
            filters = Filters(after=day.strftime("%Y-%m-%dT%H:%M"))
            where, params = filters_where(filters)
            query = Query(filters=filters)
            times: dict[str, list[float]] = {k: [] for k in ("total", "cpu", "ids", "search", "run", "sql", "bitmap",
                                                             "batch", "exact", "unfiltered")}
            found: dict[str, list[np.ndarray]] = {"auto": [], "bitmap": []}
            id_set = searcher.id_set(filters)
            sql_ids = lib.catalog.ids_where(where, params)
            assert np.array_equal(id_set.ids, np.unique(sql_ids)), "in-memory filter differs from the SQL"
            for i, q in enumerate(queries):
                c0 = time.process_time()
                t0 = time.perf_counter()
                id_set = searcher.id_set(filters)
                t1 = time.perf_counter()
                got = searcher.nearest(q, 10, id_set)
                t2 = time.perf_counter()
                times["cpu"].append(time.process_time() - c0)
                times["total"].append(t2 - t0)
                times["ids"].append(t1 - t0)
                times["search"].append(t2 - t1)
                found["auto"].append(got[1][0])
                t0 = time.perf_counter()
                searcher.run(query, 10, vector=q)
                times["run"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                sql_ids = lib.catalog.ids_where(where, params)
                times["sql"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                found["bitmap"].append(lib.vector_index.search(q[None, :], 10, allowed_ids=id_set)[1][0])
                times["bitmap"].append(time.perf_counter() - t0)
                if len(sql_ids) <= 100_000 and i < 20:  # beyond, seconds a query
                    t0 = time.perf_counter()
                    lib.vector_index.search(q[None, :], 10, allowed_ids=sql_ids)
                    times["batch"].append(time.perf_counter() - t0)
                if len(sql_ids) <= 2_000:  # beyond, the forced exact path takes seconds a query
                    t0 = time.perf_counter()
                    ids, vecs = lib.catalog.vectors_of(id_set.ids.tolist(), lib.dim)
                    exact_search(vecs, ids, q, 10)
                    times["exact"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                lib.vector_index.search(q[None, :], 10)
                times["unfiltered"].append(time.perf_counter() - t0)
            mask = id_set.contains(all_ids)
            _, truth = exact_search(all_vecs[mask], all_ids[mask], queries, 10)
            p = {k: p50(v) for k, v in times.items()}
            rec = {k: recall_at_k(np.stack(v), truth, 10) for k, v in found.items()}
            cell = {k: f"{v:.1f}" if v == v else "—" for k, v in p.items()}
            print(f"| {n:,} | {100 * fraction:g} % | {len(id_set):,} | **{cell['total']}** | {cell['cpu']} | {cell['ids']} | "
                  f"{cell['search']} | {cell['run']} | {cell['sql']} | {cell['bitmap']} | {cell['batch']} | "
                  f"{cell['exact']} | {cell['unfiltered']} | {p['total'] / p['unfiltered']:.1f}x | "
                  f"**{rec['auto']:.3f}** | {rec['bitmap']:.3f} | {os.getloadavg()[0]:.1f} |", flush=True)
        del all_vecs
        # Other filters: the id set in memory (columns loaded once, then cached) and in SQLite.
        for text in ("place:lisbon", 'place:"sao paulo|zurich"', 'camera:"pixel 7"', "type:raw|heic",
                     "folder:/bench/2016", "near:38.72,-9.14,5km", "country:JP after:2020 camera:canon"):
            filters = parse(text).filters
            where, params = filters_where(filters)
            searcher.filter_columns.clear()  # cold: what the first such query after a change to the catalog costs
            t0 = time.perf_counter()
            id_set = searcher.id_set(filters)
            cold = time.perf_counter() - t0
            warm, sql = [], []
            for _ in range(20):
                t0 = time.perf_counter()
                searcher.id_set(filters)
                warm.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                sql_ids = lib.catalog.ids_where(where, params)
                sql.append(time.perf_counter() - t0)
            assert np.array_equal(id_set.ids, np.unique(sql_ids)), text
            rows_other.append(f"| {n:,} | `{text}` | {len(id_set):,} ({100 * len(id_set) / n:.1f} %) | "
                              f"{1000 * cold:.0f} | **{p50(warm):.2f}** | {p50(sql):.1f} | "
                              f"{p50(sql) / p50(warm):.0f}x |")
        lib.close()
        if not args.keep:
            shutil.rmtree(folder)
    print()
    print("| n | filter | ids | first (loads columns) ms | **in memory p50 ms** | SQLite p50 ms | SQLite / memory |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows_other))
    print(f"# load at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
