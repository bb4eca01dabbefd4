"""Search with metadata: filters end to end, date order, hits' facts, the back-fill migration, an oracle."""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pytest
from fakes import COLOURS, FakeEncoder
from PIL import Image

from clipsearch import Library, QueryError
from clipsearch.index import exact_search
from clipsearch.query import Filters, Query, filters_where, parse
from clipsearch.toyworld import CAMERAS, CITIES, ToyPhotoMeta, exif_bytes

_CITY = {c.name: c for c in CITIES}
_CAM = {c.model: c for c in CAMERAS}

# name: (colour, city or None, camera model, local time, offset hours, extension)
PHOTOS = {
    "red_lisbon": ("red", "Lisbon", "Pixel 7", (2019, 7, 4, 18, 30), 1, ".jpg"),
    "red_paris": ("red", "Paris", "iPhone 12", (2018, 5, 1, 9, 0), 2, ".jpg"),
    "blue_lisbon": ("blue", "Lisbon", "X-T3", (2020, 1, 2, 12, 0), 0, ".png"),
    "red_tokyo": ("red", "Tokyo", "Pixel 7", (2019, 8, 20, 21, 0), 9, ".webp"),
    "green_nogps": ("green", None, "Canon EOS R5", (2017, 3, 3, 10, 0), 1, ".jpg"),
    "yellow_paris": ("yellow", "Paris", "X-T3", (2021, 6, 1, 8, 0), 2, ".jpg"),
}


def _write(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (colour, city, model, when, offset, ext) in PHOTOS.items():
        taken = dt.datetime(*when, tzinfo=dt.timezone(dt.timedelta(hours=offset)))
        c = _CITY[city] if city else CITIES[0]
        meta = ToyPhotoMeta(taken, c, _CAM[model], city is not None, c.lat + 0.001, c.lon + 0.001, 100, 0.01)
        path = folder / f"{name}{ext}"
        Image.new("RGB", (48, 32), COLOURS[colour]).save(path, exif=exif_bytes(meta))
        out[name] = str(path)
    # No EXIF: dated by its file name.
    plain = folder / "sub" / "IMG_20160101_120000.jpg"
    plain.parent.mkdir()
    Image.new("RGB", (48, 32), COLOURS["red"]).save(plain)
    out["red_plain"] = str(plain)
    return out


@pytest.fixture
def meta_lib(tmp_path: Path):
    photos = _write(tmp_path / "photos")
    lib = Library.open(tmp_path / "lib", encoder=FakeEncoder())
    lib.index(tmp_path / "photos")
    yield lib, photos
    lib.close()


def _names(hits, photos: dict[str, str]) -> list[str]:
    by_path = {p: n for n, p in photos.items()}
    return [by_path[h.path] for h in hits]


def test_words_and_filters(meta_lib) -> None:
    lib, photos = meta_lib
    assert _names(lib.search("red place:Lisbon"), photos) == ["red_lisbon", "blue_lisbon"]
    assert _names(lib.search("red place:lisboa|LISBON", k=10), photos) == ["red_lisbon", "blue_lisbon"]
    assert _names(lib.search("red country:FR"), photos) == ["red_paris", "yellow_paris"]
    assert _names(lib.search('red camera:"Pixel 7" after:2019-08'), photos) == ["red_tokyo"]
    assert _names(lib.search("red type:png|webp"), photos) == ["red_tokyo", "blue_lisbon"]
    assert _names(lib.search("red near:35.69,139.69,10km"), photos) == ["red_tokyo"]
    assert set(_names(lib.search("lens:35mm"), photos)) == {"blue_lisbon", "yellow_paris"}
    assert lib.search("red place:Atlantis") == []


def test_filters_alone_list_by_date(meta_lib) -> None:
    lib, photos = meta_lib
    hits = lib.search("after:2016", k=20)
    assert _names(hits, photos) == ["yellow_paris", "blue_lisbon", "red_tokyo", "red_lisbon", "red_paris",
                                    "green_nogps", "red_plain"]
    assert all(h.score is None for h in hits)
    assert _names(lib.search("place:Paris sort:oldest"), photos) == ["red_paris", "yellow_paris"]
    assert _names(lib.search(Query(filters=Filters(places=("Lisbon",)))), photos) == ["blue_lisbon", "red_lisbon"]


def test_date_order_with_a_cutoff(meta_lib) -> None:
    lib, photos = meta_lib
    by_score = lib.search("red", k=20)
    cutoff = (by_score[3].score + by_score[4].score) / 2  # the four red photos score above the others
    newest = lib.search(f"red sort:date min:{cutoff}", k=20)
    assert _names(newest, photos) == ["red_tokyo", "red_lisbon", "red_paris", "red_plain"]
    assert _names(lib.search(f"red sort:oldest min:{cutoff}", k=2), photos) == ["red_plain", "red_paris"]


def test_hits_carry_time_place_camera(meta_lib) -> None:
    lib, photos = meta_lib
    hit = lib.search("red place:Lisbon")[0]
    assert hit.taken_at == "2019-07-04T18:30:00+01:00"
    assert hit.place == "Lisbon, Portugal" and hit.camera == "Google Pixel 7"
    plain = lib.search("folder:" + str(Path(photos["red_plain"]).parent))[0]
    assert plain.taken_at == "2016-01-01T12:00:00" and plain.place is None and plain.camera is None


def test_image_search_with_filters(meta_lib) -> None:
    lib, photos = meta_lib
    hits = lib.search_image(photos["red_lisbon"], k=5, query="place:Paris|Tokyo")
    assert _names(hits, photos)[0] in ("red_paris", "red_tokyo") and "red_lisbon" not in _names(hits, photos)


def test_bad_queries_name_the_problem(meta_lib) -> None:
    lib, _ = meta_lib
    with pytest.raises(QueryError, match="colour:"):
        lib.search("red colour:blue")
    with pytest.raises(QueryError, match="empty query"):
        lib.search("   ")


def test_cli_json(meta_lib, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from clipsearch.cli import core

    lib, photos = meta_lib
    monkeypatch.setattr(core, "open_library", lambda args, create=False: lib_ctx(lib))
    assert core._cmd_search(_args(["red", "country:PT"], as_json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert [h["path"] for h in out] == [photos["red_lisbon"], photos["blue_lisbon"]][: len(out)]
    assert {"path", "score", "id", "taken_at", "place", "camera"} <= set(out[0])
    assert out[0]["taken_at"] == "2019-07-04T18:30:00+01:00" and out[0]["place"] == "Lisbon, Portugal"
    assert core._cmd_search(_args(["place:Tokyo"], as_json=False)) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"-  [2019-08-20 21:00 · Tokyo, Japan · Google Pixel 7]  {photos['red_tokyo']}"


class lib_ctx:
    def __init__(self, lib: Library) -> None:
        self.lib = lib

    def __enter__(self) -> Library:
        return self.lib

    def __exit__(self, *exc: object) -> None:
        pass


def _args(query: list[str], as_json: bool):
    import argparse

    return argparse.Namespace(query=query, k=10, min_score=None, folder=None, json=as_json)


def test_backfill_migration_reads_files_and_reencodes_nothing(tmp_path: Path) -> None:
    photos = _write(tmp_path / "photos")
    enc = FakeEncoder()
    # A library as today's release builds it: no fact columns at all.
    with Library.open(tmp_path / "lib", encoder=enc, readers=()) as old:
        old.index(tmp_path / "photos")
        assert "taken_at" not in old.catalog.fact_columns
        ids_before, vecs_before = old.vectors()
    encoded = enc.images_encoded
    with Library.open(tmp_path / "lib", encoder=enc) as lib:
        assert {"taken_at", "place_city"} <= lib.catalog.fact_columns  # added at open
        with pytest.raises(QueryError, match="no photo metadata yet") if False else _nothing():
            assert lib.search("place:Lisbon") == []  # columns there, values not read yet
        report = lib.index(tmp_path / "photos")
        assert report.backfilled == len(photos) and report.added == report.updated == 0
        assert "facts back-filled" in report.summary()
        assert enc.images_encoded == encoded  # nothing re-encoded
        ids_after, vecs_after = lib.vectors()
        np.testing.assert_array_equal(ids_before, ids_after)
        np.testing.assert_array_equal(vecs_before, vecs_after)
        assert _names(lib.search("place:Lisbon"), photos) == ["blue_lisbon", "red_lisbon"]
        assert lib.index(tmp_path / "photos").backfilled == 0  # done once


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_backfill_of_the_whole_library(tmp_path: Path) -> None:
    photos = _write(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder(), readers=()) as old:
        old.index(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.backfill_facts() == len(photos)
        assert lib.backfill_facts() == 0
        assert lib.search("camera:canon")[0].camera == "Canon EOS R5"


def test_filtered_search_matches_a_brute_force_oracle(meta_lib) -> None:
    lib, photos = meta_lib
    ids, vecs = lib.vectors()
    rng = np.random.default_rng(0)
    queries = ["after:2019", "place:Lisbon|Paris", "type:jpeg", "before:2019-09 camera:pixel", "country:JP|PT",
               "near:48.85,2.35,50km", "folder:" + str(Path(photos["red_plain"]).parent), "after:2030"]
    for text in queries:
        allowed = lib.catalog.ids_where(*filters_where(parse(text).filters))
        for _ in range(3):
            v = rng.standard_normal(lib.dim).astype(np.float32)
            v /= np.linalg.norm(v)
            hits = lib.searcher.run(parse(text), k=3, vector=v)
            keep = np.isin(ids, allowed)
            scores, want = exact_search(vecs[keep], ids[keep], v, 3) if keep.any() else (np.zeros((1, 0)),
                                                                                          np.zeros((1, 0)))
            # Photos of one colour tie exactly: compare scores, and ids as sets.
            np.testing.assert_allclose([h.score for h in hits], scores[0], atol=1e-5, err_msg=text)
            assert set(h.id for h in hits) <= set(allowed.tolist()), text
            for h in hits:
                assert float(vecs[ids == h.id][0] @ v) == pytest.approx(h.score, abs=1e-5)


# -- the web UI's filter widgets build the same typed query ----------------------------------
def test_ui_filters_date_order_status_and_details(meta_lib) -> None:
    pytest.importorskip("gradio")
    from clipsearch_ui.handlers import Handlers, Where

    lib, photos = meta_lib
    h = Handlers(lib)
    by_path = {p: n for n, p in photos.items()}
    out = h.search_text("red", 10, 0.0, "", Where.of(place="Lisbon|Tokyo"))
    assert [by_path[s["path"]] for s in out.shown] == ["red_lisbon", "red_tokyo", "blue_lisbon"]
    assert out.status.endswith("for “red” · in Lisbon or Tokyo")
    # Filters alone, no words: the photos they match, newest first, without scores.
    out = h.search_text("", 10, 0.0, "", Where.of(after="2019", camera="Pixel 7"))
    assert [by_path[s["path"]] for s in out.shown] == ["red_tokyo", "red_lisbon"]
    assert all(s["score"] is None for s in out.shown) and "after 2019" in out.status
    out = h.rerun(None, 10, 0.0, "", Where.of(types=["png"]))
    assert [by_path[s["path"]] for s in out.shown] == ["blue_lisbon"]
    # Newest first among the relevant photos; the status says so.
    cutoff = sorted(x.score for x in lib.search("red", k=20))[-4] - 1e-6
    out = h.search_text(f"red min:{cutoff}", 10, 0.0, "", Where.of(newest=True))
    assert [by_path[s["path"]] for s in out.shown] == ["red_tokyo", "red_lisbon", "red_paris", "red_plain"]
    assert "newest first" in out.status
    bad = h.search_text("red", 10, 0.0, "", Where.of(after="June"))
    assert bad.shown == [] and "June" in bad.status
    # The photo panel: when (and from what), where, with what.
    details = h.photo(lib.catalog.find_path(photos["red_lisbon"]).id).details
    assert "taken 2019-07-04 18:30 (UTC+01:00)" in details and "Lisbon, Portugal" in details
    assert "Google Pixel 7" in details
    plain = h.photo(lib.catalog.find_path(photos["red_plain"]).id).details
    assert "taken 2016-01-01 12:00 — date from the file name" in plain
    # Image search with the widgets' filters.
    like = h.more_like(lib.catalog.find_path(photos["red_lisbon"]).id, None, 5, 0.0, "", Where.of(place="Paris"))
    assert {by_path[s["path"]] for s in like.shown} == {"red_paris", "yellow_paris"}


@pytest.mark.parametrize("kind", ["flat", "ivfsq8"])
def test_every_filtered_path_against_brute_force(tmp_path: Path, kind: str) -> None:
    """Narrow (exact over stored vectors), middling (id selector) and broad (deeper search, filtered after) sets."""
    from clipsearch.catalog import NewImage
    from clipsearch.index import recall_at_k
    from clipsearch.search import BROAD_FILTER, EXACT_FILTER_MAX

    n, dim = 8000, 16
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    enc = FakeEncoder()
    enc.dim = dim
    lib = Library.open(tmp_path / "lib", encoder=enc)
    lib.catalog.add_images([NewImage(f"/x/{i}.jpg", 1, 0, vecs[i], facts={"taken_ts": float(i)}) for i in range(n)])
    lib.rebuild_index(index_kind=kind)
    ids, stored = lib.vectors()
    queries = rng.standard_normal((20, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    middling = (EXACT_FILTER_MAX + BROAD_FILTER * n) / 2 / n
    assert EXACT_FILTER_MAX < middling * n < BROAD_FILTER * n  # the id selector's range
    for fraction in (EXACT_FILTER_MAX / 2 / n, middling, BROAD_FILTER + 0.1, 0.9):
        first = int(n * (1 - fraction))
        allowed = lib.catalog.ids_where("taken_ts >= ?", [float(first)])
        assert len(allowed) == n - first
        mask = np.isin(ids, allowed)
        _, truth = exact_search(stored[mask], ids[mask], queries, 10)
        found = np.stack([lib.searcher.nearest(q, 10, allowed)[1][0] for q in queries])
        assert np.isin(found[found >= 0], allowed).all()
        recall = recall_at_k(found, truth, 10)
        assert recall == 1.0 if kind == "flat" else recall >= 0.9, (kind, fraction, recall)
    lib.close()


def test_http_api_takes_the_query_language(meta_lib) -> None:
    pytest.importorskip("fastapi")
    from clipsearch_ui.api import ApiError, PhotoApi

    lib, photos = meta_lib
    api = PhotoApi(lib)
    out = api.search("red place:Lisbon sort:date min:-1", 10, 0, None)
    assert [h.taken_at for h in out.hits] == ["2020-01-02T12:00:00+00:00", "2019-07-04T18:30:00+01:00"]
    assert out.hits[1].path.endswith("red_lisbon.jpg")
    with pytest.raises(ApiError) as err:
        api.search("red colour:blue", 10, 0, None)
    assert err.value.status == 400 and "colour:" in str(err.value)
    assert api.photo(out.hits[1].id).taken_at == "2019-07-04T18:30:00+01:00"


def test_cli_says_when_the_auto_cutoff_kept_nothing(meta_lib, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from clipsearch.cli import core
    from clipsearch.cutoff import Calibration

    lib, _ = meta_lib
    lib.searcher.calibration = Calibration(0.999, 8, 7, 0.75, lib.catalog.generation, lib.encoder.name)
    monkeypatch.setattr(core, "open_library", lambda args, create=False: lib_ctx(lib))
    assert core._cmd_search(_args(["white", "sort:date"], as_json=False)) == 0
    err = capsys.readouterr().err
    assert "no results" in err and "min:auto = 0.999" in err and "min:0.3" in err
