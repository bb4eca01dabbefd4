"""The toy world's photos carry real EXIF: capture times with offsets, GPS in real cities, cameras."""
from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch import toyworld as tw
from clipsearch.metadata import METADATA_READER, read_metadata


def test_generated_photos_carry_their_metadata(tmp_path: Path) -> None:
    n = 40
    tw.generate(tmp_path, n, split="seen", seed=3, workers=1, progress=False)
    scenes = tw.plan_scenes(n, "seen", 3, None)
    years, cities, cameras, without = set(), set(), set(), 0
    for index, scene in enumerate(scenes):
        path = tmp_path / "images" / f"{index:06d}.jpg"
        expected = tw.photo_metadata(3, "seen", index, scene)
        facts = METADATA_READER.read(str(path), None)
        if expected is None:
            without += 1
            assert facts["taken_source"] == "mtime" and facts["camera"] is None and facts["gps_lat"] is None
            continue
        assert facts["taken_source"] == "exif"
        assert facts["taken_at"] == expected.taken.isoformat()
        assert facts["camera_model"] == expected.camera.model and facts["lens"] == expected.camera.lens
        lo, hi = {"day": (9, 16), "sunset": (18, 20), "night": (21, 23)}[scene.time]
        assert lo <= expected.taken.hour <= hi
        if expected.has_gps:
            assert facts["gps_lat"] == pytest.approx(expected.lat, abs=1e-4)
            assert facts["country_code"] == expected.city.country_code
            assert facts["city_key"] is not None
            cities.add(expected.city.name)
        else:
            assert facts["gps_lat"] is None and facts["place_city"] is None
        years.add(expected.taken.year)
        cameras.add(expected.camera.model)
    assert 0 < without < n // 3 and len(years) >= 4 and len(cities) >= 4 and len(cameras) >= 3


def test_every_toy_city_is_named_by_the_geocoder() -> None:
    from clipsearch.places import fold, reverse_geocode

    for city in tw.CITIES:
        place = reverse_geocode(city.lat + 0.01, city.lon - 0.01)
        assert place is not None and place.country_code == city.country_code
        assert fold(city.name) in (fold(place.city), fold(place.region)), (city, place)


def test_metadata_is_deterministic_and_leaves_pixels_alone(tmp_path: Path) -> None:
    tw.generate(tmp_path / "a", 6, split="test", seed=5, workers=1, progress=False)
    tw.generate(tmp_path / "b", 6, split="test", seed=5, workers=2, progress=False)
    for i in range(6):
        a, b = (tmp_path / x / "images" / f"{i:06d}.jpg" for x in "ab")
        assert a.read_bytes() == b.read_bytes()
        assert read_metadata(a).taken_at == read_metadata(b).taken_at
