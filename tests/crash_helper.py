"""One indexing run for tests/test_crash.py that can SIGKILL itself at a chosen point.

    python crash_helper.py LIBRARY PHOTOS [--kill POINT:N] [--delay SECONDS] [--chunk N] [--kind KIND]
                           [--wait-for FILE]

POINT (N counts from 1):
  encode        inside the Nth encoder call: that chunk is decoded, nothing of it stored
  transaction   inside the Nth chunk's catalog transaction, its rows written, before COMMIT
  index-add     after the Nth chunk's commit, before its vectors reach the in-memory index
  save-rename   in the Nth index save: the temp file written and fsynced, not yet renamed
  save-sidecar  in the Nth index save: the index file renamed, its sidecar not yet written

The encoder is the colour fake with a sleep per call (`--delay`), so a parent can also
kill at a random moment. Prints "encoded N" after each encoder call and "done" at the
end, flushed; exits 3 when the kill point was never reached.
"""
from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeEncoder  # noqa: E402

import clipsearch.atomic  # noqa: E402
import clipsearch.indexer  # noqa: E402
from clipsearch.catalog import Catalog  # noqa: E402
from clipsearch.index import VectorIndex  # noqa: E402
from clipsearch.library import INDEX_FILE, Library  # noqa: E402


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class SlowEncoder(FakeEncoder):
    def __init__(self, delay: float, kill_at: int | None, wait_for: str | None = None) -> None:
        super().__init__()
        self.delay, self.kill_at, self.wait_for, self.calls = delay, kill_at, wait_for, 0

    def encode_images(self, images, batch_size=64):
        self.calls += 1
        time.sleep(self.delay)
        if self.calls == self.kill_at:
            die()
        out = super().encode_images(images, batch_size)
        print(f"encoded {self.calls}", flush=True)
        while self.wait_for and not os.path.exists(self.wait_for):
            time.sleep(0.02)  # holding the library's write lock until the parent says go on
        return out


def install_kill_point(point: str, n: int) -> None:
    counts = {"calls": 0}

    def nth() -> bool:
        counts["calls"] += 1
        return counts["calls"] == n

    if point == "transaction":
        real_failures = Catalog.add_failures

        def add_failures(self, failures, **kwargs):  # runs inside the chunk's transaction, after add_images
            if nth():
                die()
            return real_failures(self, failures, **kwargs)

        Catalog.add_failures = add_failures
    elif point == "index-add":
        real_add = VectorIndex.add

        def add(self, ids, vectors):
            if nth():
                die()
            return real_add(self, ids, vectors)

        VectorIndex.add = add
    elif point in ("save-rename", "save-sidecar"):
        real_write = clipsearch.atomic.atomic_write_bytes

        def write(path, data):
            path = Path(path)
            is_index = path.name == INDEX_FILE
            if point == "save-rename" and is_index and nth():
                # atomic_write_bytes up to the rename: a complete, fsynced temp file.
                fd, _ = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                die()
            if point == "save-sidecar" and not is_index and nth():
                die()
            return real_write(path, data)

        clipsearch.atomic.atomic_write_bytes = write
    elif point != "encode":
        raise SystemExit(f"unknown kill point {point}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("library")
    parser.add_argument("photos")
    parser.add_argument("--kill", default=None, help="POINT:N")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--kind", default=None, help="index kind (flat, hnsw, ...)")
    parser.add_argument("--wait-for", default=None, metavar="FILE", help="after the first chunk, wait for FILE")
    args = parser.parse_args()

    point, n = (args.kill.split(":")[0], int(args.kill.split(":")[1])) if args.kill else (None, None)
    encoder = SlowEncoder(args.delay, n if point == "encode" else None, args.wait_for)
    # Small chunks, an index save after every one: many commits and saves to land a kill in.
    clipsearch.indexer.Indexer = functools.partial(clipsearch.indexer.Indexer, chunk_size=args.chunk,
                                                   save_every_s=0.0)
    with Library.open(args.library, encoder=encoder) as lib:
        if point is not None:
            install_kill_point(point, n)
        lib.index(args.photos, index_kind=args.kind)
    print("done", flush=True)
    return 3 if point is not None else 0


if __name__ == "__main__":
    sys.exit(main())
