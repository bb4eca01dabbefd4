"""Moments from pixels alone: the evidence of every burst pair and every same-caption distractor pair.

Draws `--series` bursts of 3 shots the way bench/duplicates_set.py does (toy-world scenes,
objects moved by up to 6 % of the frame between shots, the camera too in every other
series), and for each series one distractor (the same scene drawn again). Every file goes
through a JPEG at q92 and is read back as the pipeline reads it; then `pixels.compare`
decides each pair with no capture time. Prints recall (with the rule as it is, and without
its `MOMENT_SAME_DRAWING` route, on the same evidence) of burst pairs as moments (or
copies: a still burst is a copy in pixels), distractor pairs taken for moments or copies,
and the evidence of every miss, so a rule can be set on one seed and measured on another:

    python bench/bench_moments_pixels.py --series 40 --seed 1     # tuning
    python bench/bench_moments_pixels.py --series 40 --seed 7     # reported
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from clipsearch import toyworld as tw  # noqa: E402
from clipsearch.duplicates import compare  # noqa: E402
from clipsearch.duplicates.facts import read_photo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--verbose", action="store_true", help="print the evidence of every pair")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    moment_ev, distractor_ev = [], []
    with tempfile.TemporaryDirectory() as tmp:
        def sig(img, name):
            path = os.path.join(tmp, name + ".jpg")
            img.save(path, quality=92)
            return read_photo(path)[0]

        for s in range(args.series):
            scene = tw.sample_scene(rng, "train")
            reframe = 0.015 if s % 2 else 0.0
            shots = tw.render_series(scene, np.random.default_rng([args.seed, 4, s]), 3, args.size, motion=0.06,
                                     reframe=reframe)
            sigs = [sig(img, f"s{s}_{k}") for k, img in enumerate(shots)]
            for a, b in itertools.combinations(range(3), 2):
                moment_ev.append((s, a, b, compare(sigs[a], sigs[b])))
            again = sig(tw.render(scene, np.random.default_rng([args.seed, 5, s]), args.size), f"d{s}")
            distractor_ev.append((s, 0, "d", compare(sigs[0], again)))
    from clipsearch.duplicates.pixels import rule

    # The rule before MOMENT_SAME_DRAWING, on the same evidence: what the unchanged share adds.
    before = [rule(e.ncc, 0.0, e.moved, e.changed)[0] if e.level == "moment" else e.level for *_, e in moment_ev]
    dbefore = [rule(e.ncc, 0.0, e.moved, e.changed)[0] if e.level == "moment" else e.level
               for *_, e in distractor_ev]
    print(f"without the unchanged-share route: burst pairs as moments {before.count('moment') / len(before):.3f}, "
          f"distractor pairs as moments {dbefore.count('moment')}")
    fmt = "series {:3d} {} vs {}: {:<6} ncc {:.2f} moved {:3d} changed {:.2f} unchanged {:.2f} crop {:.2f}  {}"
    levels = [e.level for *_, e in moment_ev]
    print(f"seed {args.seed}: {len(moment_ev)} burst pairs -> moment {levels.count('moment')}, copy "
          f"{levels.count('copy')}, none {levels.count(None)}; recall as moments "
          f"{levels.count('moment') / len(levels):.3f} (as moments or copies "
          f"{(len(levels) - levels.count(None)) / len(levels):.3f})")
    dl = [e.level for *_, e in distractor_ev]
    print(f"  {len(distractor_ev)} distractor pairs -> moment {dl.count('moment')}, copy {dl.count('copy')}, "
          f"none {dl.count(None)}   ({time.perf_counter() - t0:.0f} s)")
    for s, a, b, e in moment_ev + distractor_ev:
        if args.verbose or (b != "d" and e.level != "moment") or (b == "d" and e.level is not None):
            print(fmt.format(s, a, b, str(e.level), e.ncc, e.moved, e.changed, e.unchanged, e.crop, e.reason))


if __name__ == "__main__":
    main()
