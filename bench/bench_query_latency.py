"""End-to-end text query latency on a warm library: encode the text, search the index, read the catalog.

    python bench/bench_query_latency.py --size 100000
    python bench/bench_query_latency.py --size 100000 --models ViT-B-32 --queries 300

For each model, a library of `--size` images is built in a temporary folder with synthetic
CLIP-like vectors written straight into the catalog (fake paths: encoding 100k photos is
not what is measured here) and the index `auto` picks. Then `Library.search` is timed, query
by query, with the model loaded once and kept:

* distinct queries, each seen for the first time: the text encoder runs (cold cache);
* the same queries again: the text-vector cache answers, only search and catalog remain.

ViT-B-32 has random weights (`pretrained=None`): the same computation as the trained model,
so the same latency. toyworld uses its bundled weights when the package has them, else
random ones; the output says which. The same queries are also run against a flat index of
the same library, side by side, to show what the index choice buys end to end.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import ClipLikeMixture, machine  # noqa: E402

# Before torch, as the CLI and the web UI do: the OpenMP wait policy both runtimes read
# when they load (see docs/performance.md, "Query latency").
from clipsearch.runtime import configure_process  # noqa: E402

configure_process()

ADJECTIVES = ["red", "old", "small", "happy", "wet", "bright", "dark", "wooden", "broken", "shiny", "snowy", "busy"]
NOUNS = ["dog", "car", "house", "beach", "mountain", "child", "bicycle", "cake", "boat", "tree", "street", "cat",
         "bridge", "market", "garden", "train"]
PLACES = ["at night", "in the rain", "on a sunny day", "in winter", "near the sea", "in a city", "in the forest",
          "indoors", "at sunset", "from above"]


def distinct_queries(n: int, seed: int = 0) -> list[str]:
    """`n` different natural-language queries like "a photo of a wet dog at night"."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        a, b, c = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(PLACES)
        out[f"a photo of a {a} {b} {c}"] = None
    return list(out)


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def time_queries(lib, queries: list[str], k: int = 10) -> list[float]:
    out = []
    for q in queries:
        t = time.perf_counter()
        hits = lib.search(q, k=k)
        out.append((time.perf_counter() - t) * 1000)
        assert len(hits) == k
    return out


def encode_all_positions(encoder, text: str) -> np.ndarray:
    """open_clip's own `encode_text`: the text tower over all 77 positions, as clipsearch did
    before it stopped at the end-of-text token (`ClipEncoder._text_pool`)."""
    import torch

    with torch.inference_mode():
        x = encoder.model.encode_text(encoder.tokenizer([text]).to(encoder.device))
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy()[0]


def build_library(folder: Path, encoder, size: int, kind: str = "auto") -> tuple[object, float, float]:
    from clipsearch.catalog import NewImage
    from clipsearch.library import Library

    lib = Library.open(folder, encoder=encoder)
    vectors = ClipLikeMixture(dim=encoder.dim).images(size)
    t = time.perf_counter()
    for start in range(0, size, 20_000):
        lib.catalog.add_images([NewImage(f"/photos/{i // 1000:04d}/{i:07d}.jpg", 100_000 + i, i, vectors[i])
                                for i in range(start, min(size, start + 20_000))])
    fill_s = time.perf_counter() - t
    t = time.perf_counter()
    lib.rebuild_index(index_kind=kind)
    return lib, fill_s, time.perf_counter() - t


def bench_model(name: str, size: int, n_queries: int, repeats: int, workdir: Path, kind: str = "auto"
                ) -> dict[str, object]:
    from clipsearch.encoder import BUNDLED_MODEL, bundled_weights_path, load_encoder

    if name == BUNDLED_MODEL and bundled_weights_path().is_file():
        pretrained, weights = "bundled", "bundled trained weights"
    else:
        pretrained, weights = None, "random weights (same compute as trained)"
    t = time.perf_counter()
    encoder = load_encoder(name, pretrained, device="cpu")
    load_s = time.perf_counter() - t
    lib, fill_s, index_s = build_library(workdir / name, encoder, size, kind)
    print(f"{name} ({weights}, {encoder.dim}-d): model loaded in {load_s:.1f}s; {size} vectors written to the "
          f"catalog in {fill_s:.1f}s; index {lib.vector_index.describe()} built in {index_s:.1f}s, "
          f"recall@10 {lib.info().index_recall}", flush=True)

    # The same library with an exact flat index too: the two are timed query by query in
    # turn, so a busy machine slows both alike.
    from clipsearch.index import IndexSpec, build_index

    auto_index = lib.vector_index
    flat_index = build_index(IndexSpec("flat"), encoder.dim, lib.catalog.iter_vectors(encoder.dim))
    indexes = {"auto": auto_index, "flat": flat_index}
    queries = distinct_queries(5 + 2 * n_queries, seed=1)
    warm, fresh = queries[:5], {"auto": queries[5:5 + n_queries], "flat": queries[5 + n_queries:]}
    rows: dict[str, list[float]] = {"auto, new query": [], "flat, new query": [],
                                    "auto, repeated query": [], "flat, repeated query": []}

    def timed_search(which: str, q: str) -> float:
        lib.searcher.index = indexes[which]
        return time_queries(lib, [q])[0]

    for which in indexes:
        lib.searcher.index = indexes[which]
        time_queries(lib, warm)  # first-call costs: thread pools, tokenizer tables, page faults
    for i in range(n_queries):
        for which in indexes:
            rows[f"{which}, new query"].append(timed_search(which, fresh[which][i]))
    for _ in range(repeats):
        for i in range(n_queries):
            for which in indexes:
                rows[f"{which}, repeated query"].append(timed_search(which, fresh[which][i]))
    lib.searcher.index = auto_index

    # The parts, on the same queries: encoding alone, search alone (vector given).
    parts: dict[str, list[float]] = {"  text encoding only": [], "  encoding all positions*": [],
                                     "  auto index search only": [], "  flat index search only": []}
    trimmed_ok = hasattr(encoder, "model") and hasattr(encoder.model, "attn_mask")
    for q in fresh["auto"][:50]:
        t = time.perf_counter()
        vec = lib.encoder.encode_texts([q])[0]
        parts["  text encoding only"].append((time.perf_counter() - t) * 1000)
        if trimmed_ok:
            t = time.perf_counter()
            full = encode_all_positions(lib.encoder, q)
            parts["  encoding all positions*"].append((time.perf_counter() - t) * 1000)
            assert float(np.abs(full - vec).max()) < 1e-4, "the trimmed encoding differs"
        for which in indexes:
            t = time.perf_counter()
            indexes[which].search(vec[None, :], 10)
            parts[f"  {which} index search only"].append((time.perf_counter() - t) * 1000)
    rows.update({k: v for k, v in parts.items() if v})
    lib.close()
    return {"model": name, "weights": weights, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=100_000, help="images in the library (default 100000)")
    p.add_argument("--index", default="auto",
                   help="the library's index kind (default auto); the 'auto' rows are then that index")
    p.add_argument("--models", default="ViT-B-32,toyworld", help="comma-separated (default ViT-B-32,toyworld)")
    p.add_argument("--queries", type=int, default=200, help="distinct queries per measurement (default 200)")
    p.add_argument("--repeats", type=int, default=2, help="passes over the same queries for the cached numbers")
    p.add_argument("--target-ms", type=float, default=150.0, help="p50 target for ViT-B-32 (default 150)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch

    print(f"machine: {machine()}, torch {torch.__version__} with {torch.get_num_threads()} threads")
    results = []
    with tempfile.TemporaryDirectory(prefix="clipsearch-latency-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            results.append(bench_model(name, args.size, args.queries, args.repeats, Path(tmp), args.index))
    print()
    print(f"{'model':10s} {'measurement':24s} {'n':>5s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for r in results:
        for label, ms in r["rows"].items():
            p50, p95 = percentiles(ms)
            print(f"{r['model']:10s} {label:24s} {len(ms):5d} {p50:8.1f} {p95:8.1f}")
    print("* open_clip's encode_text over all 77 positions, what clipsearch did before it stopped at the "
          "end-of-text token (same vectors to 1e-4)")
    for r in results:
        rows = r["rows"]
        new, rep, flat = (percentiles(rows[k])[0] for k in ("auto, new query", "auto, repeated query", "flat, new query"))
        line = (f"{r['model']}: p50 new query {new:.1f} ms, repeated {rep:.1f} ms ({new / rep:.0f}x faster); "
                f"auto index vs flat, new query p50: {flat / new:.2f}x")
        if r["model"] == "ViT-B-32":
            line += f"; target p50 <= {args.target_ms:.0f} ms: {'met' if new <= args.target_ms else 'NOT met'}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
