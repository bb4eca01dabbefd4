"""Precision and recall of the relevance cutoff (`min:auto`) on toy-world queries whose captions define the truth.

    python bench/bench_cutoff.py --n 2000 --data /tmp/cutoff-bench

Draws (once) a toy-world photo collection (two thirds seen combinations, one third
held-out ones, as the demo does), indexes it with the bundled model, then runs queries. The queries are full descriptions of scenes: 60 the library holds and 30 it does
not (for which the right answer is nothing). A photo is relevant when its canonical
caption describes the query's scene (also from its other object: "B right of A" for "A
left of B"). It reports what `min:auto` keeps: precision and recall pooled over the
queries and averaged per query, and the best single cutoff in hindsight on this truth.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np


def _queries(present: list, n_present: int = 60, n_absent: int = 30, seed: int = 7) -> list[tuple[str, object, bool]]:
    """Full descriptions: of scenes the library holds (`present`) and of scenes it does not hold."""
    from clipsearch import toyworld as tw

    rng = np.random.default_rng(seed)
    have = {tw.canonical(s) for s in present} | {tw.canonical(s.swapped()) for s in present}
    names = sorted({tw.canonical(s) for s in present})
    out = [(names[i], tw.parse_canonical(names[i]), True)
           for i in rng.choice(len(names), min(n_present, len(names)), replace=False)]
    while len(out) < len(names[:n_present]) + n_absent:
        scene = tw.sample_scene(rng, "seen" if rng.random() < 0.67 else "test")
        if tw.canonical(scene) not in have and all(tw.canonical(scene) != q for q, _, _ in out):
            out.append((tw.canonical(scene), scene, False))
    return out


def _matches(scene, want) -> bool:
    from clipsearch import toyworld as tw

    return tw.canonical(scene) == tw.canonical(want) or tw.canonical(scene.swapped()) == tw.canonical(want)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--data", default="/tmp/clipsearch-cutoff-bench")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args()

    from clipsearch import toyworld as tw
    from clipsearch.cutoff import auto_cutoff
    from clipsearch.demo import prepare_demo
    from clipsearch.library import Library

    started = time.perf_counter()
    setup = prepare_demo(args.data, n=args.n, progress=False)
    prep_s = time.perf_counter() - started
    scenes: dict[str, object] = {}
    for folder in sorted((setup.photos).iterdir()):
        with (folder / "captions.csv").open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                scenes[str((folder / row["filepath"]).resolve())] = tw.parse_canonical(row["canonical"])
    with Library.open(setup.library) as lib:
        ids, _ = lib.vectors()
        paths = {i: lib.get_image(int(i)).path for i in ids.tolist()}
        truth_scene = {i: scenes[os.path.realpath(p)] for i, p in paths.items()}
        rows = []
        t_cut = []
        allv_ids, allv = lib.vectors()
        sweep_scores, sweep_truth = [], []
        for text, want, present in _queries(list(truth_scene.values())):
            v = lib.query_vector(text)
            t0 = time.perf_counter()
            cut = auto_cutoff(lib.searcher, v)
            t_cut.append(time.perf_counter() - t0)
            scores = allv @ v
            kept = set(allv_ids[scores >= cut].tolist())
            relevant = {i for i, sc in truth_scene.items() if _matches(sc, want)}
            rel_mask = np.isin(allv_ids, list(relevant))
            sweep_scores.append(scores)
            sweep_truth.append(rel_mask)
            tp = len(kept & relevant)
            rows.append({"query": text, "kind": "in the library" if present else "not in the library",
                         "relevant": len(relevant), "kept": len(kept), "tp": tp, "cutoff": round(float(cut), 4)})
        # The ceiling: the one global cutoff that would have been best on this very truth.
        s_all, t_all = np.concatenate(sweep_scores), np.concatenate(sweep_truth)
        order = np.argsort(-s_all)
        tp_c = np.cumsum(t_all[order])
        prec, rec = tp_c / np.arange(1, len(order) + 1), tp_c / max(t_all.sum(), 1)
        f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-9)
        best = int(np.argmax(f1))
        ceiling = (float(s_all[order][best]), float(prec[best]), float(rec[best]))
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)

    def pooled(rs: list[dict]) -> tuple[float, float, float, float]:
        tp, kept, rel = sum(r["tp"] for r in rs), sum(r["kept"] for r in rs), sum(r["relevant"] for r in rs)
        per_p = [r["tp"] / r["kept"] if r["kept"] else (1.0 if not r["relevant"] else 0.0) for r in rs]
        per_r = [r["tp"] / r["relevant"] if r["relevant"] else 1.0 for r in rs]
        return tp / max(kept, 1), tp / max(rel, 1), float(np.mean(per_p)), float(np.mean(per_r))

    cpu = _cpu()
    print(f"# toy world, {len(truth_scene)} photos, bundled model; {len(rows)} queries; CPU: {cpu}; "
          f"load: {os.getloadavg()[0]:.1f}; prepare {prep_s:.0f} s; cutoff {1000 * np.median(t_cut):.1f} ms p50")
    print("| queries | n | precision (pooled) | recall (pooled) | precision (mean per query) | recall (mean per query) |")
    print("|---|---|---|---|---|---|")
    for kind, rs in sorted(by_kind.items()) + [("all", rows)]:
        p, r, mp, mr = pooled(rs)
        print(f"| {kind} | {len(rs)} | {p:.3f} | {r:.3f} | {mp:.3f} | {mr:.3f} |")
    print(f"\nbest single cutoff in hindsight (max F1 on this truth): {ceiling[0]:.4f}: precision {ceiling[1]:.3f}, "
          f"recall {ceiling[2]:.3f}; min:auto chose {rows[0]['cutoff']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "cpu": cpu}, indent=1))


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
