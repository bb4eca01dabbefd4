"""Offline reverse geocoding and name folding."""
from __future__ import annotations

import time

import numpy as np
import pytest

from clipsearch.metadata import PhotoMetadata, metadata_facts
from clipsearch.places import fold, reverse_geocode, reverse_geocode_many

pytest.importorskip("reverse_geocode")


@pytest.mark.parametrize("lat, lon, city, country, code", [
    (38.7223, -9.1393, "Lisbon", "Portugal", "PT"),           # a city centre, not a neighbourhood of it
    (40.7128, -74.0060, "New York City", "United States", "US"),
    (-33.8688, 151.2093, "Sydney", "Australia", "AU"),
    (64.1466, -21.9426, "Reykjavík", "Iceland", "IS"),
    (-23.55, -46.63, "São Paulo", "Brazil", "BR"),
    (-16.5, 179.9, None, "Fiji", "FJ"),                       # next to the date line
])
def test_known_places(lat: float, lon: float, city: str | None, country: str, code: str) -> None:
    place = reverse_geocode(lat, lon)
    assert place is not None and place.country == country and place.country_code == code
    if city:
        assert place.city == city


def test_nowhere_and_invalid() -> None:
    assert reverse_geocode(0.0, -30.0) is None               # mid-Atlantic
    assert reverse_geocode_many([(91.0, 0.0), (float("nan"), 1.0), (10.0, 200.0)]) == [None, None, None]


def test_lookup_speed() -> None:
    reverse_geocode(0.0, 0.0)  # load once
    rng = np.random.default_rng(0)
    pts = list(zip(rng.uniform(-60, 70, 5000).tolist(), rng.uniform(-180, 180, 5000).tolist()))
    start = time.perf_counter()
    out = reverse_geocode_many(pts)
    rate = len(pts) / (time.perf_counter() - start)
    assert sum(p is not None for p in out) > 1000
    assert rate > 2000  # ≥ 10,000/s on a quiet machine (docs/metadata.md); loose here for loaded CI


def test_fold() -> None:
    assert fold("São Paulo") == fold("SAO  PAULO") == "sao paulo"
    assert fold("Zürich") == "zurich" and fold("Straße") == "strasse" and fold(None) is None


def test_facts_carry_folded_places() -> None:
    facts = metadata_facts(PhotoMetadata(gps_lat=47.3769, gps_lon=8.5417, camera_make="Canon",
                                         camera_model="Canon EOS 5D", lens="EF 35mm f/2"))
    assert facts["place_city"] == "Zürich" and facts["city_key"] == "zurich" and facts["country_code"] == "CH"
    assert facts["camera"] == "Canon EOS 5D" and facts["camera_key"] == "canon eos 5d" and facts["model_key"] == "eos 5d"
