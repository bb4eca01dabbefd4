"""Filters resolved in memory (`clipsearch.filter_columns`) give exactly the ids the SQL gives, and stay fresh."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder

from clipsearch import Library
from clipsearch.catalog import Catalog, NewImage
from clipsearch.filter_columns import FilterColumns
from clipsearch.index import IdSet, build_index, exact_search
from clipsearch.index.choose import spec_for
from clipsearch.places import fold
from clipsearch.query import Filters, Near, distance_km, filters_where, parse

DIM = 8
# (path, facts): accents, brands, lenses, NULLs, folders whose names share a prefix, the antimeridian, a pole.
_PHOTOS = [
    ("/p/a/b/1.jpg", dict(taken_ts=1.5e9, city="São Paulo", region="Sao Paulo", country="Brazil", cc="BR",
                          lat=-23.55, lon=-46.63, make="Canon", camera="Canon EOS 5D", lens="EF 35mm f/1.4L",
                          focal=35.0, type="jpeg")),
    ("/p/a/b/c/2.heic", dict(taken_ts=1.56e9, city="Zürich", region="Zurich", country="Switzerland", cc="CH",
                             lat=47.37, lon=8.54, make="Google", camera="Google Pixel 7", lens=None, focal=6.8,
                             focal35=24.0, type="heic")),
    ("/p/a/b2/3.jpg", dict(taken_ts=1.6e9, city="Lisbon", region="Lisbon", country="Portugal", cc="PT", lat=38.72,
                           lon=-9.14, make="Google", camera="Google Pixel 7a", lens="XF 23 mm", focal=23.0,
                           focal35=35.2, type="jpeg")),
    ("/p/a/b.jpg", dict(taken_ts=1.4e9, type="png")),  # no EXIF at all
    ("/p/ä/é.dng", dict(taken_ts=None, city="Suva", region="Central", country="Fiji", cc="FJ", lat=-18.14,
                        lon=179.95, make="SONY", camera="SONY ILCE-7M3", lens="FE 35mm F1.8", focal=35.4,
                        type="raw")),
    ("/p/ä/f.dng", dict(taken_ts=1.62e9, city="Apia", region="Upolu", country="Samoa", cc="WS", lat=-18.2,
                        lon=-179.9, focal35=35.5, type="raw")),  # at the edge of lens:35mm
    ("/q/pole.jpg", dict(taken_ts=1.7e9, lat=89.7, lon=12.0, camera="Canon EOS R5", make="Canon", type="jpeg")),
    ("/q/Pixel.jpg", dict(taken_ts=1.65e9, city="Reykjavík", region="Capital Region", country="Iceland", cc="IS",
                          lat=64.15, lon=-21.94, make="Google", camera="Google Pixel 7", lens="35mm", type="jpeg")),
    ("/q/video.mp4", dict(taken_ts=1.66e9, city="Lisbon", region="Lisbon", country="Portugal", cc="PT",
                          lat=38.7, lon=-9.1, type="video")),
]

DATES = ["2014", "2017-06", "2019-06-15", "2020", "2021-05-10T12:00", "2030"]
PLACES = ["Lisbon", "LISBOA", "lisbon", "sao paulo", "São Paulo", "zurich", "Zürich", "reykjavik", "Capital Region",
          "PT", "br", "Fiji", "Atlantis", "upolu"]
COUNTRIES = ["Portugal", "pt", "Brazil", "ch", "Iceland", "Samoa", "FR"]
CAMERAS = ["canon", "Canon EOS", "EOS 5D", "eos", "Pixel 7", "pixel 7a", "google", "sony", "ILCE", "Nikon"]
LENSES = ["35mm", "35 mm", "23mm", "ef", "xf 23", "fe 35", "f1.8", "24mm", "Summicron"]
TYPES = ["jpeg", "heic", "raw", "png", "video", "webp"]
FOLDERS = ["/p", "/p/", "/p/a/b", "/p/a/b/", "/p/a/b/c", "/p/a", "/p/ä", "/q", "/", "/nowhere", "/p/a/b.jpg"]
NEARS = [Near(38.72, -9.14, 5), Near(-18.0, 180.0, 40), Near(-18.0, -180.0, 40), Near(89.9, 0.0, 50),
         Near(47.0, 8.0, 80), Near(0.0, 0.0, 20_000), Near(38.72, -9.14, 0.001)]


def _facts(f: dict) -> dict:
    cam, make = f.get("camera"), f.get("make")
    model_key = fold(cam)
    if model_key and make and model_key.startswith(fold(make) + " "):
        model_key = model_key[len(fold(make)) + 1:]
    return {"taken_ts": f.get("taken_ts"), "place_city": f.get("city"), "place_region": f.get("region"),
            "place_country": f.get("country"), "country_code": f.get("cc"), "city_key": fold(f.get("city")),
            "region_key": fold(f.get("region")), "country_key": fold(f.get("country")), "gps_lat": f.get("lat"),
            "gps_lon": f.get("lon"), "camera": cam, "camera_key": fold(cam), "model_key": model_key,
            "lens": f.get("lens"), "lens_key": fold(f.get("lens")), "focal_length": f.get("focal"),
            "focal_length_35mm": f.get("focal35"), "file_type": f.get("type")}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("filters") / "lib"
    enc = FakeEncoder()
    enc.dim = DIM
    Library.open(folder, encoder=enc).close()  # a library: the metadata columns exist
    cat = Catalog(folder / "catalog.sqlite")
    rng = np.random.default_rng(0)
    rows = []
    for path, f in _PHOTOS:
        times = (0.0, 2.0, 4.0) if path.endswith(".mp4") else ()
        vec = rng.standard_normal((len(times) or 1, DIM)).astype(np.float32)
        rows.append(NewImage(path, 1, 0, vec if times else vec[0], facts=_facts(f), times=times))
    cat.add_images(rows)
    cat.add_failures([("/p/a/b/broken.jpg", 1, 0, "not an image")])
    # A text where a number belongs (a hand-edited or foreign catalog): SQL sorts text after every number.
    junk = cat.add_images([NewImage("/q/junk.jpg", 1, 0, rng.standard_normal(DIM).astype(np.float32),
                                    facts={"taken_ts": "yesterday", "gps_lat": "north", "gps_lon": 1.0})])
    assert junk
    yield cat
    cat.close()


def _sql_ids(cat: Catalog, filters: Filters) -> list[int]:
    return sorted(set(cat.ids_where(*filters_where(filters)).tolist()))


def _random_filters(rng: random.Random) -> Filters:
    """One to three keys set, each with one or two values: most such filters match something."""
    values = {"after": DATES, "before": DATES, "places": PLACES, "countries": COUNTRIES, "cameras": CAMERAS,
              "lenses": LENSES, "types": TYPES, "folders": FOLDERS, "near": NEARS}
    chosen = {}
    for key in rng.sample(sorted(values), rng.randint(1, 3)):
        if key in ("after", "before", "near"):
            chosen[key] = rng.choice(values[key])
        else:
            chosen[key] = tuple(rng.sample(values[key], rng.randint(1, 2)))
    return Filters(**chosen)


@pytest.mark.parametrize("few_codes, grouped_max", [(4, 256), (0, 0)])
def test_in_memory_filters_give_the_sql_ids(catalog: Catalog, few_codes: int, grouped_max: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import clipsearch.filter_columns

    # (0, 0): every match by a table lookup, every text column read row by row.
    monkeypatch.setattr(clipsearch.filter_columns, "FEW_CODES", few_codes)
    monkeypatch.setattr(clipsearch.filter_columns, "GROUPED_MAX", grouped_max)
    rng = random.Random(0)
    columns = FilterColumns(catalog)
    matched = 0
    for _ in range(1500):
        filters = _random_filters(rng)
        want = _sql_ids(catalog, filters)
        assert columns.id_set(filters).ids.tolist() == want, filters
        assert FilterColumns(catalog).id_set(filters).ids.tolist() == want, filters  # cold, the same
        matched += bool(want)
    assert matched > 500  # the comparison is not between empty sets


@pytest.mark.parametrize("text, paths", [
    ("place:sao paulo", []),  # "paulo" is a word: the filter is place:sao
    ('place:"sao paulo"', ["/p/a/b/1.jpg"]),
    ("place:ZURICH|reykjavik", ["/p/a/b/c/2.heic", "/q/Pixel.jpg"]),
    ("folder:/p/a/b", ["/p/a/b/1.jpg", "/p/a/b/broken.jpg", "/p/a/b/c/2.heic"]),
    ('camera:"eos 5d"', ["/p/a/b/1.jpg"]),
    ("lens:35mm", ["/p/a/b/1.jpg", "/p/a/b2/3.jpg", "/p/ä/é.dng", "/p/ä/f.dng", "/q/Pixel.jpg"]),
    ("near:-18.1,180,30km", ["/p/ä/f.dng", "/p/ä/é.dng"]),
    ("after:2023", ["/q/pole.jpg", "/q/junk.jpg"]),  # a text sorts after every date, as in SQL
    ("after:2021 before:2022", ["/p/ä/f.dng"]),
    ("before:2030 type:video", ["/q/video.mp4", "/q/video.mp4#t=2.000", "/q/video.mp4#t=4.000"]),
])
def test_examples(catalog: Catalog, text: str, paths: list[str]) -> None:
    got = FilterColumns(catalog).id_set(parse(text).filters)
    rows = catalog.get_images(got.ids.tolist())
    assert sorted(r.path for r in rows.values()) == sorted(paths)
    assert got.ids.tolist() == _sql_ids(catalog, parse(text).filters)


def test_a_distance_at_the_radius_is_decided_as_sql_decides_it(catalog: Catalog) -> None:
    columns = FilterColumns(catalog)
    for path, f in _PHOTOS:
        if f.get("lat") is None:
            continue
        for lat0, lon0 in ((f["lat"] + 0.013, f["lon"] - 0.021), (f["lat"] - 0.3, f["lon"] + 0.2)):
            lon0 = (lon0 + 180) % 360 - 180
            radius = distance_km(f["lat"], f["lon"], lat0, lon0)
            for r in (radius, math.nextafter(radius, 0), math.nextafter(radius, math.inf)):
                filters = Filters(near=Near(lat0, lon0, r))
                assert columns.id_set(filters).ids.tolist() == _sql_ids(catalog, filters), (path, r)


def test_the_columns_reload_when_any_process_changes_the_catalog(tmp_path: Path) -> None:
    enc = FakeEncoder()
    enc.dim = DIM
    lib = Library.open(tmp_path / "lib", encoder=enc)
    vec = np.eye(DIM, dtype=np.float32)
    ids = lib.catalog.add_images([NewImage(f"/x/{i}.jpg", 1, 0, vec[i], facts=_facts(
        {"taken_ts": 1.5e9 + i, "city": "Lisbon", "type": "jpeg"})) for i in range(4)])
    columns = FilterColumns(lib.catalog)
    lisbon = Filters(places=("lisbon",))
    assert columns.id_set(lisbon).ids.tolist() == ids
    loads = columns.loads
    assert columns.id_set(lisbon).ids.tolist() == ids and columns.loads == loads  # cached
    other = Catalog(lib.catalog.path)  # another process's connection
    other.set_facts([(ids[0], {"city_key": "porto"})])
    assert columns.id_set(lisbon).ids.tolist() == ids[1:]
    other.rename_path("/x/1.jpg", "/y/1.jpg")
    assert columns.id_set(Filters(folders=("/y",))).ids.tolist() == [ids[1]]
    other.remove_images([ids[2]])
    assert columns.id_set(lisbon).ids.tolist() == [ids[1], ids[3]]
    new = other.add_images([NewImage("/x/9.jpg", 1, 0, vec[5], facts=_facts({"city": "Lisbon"}))])
    assert columns.id_set(lisbon).ids.tolist() == [ids[1], ids[3], *new]
    other.close()
    # The searcher's own filters see it too, and search among them.
    hits = lib.searcher.run(parse("place:lisbon"), k=10, vector=vec[5])
    assert hits[0].id == new[0] and {h.id for h in hits} == {ids[1], ids[3], new[0]}
    lib.close()


def test_columns_take_in_added_rows_alone_and_still_give_the_sql_ids(tmp_path: Path) -> None:
    """A sync that only adds photos (another process's) grows the cached columns by those rows, new values and
    folders included; a write that changes rows already there makes them read again. Same ids as SQL throughout."""
    enc = FakeEncoder()
    enc.dim = DIM
    Library.open(tmp_path / "lib", encoder=enc).close()
    cat = Catalog(tmp_path / "lib" / "catalog.sqlite")
    writer = Catalog(cat.path)  # another process's connection
    rng = np.random.default_rng(1)
    half = len(_PHOTOS) // 2

    def add(photos, prefix=""):
        return writer.add_images([NewImage(prefix + path, 1, 0, rng.standard_normal((3 if path.endswith(".mp4")
                                                                                    else 1, DIM)).astype(np.float32)
                                           if path.endswith(".mp4") else rng.standard_normal(DIM).astype(np.float32),
                                           facts=_facts(f), times=(0.0, 2.0, 4.0) if path.endswith(".mp4") else ())
                                  for path, f in photos])

    def check(columns: FilterColumns, seed: int) -> None:
        r = random.Random(seed)
        for _ in range(300):
            filters = _random_filters(r)
            assert columns.id_set(filters).ids.tolist() == _sql_ids(cat, filters), filters

    add(_PHOTOS[:half])
    columns = FilterColumns(cat)
    check(columns, 0)  # every column read, from the first half
    loads = columns.loads
    add(_PHOTOS[half:])                 # new cities, cameras, lenses, types, folders, a video
    add(_PHOTOS[:3], prefix="/new")     # and values the columns already know, in new folders
    writer.add_failures([("/new/broken.jpg", 1, 0, "not an image")])
    check(columns, 1)
    assert columns.extended == 1 and columns.loads - loads <= 20  # one read of the new rows per cached column
    assert columns.id_set(Filters(folders=("/new",))).ids.tolist() == _sql_ids(cat, Filters(folders=("/new",)))
    # Rows already there changed: read again.
    ids = cat.ids_where(*filters_where(Filters(places=("lisbon",)))).tolist()
    writer.set_facts([(ids[0], {"city_key": "porto", "place_city": "Porto"})])
    check(columns, 2)
    writer.add_images([NewImage(_PHOTOS[0][0], 1, 0, rng.standard_normal(DIM).astype(np.float32),
                                facts=_facts({"taken_ts": 1.0, "city": "Oslo", "type": "png"}))])  # a replaced file
    check(columns, 3)
    writer.remove_images(ids[1:])
    check(columns, 4)
    assert columns.extended == 1
    writer.close()
    cat.close()


def test_id_set_basics() -> None:
    s = IdSet.from_ids([5, 3, 3, 9])
    assert len(s) == 3 and s.ids.tolist() == [3, 5, 9] and repr(s) == "IdSet(3 ids of 10)"
    assert s.contains(np.array([[-1, 3], [10, 9]])).tolist() == [[False, True], [False, True]]
    assert s.without(np.array([5, 100])).ids.tolist() == [3, 9] and len(s) == 3
    assert (s & IdSet.from_ids([9, 11, 3])).ids.tolist() == [3, 9]
    assert np.unpackbits(s.bitmap(), bitorder="little")[:10].nonzero()[0].tolist() == [3, 5, 9]
    with pytest.raises(ValueError, match="non-negative"):
        IdSet.from_ids([-2])


@pytest.mark.parametrize("kind", ["flat", "ivfsq8", "hnsw"])
def test_bitmap_selector_finds_what_the_batch_selector_finds(kind: str) -> None:
    rng = np.random.default_rng(1)
    n, dim = 3000, 16
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64) * 3  # ids are not positions
    index = build_index(spec_for(kind, n, dim), dim, [(ids, vecs)], train=vecs)
    index.set_search_param(8 if kind != "hnsw" else 32)
    queries = vecs[:8] + 0.1 * rng.standard_normal((8, dim)).astype(np.float32)
    for fraction in (0.01, 0.2, 0.7):
        allowed = np.sort(rng.choice(ids, int(n * fraction), replace=False))
        by_batch = index.search(queries, 10, allowed_ids=allowed)
        by_bitmap = index.search(queries, 10, allowed_ids=IdSet.from_ids(allowed))
        np.testing.assert_array_equal(by_bitmap[1], by_batch[1])
        assert np.isin(by_bitmap[1][by_bitmap[1] >= 0], allowed).all()
        if kind == "flat":
            keep = np.isin(ids, allowed)
            np.testing.assert_array_equal(by_bitmap[1], exact_search(vecs[keep], ids[keep], queries, 10)[1])
