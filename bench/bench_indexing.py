"""Indexing throughput on camera-size JPEGs: the usual open_clip loop, the model alone, and clipsearch.

    python bench/bench_indexing.py                      # 300 photos, 3 rounds
    python bench/bench_indexing.py --tune               # + torch threads x decode workers, threads vs processes
    python bench/bench_indexing.py --onnx               # + the ONNX Runtime image encoder (if installed)
    python bench/bench_indexing.py --int8 --only "ceiling onnxruntime,ceiling onnx-int8,clipsearch onnxruntime,clipsearch onnx-int8"

The photos are generated once (4000x3000, JPEG quality 90, with texture and sensor-like
noise so they weigh ~4 MB as camera files do, not a few hundred KB) and cached in --photos.

Every variant runs in this one process, interleaved round by round (A B C, A B C, ...), so
that a colleague's job slows all of them alike; ratios are taken within a round and the
median over rounds is reported. The model is ViT-B-32 with random weights (the compute of
the pretrained one). Variants:

* baseline: the loop in open_clip's README and rclip: `Image.open`, `preprocess`, stack a
  batch, `model.encode_image`, normalise. Decoding is full size, in the encoding thread.
* ceiling: `model.encode_image` alone on ready tensors of the same batch size.
* clipsearch: `Library.index` on a fresh library folder, wall time (scan, decode, encode,
  catalog, index, save), with its defaults and the image tower on torch.
* clipsearch auto: the same with the default image backend ("auto"): what `clipsearch
  index` does, onnxruntime for a big job when installed (its export or load is timed).

* with --onnx: "ceiling onnxruntime" (the fp32 ONNX image tower alone) and "clipsearch
  onnxruntime" (`Library.index` with it).
* with --int8: the same for the int8 image tower ("ceiling onnx-int8", "clipsearch
  onnx-int8", dynamically quantised, what `--image-backend onnx-int8` runs), and the
  cosine between int8 and fp32 vectors of the same photos (min and mean).

It also times decoding alone (one core, no model) to explain the numbers.
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

PHOTO_SIZE = (4000, 3000)
DEFAULT_PHOTOS = os.path.join(tempfile.gettempdir(), "clipsearch-bench-photos")


# -- the photo collection -----------------------------------------------------------------
def _make_photo(args: tuple[str, int]) -> str:
    """One camera-like 12 MP JPEG: smooth scene colours, shapes with edges, fine texture and noise."""
    from PIL import Image, ImageDraw, ImageFilter

    path, seed = args
    rng = np.random.default_rng(seed)
    w, h = PHOTO_SIZE
    # Large-scale colour (sky, walls, ground) and mid-scale texture (foliage, fabric).
    scene = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(15, 40))):  # objects: hard edges cost bits as real ones do
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(50, 1200)), y0 + int(rng.integers(50, 900))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    texture = Image.fromarray((rng.random((h // 16, w // 16, 3)) * 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(2))
    pixels = np.asarray(scene, np.int16) * 3 // 4 + np.asarray(texture, np.int16) // 4
    pixels += rng.integers(-10, 11, (h, w, 1), dtype=np.int16)  # luminance noise, as a sensor at ISO 400
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


def ensure_photos(folder: str, count: int) -> list[str]:
    """`count` photos in `folder`, generating only the missing ones (two processes)."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"IMG_{i:04d}.jpg") for i in range(count)]
    missing = [(p, i) for i, p in enumerate(paths) if not os.path.exists(p)]
    if missing:
        print(f"generating {len(missing)} photos of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} in {folder} ...", flush=True)
        started = time.perf_counter()
        with ProcessPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
            for n, _ in enumerate(pool.map(_make_photo, missing, chunksize=4), 1):
                if n % 50 == 0:
                    print(f"  {n}/{len(missing)}", flush=True)
        print(f"  done in {time.perf_counter() - started:.0f}s", flush=True)
    return paths


# -- the variants -------------------------------------------------------------------------
def baseline(model: Any, preprocess: Callable, paths: list[str], batch_size: int) -> float:
    """open_clip's README / rclip loop; returns seconds."""
    import torch
    from PIL import Image

    started = time.perf_counter()
    out = []
    for start in range(0, len(paths), batch_size):
        images = [preprocess(Image.open(p)) for p in paths[start:start + batch_size]]
        with torch.no_grad():
            features = model.encode_image(torch.stack(images))
            features /= features.norm(dim=-1, keepdim=True)
        out.append(features.numpy())
    return time.perf_counter() - started


def ceiling(encode: Callable[[Any], Any], count: int, batch_size: int, size: int) -> float:
    """The model alone on ready (random) input tensors of the same batch size; returns seconds."""
    import torch

    batches = [torch.randn(min(batch_size, count - s), 3, size, size, generator=torch.Generator().manual_seed(s))
               for s in range(0, count, batch_size)]
    started = time.perf_counter()
    for batch in batches:
        encode(batch)
    return time.perf_counter() - started


def clipsearch_index(encoder: Any, photos: str, **indexer_args: Any) -> tuple[float, dict[str, float]]:
    """Library.index into a fresh library folder; returns (seconds, time inside parts of the sync)."""
    import clipsearch.indexer
    from clipsearch import Library

    spent = {"store": 0.0, "encode": 0.0}
    # The split of the sync's time needs the indexer's private stages; an indexer without
    # them (the stages moved to clipsearch.pipeline) is timed as a whole.
    real_store = getattr(clipsearch.indexer.Indexer, "_store_chunk", None)
    real_encode = getattr(clipsearch.indexer.Indexer, "_encode", None)
    timed = real_store is not None and real_encode is not None

    def store(self: Any, *a: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_store(self, *a)
        finally:
            spent["store"] += time.perf_counter() - t

    def encode(self: Any, *a: Any) -> Any:
        t = time.perf_counter()
        try:
            return real_encode(self, *a)
        finally:
            spent["encode"] += time.perf_counter() - t

    real_indexer = clipsearch.indexer.Indexer
    folder = tempfile.mkdtemp(prefix="clipsearch-bench-lib-")
    try:
        if timed:
            clipsearch.indexer.Indexer._store_chunk, clipsearch.indexer.Indexer._encode = store, encode
        if indexer_args:
            clipsearch.indexer.Indexer = lambda *a, **k: real_indexer(*a, **{**k, **indexer_args})
        with Library.open(folder, encoder=encoder) as lib:
            started = time.perf_counter()
            report = lib.index(photos)
            seconds = time.perf_counter() - started
        assert report.added == len(os.listdir(photos)) and not report.skipped, report.summary()
    finally:
        if timed:
            clipsearch.indexer.Indexer._store_chunk, clipsearch.indexer.Indexer._encode = real_store, real_encode
        clipsearch.indexer.Indexer = real_indexer
        shutil.rmtree(folder, ignore_errors=True)
    return seconds, (spent if timed else {})


# -- decode-only rates --------------------------------------------------------------------
def decode_rates(paths: list[str], preprocess: Callable, spec: Any, size: int) -> dict[str, float]:
    """Images per second on one core, no model: what each way of reading a photo costs."""
    from PIL import Image

    from clipsearch.images import load_image, to_pixels

    ways: dict[str, Callable[[str], object]] = {
        "full decode (Image.open + load)": lambda p: Image.open(p).load(),
        "full decode + open_clip preprocess (baseline)": lambda p: preprocess(Image.open(p)),
        "draft decode (load_image target_size)": lambda p: load_image(p, target_size=size),
        "draft decode + to_pixels (clipsearch worker)": lambda p: to_pixels(load_image(p, target_size=size), spec),
    }
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as one decode worker has
    try:
        seconds = {name: [] for name in ways}
        for _ in range(2):  # interleaved, best of two
            for name, fn in ways.items():
                started = time.perf_counter()
                for p in paths:
                    fn(p)
                seconds[name].append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return {name: len(paths) / min(s) for name, s in seconds.items()}


# -- main ---------------------------------------------------------------------------------
def _machine() -> str:
    import platform

    import torch

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", default=DEFAULT_PHOTOS, help="folder of generated photos, reused across runs")
    ap.add_argument("--count", type=int, default=300, help="photos to index")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every variant")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--decode-sample", type=int, default=20, help="photos for the decode-only rates")
    ap.add_argument("--tune", action="store_true", help="also torch threads x decode workers, threads vs processes")
    ap.add_argument("--onnx", action="store_true", help="also the ONNX Runtime image backend")
    ap.add_argument("--int8", action="store_true", help="also the int8 ONNX image backend (implies --onnx)")
    ap.add_argument("--only", default=None, help="comma-separated variant names to run (default: all enabled)")
    ap.add_argument("--no-decode-rates", action="store_true", help="skip the decode-only rates")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    # Before torch, as the CLI does: OpenMP's wait policy, which OpenMP reads once, when
    # torch loads it. Every variant runs under it.
    from clipsearch.runtime import configure_process

    configure_process()
    import torch

    from clipsearch.encoder import load_encoder

    paths = ensure_photos(args.photos, args.count)
    photos = os.path.join(args.photos, f"set-{args.count}")  # a folder holding exactly these photos
    os.makedirs(photos, exist_ok=True)
    for p in paths:
        link = os.path.join(photos, os.path.basename(p))
        if not os.path.exists(link):
            os.symlink(p, link)
    mb = sum(os.path.getsize(p) for p in paths) / len(paths) / 2 ** 20
    print(f"{_machine()}\n{len(paths)} photos of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}, {mb:.1f} MB each on average, "
          f"batch {args.batch_size}, model {args.model} (random weights)\n", flush=True)

    # The torch variants pin torch: the default ("auto") would move the shared encoder to
    # onnxruntime at its first big job. "clipsearch auto" is what `clipsearch index` does.
    encoder = load_encoder(args.model, None, image_backend="torch")
    model, preprocess, size = encoder.model, encoder.preprocess, encoder.image_size
    default_threads = torch.get_num_threads()

    def model_only(batch: Any) -> Any:
        with torch.inference_mode():
            return model.encode_image(batch)

    variants: dict[str, Callable[[], tuple[float, dict]]] = {
        "baseline": lambda: (baseline(model, preprocess, paths, args.batch_size), {}),
        "ceiling": lambda: (ceiling(model_only, len(paths), args.batch_size, size), {}),
        "clipsearch": lambda: clipsearch_index(encoder, photos),
        "clipsearch auto": lambda: clipsearch_index(load_encoder(args.model, None, image_backend="auto"), photos),
    }
    if args.tune:
        variants["ceiling torch=1"] = lambda: _with_threads(1, lambda: (
            ceiling(model_only, len(paths), args.batch_size, size), {}))
        for threads in (1, 2):
            for workers in (1, 2):
                variants[f"clipsearch torch={threads} workers={workers}"] = (
                    lambda t=threads, w=workers: clipsearch_index(
                        encoder, photos, decode_workers=w, encode_threads=t, processes=True))
        variants["clipsearch in threads (no processes)"] = lambda: clipsearch_index(encoder, photos, processes=False)
    if args.onnx or args.int8:
        # The ceiling on every core, as torch's; the indexer's encoder with its default threads.
        onnx_all_cores = _onnx_encoder(args.model, threads=os.cpu_count() or 1)
        onnx_encoder = _onnx_encoder(args.model)
        variants["ceiling onnxruntime"] = lambda: (ceiling(
            lambda b: onnx_all_cores.encode_image_tensors(b), len(paths), args.batch_size, size), {})
        variants["clipsearch onnxruntime"] = lambda: clipsearch_index(onnx_encoder, photos)
    if args.int8:
        int8_all_cores = _onnx_encoder(args.model, threads=os.cpu_count() or 1, int8=True)
        int8_encoder = _onnx_encoder(args.model, int8=True)
        variants["ceiling onnx-int8"] = lambda: (ceiling(
            lambda b: int8_all_cores.encode_image_tensors(b), len(paths), args.batch_size, size), {})
        variants["clipsearch onnx-int8"] = lambda: clipsearch_index(int8_encoder, photos)
        sample = paths[:min(len(paths), 32)]
        from PIL import Image

        images = [Image.open(p).convert("RGB") for p in sample]
        cos = (onnx_encoder.encode_images(images) * int8_encoder.encode_images(images)).sum(axis=1)
        print(f"int8 vs fp32 vectors of {len(sample)} photos: cosine min {cos.min():.5f}, mean {cos.mean():.5f}; "
              f"on the probe batch at load: {int8_encoder.int8_cosine:.5f}\n", flush=True)

    if args.only:
        wanted = [name.strip() for name in args.only.split(",")]
        unknown = [name for name in wanted if name not in variants]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; known: {list(variants)}")
        variants = {name: variants[name] for name in wanted}

    # Warm-up: first-touch costs (weights paging in, the forkserver, the page cache) hit no variant.
    if any(not name.endswith(("onnxruntime", "onnx-int8")) for name in variants):
        ceiling(model_only, args.batch_size, args.batch_size, size)
        clipsearch_index(encoder, photos)
    else:  # only onnxruntime variants: warm those up instead of torch
        clipsearch_index(onnx_encoder, photos)
    if "clipsearch auto" in variants:
        # The one-off ONNX export (4-6 s for ViT-B-32, cached in ~/.cache/clipsearch/onnx) is a
        # first run's cost, not every run's: made here, so that each round loads the cached file.
        from clipsearch.encoder import AUTO_ONNX_MIN_IMAGES

        load_encoder(args.model, None, image_backend="auto").prepare_bulk_encoding(AUTO_ONNX_MIN_IMAGES)

    seconds: dict[str, list[float]] = {name: [] for name in variants}
    parts: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, run in variants.items():
            torch.set_num_threads(default_threads)
            s, spent = run()
            seconds[name].append(s)
            parts[name].append(spent)
            print(f"round {r + 1}: {name:<40} {len(paths) / s:6.2f} img/s", flush=True)
    torch.set_num_threads(default_threads)

    rate = {name: [len(paths) / s for s in secs] for name, secs in seconds.items()}
    med = {name: statistics.median(r) for name, r in rate.items()}

    def ratio(a: str, b: str) -> float | None:
        """Median over rounds of a/b, each round's pair measured back to back."""
        if a not in rate or b not in rate:
            return None
        return statistics.median(x / y for x, y in zip(rate[a], rate[b]))

    print("\nimages per second (median of rounds; best in brackets):")
    for name in variants:
        extra = ""
        if parts[name] and parts[name][0]:
            store = statistics.median(p["store"] for p in parts[name])
            enc = statistics.median(p["encode"] for p in parts[name])
            extra = f"   encode {enc:.1f}s, catalog+index writes {store:.2f}s of {statistics.median(seconds[name]):.1f}s"
        print(f"  {name:<40} {med[name]:6.2f} ({max(rate[name]):.2f}){extra}")
    figures: dict[str, Any] = {"machine": _machine(), "photos": len(paths), "mb_per_photo": mb,
                               "batch_size": args.batch_size, "img_per_s": med, "img_per_s_rounds": rate,
                               "ratios": {}}
    print()
    for a, b, target in [("clipsearch", "baseline", "target >= 2.5x"), ("clipsearch", "ceiling", "target >= 0.8"),
                         ("clipsearch auto", "baseline", "target >= 2.5x"), ("clipsearch auto", "ceiling", "target >= 0.8"),
                         ("ceiling onnxruntime", "ceiling", ""), ("clipsearch onnxruntime", "baseline", ""),
                         ("clipsearch onnxruntime", "ceiling", ""),
                         ("clipsearch onnxruntime", "ceiling onnxruntime", ""),
                         ("ceiling onnx-int8", "ceiling onnxruntime", "target >= 1.5x"),
                         ("clipsearch onnx-int8", "clipsearch onnxruntime", "target >= 1.5x"),
                         ("clipsearch onnx-int8", "ceiling onnx-int8", ""),
                         ("clipsearch in threads (no processes)", "clipsearch", "")]:
        r = ratio(a, b)
        if r is not None:
            figures["ratios"][f"{a} / {b}"] = r
            print(f"{a} / {b}: {r:.2f}" + (f" ({target})" if target else ""))

    if not args.no_decode_rates:
        decode = decode_rates(paths[:args.decode_sample], preprocess, encoder.pixel_spec, size)
        figures["decode_img_per_s_one_core"] = decode
        print(f"\ndecoding alone, one core, {args.decode_sample} photos (images per second):")
        for name, r in decode.items():
            print(f"  {name:<48} {r:6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def _with_threads(threads: int, fn: Callable[[], Any]) -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _onnx_encoder(model: str, threads: int | None = None, int8: bool = False) -> Any:
    from clipsearch.encoder import load_encoder

    encoder = load_encoder(model, None, image_backend="torch")
    encoder.use_onnxruntime(os.path.join(tempfile.gettempdir(), "clipsearch-bench-onnx"), threads=threads, int8=int8)
    return encoder


if __name__ == "__main__":
    main()
