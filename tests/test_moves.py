"""Moves and copies cost nothing: content fingerprints, and photos that keep their id, vector
and facts under a new path (within a root, across roots, a renamed root, during a sync), copies
that are not encoded, and a file replaced by other bytes that is an update, not a move."""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder, write_colour_photos

from clipsearch import Library
from clipsearch.moves import FINGERPRINT, fingerprint_file


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder()


def ids_by_path(lib: Library) -> dict[str, int]:
    return {lib.catalog.get_image(int(i)).path: int(i) for i in lib.image_ids()}


def vector_of(lib: Library, image_id: int) -> np.ndarray:
    return lib.catalog.vectors_for([image_id], lib.dim)[image_id]


def test_fingerprints_are_blake2b_of_the_bytes_and_stored_for_each_photo(library: Library, colour_photos) -> None:
    import hashlib

    red = colour_photos["red"]
    assert fingerprint_file(red) == hashlib.blake2b(Path(red).read_bytes(), digest_size=16).digest()
    assert fingerprint_file(Path(red).parent / "missing.jpg") is None
    row = library.catalog.find_path(red)
    facts = library.catalog.facts([row.id], ["fingerprint", "inode"])[row.id]
    assert facts == {"fingerprint": fingerprint_file(red), "inode": os.stat(red).st_ino}


def test_a_renamed_folder_is_moved_with_nothing_encoded(tmp_path: Path, encoder: FakeEncoder) -> None:
    photos = tmp_path / "photos"
    write_colour_photos(photos / "trip", ["red", "green", "blue", "yellow"])
    write_colour_photos(photos, ["purple"])
    with Library.open(tmp_path / "lib", encoder=encoder) as lib:
        lib.index(photos)
        before = ids_by_path(lib)
        vectors = {p: vector_of(lib, i) for p, i in before.items()}
        encoded = encoder.images_encoded
        os.rename(photos / "trip", photos / "trip 2024")
        report = lib.index(photos)
        assert (report.moved, report.added, report.removed, report.updated) == (4, 0, 0, 0)
        assert encoder.images_encoded == encoded and "4 moved" in report.summary()
        after = ids_by_path(lib)
        for old, image_id in before.items():
            new = old.replace("/trip/", "/trip 2024/")
            assert after[new] == image_id  # the same id, so labels and anything keyed by it follow
            np.testing.assert_array_equal(vector_of(lib, image_id), vectors[old])
        # The searches find the photos at their new place; the next sync has nothing to do.
        assert lib.search("red", k=1)[0].path == str(photos / "trip 2024" / "red.jpg")
        assert lib.index(photos).unchanged == 5


def test_a_photo_moved_between_folders_keeps_its_row_and_facts(tmp_path: Path, encoder: FakeEncoder) -> None:
    photos = write_colour_photos(tmp_path / "photos", ["red", "green"])
    with Library.open(tmp_path / "lib", encoder=encoder) as lib:
        lib.index(tmp_path / "photos")
        row = lib.catalog.find_path(photos["red"])
        facts = lib.catalog.facts([row.id], sorted(lib.catalog.fact_columns))[row.id]
        os.makedirs(tmp_path / "photos" / "best")
        os.rename(photos["red"], tmp_path / "photos" / "best" / "red.jpg")
        report = lib.index(tmp_path / "photos")
        assert (report.moved, report.added, report.removed) == (1, 0, 0)
        moved = lib.catalog.find_path(str(tmp_path / "photos" / "best" / "red.jpg"))
        assert (moved.id, moved.width, moved.height) == (row.id, row.width, row.height)
        assert lib.catalog.facts([row.id], sorted(lib.catalog.fact_columns))[row.id] == facts
        assert lib.catalog.find_path(photos["red"]) is None


def test_a_move_across_roots_and_across_file_systems(tmp_path: Path, encoder: FakeEncoder) -> None:
    a = write_colour_photos(tmp_path / "a", ["red", "green"])
    b = write_colour_photos(tmp_path / "b", ["blue"])
    with Library.open(tmp_path / "lib", encoder=encoder) as lib:
        lib.index(tmp_path / "a")
        lib.index(tmp_path / "b")
        red, green = lib.catalog.find_path(a["red"]).id, lib.catalog.find_path(a["green"]).id
        encoded = encoder.images_encoded
        # A rename from a to b (same inode), and a copy-then-delete, as across file systems (new inode, new mtime).
        os.rename(a["red"], tmp_path / "b" / "red.jpg")
        shutil.copyfile(a["green"], tmp_path / "b" / "green.jpg")
        os.remove(a["green"])
        report = lib.index(tmp_path / "b")
        assert (report.moved, report.added) == (2, 0) and encoder.images_encoded == encoded
        assert ids_by_path(lib)[str(tmp_path / "b" / "red.jpg")] == red
        assert ids_by_path(lib)[str(tmp_path / "b" / "green.jpg")] == green
        # Root a has nothing left to remove: its photos moved.
        assert lib.index(tmp_path / "a").removed == 0
        assert set(ids_by_path(lib)) == {str(tmp_path / "b" / n) for n in ("red.jpg", "green.jpg")} | {b["blue"]}


def test_a_renamed_root_moves_every_photo_and_drops_the_old_root(tmp_path: Path, encoder: FakeEncoder,
                                                                 colour_photos) -> None:
    with Library.open(tmp_path / "lib", encoder=encoder) as lib:
        lib.index(tmp_path / "photos")
        before = ids_by_path(lib)
        encoded = encoder.images_encoded
        os.rename(tmp_path / "photos", tmp_path / "pictures")
        report = lib.index(tmp_path / "pictures")
        assert (report.moved, report.added, report.removed) == (8, 0, 0) and encoder.images_encoded == encoded
        assert ids_by_path(lib) == {p.replace("/photos/", "/pictures/"): i for p, i in before.items()}
        assert lib.roots() == [str(tmp_path / "pictures")]


def test_copies_are_added_with_the_same_vector_and_not_encoded(library: Library, fake_encoder: FakeEncoder,
                                                               colour_photos, tmp_path: Path) -> None:
    red = library.catalog.find_path(colour_photos["red"])
    encoded = fake_encoder.images_encoded
    shutil.copy2(colour_photos["red"], tmp_path / "photos" / "red copy.jpg")  # same bytes, same mtime, new inode
    shutil.copyfile(colour_photos["red"], tmp_path / "photos" / "sub" / "red again.jpg")  # a new mtime
    os.link(colour_photos["blue"], tmp_path / "photos" / "blue link.jpg")  # the same inode under two names
    report = library.index(tmp_path / "photos")
    assert (report.added, report.copied, report.moved, report.removed) == (3, 3, 0, 0)
    assert fake_encoder.images_encoded == encoded and "3 copies, not encoded" in report.summary()
    paths = ids_by_path(library)
    assert paths[colour_photos["red"]] == red.id  # the original is untouched
    for copy in ("red copy.jpg", "sub/red again.jpg"):
        assert paths[str(tmp_path / "photos" / copy)] != red.id
        np.testing.assert_array_equal(vector_of(library, paths[str(tmp_path / "photos" / copy)]),
                                      vector_of(library, red.id))
    hits = library.search("red", k=3)
    assert {h.path for h in hits} == {colour_photos["red"], str(tmp_path / "photos" / "red copy.jpg"),
                                      str(tmp_path / "photos" / "sub" / "red again.jpg")}


def test_the_same_new_bytes_in_two_places_are_encoded_once(library: Library, fake_encoder: FakeEncoder,
                                                           tmp_path: Path) -> None:
    new = write_colour_photos(tmp_path / "incoming", ["red"], size=(40, 30))  # bytes the library has not seen
    shutil.copy(new["red"], tmp_path / "photos" / "a.jpg")
    shutil.copy(new["red"], tmp_path / "photos" / "sub" / "b.jpg")
    encoded = fake_encoder.images_encoded
    report = library.index(tmp_path / "photos")
    assert (report.added, report.copied) == (2, 1) and fake_encoder.images_encoded == encoded + 1
    paths = ids_by_path(library)
    np.testing.assert_array_equal(vector_of(library, paths[str(tmp_path / "photos" / "a.jpg")]),
                                  vector_of(library, paths[str(tmp_path / "photos" / "sub" / "b.jpg")]))


def test_a_file_replaced_by_other_bytes_is_an_update_not_a_move(library: Library, fake_encoder: FakeEncoder,
                                                                colour_photos, tmp_path: Path) -> None:
    other = write_colour_photos(tmp_path / "other", ["white"], size=(50, 50))["white"]
    os.remove(colour_photos["green"])
    shutil.copy(other, colour_photos["red"])  # red.jpg now holds a white photo
    encoded = fake_encoder.images_encoded
    report = library.index(tmp_path / "photos")
    assert (report.updated, report.moved, report.removed, report.added) == (1, 0, 1, 0)
    assert fake_encoder.images_encoded == encoded + 1
    # red.jpg's stored vector is now a white photo's: it ranks with the white photo for "white".
    top = {h.path for h in library.search("white", k=2)}
    assert top == {colour_photos["red"], colour_photos["white"]}


def test_a_photo_moved_during_a_sync_is_found_by_the_next_one(library: Library, colour_photos,
                                                              tmp_path: Path) -> None:
    """A photo already indexed moves while a sync is encoding others: nothing is lost, the next sync moves it."""
    red = library.catalog.find_path(colour_photos["red"]).id
    write_colour_photos(tmp_path / "photos" / "new", ["orange", "purple"], size=(30, 30))
    moved = threading.Event()

    class MovingEncoder(FakeEncoder):
        def encode_images(self, images, batch_size=64):  # type: ignore[no-untyped-def]
            if not moved.is_set():
                os.rename(colour_photos["red"], tmp_path / "photos" / "new" / "red.jpg")
                moved.set()
            return super().encode_images(images, batch_size)

    with Library.open(tmp_path / "lib", encoder=MovingEncoder()) as lib:
        report = lib.index(tmp_path / "photos")
        assert moved.is_set() and report.added == 2 and report.removed == 0
        report = lib.index(tmp_path / "photos")
        assert (report.moved, report.added, report.removed) == (1, 0, 0)
        assert lib.catalog.find_path(str(tmp_path / "photos" / "new" / "red.jpg")).id == red


def test_a_photo_on_a_drive_that_is_gone_is_copied_not_taken(tmp_path: Path, encoder: FakeEncoder) -> None:
    """The same bytes under a root whose folder is not there now (an unplugged drive) keep their row."""
    drive = write_colour_photos(tmp_path / "drive" / "DCIM", ["red"])
    write_colour_photos(tmp_path / "home", ["green"])
    with Library.open(tmp_path / "lib", encoder=encoder) as lib:
        lib.index(tmp_path / "drive")
        lib.index(tmp_path / "home")
        on_drive = lib.catalog.find_path(drive["red"]).id
        shutil.copyfile(drive["red"], tmp_path / "home" / "red.jpg")
        shutil.rmtree(tmp_path / "drive")  # unplugged: its mount point folder is gone with it
        report = lib.index(tmp_path / "home")
        assert (report.copied, report.moved) == (1, 0)
        assert lib.catalog.get_image(on_drive).path == drive["red"]


def test_an_old_library_gets_fingerprints_without_encoding_then_moves(tmp_path: Path, encoder: FakeEncoder,
                                                                      colour_photos) -> None:
    with Library.open(tmp_path / "lib", encoder=encoder, readers=()) as lib:  # before fingerprints existed
        lib.index(tmp_path / "photos")
    encoded = encoder.images_encoded
    with Library.open(tmp_path / "lib", encoder=encoder) as lib:
        report = lib.index(tmp_path / "photos")
        assert report.backfilled == 8 and encoder.images_encoded == encoded
        os.rename(tmp_path / "photos" / "sub", tmp_path / "photos" / "sub2")
        assert lib.index(tmp_path / "photos").moved == 2 and encoder.images_encoded == encoded


def test_the_cli_reports_moves_in_json(tmp_path: Path, colour_photos, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    import json

    import clipsearch.library
    from clipsearch.cli import main

    monkeypatch.setattr(clipsearch.library, "_load_encoder", lambda model, *a, **k: FakeEncoder(model, None))
    assert main(["-q", "index", str(tmp_path / "photos"), "-l", str(tmp_path / "lib")]) == 0
    os.rename(tmp_path / "photos" / "sub", tmp_path / "photos" / "moved")
    capsys.readouterr()
    assert main(["-q", "index", str(tmp_path / "photos"), "-l", str(tmp_path / "lib"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["moved"], report["added"], report["copied"]) == (2, 0, 0)


def test_the_fingerprint_reader_is_a_picklable_fact_reader() -> None:
    import pickle

    from clipsearch.facts import FactReader, default_readers

    assert isinstance(FINGERPRINT, FactReader) and FINGERPRINT in default_readers()
    assert pickle.loads(pickle.dumps(FINGERPRINT)) is FINGERPRINT


def test_a_renamed_folder_of_hundreds_costs_a_scan_not_an_encoding(tmp_path: Path, encoder: FakeEncoder) -> None:
    """bench/bench_moves.py at a smaller size: 300 photos renamed, nothing encoded, well under the 5 s budget."""
    import time

    from PIL import Image

    album = tmp_path / "photos" / "album"
    album.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in range(300):
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(album / f"{n:03d}.png")
    with Library.open(tmp_path / "lib", encoder=encoder) as lib:
        lib.index(tmp_path / "photos")
        encoded = encoder.images_encoded
        os.rename(album, tmp_path / "photos" / "album-2024")
        start = time.monotonic()
        report = lib.index(tmp_path / "photos")
        assert (report.moved, report.added, report.removed) == (300, 0, 0) and encoder.images_encoded == encoded
        assert time.monotonic() - start < 5.0
