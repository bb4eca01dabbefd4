"""Crashes and interruptions: nothing committed is lost, nothing is indexed twice, reopening always works.

The indexer runs as a real process (tests/crash_helper.py: the colour fake encoder with a
sleep, small chunks, an index save after every chunk) and is SIGKILLed at chosen points,
the index save included, and at random moments. Disk-full errors, damaged index files, a
second writer and readers during a write are tried in-process or with two processes.
"""
from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder
from PIL import Image

import clipsearch.atomic
import clipsearch.index.lifecycle as lifecycle
import clipsearch.library
from clipsearch import ClipSearchError, Library
from clipsearch.errors import CatalogError, IndexFileError, SchemaVersionError
from clipsearch.images import is_supported
from clipsearch.index import VectorIndex

HELPER = Path(__file__).with_name("crash_helper.py")
CHUNK = 4
N_PHOTOS = 24  # enough for the indexer to decode in worker processes


def make_photos(folder: Path, n: int, *, seed: int = 0, start: int = 0) -> list[str]:
    """`n` small PNGs of distinct colours (a third in a sub-folder); returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(start, start + n):
        sub = folder / "sub" if i % 3 == 0 else folder
        sub.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 256, 3)
        pixels = np.clip(colour + rng.normal(0, 4, (24, 32, 3)), 0, 255).astype(np.uint8)
        path = sub / f"p{i:03}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def photos_on_disk(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if p.is_file() and is_supported(p)}


def run_helper(lib: Path, photos: Path, *args: str, env: dict | None = None, timeout: float = 60
               ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), str(lib), str(photos), "--chunk", str(CHUNK), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def temp_files(lib: Path) -> list[str]:
    return sorted(p.name for p in lib.iterdir() if p.name.endswith(".tmp"))


def assert_consistent(lib_dir: Path, photos: Path) -> set[str]:
    """Reopen: the index holds each catalogued image exactly once and nothing else; returns the indexed paths."""
    with Library.open(lib_dir, encoder=FakeEncoder()) as lib:
        ids = lib.vector_index.ids().tolist()
        assert len(ids) == len(set(ids)), "an image is in the index twice"
        assert sorted(ids) == lib.catalog.ok_ids().tolist()
        assert lib.vector_index.ntotal == lib.catalog.count("ok")
        rows = lib.catalog.images_under(str(photos))
        assert all(os.path.exists(p) for p in rows), "the catalog lists a file that is not there"
        return {p for p, r in rows.items() if r.status == "ok"}


def finish_and_check(lib_dir: Path, photos: Path) -> None:
    """A re-run encodes only what is missing and ends with every photo indexed once, findable by its own vector."""
    encoder = FakeEncoder()
    with Library.open(lib_dir, encoder=encoder) as lib:
        before = {p for p, r in lib.catalog.images_under(str(photos)).items() if r.status == "ok"}
        report = lib.index(photos)
        on_disk = photos_on_disk(photos)
        assert report.added == len(on_disk - before) and not report.skipped
        assert encoder.images_encoded == report.added + report.updated
        rows = lib.catalog.images_under(str(photos))
        assert {p for p, r in rows.items() if r.status == "ok"} == on_disk
        ids = lib.vector_index.ids().tolist()
        assert sorted(ids) == lib.catalog.ok_ids().tolist() and len(ids) == len(on_disk)
        all_ids, vectors = lib.vectors()
        for image_id, vector in zip(all_ids.tolist(), vectors):
            assert lib.search_vector(vector, k=1)[0].id == image_id
    assert temp_files(lib_dir) == []


# -- SIGKILL at chosen points -----------------------------------------------------------------------
# (kill point, images in the catalog after the kill) for 24 photos in chunks of 4, an index save after each.
KILL_POINTS = [
    ("encode:1", 0),          # the first chunk decoded, nothing stored
    ("encode:4", 12),         # three chunks committed
    ("transaction:2", 4),     # the second chunk's rows written, no COMMIT: rolled back
    ("index-add:3", 12),      # the third chunk committed, its vectors not in the index
    ("save-rename:1", 4),     # a complete temp index file, never renamed
    ("save-rename:5", 20),
    ("save-sidecar:2", 8),    # the new index file in place, the old sidecar beside it
    ("save-sidecar:7", 24),   # the final save
]


@pytest.mark.slow
@pytest.mark.parametrize("point, committed", KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_sigkill_at_a_chosen_point_loses_nothing_committed(tmp_path: Path, point: str, committed: int) -> None:
    photos, lib = tmp_path / "photos", tmp_path / "lib"
    make_photos(photos, N_PHOTOS)
    result = run_helper(lib, photos, "--kill", point)
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr

    indexed = assert_consistent(lib, photos)
    assert len(indexed) == committed
    if committed:
        # The open above could take the write lock, so its repair was saved: the next open has nothing to do.
        with Library.open(lib, encoder=FakeEncoder()) as reopened:
            assert reopened.vector_index.meta.generation == reopened.catalog.generation
    finish_and_check(lib, photos)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["encode:2", "transaction:1", "index-add:2", "save-sidecar:1"])
def test_sigkill_during_a_resync_with_removals_and_changes(tmp_path: Path, point: str) -> None:
    photos, lib = tmp_path / "photos", tmp_path / "lib"
    paths = make_photos(photos, 16)
    with Library.open(lib, encoder=FakeEncoder()) as first:
        first.index(photos)
    for path in paths[:3]:
        os.unlink(path)
    Image.new("RGB", (30, 20), (250, 250, 250)).save(paths[4])  # changed: replaced in the catalog, never doubled
    make_photos(photos, 12, seed=1, start=100)

    result = run_helper(lib, photos, "--kill", point)
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    indexed = assert_consistent(lib, photos)
    assert not indexed & set(paths[:3])  # removals are committed before any encoding
    finish_and_check(lib, photos)


@pytest.mark.slow
def test_sigkill_between_an_hnsw_index_and_its_sidecar(tmp_path: Path) -> None:
    # HNSW removals are tombstones kept in the sidecar. A compacted graph saved beside the old
    # sidecar must not count tombstones of vectors that are no longer in it.
    photos, lib = tmp_path / "photos", tmp_path / "lib"
    paths = make_photos(photos, 16)
    with Library.open(lib, encoder=FakeEncoder()) as first:
        first.index(photos, index_kind="hnsw")
        for path in paths[:2]:
            os.unlink(path)
        first.index(photos)  # 2 tombstones of 16: under the compaction threshold
        assert first.vector_index.kind == "hnsw" and len(first.vector_index.meta.deleted) == 2
    for path in paths[2:5]:
        os.unlink(path)  # 5 of 16 removed: the graph is rebuilt without them before the save
    result = run_helper(lib, photos, "--kill", "save-sidecar:1")
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    assert len(assert_consistent(lib, photos)) == 11
    finish_and_check(lib, photos)


def _marked_processes(marker: str) -> list[int]:
    """Processes whose environment carries `marker` (the helper and everything it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_sigkill_at_random_moments_until_done_then_no_process_or_temp_folder_is_left(tmp_path: Path) -> None:
    photos, lib = tmp_path / "photos", tmp_path / "lib"
    make_photos(photos, 24)
    marker = f"CLIPSEARCH_CRASH_TEST={uuid.uuid4().hex}"
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1], "TMPDIR": str(temp)}
    rng = random.Random(6)
    kills = 0
    try:
        for _ in range(8):
            proc = subprocess.Popen([sys.executable, str(HELPER), str(lib), str(photos), "--chunk", "3",
                                     "--delay", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            time.sleep(rng.uniform(0.3, 1.0))  # start-up, scan, decoding and the first chunks take ~0.6 s
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            out, err = proc.communicate(timeout=60)
            assert proc.returncode in (0, -signal.SIGKILL), err.decode()
            assert_consistent(lib, photos)
            if proc.returncode == 0:
                break
        assert kills >= 3
        finish_and_check(lib, photos)
        # Decoder worker processes and their helpers die with the indexer that started them.
        deadline = time.monotonic() + 10
        while _marked_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _marked_processes(marker) == [], "processes of a killed indexer are still running"
        # Nor anything in the temp directory (multiprocessing's pymp-* folders, before).
        assert [p.name for p in temp.iterdir() if p.name.startswith("pymp-")] == []
    finally:
        for pid in _marked_processes(marker):
            os.kill(pid, signal.SIGKILL)


# -- a full disk -----------------------------------------------------------------------------------
class _FullDisk:
    """A file object that writes half of what it is given, then fails as a full disk does."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def write(self, data: bytes) -> int:
        self.fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


@pytest.mark.parametrize("failing_write", [1, 2], ids=["index file", "sidecar"])
def test_a_full_disk_while_saving_keeps_the_previous_index(library: Library, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, failing_write: int) -> None:
    index_file = tmp_path / "lib" / "index.faiss"
    old_bytes = index_file.read_bytes()
    make_photos(tmp_path / "photos" / "new", 3, seed=3)
    real_fdopen = os.fdopen
    writes = []

    def fdopen(fd, *args, **kwargs):
        fh = real_fdopen(fd, *args, **kwargs)
        writes.append(fd)
        return _FullDisk(fh) if len(writes) == failing_write else fh

    monkeypatch.setattr(clipsearch.atomic.os, "fdopen", fdopen)
    with pytest.raises(IndexFileError) as err:
        library.index(tmp_path / "photos")
    monkeypatch.undo()
    message = str(err.value)
    assert isinstance(err.value, ClipSearchError)
    assert str(index_file) in message and "No space left on device" in message and "free some disk space" in message
    assert temp_files(tmp_path / "lib") == []
    if failing_write == 1:
        assert index_file.read_bytes() == old_bytes
    assert VectorIndex.load(index_file).ntotal == (8 if failing_write == 1 else 11)
    library.close()

    # The catalog kept the three new photos; the next open brings the index up to date from it.
    assert len(assert_consistent(tmp_path / "lib", tmp_path / "photos")) == 11
    finish_and_check(tmp_path / "lib", tmp_path / "photos")


def test_a_full_disk_while_writing_the_catalog_changes_nothing(library: Library, tmp_path: Path) -> None:
    db = library.catalog._db
    before = library.catalog.generation
    # SQLite's own "database or disk is full": the catalog may not grow by a single page.
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    make_photos(tmp_path / "photos" / "new", 40, seed=4)
    with pytest.raises(CatalogError, match="full") as err:
        library.index(tmp_path / "photos")
    assert "free some disk space" in str(err.value) and str(tmp_path / "lib" / "catalog.sqlite") in str(err.value)
    assert library.catalog.count() == 8 and library.catalog.generation == before
    library.close()
    assert len(assert_consistent(tmp_path / "lib", tmp_path / "photos")) == 8
    finish_and_check(tmp_path / "lib", tmp_path / "photos")  # a new connection: no page limit


# -- a damaged or missing index --------------------------------------------------------------------
def _damage(lib_dir: Path, how: str) -> None:
    index_file = lib_dir / "index.faiss"
    if how == "deleted":
        index_file.unlink()
    elif how == "garbage":
        index_file.write_bytes(b"\x00garbage" * 64)
    elif how == "truncated":
        index_file.write_bytes(index_file.read_bytes()[:100])
    elif how == "sidecar lost":
        (lib_dir / "index.faiss.json").unlink()
    elif how == "stale":  # an index saved before the last catalog change
        with Library.open(lib_dir, encoder=FakeEncoder()) as lib:
            lib.catalog.remove_images(lib.catalog.ok_ids()[:2])


class _Repairs:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.builds = self.reconciles = 0
        build, reconcile = lifecycle.build_from_catalog, lifecycle.reconcile

        def counting_build(*args, **kwargs):
            self.builds += 1
            return build(*args, **kwargs)

        def counting_reconcile(*args, **kwargs):
            self.reconciles += 1
            return reconcile(*args, **kwargs)

        monkeypatch.setattr(lifecycle, "build_from_catalog", counting_build)
        monkeypatch.setattr(lifecycle, "reconcile", counting_reconcile)


@pytest.mark.parametrize("how", ["deleted", "garbage", "truncated", "sidecar lost", "stale"])
def test_a_repair_at_open_is_saved_so_the_next_open_is_clean(library: Library, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    library.close()
    lib_dir = tmp_path / "lib"
    _damage(lib_dir, how)
    expected = 6 if how == "stale" else 8
    repairs = _Repairs(monkeypatch)
    encoder = FakeEncoder()
    with Library.open(lib_dir, encoder=encoder) as lib:
        assert lib.vector_index.ntotal == expected
        assert repairs.builds + repairs.reconciles >= 1
    saved = VectorIndex.load(lib_dir / "index.faiss")
    assert saved.ntotal == expected
    repairs.builds = repairs.reconciles = 0
    with Library.open(lib_dir, encoder=encoder) as lib:
        assert (repairs.builds, repairs.reconciles) == (0, 0)
        assert saved.meta.generation == lib.catalog.generation
        assert lib.search("red", k=1)
    assert encoder.images_encoded == 0
    assert temp_files(lib_dir) == []


def test_a_repair_while_another_process_writes_stays_in_memory(library: Library, tmp_path: Path) -> None:
    import fcntl

    library.close()
    lib_dir = tmp_path / "lib"
    _damage(lib_dir, "garbage")
    with open(lib_dir / "lock", "a+") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process's index run holds it
        with Library.open(lib_dir, encoder=FakeEncoder()) as lib:
            assert lib.vector_index.ntotal == 8
            assert lib.search("red", k=1)[0].path.endswith("red.jpg")
        assert (lib_dir / "index.faiss").read_bytes() == b"\x00garbage" * 64  # the writer's file to replace
    with Library.open(lib_dir, encoder=FakeEncoder()):
        pass
    assert VectorIndex.load(lib_dir / "index.faiss").ntotal == 8


def test_a_newer_catalog_is_refused_untouched_by_library_and_cli(library: Library, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    from clipsearch.cli import main

    library.catalog.set_meta("schema_version", "99")
    library.close()
    lib_dir = tmp_path / "lib"
    with pytest.raises(SchemaVersionError, match="upgrade clipsearch"):
        Library.open(lib_dir, encoder=FakeEncoder())
    assert main(["info", "--library", str(lib_dir)]) == 1
    err = capsys.readouterr().err
    assert "schema version 99" in err and "upgrade clipsearch" in err and "Traceback" not in err
    assert main(["index", str(tmp_path / "photos"), "--library", str(lib_dir)]) == 1
    import sqlite3

    with sqlite3.connect(lib_dir / "catalog.sqlite") as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("99",)
        assert db.execute("SELECT COUNT(*) FROM images").fetchone() == (8,)


# -- two processes -----------------------------------------------------------------------------------
def _start_slow_writer(lib: Path, photos: Path, delay: float, *extra: str) -> subprocess.Popen:
    """The helper indexing slowly; returns once it has encoded its first chunk (so holds the lock)."""
    proc = subprocess.Popen([sys.executable, str(HELPER), str(lib), str(photos), "--chunk", "3",
                             "--delay", str(delay), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith("encoded"), first + proc.stderr.read()
    return proc


@pytest.mark.slow
def test_a_second_indexer_process_stops_with_a_clear_message(tmp_path: Path) -> None:
    photos, lib = tmp_path / "photos", tmp_path / "lib"
    make_photos(photos, 18)
    go_on = tmp_path / "go-on"
    writer = _start_slow_writer(lib, photos, 0.0, "--wait-for", str(go_on))  # holds the lock until go_on exists
    try:
        second = subprocess.run([sys.executable, "-m", "clipsearch", "index", str(photos), "--library", str(lib)],
                                capture_output=True, text=True, timeout=60)
        assert writer.poll() is None
    finally:
        go_on.touch()
        out, err = writer.communicate(timeout=60)
    assert second.returncode == 1
    assert "another clipsearch process is writing to library" in second.stderr and str(lib) in second.stderr
    assert "Traceback" not in second.stderr
    assert writer.returncode == 0 and out.rstrip().endswith("done"), err
    assert len(assert_consistent(lib, photos)) == 18


@pytest.mark.slow
def test_searches_while_another_process_indexes_see_a_consistent_state(tmp_path: Path) -> None:
    photos, lib = tmp_path / "photos", tmp_path / "lib"
    paths = make_photos(photos, 12)
    with Library.open(lib, encoder=FakeEncoder()) as first:
        first.index(photos)
    for path in paths[:4]:  # changed photos: their rows are replaced while the reader searches
        Image.new("RGB", (20, 20), (250, 250, 250)).save(path)
    make_photos(photos, 24, seed=2, start=100)
    every_photo = photos_on_disk(photos)
    queries = ["red", "white", "blue + green", "black - yellow"]

    writer = _start_slow_writer(lib, photos, 0.05)
    searches = 0
    try:
        while writer.poll() is None or searches < 5:
            with Library.open(lib, encoder=FakeEncoder()) as reader:
                for query in queries:
                    hits = reader.search(query, k=50)
                    searches += 1
                    assert hits, query
                    assert {h.path for h in hits} <= every_photo
                    assert len({h.path for h in hits}) == len(hits), "a photo came back twice"
                    assert len({h.id for h in hits}) == len(hits)
    finally:
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert searches >= 8
    assert assert_consistent(lib, photos) == every_photo
