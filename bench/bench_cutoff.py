"""Precision and recall of the relevance cutoff (`min:auto`) on toy-world queries whose captions define the truth.

    python bench/bench_cutoff.py --n 2000                            # the report: the demo's photos, query seed 7
    python bench/bench_cutoff.py --n 2000 --library-seed 1 --seed 1  # where the parameters were set
    python bench/bench_cutoff.py --n 2000 --pretrained runs/ft/final.safetensors  # a fine-tuned toyworld model
    python bench/bench_cutoff.py --n 2000 --size 64                  # photos drawn at the bundled model's own 64 px

Draws (once) a toy-world photo collection of `--n` photos at `--size` pixels (256, the demo's, by
default; the bundled model was trained on 64-pixel drawings; two thirds seen combinations,
one third held-out ones, as the demo does; `--library-seed 0` draws the demo's very
photos, others a separate collection), indexes it with the bundled model (or the
toyworld checkpoint `--pretrained` names, in a library folder of its own beside the same
photos), and runs three query families (`clipsearch.evaluate.relevance_queries`, which the
test of the cutoff's precision and recall uses too):

* full descriptions of scenes the library holds (60): a photo is relevant when its
  canonical caption describes the query's scene (also from its other object: "B right of
  A" for "A left of B");
* full descriptions of scenes it does not hold (30): the right answer is nothing;
* partial descriptions a person types (60): "a red car", "a red car at night", "a red
  car on a road", "a car on a road at night", from a random photo of the library; every
  photo showing such an object (either object of a relation, any count) in that
  setting / at that time is relevant.

It reports what `min:auto` keeps (set per query) and, side by side on the same queries,
what the previous single global cutoff (`Calibration.threshold` alone) kept: precision and
recall pooled over the queries and averaged per query; for the full descriptions the
ceiling of any cutoff on these scores (R-precision: keep exactly as many top photos as
are relevant); and the time `min:auto` takes per query, here and over a 20,000-photo
index.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
from common import cpu_model

def _collection(data: Path, n: int, library_seed: int, size: int = 256) -> dict[str, object]:
    """Generate (once) the photos; return path -> scene."""
    from clipsearch import toyworld as tw

    scenes: dict[str, object] = {}
    for name, split, share, seed in (("seen", "seen", 2 / 3, 101), ("held-out", "test", 1 / 3, 202)):
        folder = data / "photos" / name
        count, seed = max(1, round(n * share)), seed + 1000 * library_seed  # library seed 0: the demo's photos
        csv_path = folder / "captions.csv"
        if not csv_path.is_file() or sum(1 for _ in csv_path.open(encoding="utf-8")) != count + 1:
            tw.generate(folder, count, split=split, seed=seed, size=size, progress=False)
        with csv_path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                scenes[os.path.realpath(folder / row["filepath"])] = tw.parse_canonical(row["canonical"])
    return scenes


CONTRAST_WORDS = ("red orange yellow green blue purple white black pink brown grey".split(),
                  "two three four five".split())
CONTRAST_PHRASES = (("left of", "right of", "above", "below"), ("by day", "at night", "at sunset"))


def _edits(text: str) -> list[str]:
    """The query with one colour, count, spatial relation or time of day swapped for another of its kind."""
    out: set[str] = set()
    words = text.split()
    for i, word in enumerate(words):
        for kind in CONTRAST_WORDS:
            if word in kind:
                out.update(" ".join(words[:i] + [other] + words[i + 1:]) for other in kind if other != word)
    for kind in CONTRAST_PHRASES:
        for phrase in kind:
            for m in re.finditer(rf"\b{re.escape(phrase)}\b", text):
                out.update(text[:m.start()] + other + text[m.end():] for other in kind if other != phrase)
    out.discard(text)
    return sorted(out)


def _contrast(lib, text: str, vector: np.ndarray, vectors: np.ndarray, kept: np.ndarray, mu: float,
              calibration) -> np.ndarray:
    """`kept` less the photos that a one-word edit of the query describes better (by more than mu x spread)."""
    from clipsearch.cutoff import tail_start

    edits = _edits(text)
    if not edits or not kept.any():
        return kept
    scores = vectors @ vector
    tail = tail_start(calibration.sample @ vector)
    rivals = np.asarray(lib.searcher.encoder.encode_texts(edits), np.float32)
    idx = np.flatnonzero(kept)
    beaten = scores[idx] < (vectors[idx] @ rivals.T).max(axis=1) - mu * (scores.max() - tail)
    out = kept.copy()
    out[idx[beaten]] = False
    return out


def _latency_at(n: int, dim: int, queries: np.ndarray, calibration) -> tuple[float, float, float]:
    """p50 ms over an n-photo flat index (random vectors; the cost is shape-bound) of: the cutoff's sums
    over the calibration's sample (QUERY_SAMPLE photos), its index lookup of the best photo, a top-10 search."""

    import faiss

    from clipsearch.cutoff import QUERY_SAMPLE

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    calibration = dataclasses.replace(calibration, sample=vectors[:QUERY_SAMPLE].copy())
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return (_p50(lambda q: calibration.cutoff(q, 0.5), queries), _p50(lambda q: index.search(q[None, :], 1), queries),
            _p50(lambda q: index.search(q[None, :], 10), queries))


def _p50(fn, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--library-seed", type=int, default=0, help="0: the demo's photos; others: another collection")
    ap.add_argument("--seed", type=int, default=7, help="query seed")
    ap.add_argument("--size", type=int, default=256, help="photo size in pixels: 256 (default) is the demo's; 64 is "
                    "what the bundled model was trained on")
    ap.add_argument("--data", default=None, help="default /tmp/clipsearch-cutoff-bench-<n>-<library seed>[-<size>]")
    ap.add_argument("--json", default=None, help="write the figures here too")
    ap.add_argument("--pretrained", default="bundled",
                    help="the toyworld model's weights: bundled (default) or a checkpoint file, e.g. a "
                         "`clipsearch train` run's final.safetensors")
    ap.add_argument("--contrast", type=float, default=None, metavar="MU",
                    help="also measure min:auto with a contrast test (measured, not chosen): a kept photo must "
                         "score the query at least as well as each one-word edit of it (another colour, count, "
                         "relation or time of day) less MU x (best - q90)")
    args = ap.parse_args()
    if args.pretrained != "bundled" and not Path(args.pretrained).is_file():
        ap.error(f"--pretrained {args.pretrained}: no such checkpoint file (give 'bundled' or a .safetensors file)")

    import faiss

    faiss.omp_set_num_threads(1)  # on a shared, loaded machine two OpenMP threads wait on each other for 50 ms
    from clipsearch.cutoff import QUERY_SAMPLE, RELATIVE, TAIL_QUANTILE, calibration_for
    from clipsearch.evaluate import cutoff_scores, relevance_queries
    from clipsearch.library import Library

    suffix = "" if args.size == 256 else f"-{args.size}"
    data = Path(args.data or f"/tmp/clipsearch-cutoff-bench-{args.n}-{args.library_seed}{suffix}")
    started = time.perf_counter()
    by_path = _collection(data, args.n, args.library_seed, args.size)
    pretrained = "bundled" if args.pretrained == "bundled" else os.path.realpath(args.pretrained)
    model_label = "bundled model" if pretrained == "bundled" else f"toyworld model {pretrained}"
    if pretrained == "bundled":
        folder = data / "library"
    else:  # one library per checkpoint (path, size and time: a retrained one gets a fresh index)
        st = os.stat(pretrained)
        key = f"{pretrained}|{st.st_size}|{st.st_mtime_ns}".encode()
        folder = data / ("library-" + hashlib.sha1(key).hexdigest()[:12])
    with Library.open(folder, model="toyworld", pretrained=pretrained) as lib:
        lib.index(data / "photos", progress=False)
        prep_s = time.perf_counter() - started
        ids, vectors = lib.vectors()
        scenes = [by_path[os.path.realpath(lib.get_image(int(i)).path)] for i in ids.tolist()]
        calibration = calibration_for(lib.searcher)
        queries = relevance_queries(scenes, args.seed)
        rows: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
        r_prec, qvecs = [0, 0], []
        for family, text, relevant in ((q.family, q.text, q.relevant) for q in queries):
            v = lib.query_vector(text)
            qvecs.append(v)
            cut = lib.searcher.auto_cutoff(v)
            scores = vectors @ v
            keeps = [("min:auto", scores >= cut), ("global", scores >= calibration.threshold)]
            if args.contrast is not None:
                keeps.append(("contrast", _contrast(lib, text, v, vectors, scores >= cut, args.contrast, calibration)))
            for method, keep in keeps:
                rows.setdefault((method, family), []).append(
                    (int((keep & relevant).sum()), int(keep.sum()), int(relevant.sum())))
            if family == "full":
                top = np.argsort(-scores)[: int(relevant.sum())]
                r_prec[0] += int(relevant[top].sum())
                r_prec[1] += int(relevant.sum())
        qs = np.stack(qvecs)
        t_auto = _p50(lambda q: lib.searcher.auto_cutoff(q), qs)
        t_search = _p50(lambda q: lib.searcher.nearest(q, 10), qs)
        lat_20k = _latency_at(20_000, vectors.shape[1], qs, calibration)

    cpu = cpu_model()
    print(f"# toy world, {len(scenes)} photos (library seed {args.library_seed}), {model_label}; "
          f"{len(queries)} queries (seed {args.seed}); CPU: {cpu}; load: {os.getloadavg()[0]:.1f}; "
          f"prepare {prep_s:.0f} s")
    print(f"# min:auto: score >= max({calibration.threshold:.4f}, q{100 * TAIL_QUANTILE:.0f} + {RELATIVE} x (best - "
          f"q{100 * TAIL_QUANTILE:.0f})) per query; global: score >= {calibration.threshold:.4f} "
          "(the previous min:auto)")
    print("| cutoff | queries | n | precision (pooled) | recall (pooled) | precision (mean per query) "
          "| recall (mean per query) | kept nothing |")
    print("|---|---|---|---|---|---|---|---|")
    labels = {"full": "full descriptions, in the library", "absent": "full descriptions, not in the library",
              "all": "full descriptions, all", "partial": "partial descriptions"}
    figures: dict[str, dict[str, float]] = {}
    for method in ("min:auto", "global") + (("contrast",) if args.contrast is not None else ()):
        by = {family: rows[(method, family)] for family in ("full", "absent", "partial")}
        by["all"] = by["full"] + by["absent"]
        for family in ("full", "absent", "all", "partial"):
            st = figures[f"{method} {family}"] = dataclasses.asdict(cutoff_scores(by[family]))
            cells = [f"{st[k]:.3f}" if st[k] == st[k] else "—" for k in
                     ("precision", "recall", "mean_precision", "mean_recall", "kept_nothing")]
            print(f"| {method} | {labels[family]} | {len(by[family])} | " + " | ".join(cells) + " |")
    print(f"\nceiling of any cutoff on these scores (R-precision: keep as many top photos as are relevant), "
          f"full descriptions in the library: {r_prec[0] / r_prec[1]:.3f}")
    print(f"min:auto per query (p50, one thread): {t_auto:.2f} ms here ({len(scenes)} photos; a top-10 search "
          f"{t_search:.2f} ms); over a 20,000-photo flat index: {lat_20k[0]:.2f} ms of sums over the "
          f"{QUERY_SAMPLE}-photo sample + {lat_20k[1]:.2f} ms to look up the best photo (a top-10 search "
          f"{lat_20k[2]:.2f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "cpu": cpu, "pretrained": pretrained,
                                               "r_precision": r_prec[0] / r_prec[1],
                                               "cutoff_ms_p50": t_auto, "search_ms_p50": t_search,
                                               "cutoff_ms_20k": lat_20k}, indent=1))


if __name__ == "__main__":
    main()
