"""The per-file facts seam (clipsearch.facts): readers' columns in the catalog, filled at index time and back-filled."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fakes import DummyReader, FakeEncoder, write_colour_photos

from clipsearch import Library
from clipsearch.catalog import Catalog
from clipsearch.errors import CatalogError
from clipsearch.facts import check_readers, read_facts, version_column

NAMES = ["red", "green", "blue", "yellow", "purple", "orange"]


def _facts_by_name(lib: Library, columns=("stem", "name_len", "red", "head", "facts_dummy_version")) -> dict:
    ids = lib.image_ids().tolist()
    rows = lib.catalog.get_images(ids)
    return {os.path.basename(rows[i].path): f for i, f in lib.catalog.facts(ids, list(columns)).items()}


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    write_colour_photos(tmp_path / "photos", NAMES)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return tmp_path / "photos"


def test_a_reader_s_facts_are_in_the_catalog_after_a_local_run(tmp_path: Path, photos: Path) -> None:
    with Library.open(tmp_path / "lib", encoder=FakeEncoder(), readers=[DummyReader()]) as lib:
        report = lib.index(photos)
        assert report.added == 6 and len(report.skipped) == 1 and report.backfilled == 0
        facts = _facts_by_name(lib)
        assert set(facts) == {f"{n}.jpg" for n in NAMES}
        for name, f in facts.items():
            assert f["stem"] == name[:-4] and f["name_len"] == len(name)
            assert f["head"] == b"\xff\xd8\xff\xe0"  # bytes stored as a BLOB
            assert f["facts_dummy_version"] == 1
        # The image the reader saw is the decoded photo: red is brightest in red.jpg, dim in blue.jpg.
        assert facts["red.jpg"]["red"] > 200 > 50 > facts["blue.jpg"]["red"]
        # Declared columns are indexed; keys a reader returns outside its columns are dropped.
        indexes = {r[0] for r in lib.catalog._db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "images_stem" in indexes
        assert "not_a_column" not in lib.catalog.fact_columns
        # SQL-side filtering over a fact column, as features do.
        ids = [r[0] for r in lib.catalog._db.execute("SELECT id FROM images WHERE stem = 'green'")]
        assert [lib.get_image(i).path for i in ids] == [str(photos / "green.jpg")]


def test_back_fill_reads_facts_without_encoding_and_again_after_a_version_bump(tmp_path: Path, photos: Path) -> None:
    with Library.open(tmp_path / "lib", encoder=FakeEncoder(), readers=()) as lib:
        assert lib.index(photos).added == 6
    encoder = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=encoder, readers=[DummyReader()]) as lib:
        assert _facts_by_name(lib)["red.jpg"]["stem"] is None  # columns added at open, not yet read
        report = lib.index(photos)
        assert (report.added, report.unchanged, report.backfilled) == (0, 6, 6)
        assert encoder.images_encoded == 0  # no re-encode
        assert "6 facts back-filled" in report.summary()
        assert _facts_by_name(lib)["red.jpg"]["stem"] == "red"
        assert lib.index(photos).backfilled == 0  # nothing left to read
        assert lib.backfill_facts() == 0
    with Library.open(tmp_path / "lib", encoder=encoder, readers=[DummyReader(version=2)]) as lib:
        assert lib.backfill_facts(photos) == 6
        assert {f["facts_dummy_version"] for f in _facts_by_name(lib).values()} == {2}
        assert encoder.images_encoded == 0


def test_a_reader_that_raises_costs_its_facts_for_that_file_only(tmp_path: Path, photos: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with Library.open(tmp_path / "lib", encoder=FakeEncoder(), readers=[DummyReader(fail_on="blue")]) as lib:
        report = lib.index(photos)
        assert report.added == 6
        facts = _facts_by_name(lib)
        assert facts["blue.jpg"]["stem"] is None and facts["red.jpg"]["stem"] == "red"
        assert facts["blue.jpg"]["facts_dummy_version"] == 1  # read (and failed) at this version: not retried
    assert "dummy reader fails on blue.jpg" in caplog.text


def test_malformed_readers_are_refused_with_the_reason(tmp_path: Path) -> None:
    class Clash(DummyReader):
        @property
        def columns(self) -> dict[str, str]:
            return {"path": "TEXT"}

        @property
        def indexed(self) -> tuple[str, ...]:
            return ()

    class BadName(DummyReader):
        @property
        def columns(self) -> dict[str, str]:
            return {"bad name": "TEXT"}

    with pytest.raises(ValueError, match="both declare column 'stem'"):
        check_readers([DummyReader(), DummyReader(name="other")])
    with pytest.raises(ValueError, match="not a usable column name"):
        check_readers([BadName()])
    with pytest.raises(ValueError, match="not a FactReader"):
        check_readers([object()])
    catalog = Catalog(tmp_path / "c.sqlite")
    with pytest.raises(CatalogError, match="'path' is one of the catalog's own columns"):
        catalog.ensure_columns([Clash()])
    with pytest.raises(CatalogError, match="no fact column 'stem'"):
        catalog.facts([1], ["stem"])
    catalog.close()


def test_read_facts_merges_readers_and_records_versions(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"abcdef")
    facts = read_facts([DummyReader()], str(path), None)
    assert facts == {"stem": "a", "name_len": 5, "red": None, "head": b"abcd", version_column("dummy"): 1}
    assert np.isscalar(facts["name_len"])
