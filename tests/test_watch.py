"""`clipsearch watch`: a real watcher process (killed and restarted) following real file
operations, the polling fallback on its own, files still being written, lost roots, the
inotify watch limit, and the model never loaded when nothing needs encoding."""
from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from fakes import FakeEncoder, write_colour_photos

import clipsearch.library
from clipsearch import Library
from clipsearch.watch import WatchConfig, Watcher, WatchNotice, watch_method

HELPER = Path(__file__).with_name("watch_helper.py")
TIMEOUT = 60.0  # generous: the test machine may be shared and loaded


def old_photos(folder: Path, names: list[str]) -> dict[str, str]:
    """Photos written a minute ago: a watcher starting now takes them at once (none is still being written)."""
    photos = write_colour_photos(folder, names)
    for path in photos.values():
        os.utime(path, (time.time() - 60, time.time() - 60))
    return photos


def indexed_paths(lib_folder: Path) -> set[str]:
    """The paths the library holds now, read as another process would."""
    with Library.open(lib_folder, create=False) as lib:  # no model: nothing is encoded
        return {lib.catalog.get_image(int(i)).path for i in lib.image_ids()}


def eventually(check: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


class WatchProcess:
    """`clipsearch watch --json` in a subprocess; its stdout lines parsed as they come."""

    def __init__(self, *args: object, delay: float = 0.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", WATCH_HELPER_DELAY=str(delay))
        self.proc = subprocess.Popen([sys.executable, str(HELPER), "watch", "--json", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[dict] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, kind: str = "sync", timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind} notice; stderr: {''.join(self.stderr)}") from None
            if item["event"] == kind:
                return item

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=TIMEOUT)


def test_the_watcher_process_follows_real_file_operations_and_catches_up_after_a_kill(tmp_path: Path) -> None:
    photos, lib = tmp_path / "photos", tmp_path / "lib"
    old_photos(photos, ["red", "green"])
    watcher = WatchProcess(photos, "--library", lib)
    first = watcher.next()
    assert first["report"]["added"] == 2  # the catch-up sync

    # New photos arrive (a sub-folder copied in, and a photo written into place).
    write_colour_photos(tmp_path / "incoming", ["blue", "yellow"])
    shutil.copytree(tmp_path / "incoming", photos / "trip")
    shutil.copy(photos / "red.jpg", photos / "red-copy.jpg")
    eventually(lambda: {str(photos / "trip" / "blue.jpg"), str(photos / "red-copy.jpg")} <= indexed_paths(lib),
               what="the new photos in the library")
    # Renamed and deleted; hidden files and other files are ignored.
    os.rename(photos / "green.jpg", photos / "trip" / "green.jpg")
    os.remove(photos / "red-copy.jpg")
    (photos / ".hidden").mkdir()
    shutil.copy(photos / "red.jpg", photos / ".hidden" / "secret.jpg")
    (photos / "notes.txt").write_text("not a photo")
    want = {str(photos / "red.jpg"), *(str(photos / "trip" / f"{c}.jpg") for c in ("blue", "yellow", "green"))}
    eventually(lambda: indexed_paths(lib) == want, what="renames and deletions in the library")

    # Killed outright; what happens while it is down is caught up by one sync at the restart.
    watcher.proc.kill()
    watcher.proc.wait(timeout=TIMEOUT)
    old_photos(photos / "later", ["purple"])
    os.remove(photos / "red.jpg")
    watcher = WatchProcess("--library", lib)  # no folders: the library's own
    report = watcher.next()["report"]
    assert (report["added"], report["removed"]) == (1, 1)
    assert indexed_paths(lib) == want - {str(photos / "red.jpg")} | {str(photos / "later" / "purple.jpg")}
    # SIGTERM stops it cleanly.
    assert watcher.stop() == 0
    assert "watcher stopped" in "".join(watcher.stderr)
    assert "Traceback" not in "".join(watcher.stderr)


@pytest.mark.slow
def test_sigterm_during_a_sync_stops_after_the_chunk_and_a_restart_finishes(tmp_path: Path) -> None:
    from PIL import Image

    photos, lib = tmp_path / "photos", tmp_path / "lib"
    photos.mkdir()
    for n in range(300):  # more than a chunk of 256
        Image.new("RGB", (8, 8), (n % 256, n // 256, 0)).save(photos / f"{n:03d}.png")  # all different
        os.utime(photos / f"{n:03d}.png", (time.time() - 60, time.time() - 60))
    watcher = WatchProcess(photos, "--library", lib, delay=1.0)
    eventually(lambda: "encoded" in "".join(watcher.stderr), what="the first batch")
    assert watcher.stop() == 0  # SIGTERM in the middle of the catch-up sync
    stderr = "".join(watcher.stderr)
    assert "stopping after the current chunk" in stderr and "Traceback" not in stderr
    stored = len(indexed_paths(lib))
    assert stored == 256  # the chunk it was storing, committed; not the rest
    watcher = WatchProcess("--library", lib)
    report = watcher.next()["report"]
    assert report["added"] == 300 - stored and len(indexed_paths(lib)) == 300
    assert watcher.stop() == 0


def test_the_model_is_loaded_only_when_a_photo_needs_encoding(tmp_path: Path) -> None:
    photos, lib = tmp_path / "photos", tmp_path / "lib"
    write_colour_photos(photos, ["red", "green"])
    with Library.open(lib, encoder=FakeEncoder("toyworld", None)) as made:
        made.index(photos)
    watcher = WatchProcess("--library", lib)
    assert watcher.next()["report"]["unchanged"] == 2
    os.remove(photos / "red.jpg")
    assert watcher.next()["report"]["removed"] == 1
    write_colour_photos(photos, ["blue"])
    assert watcher.next()["report"]["added"] == 1
    assert watcher.stop(signal.SIGINT) == 0
    assert "".join(watcher.stderr).count("model loaded") == 1  # for the new photo only


class InProcess:
    """A `Watcher` on a thread over its own library object, with the notices it gave."""

    def __init__(self, lib_folder: Path, roots: list[Path], config: WatchConfig, **kwargs: Any) -> None:
        self.notices: list[WatchNotice] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.lib = Library.open(lib_folder, encoder=FakeEncoder("toyworld", None))
        self.watcher = Watcher(self.lib, roots, config=config, notify=self.notices.append, **kwargs)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.watcher.run(self.stop)
        except BaseException as exc:  # pragma: no cover - surfaced by close()
            self.error = exc

    def kinds(self, kind: str) -> list[WatchNotice]:
        return [n for n in list(self.notices) if n.kind == kind]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(TIMEOUT)
        self.lib.close()
        assert not self.thread.is_alive() and self.error is None


FAST = WatchConfig(debounce=0.2, max_delay=2.0, settle=1.0, recheck=0.5, fallback_poll=0.3)


def test_polling_alone_finds_additions_changes_and_deletions(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_colour_photos(photos, ["red", "green"])
    run = InProcess(tmp_path / "lib", [photos], WatchConfig(poll=0.3, debounce=0.2, settle=0.5))
    try:
        eventually(lambda: run.kinds("sync"), what="the catch-up sync")
        assert "polling" in run.kinds("polling")[0].message and run.watcher.roots[str(photos)].method == "poll"
        write_colour_photos(photos / "new", ["blue"])
        os.remove(photos / "red.jpg")
        eventually(lambda: indexed_paths(tmp_path / "lib") == {str(photos / "green.jpg"),
                                                               str(photos / "new" / "blue.jpg")},
                   what="the polled changes")
        # An edit in place (new bytes, same name) is an update.
        write_colour_photos(photos, ["yellow"])
        os.replace(photos / "yellow.jpg", photos / "green.jpg")
        eventually(lambda: any(n.report and n.report.updated for n in run.kinds("sync")), what="the update")
    finally:
        run.close()


def test_a_file_still_being_written_waits_until_it_is_complete(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_colour_photos(photos, ["red"])
    data = (photos / "red.jpg").read_bytes()
    run = InProcess(tmp_path / "lib", [photos], WatchConfig(debounce=0.1, max_delay=0.3, settle=30.0))
    try:
        eventually(lambda: run.kinds("sync"), what="the catch-up sync")
        with open(photos / "slow.jpg", "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            # Batches run meanwhile (max_delay 0.3 s): the half-written file waits.
            eventually(lambda: any(n.report and n.report.waiting for n in run.kinds("sync")), what="a waiting file")
            assert str(photos / "slow.jpg") not in indexed_paths(tmp_path / "lib")
            fh.write(data[len(data) // 2:])
        # Closed after writing: taken at once, whole (not recorded as a broken file).
        eventually(lambda: str(photos / "slow.jpg") in indexed_paths(tmp_path / "lib"), what="the completed file")
        with Library.open(tmp_path / "lib", create=False) as lib:
            assert lib.catalog.count("error") == 0
    finally:
        run.close()


def test_a_burst_is_a_few_batches_not_one_sync_per_file(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    run = InProcess(tmp_path / "lib", [photos], FAST)
    try:
        eventually(lambda: run.kinds("sync"), what="the catch-up sync")
        write_colour_photos(tmp_path / "src", ["red", "green", "blue", "yellow", "purple", "orange"],
                            size=(16, 16))
        for n in range(150):
            shutil.copy(tmp_path / "src" / f"{('red', 'green', 'blue')[n % 3]}.jpg", photos / f"{n:03d}.jpg")
        eventually(lambda: len(indexed_paths(tmp_path / "lib")) == 150, what="all 150 photos")
        syncs = eventually(lambda: (s := [n for n in run.kinds("sync") if n.report.added])
                           and sum(n.report.added for n in s) == 150 and s, what="the sync notices")
        assert len(syncs) <= 5
    finally:
        run.close()


def test_a_deleted_root_is_reported_and_the_others_are_still_watched(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    old_photos(a, ["red"])
    old_photos(b, ["green"])
    run = InProcess(tmp_path / "lib", [a, b], FAST)
    try:
        eventually(lambda: len(run.kinds("sync")) >= 2, what="the catch-up syncs")
        assert indexed_paths(tmp_path / "lib") == {str(a / "red.jpg"), str(b / "green.jpg")}
        shutil.rmtree(a)
        missing = eventually(lambda: run.kinds("missing"), what="the missing notice")
        assert missing[0].root == str(a) and "kept" in missing[0].message
        write_colour_photos(b, ["blue"])
        eventually(lambda: str(b / "blue.jpg") in indexed_paths(tmp_path / "lib"), what="b still watched")
        assert str(a / "red.jpg") in indexed_paths(tmp_path / "lib")  # kept, as `index` keeps them
        write_colour_photos(a, ["yellow"])  # the folder comes back
        eventually(lambda: run.kinds("back"), what="the back notice")
        eventually(lambda: str(a / "yellow.jpg") in indexed_paths(tmp_path / "lib"), what="a watched again")
        write_colour_photos(a / "more", ["purple"])
        eventually(lambda: str(a / "more" / "purple.jpg") in indexed_paths(tmp_path / "lib"), what="new events of a")
    finally:
        run.close()


def test_at_the_inotify_watch_limit_the_tree_is_polled_and_said_so(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_colour_photos(photos / "x", ["red"])
    # The process's watch count does not grow: watchdog skipped folders it could not watch.
    run = InProcess(tmp_path / "lib", [photos], FAST, watch_count=lambda: 7)
    try:
        polling = eventually(lambda: run.kinds("polling"), what="the fallback notice")
        assert "watch limit" in polling[0].message and "max_user_watches" in polling[0].message
        write_colour_photos(photos / "x", ["blue"])
        eventually(lambda: str(photos / "x" / "blue.jpg") in indexed_paths(tmp_path / "lib"), what="polled change")
    finally:
        run.close()


def test_an_inotify_error_at_start_falls_back_to_polling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from watchdog.observers.inotify import InotifyObserver

    def full(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(InotifyObserver, "start", full)
    photos = tmp_path / "photos"
    write_colour_photos(photos, ["red"])
    run = InProcess(tmp_path / "lib", [photos], FAST)
    try:
        assert "watch limit" in eventually(lambda: run.kinds("polling"), what="the fallback")[0].message
        write_colour_photos(photos, ["blue"])
        eventually(lambda: str(photos / "blue.jpg") in indexed_paths(tmp_path / "lib"), what="polled change")
    finally:
        run.close()


def test_network_and_fuse_file_systems_are_polled() -> None:
    mounts = [("/", "ext4"), ("/mnt/nas", "nfs4"), ("/media/usb", "fuseblk"), ("/home/me/remote", "fuse.sshfs")]
    assert watch_method("/home/me/Pictures", mounts=mounts)[0] == "events"
    assert watch_method("/media/usb/DCIM", mounts=mounts)[0] == "events"
    method, why = watch_method("/mnt/nas/photos", mounts=mounts)
    assert method == "poll" and "nfs4" in why
    method, why = watch_method("/home/me", mounts=mounts)  # a FUSE mount inside the root
    assert method == "poll" and "/home/me/remote" in why and "fuse.sshfs" in why
    assert watch_method("/home/me/Pictures", 5.0, mounts=mounts)[0] == "poll"


def test_a_sync_with_nothing_to_encode_never_loads_the_model(tmp_path: Path, colour_photos: dict,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []

    def load(model: str, *args: Any, **kwargs: Any) -> FakeEncoder:
        loads.append(model)
        return FakeEncoder(model, None)

    monkeypatch.setattr(clipsearch.library, "_load_encoder", load)
    with Library.open(tmp_path / "lib") as lib:
        lib.index(tmp_path / "photos")
    assert len(loads) == 1
    os.remove(colour_photos["red"])
    with Library.open(tmp_path / "lib") as lib:
        assert lib.index(tmp_path / "photos").removed == 1
        assert lib.index(tmp_path / "photos").unchanged == 7
    assert len(loads) == 1


def test_a_stop_request_ends_a_sync_between_chunks(tmp_path: Path, colour_photos: dict) -> None:
    from clipsearch.indexer import Indexer

    stop = threading.Event()

    class Stopper(FakeEncoder):
        def encode_images(self, images, batch_size=64):  # type: ignore[no-untyped-def]
            stop.set()  # asked to stop while the first chunk is being encoded
            return super().encode_images(images, batch_size)

    with Library.open(tmp_path / "lib", encoder=Stopper("toyworld", None)) as lib:
        indexer = Indexer(lib.catalog, lib.vector_index, lib.encoder, chunk_size=3, processes=False)
        report = indexer.sync(tmp_path / "photos", stop=stop)
        assert report.interrupted and report.added == 3 and lib.catalog.count() == 3
        stop.clear()
        assert lib.index(tmp_path / "photos").added == 5


def test_serve_watch_runs_a_watcher_beside_the_ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clipsearch_ui.server

    from clipsearch.cli import main

    monkeypatch.setattr(clipsearch.library, "_load_encoder",
                        lambda model, *a, **k: FakeEncoder(model, None))
    photos, lib = tmp_path / "photos", tmp_path / "lib"
    old_photos(photos, ["red"])
    with Library.open(lib, encoder=FakeEncoder("toyworld", None)) as made:
        made.index(photos)
    seen: list[set[str]] = []

    def serve(library: Library, **kwargs: Any) -> None:  # the UI "serving" while photos arrive
        old_photos(photos, ["blue"])

        def found() -> bool:
            hits = library.search("blue", k=5)  # the UI's own library object takes in the watcher's work
            return str(photos / "blue.jpg") in {h.path for h in hits}

        eventually(found, what="the UI finding the watcher's photo")
        seen.append({h.path for h in library.search("blue", k=5)})

    monkeypatch.setattr(clipsearch_ui.server, "serve", serve)
    assert main(["serve", "--watch", "--library", str(lib), "--no-browser"]) == 0
    assert seen and str(photos / "blue.jpg") in seen[0]


def test_the_watcher_follows_moves_within_and_across_roots_without_encoding(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    old_photos(a / "trip", ["red", "green"])
    old_photos(b, ["blue"])
    run = InProcess(tmp_path / "lib", [a, b], FAST)
    try:
        eventually(lambda: len(run.kinds("sync")) >= 2, what="the catch-up syncs")
        with Library.open(tmp_path / "lib", create=False) as lib:
            before = {lib.catalog.get_image(int(i)).path: int(i) for i in lib.image_ids()}
        encoded = run.lib.encoder.images_encoded
        os.rename(a / "trip", a / "trip-2024")  # a folder renamed within a root
        os.rename(b / "blue.jpg", a / "blue.jpg")  # a photo moved from one root to another
        want = {str(a / "trip-2024" / "red.jpg"): before[str(a / "trip" / "red.jpg")],
                str(a / "trip-2024" / "green.jpg"): before[str(a / "trip" / "green.jpg")],
                str(a / "blue.jpg"): before[str(b / "blue.jpg")]}

        def ids() -> dict[str, int]:
            with Library.open(tmp_path / "lib", create=False) as lib:
                return {lib.catalog.get_image(int(i)).path: int(i) for i in lib.image_ids()}

        eventually(lambda: ids() == want, what="the moves, with the photos' ids")
        assert run.lib.encoder.images_encoded == encoded
        eventually(lambda: sum(n.report.moved for n in run.kinds("sync")) == 3, what="3 moves reported")
        assert sum(n.report.removed for n in run.kinds("sync")) == 0
    finally:
        run.close()
