"""The query language: parsing, errors that name the problem, round trips (Hypothesis), SQL filters."""
from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipsearch.errors import QueryError
from clipsearch.query import (
    AUTO, FILE_TYPES, DateBound, Filters, Near, Query, distance_km, filters_where, parse,
)

ISSUE_EXAMPLE = ('dog on a beach - people after:2019-06 before:2019-09 place:Lisbon country:PT '
                 'camera:"Pixel 7" lens:35mm type:raw|heic folder:/photos/2019 near:38.72,-9.14,5km '
                 'sort:date min:0.25')


def test_the_issue_example() -> None:
    q = parse(ISSUE_EXAMPLE)
    assert q.text == "dog on a beach - people"
    f = q.filters
    assert (f.after, f.before) == (DateBound("2019-06"), DateBound("2019-09"))
    assert f.places == ("Lisbon",) and f.countries == ("PT",) and f.cameras == ("Pixel 7",)
    assert f.lenses == ("35mm",) and f.types == ("raw", "heic") and f.folders == ("/photos/2019",)
    assert f.near == Near(38.72, -9.14, 5.0)
    assert q.sort == "newest" and q.min_score == 0.25
    assert parse(q.to_text()) == q


def test_defaults() -> None:
    assert parse("a red car").effective_sort == "score" and parse("a red car").effective_min is None
    assert parse("a red car sort:date").effective_min == AUTO      # date order needs a cutoff
    assert parse("a red car sort:oldest min:0.3").effective_min == 0.3
    only = parse("place:lisbon")
    assert not only.has_words and only.effective_sort == "newest"
    assert parse("after:2019 sort:oldest").effective_sort == "oldest"


@pytest.mark.parametrize("text", ["daytime: a red car in the field", "see http://example.com/a", "2:dog + 0.5:night",
                                  "purple:2 + orange", "a 16:9 photo",
                                  "#42 - snow", "a t-shirt"])
def test_words_with_colons_stay_words(text: str) -> None:
    assert parse(text).text == text and not parse(text).filters


@pytest.mark.parametrize("text, names", [
    ("dog foo:bar", ["foo:", "after:", "place:"]), ("aftr:2019", ["aftr:", "did you mean after:?"]),
    ("red plce:Lisbon", ["plce:", "did you mean place:?"]),
    ("after:2019-13", ["2019-13"]), ("before:yesterday", ["yesterday", "2019-06"]),
    ("type:gif|mov", ["mov", "raw"]), ("near:1,2,3parsecs", ["3parsecs", "5km"]), ("near:91,0", ["91"]),
    ("near:abc", ["near:abc"]), ("min:nan", ["min:nan"]), ("min:high", ["min:high", "auto"]),
    ("boat min:25", ["min:25", "-1 and 1", "min:0.25"]), ("boat min:-1.5", ["min:-1.5"]),
    ("sort:random", ["random", "sort:date"]), ('camera:"Pixel 7 dog', ["quote"]), ("place:", ["place:", "Lisbon"]),
    ("after:2020 before:2019", ["after:2020", "before:2019"]), ("after:2019 after:2020", ["after:"]),
    ("type:raw||heic", ["type:"]),
])
def test_errors_name_the_problem(text: str, names: list[str]) -> None:
    with pytest.raises(QueryError) as err:
        parse(text)
    for name in names:
        assert name in str(err.value)


def test_typed_filters_from_python() -> None:
    q = Query("a dog", Filters(after="2019-06", places="Lisbon", types=("raw",)), sort="newest")
    assert q.filters.after == DateBound("2019-06") and q.filters.places == ("Lisbon",)
    assert parse(q.to_text()) == q
    with pytest.raises(QueryError, match="unknown type 'mov'"):
        Filters(types=("mov",))
    with pytest.raises(QueryError, match="order"):
        Query("x", sort="random")
    assert "after 2019-06" in q.describe() and "in Lisbon" in q.describe() and "newest first" in q.describe()


_name = st.text(st.characters(codec="utf-8", exclude_characters='"|', exclude_categories=("Cc", "Cs", "Z")),
                min_size=1, max_size=12)
_names = st.lists(_name, max_size=3, unique=True).map(tuple)
_spaced = st.lists(st.text("abcdef XYZ", min_size=1, max_size=8).map(lambda s: " ".join(s.split())).filter(bool),
                   max_size=2, unique=True).map(tuple)
_dates = st.one_of(st.none(), st.builds(lambda y, m, d: f"{y}-{m:02d}-{d:02d}", st.integers(1900, 2100),
                                        st.integers(1, 12), st.integers(1, 28)),
                   st.integers(1900, 2100).map(str))
_words = st.lists(st.sampled_from(["dog", "beach", "a red car", "- people", "+ sunset", "2:cat", "at night"]),
                  max_size=4).map(lambda ws: " ".join(ws)).filter(lambda t: not t.startswith(("-", "+")))


@st.composite
def queries(draw: st.DrawFn) -> Query:
    after, before = draw(_dates), draw(_dates)
    if after and before and DateBound(after).start >= DateBound(before).start:
        after, before = before, after
        if DateBound(after).start >= DateBound(before).start:
            before = None
    near = draw(st.one_of(st.none(), st.builds(Near, st.floats(-90, 90), st.floats(-180, 180),
                                               st.floats(0.001, 20000))))
    filters = Filters(after=after, before=before, places=draw(_names), countries=draw(_spaced),
                      cameras=draw(_spaced), lenses=draw(_names),
                      types=tuple(draw(st.lists(st.sampled_from(FILE_TYPES), max_size=3, unique=True))),
                      folders=tuple("/" + n for n in draw(st.lists(st.text("abc", min_size=1, max_size=4),
                                                                  max_size=2, unique=True))),
                      near=near)
    return Query(draw(_words), filters, sort=draw(st.sampled_from(["score", "newest", "oldest"])),
                 min_score=draw(st.one_of(st.none(), st.just(AUTO), st.floats(-1, 1))))


@settings(max_examples=150, deadline=None)
@given(queries())
def test_round_trip(q: Query) -> None:
    assert parse(q.to_text()) == q


def _table(rows: list[dict]) -> sqlite3.Connection:
    from clipsearch.metadata import METADATA_COLUMNS

    db = sqlite3.connect(":memory:")
    db.create_function("distance_km", 4, distance_km, deterministic=True)
    cols = ", ".join(f"{n} {t}" for n, t in METADATA_COLUMNS)
    db.execute(f"CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT, {cols})")
    for i, r in enumerate(rows, 1):
        r = {"id": i, "path": f"/p/{i}.jpg", **r}
        db.execute(f"INSERT INTO images ({','.join(r)}) VALUES ({','.join('?' * len(r))})", list(r.values()))
    return db


def _ids(db: sqlite3.Connection, text: str) -> list[int]:
    where, params = filters_where(parse(text).filters)
    return [r[0] for r in db.execute(f"SELECT id FROM images WHERE {where} ORDER BY id", params)]


def test_filters_in_sql() -> None:
    from clipsearch.metadata import PhotoMetadata, metadata_facts
    from clipsearch.metadata import parse_exif_datetime, wall_seconds

    def photo(when: str, lat: float | None, lon: float | None, make: str, model: str, lens: str | None,
              focal: float | None, kind: str) -> dict:
        m = PhotoMetadata(taken_ts=wall_seconds(parse_exif_datetime(when)), gps_lat=lat, gps_lon=lon,
                          camera_make=make, camera_model=model, lens=lens, focal_length=focal, file_type=kind)
        return metadata_facts(m)

    db = _table([
        photo("2019:07:04 10:00:00", 38.7223, -9.1393, "Google", "Pixel 7", None, 6.8, "jpeg"),            # 1 Lisbon
        photo("2019:05:31 23:59:59", 41.1579, -8.6291, "Canon", "Canon EOS 5D", "EF35mm f/1.4L", 35, "raw"),  # 2 Porto
        photo("2019:09:01 00:00:00", 48.8566, 2.3522, "Apple", "iPhone 12", None, 4.2, "heic"),            # 3 Paris
        photo("2020:01:01 00:00:00", 47.3769, 8.5417, "Canon", "Canon EOS R5", "RF 50mm", 50, "raw"),     # 4 Zürich
        photo("2019:08:15 12:00:00", None, None, "Google", "Pixel 7 Pro", None, None, "jpeg"),            # 5 no GPS
    ])
    assert _ids(db, "after:2019-06 before:2019-09") == [1, 5]
    assert _ids(db, "after:2019-09") == [3, 4] and _ids(db, "before:2019-06") == [2]
    assert _ids(db, "place:lisbon") == [1] and _ids(db, "place:LISBOA|porto") == [2]
    assert _ids(db, "place:zurich") == [4] and _ids(db, "place:Zürich") == [4]
    assert _ids(db, "country:PT") == [1, 2] and _ids(db, "country:portugal") == [1, 2] and _ids(db, "place:fr") == [3]
    assert _ids(db, 'camera:"Pixel 7"') == [1, 5] and _ids(db, "camera:canon") == [2, 4]
    assert _ids(db, 'camera:"EOS 5D"') == [2] and _ids(db, 'camera:"google pixel 7 pro"') == [5]
    assert _ids(db, "lens:35mm") == [2] and _ids(db, "lens:rf") == [4] and _ids(db, "lens:4.2mm") == [3]
    assert _ids(db, "type:raw|heic") == [2, 3, 4] and _ids(db, "type:jpg") == [1, 5]
    assert _ids(db, "near:38.72,-9.14,5km") == [1] and _ids(db, "near:38.72,-9.14,300km") == [1, 2]
    assert _ids(db, "near:40,-8,1km") == []
    assert _ids(db, "folder:/p type:raw country:CH") == [4] and _ids(db, "folder:/q") == []


def test_near_across_the_date_line() -> None:
    db = _table([{"gps_lat": -16.5, "gps_lon": 179.99}, {"gps_lat": -16.5, "gps_lon": -179.99},
                 {"gps_lat": -16.5, "gps_lon": 170.0}])
    assert _ids(db, "near:-16.5,180,10km") == [1, 2]
    assert _ids(db, "near:-16.5,-179.995,5km") == [1, 2]
