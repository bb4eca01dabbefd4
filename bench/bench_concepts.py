"""Personal concepts on the toy world: retrieval of a concept taught by k photos, alone and in a sentence.

    python bench/bench_concepts.py                 # about 2,000 photos at 64 px, 7 concepts, k = 1, 3, 5, 10

The library: 800 photos of the base world and 800 of the extension world (`--world ext`:
objects, colours and a setting the bundled model never saw), plus, for each concept, 54
photos that show it (3 in each setting × time). A concept is a (colour, object) pair:
four from the extension world (pink kite, brown star, pink balloon, green kite: no words
for them exist in the model) and three combinations held out of the bundled model's
training (red boat, blue car, yellow bird: words exist). Its examples are k fresh photos
of it, not in the library.

R@10 is measured against a brute-force oracle of the true photos (the scene labels):
|top 10 ∩ true| / min(10, |true|). Alone: the photos that show the concept. In a
sentence ("bella on a road at night", 9 of the 18 setting × time pairs, base-world
settings only where words exist): the photos that show it in that setting at that time.
Words: "a pink kite", "a pink kite on a road at night". Every method runs on the same
vectors in one run; the product's method is `whitened` with sentence weight 2.0 for a
library this size (clipsearch.concepts.build_concept and resolve_text: the "product" row). Also measured: how often the
spread measure calls a consistent example set weak, and a set mixing two unrelated
concepts weak.
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np

from clipsearch import toyworld as tw
from clipsearch.concepts import WEAK_COHERENCE, build_concept, coherence, resolve_text
from clipsearch.encoder import load_encoder

CONCEPTS = [("pink", "kite"), ("brown", "star"), ("pink", "balloon"), ("green", "kite"),
            ("red", "boat"), ("blue", "car"), ("yellow", "bird")]
KS = (1, 3, 5, 10)
SIZE = 64


def concept_scene(colour: str, obj: str, rng: np.random.Generator, setting: str | None = None,
                  time_: str | None = None) -> tw.Scene:
    setting = setting or tw.ALL_SETTINGS[rng.integers(len(tw.ALL_SETTINGS))]
    time_ = time_ or tw.TIMES[rng.integers(3)]
    if rng.random() < 0.5:
        return tw.Scene(obj=obj, colour=colour, setting=setting, time=time_, count=int(rng.integers(1, 4)))
    other = [o for o in tw.ALL_OBJECTS if o != obj][rng.integers(len(tw.ALL_OBJECTS) - 1)]
    colours = tuple(tw.ALL_COLOURS)
    return tw.Scene(obj=obj, colour=colour, setting=setting, time=time_, relation=tw.RELATIONS[rng.integers(4)],
                    obj2=other, colour2=colours[rng.integers(len(colours))])


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--background", type=int, default=800, help="photos per world besides the concepts' (800)")
    ap.add_argument("--seeds", type=int, default=3, help="example sets per concept and k (3)")
    args = ap.parse_args()
    started = time.perf_counter()
    encoder = load_encoder("toyworld", "bundled")
    rng = np.random.default_rng(0)
    scenes = (tw.plan_scenes(args.background, "seen", seed=5, variants=False)
              + tw.plan_scenes(args.background, "seen", seed=6, variants=False, world="ext"))
    for colour, obj in CONCEPTS:
        for setting in tw.ALL_SETTINGS:
            for time_ in tw.TIMES:
                scenes.extend(concept_scene(colour, obj, rng, setting, time_) for _ in range(3))
    X = encoder.encode_images([tw.render(s, np.random.default_rng([9, i]), SIZE) for i, s in enumerate(scenes)])
    print(f"library: {len(scenes)} photos at {SIZE} px, encoded in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    mu = X.mean(axis=0)
    centred = X - mu
    cov = centred.T @ centred / len(X)
    whiten = 0.7 * cov + 0.3 * np.trace(cov) / len(cov) * np.eye(len(cov))

    text_cache: dict[str, np.ndarray] = {}

    def text_vector(text: str) -> np.ndarray:
        if text not in text_cache:
            text_cache[text] = encoder.encode_texts([text])[0]
        return text_cache[text]

    def r10(query: np.ndarray, truth: set[int]) -> float:
        top = np.argsort(-(X @ query), kind="stable")[:10]
        return len(truth.intersection(top.tolist())) / min(10, len(truth))

    examples: dict[tuple[str, str, int], np.ndarray] = {}
    for colour, obj in CONCEPTS:
        for seed in range(args.seeds):
            r = np.random.default_rng([seed, len(colour) * 100 + len(obj)])
            shots = [concept_scene(colour, obj, r) for _ in range(max(KS))]
            examples[(colour, obj, seed)] = encoder.encode_images(
                [tw.render(s, np.random.default_rng([77, seed, i]), SIZE) for i, s in enumerate(shots)])

    sentences = [(s, t) for s in tw.SETTINGS for t in tw.TIMES][::2]  # settings the model has words for
    res: dict[tuple, list[float]] = defaultdict(list)
    for colour, obj in CONCEPTS:
        group = "new words" if (colour in tw.EXTRA_COLOURS or obj in tw.EXTRA_OBJECTS) else "held-out combination"
        truth = {i for i, s in enumerate(scenes) if (colour, obj) in s.objects}
        words = f"a {colour} {obj}"
        res[("words", "alone", group)].append(r10(text_vector(words), truth))
        for setting, time_ in sentences:
            rest = f"{tw.SETTING_PHRASE[setting]} {tw.TIME_PHRASE[time_]}"
            sub = {i for i in truth if scenes[i].setting == setting and scenes[i].time == time_}
            res[("words", "sentence", group)].append(r10(text_vector(f"{words} {rest}"), sub))
        for k in KS:
            for seed in range(args.seeds):
                E = examples[(colour, obj, seed)][:k]
                product, params = build_concept(E, X)
                vectors = {"prototype": unit(E.mean(axis=0)), "centred": unit(E.mean(axis=0) - mu),
                           "whitened": unit(np.linalg.solve(whiten, E.mean(axis=0) - mu))}
                for name, vec in vectors.items():
                    res[(name, "alone", group, k)].append(r10(vec, truth))
                for setting, time_ in sentences:
                    rest = f"{tw.SETTING_PHRASE[setting]} {tw.TIME_PHRASE[time_]}"
                    sub = {i for i in truth if scenes[i].setting == setting and scenes[i].time == time_}
                    for name, vec in vectors.items():
                        for weight in (0.5, 1.0, 2.0):
                            query = unit(weight * vec + text_vector(rest))
                            res[(f"{name} w{weight}", "sentence", group, k)].append(r10(query, sub))

                    class _C:  # the product's path: the name resolved inside the query text
                        stale = False
                        vector = product
                        weight = params["weight"]
                    query = resolve_text(f"bella {rest}", {"bella": _C()}, text_vector)  # type: ignore[dict-item]
                    res[("product", "sentence", group, k)].append(r10(query, sub))

    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"# {cpu.split(':')[-1].strip()}, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f} "
          f"(shared machine); {time.perf_counter() - started:.0f} s in all")
    groups = ("new words", "held-out combination")
    print("\nR@10 of the concept ALONE (mean over concepts and example sets)")
    print(f"{'method':<14}" + "".join(f"{g + ' k=' + str(k):>26}" for g in groups for k in KS))
    for name in ("prototype", "centred", "whitened"):
        print(f"{name:<14}" + "".join(f"{np.mean(res[(name, 'alone', g, k)]):>26.3f}" for g in groups for k in KS))
    print(f"{'words':<14}" + "".join(f"{np.mean(res[('words', 'alone', g)]):>26.3f}" for g in groups for _ in KS))
    print("\nR@10 IN A SENTENCE ('bella on a road at night')")
    for name in [f"{m} w{w}" for m in ("prototype", "centred", "whitened") for w in (0.5, 1.0, 2.0)] + ["product"]:
        print(f"{name:<14}" + "".join(f"{np.mean(res[(name, 'sentence', g, k)]):>26.3f}" for g in groups for k in KS))
    print(f"{'words':<14}" + "".join(f"{np.mean(res[('words', 'sentence', g)]):>26.3f}" for g in groups for _ in KS))

    print(f"\nSpread measure: coherence < {WEAK_COHERENCE} says weak")
    keys = sorted({(c, o) for c, o, _ in examples})
    unrelated = [(a, b) for a, b in itertools.permutations(keys, 2) if a[0] != b[0] and a[1] != b[1]]
    for k in (3, 5, 10):
        consistent = [coherence(examples[key][:k], mu) for key in examples]
        half = (k + 1) // 2
        mixed = [coherence(np.concatenate([examples[(*a, 0)][:half], examples[(*b, 1 % args.seeds)][:k - half]]), mu)
                 for a, b in unrelated]
        print(f"k={k:<3} consistent sets called weak: {np.mean(np.array(consistent) < WEAK_COHERENCE):.2f} "
              f"(median coherence {np.median(consistent):.2f}); two unrelated things called weak: "
              f"{np.mean(np.array(mixed) < WEAK_COHERENCE):.2f} (median {np.median(mixed):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
