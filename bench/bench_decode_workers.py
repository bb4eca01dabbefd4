"""How indexing decodes: our worker processes vs a forkserver pool vs threads, and RAW preview vs demosaic.

    python bench/bench_decode_workers.py                  # 24 camera JPEGs (3000x2000), 3 rounds
    python bench/bench_decode_workers.py --photos 48 --rounds 5

Three executors run the indexer's own read stage (`indexer._decode`: a camera JPEG to
224 px model pixels) over the same files, interleaved round by round (A B C, A B C, ...)
so that other jobs on the machine slow them alike; medians are printed, with ratios:

* workers: `clipsearch.workers.WorkerPool` (what the indexer uses): `python -c` workers
  that never import the caller's `__main__`;
* forkserver: `ProcessPoolExecutor` on the forkserver context (what it used before: runs
  the caller's `__main__` in each worker, so an unguarded script breaks);
* threads: `ThreadPoolExecutor` (Pillow releases the GIL while it decodes and resizes).

Each is measured alone ("decode") and while the main thread encodes with a ViT-B-32
(random weights, torch, all its threads) as a real sync does ("decode + encode": photos/s
of the whole, decoded files fed to the model in batches of 16). Pool start-up is timed
separately. Then RAW: a 24 MP DNG (tests/rawgen.py) read through its embedded preview
(1616x1080 JPEG) vs demosaiced at half size, to 224 px.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from clipsearch.images import PixelSpec, load_image  # noqa: E402
from clipsearch.indexer import _decode, default_decode_workers  # noqa: E402
from clipsearch.scan import FileRecord  # noqa: E402
from clipsearch.workers import WorkerPool  # noqa: E402

SPEC = PixelSpec(224, (224, 224))


def make_photos(folder: Path, n: int) -> list[FileRecord]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        path = folder / f"camera{i:03d}.jpg"
        if not path.exists():
            y, x = np.mgrid[0:2000, 0:3000]
            base = np.stack([(x * (i + 1)) % 256, (y * 3) % 256, ((x + y) // 7) % 256], -1).astype(np.int16)
            noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(path, quality=90)
        st = path.stat()
        records.append(FileRecord(str(path), st.st_size, st.st_mtime_ns))
    return records


def make_pool(kind: str, workers: int):
    if kind == "workers":
        return WorkerPool(workers)
    if kind == "forkserver":
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
    return ThreadPoolExecutor(workers)


def run(kind: str, records: list[FileRecord], workers: int, model=None) -> tuple[float, float]:
    """(seconds to start the pool, photos/s through it)."""
    t0 = time.perf_counter()
    pool = make_pool(kind, workers)
    if kind == "forkserver":  # its workers start on first use: count that as start-up
        pool.submit(os.getpid).result()
    started = time.perf_counter() - t0
    t0 = time.perf_counter()
    futures = [pool.submit(_decode, r, 224, SPEC) for r in records]
    if model is None:
        for f in futures:
            assert f.result().error is None
    else:
        import torch

        batch = []
        for i, f in enumerate(futures):
            batch.append(f.result().pixels)
            if len(batch) == 16 or i == len(futures) - 1:
                with torch.no_grad():
                    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255
                    model.encode_image(x)
                batch = []
    rate = len(records) / (time.perf_counter() - t0)
    pool.shutdown()
    return started, rate


def raw_figures(folder: Path, rounds: int) -> None:
    from rawgen import write_dng

    rgb = np.asarray(Image.open(make_photos(folder, 1)[0].path).resize((6000, 4000)))
    write_dng(folder / "preview.dng", rgb, preview=Image.fromarray(rgb).resize((1616, 1080)))
    write_dng(folder / "sensor.dng", rgb)
    times: dict[str, list[float]] = {"preview": [], "demosaic": []}
    for _ in range(rounds):
        for name, file in (("preview", "preview.dng"), ("demosaic", "sensor.dng")):
            t0 = time.perf_counter()
            load_image(folder / file, target_size=224)
            times[name].append(time.perf_counter() - t0)
    p, d = statistics.median(times["preview"]), statistics.median(times["demosaic"])
    print(f"RAW 24 MP DNG to 224 px: embedded preview {p * 1000:.0f} ms, half-size demosaic {d * 1000:.0f} ms "
          f"({d / p:.1f}x the preview)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=default_decode_workers())
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "clipsearch-bench-decode"))
    args = ap.parse_args()
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.split(":")[-1]
    print(f"CPU: {cpu.strip()}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f} (shared machine: compare ratios)")
    records = make_photos(Path(args.dir), args.photos)
    import open_clip
    import torch

    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    torch.manual_seed(0)
    kinds = ("workers", "forkserver", "threads")
    starts: dict[str, list[float]] = {k: [] for k in kinds}
    alone: dict[str, list[float]] = {k: [] for k in kinds}
    mixed: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            s, r = run(kind, records, args.workers)
            starts[kind].append(s)
            alone[kind].append(r)
            mixed[kind].append(run(kind, records, args.workers, model)[1])
    print(f"{args.photos} photos 3000x2000 -> 224 px, {args.workers} decode workers, median of {args.rounds} rounds")
    print(f"{'':12}{'start s':>9}{'decode /s':>11}{'+ encode /s':>13}")
    ref_a, ref_m = statistics.median(alone["workers"]), statistics.median(mixed["workers"])
    for kind in kinds:
        a, m = statistics.median(alone[kind]), statistics.median(mixed[kind])
        print(f"{kind:12}{statistics.median(starts[kind]):9.2f}{a:11.1f}{m:13.1f}"
              f"   ({a / ref_a:.2f}x, {m / ref_m:.2f}x workers)")
    raw_figures(Path(args.dir), args.rounds)
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
