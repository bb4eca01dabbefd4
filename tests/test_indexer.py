"""Incremental indexing through `Library` with the fake encoder: reports, skips, resume, safety checks."""
from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from fakes import NAMES, FakeEncoder, write_colour_photos
from PIL import Image

from clipsearch import Library, PhotoRootError
from clipsearch.indexer import IndexReport


def _counts(report: IndexReport) -> tuple[int, int, int, int, int]:
    return report.added, report.updated, report.removed, report.unchanged, len(report.skipped)


def _consistent(lib: Library) -> None:
    """The index holds exactly the catalog's indexed images."""
    assert sorted(lib.vector_index.ids().tolist()) == lib.catalog.ok_ids().tolist()


def test_first_run_adds_everything(library: Library, colour_photos: dict[str, str], fake_encoder: FakeEncoder) -> None:
    report = library.last_report()
    assert _counts(report) == (8, 0, 0, 0, 0)
    assert report.scanned == 8 and not report.interrupted
    assert fake_encoder.images_encoded == 8
    assert library.catalog.count() == 8 and library.vector_index.ntotal == 8
    assert set(library.catalog.images_under(report.root)) == set(colour_photos.values())
    row = library.catalog.find_path(colour_photos["red"])
    assert (row.width, row.height) == (64, 48)  # the photo's size, not the decoded draft's
    _consistent(library)


def test_second_run_encodes_nothing(library: Library, tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    before = library.vectors()
    report = library.index(tmp_path / "photos")
    assert _counts(report) == (0, 0, 0, 8, 0)
    assert fake_encoder.images_encoded == 8
    after = library.vectors()
    np.testing.assert_array_equal(before[0], after[0])
    _consistent(library)


def test_a_noop_sync_saves_nothing_and_reports_where_its_time_went(library: Library, tmp_path: Path) -> None:
    index_file = library.folder / "index.faiss"
    saved, generation = index_file.stat().st_mtime_ns, library.catalog.generation
    report = library.index(tmp_path / "photos")
    assert (report.unchanged, report.attempted, report.backfilled) == (8, 0, 0)
    # Nothing committed to the images and no index written: the next open has nothing to repair.
    assert library.catalog.generation == generation and index_file.stat().st_mtime_ns == saved
    assert library.vector_index.meta.generation == generation
    assert list(report.stages) == ["scan", "diff", "match_moves", "backfill", "fit_index"]
    assert all(t["seconds"] >= 0 and t["cpu_seconds"] >= 0 for t in report.stages.values())
    assert sum(t["seconds"] for name, t in report.stages.items() if name != "fit_index") <= report.seconds
    assert library.last_report().stages == report.stages
    assert report.stage_summary().startswith("scan ") and "page-ins), diff " in report.stage_summary()
    # A run with work to do names those stages too.
    write_colour_photos(tmp_path / "photos" / "more", ["red"], seed=1)
    report = library.index(tmp_path / "photos")
    assert report.added == 1 and {"encode", "save_index"} <= set(report.stages)
    assert index_file.stat().st_mtime_ns != saved


def test_a_stage_clock_tells_work_from_waiting() -> None:
    import time

    from clipsearch.indexer import StageClock

    stages: dict = {}
    clock = StageClock(stages)
    time.sleep(0.2)
    clock.lap("wait")
    end = time.process_time() + 0.2
    while time.process_time() < end:
        sum(range(20_000))  # Python work between clock reads (each read is a system call)
    clock.lap("work")
    clock.lap("work")  # a stage timed twice adds up
    # 0.19, not 0.2: the stages are rounded to 0.1 ms, and wall and CPU time are two clocks.
    assert stages["wait"]["seconds"] >= 0.19 and stages["wait"]["cpu_seconds"] < 0.05
    assert stages["work"]["cpu_seconds"] >= 0.19 and stages["work"]["seconds"] >= 0.19
    assert stages["work"]["system_seconds"] < stages["work"]["cpu_seconds"] / 2  # a Python loop: user time
    assert isinstance(stages["work"]["major_faults"], int) and stages["work"]["major_faults"] >= 0


def test_new_modified_and_deleted_files(library: Library, tmp_path: Path, colour_photos: dict[str, str],
                                        fake_encoder: FakeEncoder) -> None:
    photos = tmp_path / "photos"
    old_red = library.catalog.find_path(colour_photos["red"]).id
    old_green = library.catalog.find_path(colour_photos["green"]).id
    # Modified by content (another colour, so another size) and by mtime only.
    shutil.copyfile(colour_photos["purple"], colour_photos["red"])
    st = os.stat(colour_photos["green"])
    os.utime(colour_photos["green"], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    os.unlink(colour_photos["blue"])
    os.unlink(colour_photos["white"])
    write_colour_photos(photos / "new", ["yellow", "black"], ext=".png")

    report = library.index(photos)
    assert _counts(report) == (2, 2, 2, 4, 0)
    assert fake_encoder.images_encoded == 8 + 4
    assert library.catalog.find_path(colour_photos["blue"]) is None
    new_red = library.catalog.find_path(colour_photos["red"])
    assert new_red.id != old_red and library.catalog.find_path(colour_photos["green"]).id != old_green
    assert library.get_image(old_red) is None
    # The replaced vector is the new content's: "red.jpg" is now purple.
    assert library.search("purple", k=2)[0].path in (colour_photos["red"], colour_photos["purple"])
    assert {h.path for h in library.search("purple", k=2)} == {colour_photos["red"], colour_photos["purple"]}
    assert library.catalog.count() == 8
    _consistent(library)
    assert old_red not in library.vector_index.ids()


def test_a_corrupt_file_is_skipped_with_its_reason(tmp_path: Path, fake_encoder: FakeEncoder,
                                                  colour_photos: dict[str, str]) -> None:
    bad = tmp_path / "photos" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 3)
    (tmp_path / "photos" / "notes.txt").write_text("not a photo, not scanned")
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        report = lib.index(tmp_path / "photos")
        assert _counts(report) == (8, 0, 0, 0, 1)
        (skipped,) = report.skipped
        assert skipped.path == str(bad) and skipped.reason
        assert lib.catalog.count("ok") == 8 and lib.catalog.count("error") == 1
        assert lib.catalog.failures()[0].error == skipped.reason
        _consistent(lib)

        # Not retried while unchanged...
        again = lib.index(tmp_path / "photos")
        assert _counts(again) == (0, 0, 0, 8, 0) and again.previously_failed == 1
        assert fake_encoder.images_encoded == 8

        # ...but retried once it changes, and then it counts as updated.
        Image.new("RGB", (40, 30), (30, 60, 220)).save(bad, format="JPEG")
        fixed = lib.index(tmp_path / "photos")
        assert _counts(fixed) == (0, 1, 0, 8, 0)
        assert lib.catalog.count("error") == 0 and lib.catalog.count("ok") == 9
        _consistent(lib)


def test_an_encoder_failure_costs_one_file(tmp_path: Path, colour_photos: dict[str, str]) -> None:
    class PickyEncoder(FakeEncoder):
        def encode_images(self, images, batch_size=64):
            if any(im.size[0] == 33 for im in images):
                raise RuntimeError("odd size")
            return super().encode_images(images, batch_size)

    Image.new("RGB", (33, 33), (1, 2, 3)).save(tmp_path / "photos" / "odd.png")
    with Library.open(tmp_path / "lib", encoder=PickyEncoder()) as lib:
        report = lib.index(tmp_path / "photos")
        assert _counts(report) == (8, 0, 0, 0, 1)
        assert report.skipped[0].path.endswith("odd.png") and "odd size" in report.skipped[0].reason
        _consistent(lib)


class InterruptingEncoder(FakeEncoder):
    """Raises KeyboardInterrupt on the `fail_on`-th batch, as Ctrl-C would."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.fail_on = fail_on
        self.batches = 0

    def encode_images(self, images, batch_size=64):
        self.batches += 1
        if self.batches == self.fail_on:
            raise KeyboardInterrupt
        return super().encode_images(images, batch_size)


def test_an_interrupted_run_resumes_without_redoing_finished_chunks(tmp_path: Path, colour_photos: dict[str, str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import clipsearch.indexer

    monkeypatch.setattr(clipsearch.indexer, "Indexer",
                        functools.partial(clipsearch.indexer.Indexer, chunk_size=2))
    first = InterruptingEncoder(fail_on=3)
    lib = Library.open(tmp_path / "lib", encoder=first)
    with pytest.raises(KeyboardInterrupt):
        lib.index(tmp_path / "photos")
    assert first.images_encoded == 4
    assert lib.catalog.count() == 4
    lib.close()

    # A new process: the saved index matches the catalog, and only the rest is encoded.
    second = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=second) as lib:
        assert lib.vector_index.ntotal == 4
        _consistent(lib)
        report = lib.index(tmp_path / "photos")
        assert _counts(report) == (4, 0, 0, 4, 0)
        assert second.images_encoded == 4
        assert lib.catalog.count() == 8
        _consistent(lib)


def test_missing_root_is_a_photo_root_error(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        with pytest.raises(PhotoRootError, match=str(tmp_path / "nowhere")):
            lib.index(tmp_path / "nowhere")


def test_a_root_that_became_empty_removes_nothing_unless_allowed(library: Library, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    shutil.move(photos, tmp_path / "elsewhere")
    photos.mkdir()  # as an empty mount point looks
    with pytest.raises(PhotoRootError, match="--allow-empty") as err:
        library.index(photos)
    assert str(photos) in str(err.value)
    assert library.catalog.count() == 8 and library.vector_index.ntotal == 8

    report = library.index(photos, allow_empty=True)
    assert _counts(report) == (0, 0, 8, 0, 0)
    assert library.catalog.count() == 0 and library.vector_index.ntotal == 0


def test_a_new_empty_root_is_fine(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    (tmp_path / "empty").mkdir()
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        assert _counts(lib.index(tmp_path / "empty")) == (0, 0, 0, 0, 0)


def test_the_library_folder_inside_the_photo_root_is_excluded(tmp_path: Path, fake_encoder: FakeEncoder,
                                                              colour_photos: dict[str, str]) -> None:
    photos = tmp_path / "photos"
    lib_dir = photos / "clipsearch-library"
    with Library.open(lib_dir, encoder=fake_encoder) as lib:
        write_colour_photos(lib_dir / "thumbnails", ["red", "blue"])  # images the tool might write there
        report = lib.index(photos)
        assert report.added == 8
        assert not [p for p in lib.catalog.images_under(str(photos)) if p.startswith(str(lib_dir))]


def test_other_roots_are_left_alone(library: Library, tmp_path: Path, colour_photos: dict[str, str]) -> None:
    other = tmp_path / "other"
    write_colour_photos(other, ["red"])
    report = library.index(other)
    assert _counts(report) == (1, 0, 0, 0, 0)
    # Re-indexing the first root neither removes the other root's photo nor the reverse.
    assert _counts(library.index(tmp_path / "photos")) == (0, 0, 0, 8, 0)
    assert library.catalog.count() == 9
    assert library.roots() == sorted([str(tmp_path / "photos"), str(other)])


def test_a_sub_folder_re_index_touches_only_that_folder(library: Library, tmp_path: Path) -> None:
    report = library.index(tmp_path / "photos" / "sub")
    assert _counts(report) == (0, 0, 0, 2, 0)
    assert library.catalog.count() == 8


def test_exclude_keeps_a_folder_out(tmp_path: Path, fake_encoder: FakeEncoder, colour_photos) -> None:
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as lib:
        report = lib.index(tmp_path / "photos", exclude=[tmp_path / "photos" / "sub"])
        assert report.added == 6
        assert lib.catalog.find_path(colour_photos["white"]) is None


def test_report_round_trips_and_summarises(library: Library) -> None:
    report = library.last_report()
    assert IndexReport.from_dict(report.to_dict()) == report
    assert "8 added" in report.summary() and "0 skipped" in report.summary()


def test_colour_names_cover_the_fixture(colour_photos: dict[str, str]) -> None:
    assert set(colour_photos) == set(NAMES)


def test_an_interrupt_between_catalog_and_index_is_repaired_at_open(tmp_path: Path, colour_photos: dict[str, str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import clipsearch.indexer
    from clipsearch.index import VectorIndex

    monkeypatch.setattr(clipsearch.indexer, "Indexer",
                        functools.partial(clipsearch.indexer.Indexer, chunk_size=3))
    real_add = VectorIndex.add
    calls = []

    def add_then_ctrl_c(self, ids, vectors):
        calls.append(len(ids))
        if len(calls) == 2:  # the second chunk is in the catalog, not yet in the index
            raise KeyboardInterrupt
        real_add(self, ids, vectors)

    monkeypatch.setattr(VectorIndex, "add", add_then_ctrl_c)
    lib = Library.open(tmp_path / "lib", encoder=FakeEncoder())
    with pytest.raises(KeyboardInterrupt):
        lib.index(tmp_path / "photos")
    lib.close()
    monkeypatch.setattr(VectorIndex, "add", real_add)

    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.catalog.count() == 6
        _consistent(lib)
        assert lib.search("green", k=1)[0].path == colour_photos["green"]
        assert lib.index(tmp_path / "photos").added == 2
        _consistent(lib)
