"""What a renamed folder costs the next sync: moves found by inode or fingerprint, nothing encoded.

    python bench/bench_moves.py                 # 10,000 photos (320x240 JPEGs, ~20 KB)
    python bench/bench_moves.py --photos 2000 --encode-sample 64

A library of --photos photos in one folder is built with a stand-in encoder (seeded
random unit vectors: the syncs measured here encode nothing, and building the library
with a real model would take an hour on 2 cores). Then, in this one process, side by side:

* no change: a sync that finds nothing to do (scan + diff against the catalog);
* folder renamed: `mv album album-2024`, then a sync: every photo is a move found by its
  inode (no file read); the encoder must not be called;
* copied and deleted: the folder copied elsewhere under the root (new inodes, new
  mtimes, as across file systems) and the original deleted: each file is hashed
  (BLAKE2b) and matched by fingerprint;
* what re-encoding would cost: the bundled toyworld model indexes --encode-sample of
  the photos in a fresh library; the rate, times --photos, is the time a sync without
  move detection would spend encoding (plus its decoding).

Ratios are within this run; the CPU model and load average are printed beside them,
because absolute times on a shared machine depend on what else runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import cpu_and_load
from PIL import Image


class StandIn:
    """Seeded random unit vectors: an encoder that costs nothing, counting its calls."""

    name, pretrained, dim, image_size = "bench", None, 512, 224

    def __init__(self) -> None:
        self.calls = 0
        self.rng = np.random.default_rng(0)

    def encode_images(self, images, batch_size: int = 64) -> np.ndarray:  # noqa: ANN001
        self.calls += len(images)
        v = self.rng.standard_normal((len(images), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def encode_texts(self, texts, batch_size: int = 256) -> np.ndarray:  # noqa: ANN001
        return self.encode_images(list(texts))


def make_photos(folder: Path, count: int) -> int:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    total = 0
    for n in range(count):
        base = rng.integers(0, 255, 3)
        arr = np.clip(base + rng.normal(0, 20, (240, 320, 3)), 0, 255).astype(np.uint8)
        path = folder / f"IMG_{n:05d}.jpg"
        Image.fromarray(arr).save(path, quality=80)
        total += path.stat().st_size
    return total


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=10_000)
    ap.add_argument("--encode-sample", type=int, default=64)
    args = ap.parse_args()

    from clipsearch import Library

    print(f"machine: {cpu_and_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        root, lib_dir = Path(tmp) / "photos", Path(tmp) / "lib"
        size, secs = timed(lambda: make_photos(root / "album", args.photos))
        print(f"{args.photos} photos, {size / args.photos / 1024:.0f} KB each on average, written in {secs:.0f} s")
        encoder = StandIn()
        with Library.open(lib_dir, encoder=encoder) as lib:
            report, secs = timed(lambda: lib.index(root))
            print(f"library built (stand-in encoder): {report.added} photos in {secs:.1f} s")

            base = encoder.calls
            report, t_none = timed(lambda: lib.index(root))
            assert report.unchanged == args.photos, report.summary()
            print(f"no change:          {t_none:6.2f} s  ({report.summary()})")

            os.rename(root / "album", root / "album-2024")
            report, t_rename = timed(lambda: lib.index(root))
            assert report.moved == args.photos and encoder.calls == base, report.summary()
            print(f"folder renamed:     {t_rename:6.2f} s  ({report.moved} moved, {encoder.calls - base} encoded)")

            shutil.copytree(root / "album-2024", root / "copied", copy_function=shutil.copyfile)
            shutil.rmtree(root / "album-2024")
            report, t_copy = timed(lambda: lib.index(root))
            assert report.moved == args.photos and encoder.calls == base, report.summary()
            print(f"copied + deleted:   {t_copy:6.2f} s  ({report.moved} moved by fingerprint, "
                  f"{encoder.calls - base} encoded)")
        print(f"ratios: renamed / no change {t_rename / t_none:.2f}x, copied+deleted / no change {t_copy / t_none:.2f}x")

        if args.encode_sample:
            files = sorted((root / "copied").iterdir())
            warm, sample = Path(tmp) / "warm", Path(tmp) / "sample"
            for folder, part in ((warm, files[:16]), (sample, files[16:16 + args.encode_sample])):
                folder.mkdir()
                for path in part:
                    shutil.copyfile(path, folder / path.name)
            with Library.open(Path(tmp) / "lib-real") as real:  # the bundled toyworld model
                real.index(warm)  # loads the model
                report, secs = timed(lambda: real.index(sample))
            rate = report.added / secs
            print(f"re-encoding instead (toyworld model, {report.added} photos): {rate:.1f} photos/s, so "
                  f"{args.photos / rate:.0f} s for {args.photos}: {args.photos / rate / t_rename:.0f}x the renamed sync")
    print(f"machine after: {cpu_and_load()}")


if __name__ == "__main__":
    sys.exit(main())
