"""A Hypothesis state machine over `Library`: files are added, changed, deleted and renamed,
indexing runs to the end or is interrupted, the process "crashes" in several ways and the
library is reopened, and searches run in between.

Invariants: the index holds exactly the catalog's indexed images; every hit resolves to a
catalogued, indexed file; after a completed index the catalog matches the files on disk
and each image's own stored vector finds it first.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fakes import COLOURS, NAMES, FakeEncoder
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, \
    run_state_machine_as_test
from PIL import Image

import clipsearch.indexer
from clipsearch import Library, PhotoRootError
from clipsearch.errors import ModelError

FILE_NAMES = ["a.png", "b.jpg", "c.gif", "sub/d.png", "sub/e.jpg", "sub/deeper/f.webp"]
QUERIES = ["red", "blue + green", "white - black", "a yellow t-shirt", "purple:2 + orange"]
_T0 = 1_600_000_000 * 10**9


def _write(path: Path, seed: int, mtime_ns: int) -> None:
    """A small image of one fake-encoder colour with seeded noise, so distinct seeds give distinct vectors."""
    rng = np.random.default_rng(seed)
    colour = np.array(COLOURS[NAMES[seed % len(NAMES)]], np.float32)
    pixels = np.clip(colour + rng.normal(0, 8, (16, 24, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    # Every write gets its own mtime: two writes within one clock tick at the same size would
    # look unchanged to any (size, mtime) diff, this one's included (docs/reliability.md).
    os.utime(path, ns=(mtime_ns, mtime_ns))


class FailingEncoder(FakeEncoder):
    """Fails on its `fail_on`-th call the way a run ends early: Ctrl-C, or a model error."""

    def __init__(self, fail_on: int, error: BaseException) -> None:
        super().__init__()
        self.fail_on, self.error, self.calls = fail_on, error, 0

    def encode_images(self, images, batch_size=64):
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.error
        return super().encode_images(images, batch_size)


class LibraryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="clipsearch-stateful-"))
        self.photos = self.root / "photos"
        self.photos.mkdir()
        self.lib_dir = self.root / "lib"
        self.lib = Library.open(self.lib_dir, encoder=FakeEncoder())
        self.on_disk: dict[str, int] = {}  # relative path -> content seed
        self.clock = _T0
        self.synced = True  # the catalog matches the disk (nothing on either yet)
        self.snapshot: dict[str, bytes] | None = None  # index files as saved at some earlier step

    def teardown(self) -> None:
        self.lib.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def _tick(self) -> int:
        self.clock += 1_000_000_000
        return self.clock

    # -- the files ---------------------------------------------------------------------------
    @initialize(names=st.sets(st.sampled_from(FILE_NAMES), min_size=1, max_size=4), seed=st.integers(0, 10**6))
    def some_photos(self, names: set[str], seed: int) -> None:
        for i, name in enumerate(sorted(names)):
            self.write(name, seed + i)

    @rule(name=st.sampled_from(FILE_NAMES), seed=st.integers(0, 10**6))
    def write(self, name: str, seed: int) -> None:
        """Add a photo, or replace one with another picture."""
        _write(self.photos / name, seed, self._tick())
        self.on_disk[name] = seed
        self.synced = False

    @precondition(lambda self: self.on_disk)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.on_disk)))
        (self.photos / name).unlink()
        del self.on_disk[name]
        self.synced = False

    @precondition(lambda self: self.on_disk)
    @rule(data=st.data(), to=st.sampled_from(FILE_NAMES))
    def rename(self, data: st.DataObject, to: str) -> None:
        """Move a photo to another name (replacing what was there); the mtime travels with it."""
        name = data.draw(st.sampled_from(sorted(self.on_disk)))
        if name == to:
            return
        (self.photos / to).parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.photos / name, self.photos / to)
        self.on_disk[to] = self.on_disk.pop(name)
        self.synced = False

    # -- indexing ----------------------------------------------------------------------------
    @rule()
    def index(self) -> None:
        if not self.on_disk and self.lib.catalog.count("ok"):
            with pytest.raises(PhotoRootError, match="--allow-empty"):
                self.lib.index(self.photos)
        report = self.lib.index(self.photos, allow_empty=True)
        assert not report.skipped and not report.interrupted
        self.synced = True

    @rule(fail_on=st.integers(1, 3), ctrl_c=st.booleans())
    def interrupted_index(self, fail_on: int, ctrl_c: bool) -> None:
        """An index run that ends mid-way: the encoder raises on its `fail_on`-th batch."""
        error = KeyboardInterrupt() if ctrl_c else ModelError("the GPU went away")
        self.lib._encoder = FailingEncoder(fail_on, error)
        try:
            self.lib.index(self.photos, allow_empty=True)
        except (KeyboardInterrupt, ModelError):
            self.synced = False
        else:
            self.synced = True  # it finished before the failing batch
        finally:
            self.lib._encoder = FakeEncoder()

    @rule()
    def keep_a_copy_of_the_index_files(self) -> None:
        self.snapshot = {p.name: p.read_bytes() for p in self.lib_dir.glob("index.faiss*")}

    @rule(how=st.sampled_from(["reopen", "index not saved", "index truncated", "index deleted",
                               "sidecar deleted", "stale index"]))
    def crash(self, how: str) -> None:
        """The process ends without warning; the next one reopens the library."""
        if how == "index not saved":
            # Every catalog commit of this run lands, the index on disk stays as it was.
            self.lib.save_index = lambda: None
            self.lib.index(self.photos, allow_empty=True)
            self.synced = True
        self.lib.close()
        index_file = self.lib_dir / "index.faiss"
        if how == "index truncated" and index_file.exists():
            index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])
        elif how == "index deleted":
            index_file.unlink(missing_ok=True)
        elif how == "sidecar deleted":
            (self.lib_dir / "index.faiss.json").unlink(missing_ok=True)
        elif how == "stale index" and self.snapshot:
            for name, data in self.snapshot.items():
                (self.lib_dir / name).write_bytes(data)
        encoder = FakeEncoder()
        self.lib = Library.open(self.lib_dir, encoder=encoder)
        assert encoder.images_encoded == 0  # repaired from stored vectors, never re-encoded

    @rule(query=st.sampled_from(QUERIES), k=st.integers(1, 8))
    def search(self, query: str, k: int) -> None:
        hits = self.lib.search(query, k=k)
        assert len(hits) == min(k, self.lib.catalog.count("ok"))
        assert len({h.id for h in hits}) == len(hits)
        for hit in hits:
            row = self.lib.get_image(hit.id)
            assert row is not None and row.status == "ok" and row.path == hit.path

    # -- invariants --------------------------------------------------------------------------
    @invariant()
    def index_holds_exactly_the_indexed_images(self) -> None:
        ids = self.lib.vector_index.ids().tolist()
        assert len(ids) == len(set(ids))
        assert sorted(ids) == self.lib.catalog.ok_ids().tolist()

    @invariant()
    def catalog_matches_the_disk_after_a_completed_index(self) -> None:
        if not self.synced:
            return
        rows = self.lib.catalog.images_under(str(self.photos))
        assert {os.path.relpath(p, self.photos) for p in rows} == set(self.on_disk)
        for path, row in rows.items():
            st_ = os.stat(path)
            assert row.status == "ok" and (row.size, row.mtime_ns) == (st_.st_size, st_.st_mtime_ns)

    @invariant()
    def each_image_finds_itself_first(self) -> None:
        if not self.synced:
            return
        ids, vectors = self.lib.vectors()
        for image_id, vector in zip(ids.tolist(), vectors):
            hits = self.lib.search_vector(vector, k=len(ids))
            best = hits[0].score
            # Two files with the same picture tie exactly; the image must be among the best.
            assert image_id in {h.id for h in hits if h.score >= best - 1e-6}


@pytest.mark.slow
def test_library_state_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of two files: an interrupted run leaves some chunks committed and some not.
    monkeypatch.setattr(clipsearch.indexer, "Indexer", functools.partial(clipsearch.indexer.Indexer, chunk_size=2))
    run_state_machine_as_test(LibraryMachine, settings=settings(
        max_examples=25, stateful_step_count=20, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
