"""Embedding throughput on Ray: one worker vs two, against the single-machine indexer, on this machine.

    python bench/bench_distributed.py                         # toyworld (bundled), 1500 photos, 3 rounds
    python bench/bench_distributed.py --model ViT-B-32 --pretrained none --photos 300
    python bench/bench_distributed.py --model-inputs              # driver and index-build rates, 512-d

The photos are toyworld scenes (256 px JPEGs), generated once into --photos-dir. Every
configuration runs in this one process against one local Ray instance (2 CPUs),
interleaved round by round (A B C, A B C, ...) so that a colleague's job slows them
alike; the median over rounds is reported. Each run indexes into a fresh library:

* one machine: `Library.index` (decode pool + encoder, all cores), the reference;
* ray xN: `index_on_ray` with N embedding actors of 1 CPU each (decode and encode in
  the actor), shards, ingest and index save included.

A Ray run also pays a fixed cost (actor start, model load in each actor, pipeline start):
it is measured with a run over 8 photos and subtracted to give the steady rate per
worker, the figure docs/scale-out.md scales to N nodes. Measured figures are printed as
such; the steady rates are derived from two measurements.

--model-inputs measures, on CLIP-like 512-d vectors (bench/common.py), the other rates
the N-node model needs: the driver's shard write and catalog ingest (rows/s), and the
IVF-PQ build the chooser picks at scale (IVF2048,PQ64x8): training on the 100k sample,
adding per core (what each Ray task does), merging parts on disk, and serving bytes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def ensure_photos(folder: Path, count: int) -> Path:
    from clipsearch.toyworld import generate

    images = folder / "images"
    if not images.is_dir() or len(list(images.iterdir())) < count:
        shutil.rmtree(folder, ignore_errors=True)
        generate(folder, count, seed=0, progress=False)
    return images


def subset(images: Path, count: int, where: Path) -> Path:
    """A folder of symlinks to the first `count` photos."""
    where.mkdir(parents=True, exist_ok=True)
    for p in sorted(images.iterdir())[:count]:
        (where / p.name).symlink_to(p)
    return where


def run_single(photos: Path, model: str, pretrained: str | None, work: Path) -> float:
    from clipsearch import Library

    folder = Path(tempfile.mkdtemp(dir=work))
    with Library.open(folder, model=model, pretrained=pretrained) as lib:
        _ = lib.encoder  # model load is not indexing
        started = time.perf_counter()
        report = lib.index(photos, index_kind="flat")
        seconds = time.perf_counter() - started
    assert report.added and not report.skipped, report.summary()
    shutil.rmtree(folder, ignore_errors=True)
    return seconds


def run_ray(photos: Path, model: str, pretrained: str | None, work: Path, workers: int, batch: int) -> float:
    from clipsearch import Library
    from clipsearch.distributed import EncoderSpec, RayOptions, index_on_ray

    folder = Path(tempfile.mkdtemp(dir=work))
    with Library.open(folder, model=model, pretrained=pretrained) as lib:
        started = time.perf_counter()
        report = index_on_ray(lib, photos, encoder=EncoderSpec(model, pretrained, "cpu"),
                              options=RayOptions(workers=workers, batch_size=batch), index_kind="flat")
        seconds = time.perf_counter() - started
    assert report.added and not report.skipped, report.summary()
    shutil.rmtree(folder, ignore_errors=True)
    return seconds


def model_inputs(n: int) -> dict[str, float]:
    """Driver and index-build rates on `n` CLIP-like 512-d vectors, one core where it says so."""
    import faiss
    import numpy as np

    from common import ClipLikeMixture

    from clipsearch.catalog import Catalog, NewImage
    from clipsearch.distributed import Shard, read_shard, write_shard
    from clipsearch.index import TRAIN_MAX, choose_index, new_faiss_index, train_index

    out: dict[str, float] = {}
    vectors = ClipLikeMixture(dim=512).images(n)
    work = Path(tempfile.mkdtemp(prefix="bench-model-inputs-"))
    try:
        rows = min(n, 50_000)
        shard = Shard([f"/photos/{i:09d}.jpg" for i in range(rows)], np.arange(rows), np.arange(rows),
                      np.full(rows, 4000), np.full(rows, 3000), [None] * rows, vectors[:rows])
        started = time.perf_counter()
        write_shard(work / "s.parquet", shard, model="m")
        out["shard write rows/s"] = rows / (time.perf_counter() - started)
        started = time.perf_counter()
        back = read_shard(work / "s.parquet", dim=512, model="m")
        out["shard read rows/s"] = rows / (time.perf_counter() - started)
        catalog = Catalog(work / "catalog.sqlite")
        started = time.perf_counter()
        for start in range(0, rows, 256):
            catalog.add_images([NewImage(back.paths[i], 1, 1, back.vectors[i], 4000, 3000)
                                for i in range(start, min(rows, start + 256))])
        out["catalog ingest rows/s"] = rows / (time.perf_counter() - started)
        started = time.perf_counter()
        got = sum(len(ids) for ids, _ in catalog.iter_vectors(512, batch=50_000))
        out["catalog vector read rows/s"] = got / (time.perf_counter() - started)
        catalog.close()
        out["catalog bytes/row"] = (work / "catalog.sqlite").stat().st_size / rows

        spec = choose_index(100_000_000, 512, "ivfpq")
        out["ivfpq spec"] = spec.factory(512)  # type: ignore[assignment]
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        index = new_faiss_index(spec, 512)
        sample = vectors[: min(n, TRAIN_MAX)]
        started = time.perf_counter()
        train_index(index, spec, sample)
        out["train s (all cores)"] = time.perf_counter() - started
        out["train vectors"] = len(sample)
        faiss.omp_set_num_threads(1)
        trained = faiss.serialize_index(index)
        parts = []
        started = time.perf_counter()
        for k, start in enumerate(range(0, n, n // 4)):
            part = faiss.deserialize_index(trained)
            part.add_with_ids(vectors[start:start + n // 4], np.arange(start, min(n, start + n // 4)))
            faiss.write_index(part, str(work / f"part{k}.index"))
            parts.append(str(work / f"part{k}.index"))
        out["add vectors/s per core"] = n / (time.perf_counter() - started)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        from faiss.contrib.ondisk import merge_ondisk

        merged = faiss.deserialize_index(trained)
        started = time.perf_counter()
        merge_ondisk(merged, parts, str(work / "merged.ivfdata"))
        out["merge vectors/s"] = n / (time.perf_counter() - started)
        out["ivfdata bytes/vector"] = (work / "merged.ivfdata").stat().st_size / n
        merged.nprobe = 16
        queries = ClipLikeMixture(dim=512).text_queries(200)
        started = time.perf_counter()
        merged.search(queries, 10)
        out["search ms/query (nprobe 16, this n)"] = 1000 * (time.perf_counter() - started) / len(queries)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1500)
    parser.add_argument("--photos-dir", default=os.path.join(tempfile.gettempdir(), "clipsearch-bench-toyworld"))
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--pretrained", default="bundled", help="a tag, a checkpoint, or 'none' (random weights)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--model-inputs", action="store_true", help="measure driver and index-build rates instead")
    parser.add_argument("--vectors", type=int, default=200_000, help="vectors for --model-inputs")
    args = parser.parse_args()
    if args.model_inputs:
        sys.path.insert(0, str(Path(__file__).parent))
        figures = model_inputs(args.vectors)
        for name, value in figures.items():
            print(f"  {name:40s} {value:,.1f}" if isinstance(value, float) else f"  {name:40s} {value}")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
        return
    pretrained = None if args.pretrained.lower() in ("none", "random") else args.pretrained
    logging.basicConfig(level=logging.ERROR)

    import ray

    from clipsearch.distributed import ray_session

    images = ensure_photos(Path(args.photos_dir), args.photos)
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    try:
        photos = subset(images, args.photos, work / "photos")
        tiny = subset(images, 8, work / "tiny")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                 os.environ.get("PYTHONPATH")]))
        configs = {
            "one machine": lambda: run_single(photos, args.model, pretrained, work),
            "ray x1": lambda: run_ray(photos, args.model, pretrained, work, 1, args.batch_size),
            "ray x2": lambda: run_ray(photos, args.model, pretrained, work, 2, args.batch_size),
            "ray x1, 8 photos": lambda: run_ray(tiny, args.model, pretrained, work, 1, args.batch_size),
            "ray x2, 8 photos": lambda: run_ray(tiny, args.model, pretrained, work, 2, args.batch_size),
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        with ray_session() as _:
            print(f"ray {ray.__version__}, {ray.cluster_resources().get('CPU')} CPUs; {args.photos} toyworld photos, "
                  f"model {args.model}/{args.pretrained}, batch {args.batch_size}", flush=True)
            for r in range(args.rounds):
                for name, fn in configs.items():
                    times[name].append(fn())
                    print(f"  round {r + 1} {name:18s} {times[name][-1]:7.2f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {name: statistics.median(t) for name, t in times.items()}
    n = args.photos
    out: dict[str, float] = {}
    print(f"\nmedian of {args.rounds} rounds (measured: wall time of the whole run, fresh library each time)")
    for name in ("one machine", "ray x1", "ray x2"):
        out[f"{name} images/s"] = n / med[name]
        print(f"  {name:12s} {med[name]:7.2f} s  {n / med[name]:8.1f} images/s")
    out["ray x2 / ray x1"] = med["ray x1"] / med["ray x2"]
    out["ray x2 / one machine"] = med["one machine"] / med["ray x2"]
    print(f"  ratio ray x2 / ray x1: {out['ray x2 / ray x1']:.2f}   ray x2 / one machine: "
          f"{out['ray x2 / one machine']:.2f}")
    print("derived: steady rate = (N - 8) / (wall - wall of the 8-photo run), i.e. without the fixed start cost")
    for w in (1, 2):
        fixed = med[f"ray x{w}, 8 photos"]
        steady = (n - 8) / max(med[f"ray x{w}"] - fixed, 1e-9)
        out[f"ray x{w} fixed s"], out[f"ray x{w} steady images/s"] = fixed, steady
        print(f"  ray x{w}: fixed {fixed:5.2f} s, steady {steady:7.1f} images/s, {steady / w:7.1f} per worker")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
