"""Freshness and idle cost of `clipsearch watch`: how soon another process finds a new photo, and what waiting costs.

    python bench/bench_watch.py                     # 300 photos in 15 folders, 20 new photos, 60 s idle
    python bench/bench_watch.py --photos 2000 --new 40 --idle 60 --poll 30

A library of --photos JPEGs (640x480, ~60 KB) is indexed with the bundled toyworld model,
then `clipsearch watch` runs as its own process (events: inotify). This process is the
reader, as the web UI would be: its own `Library` object, searching in a loop.

* freshness: a new photo is written into a photo folder (open, write, close) every
  --gap seconds; the time from its close to the first search of the reader that returns
  it (a search for all photos, so membership is what is measured) is its latency.
  Reported: p50, p95, max over --new photos.
* idle cost: with nothing changing, the watcher's CPU time (user + system, from
  /proc/PID/stat) over --idle seconds, as a share of one core. With --poll, the same for
  a second watcher polling every --poll seconds instead of waiting for events.

Absolute figures depend on the machine and on what else runs on it: the script prints
the CPU model and the load average beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import cpu_and_load
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def write_photo(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, 3)
    arr = np.clip(base + rng.normal(0, 25, (480, 640, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=85)


def make_photos(folder: Path, count: int, folders: int) -> None:
    for n in range(count):
        sub = folder / f"album{n % folders:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        write_photo(sub / f"p{n:05d}.jpg", n)
        past = time.time() - 3600
        os.utime(sub / f"p{n:05d}.jpg", (past, past))


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WatchProcess:
    def __init__(self, library: Path, *extra: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "clipsearch", "-q", "watch", "--json", "--library",
                                      str(library), *extra], stdout=subprocess.PIPE, text=True, env=env)
        self.syncs: list[dict] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            notice = json.loads(line)
            if notice["event"] == "sync":
                self.syncs.append(notice)
                self.ready.set()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=120)


def idle_cpu(pid: int, seconds: float) -> float:
    start = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - start) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--folders", type=int, default=15)
    ap.add_argument("--new", type=int, default=20)
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between new photos")
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--poll", type=float, default=None, help="also measure a polling watcher's idle cost")
    args = ap.parse_args()

    from clipsearch import Library

    print(f"machine: {cpu_and_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        photos, lib_dir = Path(tmp) / "photos", Path(tmp) / "lib"
        make_photos(photos, args.photos, args.folders)
        t0 = time.monotonic()
        with Library.open(lib_dir) as lib:
            lib.index(photos)
        print(f"library: {args.photos} photos in {args.folders} folders indexed in {time.monotonic() - t0:.1f} s")

        watcher = WatchProcess(lib_dir)
        if not watcher.ready.wait(300):
            sys.exit("the watcher never finished its catch-up sync")
        reader = Library.open(lib_dir, create=False)
        probe = np.ones(reader.dim, np.float32) / np.sqrt(reader.dim)
        total = args.photos

        def found(path: str) -> bool:
            return path in {h.path for h in reader.search_vector(probe, k=total + 10)}

        # The first new photo loads the watcher's model: timed apart, not in the percentiles.
        latencies, first = [], None
        for n in range(args.new + 1):
            path = photos / f"album{n % args.folders:03d}" / f"new{n:04d}.jpg"
            write_photo(path, 10_000 + n)  # Pillow opens, writes and closes the file
            done = time.monotonic()
            while not found(str(path)):
                if time.monotonic() - done > 120:
                    sys.exit(f"{path} never became searchable")
                time.sleep(0.02)
            latency = time.monotonic() - done
            total += 1
            if n == 0:
                first = latency
            else:
                latencies.append(latency)
            time.sleep(args.gap)
        latencies.sort()
        p95 = latencies[min(len(latencies) - 1, int(round(0.95 * len(latencies))) - 1)]
        print(f"freshness: first new photo (loads the model) {first:.2f} s; then over {len(latencies)} photos "
              f"p50 {statistics.median(latencies):.2f} s, p95 {p95:.2f} s, max {latencies[-1]:.2f} s")
        reader.close()

        time.sleep(3)
        share = idle_cpu(watcher.proc.pid, args.idle)
        print(f"idle (events): {100 * share:.2f} % of one core over {args.idle:.0f} s "
              f"({args.photos + args.new + 1} photos, {args.folders} folders)")
        watcher.stop()

        if args.poll:
            poller = WatchProcess(lib_dir, "--poll", str(args.poll))
            if not poller.ready.wait(300):
                sys.exit("the polling watcher never finished its catch-up sync")
            time.sleep(3)
            share = idle_cpu(poller.proc.pid, args.idle)
            print(f"idle (polling every {args.poll:g} s): {100 * share:.2f} % of one core over {args.idle:.0f} s")
            poller.stop()
    print(f"machine after: {cpu_and_load()}")


if __name__ == "__main__":
    main()
