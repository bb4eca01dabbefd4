"""Measured quality of duplicate detection on a generated, labelled set (bench/duplicates_set.py).

Indexes the set with the bundled toyworld model, finds copies and moments three ways
(pixels with capture times, pixels alone, stored evidence only) and prints pairwise
precision and recall, distractors grouped, and a confusion table of file pairs.

    python bench/bench_duplicates_quality.py --out /tmp/dupbench   # ~450 files
"""
from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(__file__))
import duplicates_set  # noqa: E402

from clipsearch.duplicates import DuplicateOptions, DuplicateReport, FactsCache, find_all_duplicates  # noqa: E402
from clipsearch.library import Library  # noqa: E402


def pairs_of(groups) -> set[frozenset[str]]:
    out: set[frozenset[str]] = set()
    for g in groups:
        paths = sorted(m.path for m in g.members)
        out |= {frozenset(p) for p in itertools.combinations(paths, 2)}
    return out


def evaluate(items, groups) -> dict:
    by_path = {it.path: it for it in items}
    truth_copy = {frozenset((a.path, b.path)) for a, b in itertools.combinations(items, 2) if a.picture == b.picture}
    truth_moment = {frozenset((a.path, b.path)) for a, b in itertools.combinations(items, 2)
                    if a.moment == b.moment and a.picture != b.picture}
    distractor = {frozenset((d.path, it.path)) for d in items if d.kind == "distractor"
                  for it in items if it.picture == d.distractor_of}
    pred_copy = pairs_of(groups["copies"])
    pred_moment = pairs_of(groups["moments"]) - pred_copy
    out = {
        "copies_precision": len(pred_copy & truth_copy) / max(1, len(pred_copy)),
        "copies_recall": len(pred_copy & truth_copy) / max(1, len(truth_copy)),
        # A copy pair inside a moment group is the same moment: not a wrong moment.
        "moments_precision": len(pred_moment & truth_moment) / max(1, len(pred_moment - truth_copy)),
        "moments_recall": len(pred_moment & truth_moment) / max(1, len(truth_moment)),
        "distractors_as_copies": len(pred_copy & distractor),
        "distractors_as_moments": len(pred_moment & distractor),
        "truth": (len(truth_copy), len(truth_moment), len(distractor)),
    }
    confusion: Counter = Counter()
    for name, truth in (("copy pairs", truth_copy), ("moment pairs", truth_moment), ("distractor pairs", distractor)):
        for p in truth:
            confusion[(name, "copies" if p in pred_copy else "moments" if p in pred_moment else "none")] += 1
    other_copy = pred_copy - truth_copy - distractor
    other_moment = pred_moment - truth_moment - truth_copy - distractor
    confusion[("other pairs", "copies")] = len(other_copy)
    confusion[("other pairs", "moments")] = len(other_moment)
    out["confusion"] = confusion
    missed = Counter(by_path[min(p, key=lambda x: by_path[x].kind == "original")].kind for p in truth_copy - pred_copy)
    out["missed_copies_by_kind"] = missed
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/clipsearch-dupbench")
    ap.add_argument("--toy", type=int, default=16)
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--series", type=int, default=12)
    ap.add_argument("--distractors", type=int, default=16)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--reuse", action="store_true", help="reuse the files and labels of an earlier run in --out")
    ap.add_argument("--modes", nargs="+", default=["pixels+time", "pixels", "fast+time"])
    args = ap.parse_args()
    import json
    from dataclasses import asdict

    labels = os.path.join(args.out, "labels.json")
    if args.reuse and os.path.exists(labels):
        items = [duplicates_set.Item(**d) for d in json.load(open(labels))]
        print(f"{len(items)} files reused from {args.out}")
    else:
        shutil.rmtree(args.out, ignore_errors=True)
        t = time.perf_counter()
        items = duplicates_set.make_set(os.path.join(args.out, "photos"), toy=args.toy, photos=args.photos,
                                        series=args.series, distractors=args.distractors, seed=args.seed)
        json.dump([asdict(it) for it in items], open(labels, "w"))
        print(f"{len(items)} files generated in {time.perf_counter() - t:.0f} s (seed {args.seed})")
    lib = Library.open(os.path.join(args.out, "lib"))
    print(lib.index(os.path.join(args.out, "photos")).summary())
    cache = FactsCache.for_library(lib.folder)
    for mode in args.modes:
        opts = DuplicateOptions(verify="fast" if mode.startswith("fast") else "pixels",
                                use_capture_time=mode.endswith("+time"))
        rep = DuplicateReport()
        t = time.perf_counter()
        groups = find_all_duplicates(lib.catalog, lib.dim, options=opts, cache=cache, report=rep)
        secs = time.perf_counter() - t
        r = evaluate(items, groups)
        print(f"\n## {mode}: {secs:.0f} s, {rep.photos} photos, {rep.clip_pairs} CLIP + {rep.hash_pairs} hash "
              f"candidate pairs, {rep.compared} compared ({1000 * secs / max(1, rep.compared):.0f} ms per pair)")
        print(f"copies  precision {r['copies_precision']:.3f}  recall {r['copies_recall']:.3f}   "
              f"moments precision {r['moments_precision']:.3f}  recall {r['moments_recall']:.3f}   "
              f"distractors as copies {r['distractors_as_copies']}, as moments {r['distractors_as_moments']}  "
              f"(true pairs: {r['truth'][0]} copy, {r['truth'][1]} moment, {r['truth'][2]} distractor)")
        print("| truth \\ grouped as | copies | moments | none |\n|---|---|---|---|")
        for name in ("copy pairs", "moment pairs", "distractor pairs", "other pairs"):
            c = r["confusion"]
            none = "—" if name == "other pairs" else c[(name, "none")]
            print(f"| {name} | {c[(name, 'copies')]} | {c[(name, 'moments')]} | {none} |")
        print("missed copy pairs by transformation:", dict(r["missed_copies_by_kind"]))
    cache.close()
    lib.close()


if __name__ == "__main__":
    from clipsearch.runtime import configure_process

    configure_process()
    main()
