"""Only a file's own faults are remembered; everything else heals by itself (docs/reliability.md).

Also: a plain script with no main guard indexes every photo (decode workers never run the
caller's __main__), and a run in which every file failed exits non-zero.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import NAMES, FakeEncoder, write_colour_photos

import clipsearch.indexer
import clipsearch.pipeline.plan
import clipsearch.pipeline.store
from clipsearch import CatalogError, IndexingError, Library
from clipsearch.catalog import Catalog
from clipsearch.cli import main
from clipsearch.indexer import DECODER_KILLED, PROCESS_MIN_FILES, _DecodeStream


def _photos(folder: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        paths += write_colour_photos(folder / f"set{i}", [NAMES[i % len(NAMES)]], seed=i).values()  # all different
    return sorted(paths)


@pytest.mark.slow
def test_a_plain_script_with_no_main_guard_indexes_every_photo(tmp_path: Path) -> None:
    n = PROCESS_MIN_FILES + 8  # past the in-process shortcut: decoded in worker processes
    _photos(tmp_path / "photos", n)
    script = tmp_path / "index.py"
    script.write_text(textwrap.dedent("""\
        # the README's Python API example as a new user writes it: no `if __name__ == "__main__":`
        import logging
        logging.basicConfig(level=logging.INFO)
        from clipsearch import Library
        with Library.open("my-library") as lib:
            print(lib.index("photos"))
        """))
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "decoding in " in done.stderr and "worker processes" in done.stderr  # not the thread shortcut
    assert f"added={n}," in done.stdout and "skipped=[]" in done.stdout
    assert "Traceback" not in done.stderr and "LibraryLockedError" not in done.stderr
    catalog = Catalog(tmp_path / "my-library" / "catalog.sqlite")
    assert (catalog.count("ok"), catalog.count("error")) == (n, 0)
    catalog.close()
    assert [p.name for p in temp.iterdir() if p.name.startswith("pymp-")] == []  # torch may leave its own


class BrokenEncoder(FakeEncoder):
    """An encoder whose every batch raises, as a broken ONNX session or a systematic model fault does."""

    def encode_images(self, images, batch_size: int = 64) -> np.ndarray:
        raise RuntimeError("ONNX session is broken")


def test_an_encoder_that_fails_on_every_batch_stops_the_run_and_marks_nothing(tmp_path: Path) -> None:
    _photos(tmp_path / "photos", 6)
    with Library.open(tmp_path / "lib", encoder=BrokenEncoder()) as lib:
        with pytest.raises(IndexingError, match="6 files in a row failed.*ONNX session is broken"):
            lib.index(tmp_path / "photos")
        assert (lib.catalog.count("ok"), lib.catalog.count("error")) == (0, 0)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.index(tmp_path / "photos").added == 6


def test_the_cli_exits_1_when_the_encoder_fails_on_every_batch(tmp_path: Path, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import clipsearch.library

    monkeypatch.setattr(clipsearch.library, "_load_encoder", lambda *a, **k: BrokenEncoder())
    _photos(tmp_path / "photos", 6)
    code = main(["-q", "index", str(tmp_path / "photos"), "-l", str(tmp_path / "lib")])
    assert code == 1
    assert "files in a row failed" in capsys.readouterr().err


def test_a_decoder_worker_killed_mid_file_is_tried_again_next_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import decode_faults

    paths = _photos(tmp_path / "photos", PROCESS_MIN_FILES)
    killed = Path(paths[3]).with_name("kill.jpg")
    os.rename(paths[3], killed)
    monkeypatch.setattr(clipsearch.indexer, "_DecodeStream",
                        functools.partial(_DecodeStream, decode=decode_faults.killed_on_marked))
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        report = lib.index(tmp_path / "photos")
        assert report.added == PROCESS_MIN_FILES - 1
        assert [(s.path, s.reason, s.retry) for s in report.skipped] == [
            (str(killed), DECODER_KILLED.format(how="was killed by SIGKILL"), True)]
        assert "1 to be tried again next run" in report.summary()
        assert lib.catalog.find_path(str(killed)) is None  # nothing recorded against it
        monkeypatch.undo()
        again = lib.index(tmp_path / "photos")
        assert (again.added, again.unchanged, again.skipped) == (1, PROCESS_MIN_FILES - 1, [])


def test_decoders_killed_on_every_file_of_a_batch_stop_the_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import decode_faults

    folder = tmp_path / "photos"
    for i in range(PROCESS_MIN_FILES + 100):
        write_colour_photos(folder, ["red"], seed=i)  # all different: not copies of each other
        os.rename(folder / "red.jpg", folder / f"kill{i:03d}.jpg")
    monkeypatch.setattr(clipsearch.indexer, "_DecodeStream",
                        functools.partial(_DecodeStream, decode=decode_faults.killed_on_marked))
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        started = time.monotonic()
        with pytest.raises(IndexingError, match="8 files in a row failed.*was killed by SIGKILL"):
            lib.index(folder)
        assert time.monotonic() - started < 60  # stopped after 8 in a row, not after 116 worker restarts
        assert lib.catalog.count(None) == 0


def test_a_decoder_that_crashes_once_gets_a_second_chance_in_a_fresh_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import decode_faults

    paths = _photos(tmp_path / "photos", PROCESS_MIN_FILES)
    os.rename(paths[5], Path(paths[5]).with_name("flaky.jpg"))
    monkeypatch.setattr(clipsearch.indexer, "_DecodeStream",
                        functools.partial(_DecodeStream, decode=decode_faults.crashes_once_on_marked))
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        report = lib.index(tmp_path / "photos", exclude=[])
        assert (report.added, report.skipped) == (PROCESS_MIN_FILES, [])


def test_a_read_error_is_not_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clipsearch.images

    paths = _photos(tmp_path / "photos", 3)
    real = clipsearch.images._finish

    def out_of_memory(im, label, *args):
        if label == paths[1]:
            raise MemoryError
        return real(im, label, *args)

    monkeypatch.setattr(clipsearch.images, "_finish", out_of_memory)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        report = lib.index(tmp_path / "photos")
        assert [(s.path, s.reason, s.retry) for s in report.skipped] == [
            (paths[1], "not enough memory to decode the image", True)]
        assert lib.catalog.count("error") == 0
        monkeypatch.undo()
        assert lib.index(tmp_path / "photos").added == 1


def test_stored_failures_are_retried_on_request_and_after_a_decoder_upgrade(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _photos(tmp_path / "photos", 3)
    broken = tmp_path / "photos" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        first = lib.index(tmp_path / "photos")
        assert [(s.path, s.reason, s.retry) for s in first.skipped] == [(str(broken), "not an image file", False)]
        again = lib.index(tmp_path / "photos")
        assert (again.previously_failed, again.retried_failures, again.attempted) == (1, 0, 0)
        # --retry-failed: tried again (and still failing, so remembered again).
        asked = lib.index(tmp_path / "photos", retry_failed=True)
        assert (asked.previously_failed, asked.retried_failures, len(asked.skipped)) == (0, 1, 1)
        # A Pillow (or pillow-heif, rawpy, clipsearch) upgrade: tried again once, by itself.
        monkeypatch.setattr(clipsearch.pipeline.plan, "decoder_stack", lambda: "Pillow 99")
        monkeypatch.setattr(clipsearch.pipeline.store, "decoder_stack", lambda: "Pillow 99")
        upgraded = lib.index(tmp_path / "photos")
        assert (upgraded.retried_failures, upgraded.previously_failed) == (1, 0)
        assert lib.index(tmp_path / "photos").previously_failed == 1  # judged by this stack now


def test_failures_recorded_before_decoder_stacks_were_kept_are_retried(tmp_path: Path) -> None:
    paths = _photos(tmp_path / "photos", 3)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        lib.index(tmp_path / "photos")
        # As an older clipsearch stored good photos as failed ("the decoder process died"), with no stack.
        rows = [lib.catalog.find_path(p) for p in paths]
        lib.catalog.remove_images([r.id for r in rows])
        lib.catalog.add_failures([(r.path, r.size, r.mtime_ns, "the decoder process died on this file") for r in rows])
        healed = lib.index(tmp_path / "photos")
        assert (healed.retried_failures, healed.updated, healed.skipped) == (3, 3, [])  # as a fixed file


def test_a_run_in_which_every_file_failed_exits_non_zero(tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import clipsearch.library

    monkeypatch.setattr(clipsearch.library, "_load_encoder", lambda *a, **k: FakeEncoder())
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "photos" / "b.png").write_bytes(b"nor a png")
    code = main(["-q", "index", str(tmp_path / "photos"), "-l", str(tmp_path / "lib")])
    out, err = capsys.readouterr()
    assert code == 1
    assert "none of the 2 files tried" in err and "2 skipped" in out
    # Nothing new to try: a quiet run, exit 0.
    assert main(["-q", "index", str(tmp_path / "photos"), "-l", str(tmp_path / "lib")]) == 0
    code = main(["-q", "index", str(tmp_path / "photos"), "-l", str(tmp_path / "lib"), "--retry-failed"])
    assert code == 1 and "none of the 2 files tried" in capsys.readouterr().err


# -- a library is created whole, or not at all ----------------------------------------------------
class DimlessEncoder(FakeEncoder):
    """An encoder that fails while the library is being created (as a model that cannot load does)."""

    @property
    def dim(self) -> int:
        raise RuntimeError("the model could not be loaded")

    @dim.setter
    def dim(self, value: int) -> None:
        pass


def test_a_library_whose_creation_fails_records_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="could not be loaded"):
        Library.open(tmp_path / "lib", encoder=DimlessEncoder())
    catalog = Catalog(tmp_path / "lib" / "catalog.sqlite")
    assert catalog.missing_library_keys() == ["model", "pretrained", "dim"]  # not a half library
    catalog.close()
    _photos(tmp_path / "photos", 2)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:  # created now, whole
        assert lib.index(tmp_path / "photos").added == 2
        assert (lib.model, lib.dim) == ("fake", FakeEncoder().dim)


def test_a_half_created_empty_library_is_created_again(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    catalog = Catalog(tmp_path / "lib" / "catalog.sqlite")
    catalog.set_meta("model", "fake")  # as an older clipsearch killed between its three writes
    catalog.close()
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.dim == FakeEncoder().dim
        assert lib.catalog.missing_library_keys() == []


def test_a_catalog_with_photos_but_no_dimension_names_the_repair(tmp_path: Path, capsys) -> None:
    _photos(tmp_path / "photos", 2)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        lib.index(tmp_path / "photos")
        lib.catalog._db.execute("DELETE FROM meta WHERE key='dim'")  # a damaged catalog
    with pytest.raises(CatalogError, match=r"no record of its dim.*move the folder .*lib aside"):
        Library.open(tmp_path / "lib", encoder=FakeEncoder())
    assert main(["info", "-l", str(tmp_path / "lib")]) == 1
    err = capsys.readouterr().err
    assert "no record of its dim" in err and "Traceback" not in err


def test_a_stuck_decoder_is_killed_at_the_timeout_and_the_file_tried_again_next_run(tmp_path: Path) -> None:
    import decode_faults

    from clipsearch.indexer import DECODE_TIMED_OUT
    from clipsearch.scan import scan

    paths = _photos(tmp_path / "photos", 4)
    os.rename(paths[0], Path(paths[0]).with_name("slow.jpg"))
    records = sorted(scan(tmp_path / "photos").files, key=lambda r: r.path)
    stream = _DecodeStream(records, 32, None, workers=2, processes=True, window=4,
                           decode=decode_faults.slow_on_marked, timeout=15.0)  # a fresh worker's first file
    started = time.monotonic()                                                   # includes its imports
    with stream:
        results = {os.path.basename(r.record.path): r for r in stream}
    assert time.monotonic() - started < 120  # not the 600 s the decoder would have taken
    assert (results["slow.jpg"].error, results["slow.jpg"].retry) == (DECODE_TIMED_OUT.format(seconds=15), True)
    assert sum(r.error is None for r in results.values()) == 3


def test_where_worker_processes_cannot_start_decoding_falls_back_to_threads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _photos(tmp_path / "photos", PROCESS_MIN_FILES)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.index(tmp_path / "photos").added == PROCESS_MIN_FILES
    assert "could not start a worker process" in caplog.text and "decoding in threads instead" in caplog.text
