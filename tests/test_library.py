"""The `Library` façade: model bookkeeping, index repair at open, locking, info."""
from __future__ import annotations

import fcntl
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder, write_colour_photos

import clipsearch.library
from clipsearch import ClipSearchError, Library, LibraryLockedError, ModelMismatchError
from clipsearch.catalog import NewImage
from clipsearch.index import VectorIndex

QUERIES = ["red", "blue + green", "white - black", "a yellow t-shirt"]


def _results(lib: Library) -> list[list[tuple[int, float]]]:
    return [[(h.id, round(h.score, 5)) for h in lib.search(q, k=5)] for q in QUERIES]


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every model load the library asks for, answered with a fresh fake encoder."""
    calls: list[tuple] = []

    def fake_load(model: str, pretrained: str | None, device: str | None, *,
                  image_backend: str | None = None) -> FakeEncoder:
        calls.append((model, pretrained, device))
        return FakeEncoder(model, pretrained)

    monkeypatch.setattr(clipsearch.library, "_load_encoder", fake_load)
    monkeypatch.setenv("CLIPSEARCH_FAST_PATH", "0")  # a fake model has no exported text tower
    return calls


def test_reopening_without_a_model_uses_the_stored_one(library: Library, tmp_path: Path, loads: list) -> None:
    before = _results(library)
    library.close()
    with Library.open(tmp_path / "lib") as lib:
        assert (lib.model, lib.pretrained) == ("fake", "test")
        assert loads == []  # opening does not load a model; the first query does
        assert _results(lib) == before
        assert loads == [("fake", "test", None)]
        lib.search("green")
        assert len(loads) == 1  # loaded once, kept


def test_a_new_library_stores_the_model_it_was_built_with(tmp_path: Path, loads: list) -> None:
    with Library.open(tmp_path / "lib", model="ViT-B-32", pretrained="openai", device="cpu") as lib:
        assert loads == [("ViT-B-32", "openai", "cpu")]
        assert lib.catalog.get_meta("model") == "ViT-B-32" and lib.catalog.get_meta("pretrained") == "openai"
        assert lib.catalog.get_meta("dim") == str(FakeEncoder().dim)
    with Library.open(tmp_path / "lib2", model="ViT-B-32", pretrained=None) as lib:
        assert lib.catalog.get_meta("pretrained") == "none"
    with Library.open(tmp_path / "lib2", pretrained="none") as lib:  # "none" and None are one thing
        assert lib.pretrained is None


@pytest.mark.parametrize("model, pretrained, asked", [
    ("ViT-B-32", clipsearch.library._UNSET, "ViT-B-32"),
    (None, "laion2b_s34b_b79k", "fake/laion2b_s34b_b79k"),
    ("ViT-L-14", "openai", "ViT-L-14/openai"),
])
def test_naming_another_model_is_a_mismatch_naming_both(library: Library, tmp_path: Path, loads: list,
                                                        model, pretrained, asked: str) -> None:
    library.close()
    with pytest.raises(ModelMismatchError) as err:
        Library.open(tmp_path / "lib", model=model, pretrained=pretrained)
    message = str(err.value)
    assert "fake/test" in message and asked in message and str(tmp_path / "lib") in message
    assert loads == []
    # The failed open left nothing locked or open: the right model still opens.
    with Library.open(tmp_path / "lib", model="fake", pretrained="test") as lib:
        assert lib.catalog.count() == 8


def test_an_encoder_of_another_name_is_a_mismatch(library: Library, tmp_path: Path) -> None:
    library.close()
    with pytest.raises(ModelMismatchError, match="other"):
        Library.open(tmp_path / "lib", encoder=FakeEncoder("other", "test"))


def test_an_encoder_of_another_dimension_is_a_mismatch(library: Library, tmp_path: Path) -> None:
    library.close()
    narrow = FakeEncoder()
    narrow.dim = 4
    with pytest.raises(ModelMismatchError, match="4-d"):
        Library.open(tmp_path / "lib", encoder=narrow)


def test_opening_a_missing_library_without_create_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ClipSearchError, match=str(tmp_path / "nolib")):
        Library.open(tmp_path / "nolib", create=False)
    assert not (tmp_path / "nolib").exists()


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated", "sidecar lost"])
def test_a_lost_or_damaged_index_is_rebuilt_from_stored_vectors(library: Library, tmp_path: Path,
                                                                damage: str) -> None:
    before = _results(library)
    library.close()
    index_file = tmp_path / "lib" / "index.faiss"
    if damage == "deleted":
        index_file.unlink()
    elif damage == "garbage":
        index_file.write_bytes(b"\x00garbage" * 64)
    elif damage == "truncated":
        index_file.write_bytes(index_file.read_bytes()[:100])
    else:
        (tmp_path / "lib" / "index.faiss.json").unlink()
    fresh = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=fresh) as lib:
        assert lib.vector_index.ntotal == 8
        assert _results(lib) == before
        assert fresh.images_encoded == 0


def test_rebuild_index_gives_the_same_results_without_encoding(library: Library, fake_encoder: FakeEncoder,
                                                               tmp_path: Path) -> None:
    before = _results(library)
    encoded = fake_encoder.images_encoded
    assert library.rebuild_index() == 8
    assert _results(library) == before
    assert fake_encoder.images_encoded == encoded
    assert VectorIndex.load(tmp_path / "lib" / "index.faiss").meta.generation == library.catalog.generation


def test_an_index_lagging_the_catalog_is_reconciled_at_open(library: Library, tmp_path: Path,
                                                            colour_photos: dict[str, str]) -> None:
    # A crash after the catalog committed but before the index was saved.
    library.save_index()
    red = library.catalog.find_path(colour_photos["red"]).id
    green_vec = library.vectors([library.catalog.find_path(colour_photos["green"]).id])[1][0]
    (new,) = library.catalog.add_images([NewImage("/elsewhere/new.jpg", 1, 1, green_vec)])
    library.catalog.remove_images([red])
    library.close()

    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert sorted(lib.vector_index.ids().tolist()) == lib.catalog.ok_ids().tolist()
        assert new in lib.vector_index.ids() and red not in lib.vector_index.ids()
        assert {h.path for h in lib.search("green", k=2)} == {colour_photos["green"], "/elsewhere/new.jpg"}


def test_a_second_writer_gets_library_locked_error(library: Library, tmp_path: Path) -> None:
    with open(tmp_path / "lib" / "lock", "a+") as other_process:
        fcntl.flock(other_process, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LibraryLockedError, match="another clipsearch process"):
            library.index(tmp_path / "photos")
        with pytest.raises(LibraryLockedError, match=str(tmp_path / "lib")):
            library.rebuild_index()
        # Readers are not blocked.
        assert library.search("red", k=1)
    # And our own lock is released after each write.
    fh = open(tmp_path / "lib" / "lock", "a+")
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.close()


def test_a_writer_can_wait_for_the_other_one(library: Library, tmp_path: Path) -> None:
    import threading
    import time

    other_process = open(tmp_path / "lib" / "lock", "a+")
    fcntl.flock(other_process, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(LibraryLockedError, match=r"waited 0\.3 s.*--wait"):
        library.index(tmp_path / "photos", wait=0.3)
    threading.Timer(0.6, other_process.close).start()  # the other writer finishes
    started = time.monotonic()
    report = library.index(tmp_path / "photos", wait=30)
    assert 0.5 < time.monotonic() - started < 10 and report.unchanged == 8


def test_a_writer_takes_in_what_another_process_wrote_since_it_opened(library: Library, tmp_path: Path,
                                                                     fake_encoder: FakeEncoder) -> None:
    # The web UI holds a library open for hours; meanwhile a scheduled run indexes new photos.
    scheduled = Library.open(tmp_path / "lib", encoder=fake_encoder)
    new = write_colour_photos(tmp_path / "photos" / "new", ["orange"], size=(40, 30))
    assert scheduled.index(tmp_path / "photos").added == 1
    scheduled.close()
    # Then the long-lived one indexes (nothing new to it on disk) and saves its index:
    # the scheduled run's photo must still be in it, now and after reopening.
    assert library.index(tmp_path / "photos").added == 0
    new_id = library.catalog.find_path(new["orange"]).id
    assert new_id in library.vector_index.ids()
    assert library.search_vector(library.vectors([new_id])[1][0], k=1)[0].path == new["orange"]
    library.close()
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as again:
        assert sorted(again.vector_index.ids().tolist()) == again.catalog.ok_ids().tolist()
        assert again.vector_index.ntotal == 9


def test_a_long_lived_reader_finds_what_another_process_indexed(library: Library, tmp_path: Path,
                                                                fake_encoder: FakeEncoder) -> None:
    before = library.vector_index
    assert library.refresh() is False  # nothing changed: nothing reloaded
    scheduled = Library.open(tmp_path / "lib", encoder=fake_encoder)
    new = write_colour_photos(tmp_path / "photos" / "new", ["orange"], size=(40, 30))
    old_orange = library.search("orange", k=1)[0].path
    assert old_orange != new["orange"]
    # A writer mid-run: its chunk is committed, its index not saved yet. The reader keeps
    # its index (no reload of a file behind the catalog) and still answers.
    with scheduled.catalog.transaction():
        pass  # a committed chunk
    assert library.catalog.generation != before.meta.generation
    assert library.refresh() is False and library.vector_index is before
    assert library.search("orange", k=1)[0].path == old_orange
    # The run ends and saves: the next search takes it in, without reopening.
    assert scheduled.index(tmp_path / "photos").added == 1
    hits = library.search("orange", k=2)
    assert new["orange"] in [h.path for h in hits] and library.vector_index is not before
    assert library.vector_index.ntotal == 9 and library.refresh() is False
    scheduled.close()


def test_labels_another_process_adds_are_used_by_the_next_describe(library: Library, tmp_path: Path,
                                                                   fake_encoder: FakeEncoder,
                                                                   colour_photos: dict[str, str]) -> None:
    library.add_texts(["a red photo", "a blue photo"])
    assert library.describe(colour_photos["green"], k=1)[0].text != "a green photo"
    with Library.open(tmp_path / "lib", encoder=fake_encoder) as terminal:  # `clipsearch texts add` meanwhile
        terminal.add_texts(["a green photo"])
        assert library.describe(colour_photos["green"], k=1)[0].text == "a green photo"
        terminal.remove_texts(["a green photo"])
    assert library.describe(colour_photos["green"], k=1)[0].text != "a green photo"


def test_info_counts(library: Library, tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    (tmp_path / "photos" / "bad.png").write_bytes(b"not a png")
    library.index(tmp_path / "photos")
    library.add_texts(["a red photo", "a blue photo", "a red photo"])
    info = library.info()
    assert (info.images, info.failed, info.texts, info.index_count) == (8, 1, 2, 8)
    assert (info.model, info.pretrained, info.dim, info.index_kind) == ("fake", "test", fake_encoder.dim, "flat")
    assert info.folder == str(tmp_path / "lib")
    assert info.roots == [str(tmp_path / "photos")]
    assert info.last_report["unchanged"] == 8 and len(info.last_report["skipped"]) == 1


def test_vectors_are_the_stored_unit_vectors(library: Library, colour_photos: dict[str, str]) -> None:
    ids, vecs = library.vectors()
    assert ids.tolist() == library.catalog.ok_ids().tolist()
    assert vecs.shape == (8, library.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    red = library.catalog.find_path(colour_photos["red"]).id
    some_ids, some = library.vectors([red])
    assert some_ids.tolist() == [red]
    np.testing.assert_array_equal(some[0], vecs[ids.tolist().index(red)])


def test_facts_of_a_photo_only_the_columns_the_library_stores(library, colour_photos):
    import os

    row = library.catalog.find_path(os.path.abspath(colour_photos["red"]))
    facts = library.facts(row.id)
    assert set(facts) <= library.catalog.fact_columns
    # No EXIF in these photos: the capture time falls back to the file's mtime, and says so.
    assert library.facts(row.id, ["taken_at", "taken_source"])["taken_source"] == "mtime"
    assert set(library.facts(row.id, ["taken_at"])) == {"taken_at"}
    assert library.facts(row.id, ["no_such_fact"]) == {}
    assert set(library.facts(row.id, ["taken_at", "no_such_fact"])) <= {"taken_at"}
    assert library.facts(999_999) == {}
