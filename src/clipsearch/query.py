"""The query language: words and arithmetic, filters on when, where and with what, order and cutoff.

One typed object, `Query`, made by one parser, `parse`, and consumed by
`clipsearch.search.Searcher.run`. The CLI, the web UI and the HTTP API all build a
`Query` (from text with `parse`, or from widgets with the dataclass fields) and never
parse on their own. `Query.to_text()` writes it back: `parse(q.to_text()) == q`.

    dog on a beach - people after:2019-06 before:2019-09 place:Lisbon country:PT
    camera:"Pixel 7" lens:35mm type:raw|heic folder:~/Pictures/2019 near:38.72,-9.14,5km
    sort:date min:0.25

Filters (`key:value`; a value with spaces in double quotes; `|` separates alternatives,
any of which may match; different keys must all match):

- ``after:DATE`` / ``before:DATE``: taken at or after the start of DATE / before its
  start. DATE is ``2019``, ``2019-06``, ``2019-06-15`` or ``2019-06-15T10:30``, on the
  photo's own clock (see `clipsearch.metadata`).
- ``place:NAME``: city, region or country name (any case, accents optional), or a
  two-letter country code; ``country:NAME`` a country name or code only.
- ``camera:NAME``: the start of the camera's name with or without its brand
  ("Pixel 7", "Canon", "EOS 5D"); ``lens:TEXT``: part of the lens name, and ``lens:35mm``
  also any photo taken at that focal length.
- ``type:TYPE``: jpeg, heic, png, webp, gif, bmp, tiff, raw, avif.
- ``folder:PATH``: under that folder.
- ``near:LAT,LON[,RADIUS]``: within RADIUS (``5km``, ``800m``, ``2mi``; default 1 km).
- ``sort:date`` (or ``sort:newest``), ``sort:oldest``, ``sort:score`` (the default with words).
- ``min:SCORE`` drops hits under a cosine score (-1 to 1); ``min:auto`` keeps the hits the model
  calibration says match (the default of the date orders).

A query of filters alone lists the matching photos newest first. Unknown keys and bad
values are `QueryError`s that name them. Other modules may add keys with
`register_key` (and terms with `clipsearch.search`'s term resolvers).

Longer than most modules on purpose: one grammar and one typed `Query` for every interface
(CLI, UI, HTTP API, Python), with the table of keys, their parsers, their errors and the SQL
each filter compiles to; split, the key table would live in two places.
"""
from __future__ import annotations

import datetime as _dt
import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from clipsearch.errors import QueryError

__all__ = [
    "AUTO", "DateBound", "FILE_TYPES", "Filters", "KEYS", "Near", "Query", "SORTS", "parse", "parse_date",
    "register_key", "filters_where", "distance_km", "LENS_MM", "NearBox", "near_box",
]

AUTO: Literal["auto"] = "auto"
SORTS: tuple[str, ...] = ("score", "newest", "oldest")
_SORT_WORDS = {"score": "score", "relevance": "score", "date": "newest", "newest": "newest", "date-desc": "newest",
               "oldest": "oldest", "date-asc": "oldest"}
FILE_TYPES: tuple[str, ...] = ("jpeg", "heic", "png", "webp", "gif", "bmp", "tiff", "raw", "avif", "video")
_TYPE_ALIASES = {"jpg": "jpeg", "heif": "heic", "tif": "tiff"}


# -- values -------------------------------------------------------------------------------
_DATE = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2}))?)?)?)?$")


@dataclass(frozen=True, order=True)
class DateBound:
    """A calendar period's start: a year, month, day or minute ("2019", "2019-06", "2019-06-15T10:30")."""

    text: str

    def __post_init__(self) -> None:
        parse_date(self.text)  # validates

    @property
    def start(self) -> _dt.datetime:
        return parse_date(self.text)

    @property
    def seconds(self) -> float:
        """The start as wall-clock seconds since 1970 (how `taken_ts` is stored)."""
        return (self.start - _dt.datetime(1970, 1, 1)).total_seconds()


def parse_date(text: str) -> _dt.datetime:
    """The start of a period written 2019, 2019-06, 2019-06-15 or 2019-06-15T10:30; QueryError otherwise."""
    m = _DATE.match(text.strip())
    if not m:
        raise QueryError(f"invalid date {text!r}: write a year, month or day like 2019, 2019-06 or 2019-06-15")
    parts = [int(g) if g else d for g, d in zip(m.groups(), (0, 1, 1, 0, 0, 0))]
    try:
        return _dt.datetime(*parts)
    except ValueError as exc:
        raise QueryError(f"invalid date {text!r}: {exc}") from None


_DISTANCE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(km|m|mi)?$", re.IGNORECASE)
_UNIT_KM = {"km": 1.0, "m": 0.001, "mi": 1.609344}


@dataclass(frozen=True)
class Near:
    """Within `radius_km` of (`lat`, `lon`), in degrees."""

    lat: float
    lon: float
    radius_km: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lat) and -90 <= self.lat <= 90):
            raise QueryError(f"near: latitude {self.lat} is not between -90 and 90")
        if not (math.isfinite(self.lon) and -180 <= self.lon <= 180):
            raise QueryError(f"near: longitude {self.lon} is not between -180 and 180")
        if not (math.isfinite(self.radius_km) and 0 < self.radius_km <= 20_050):
            raise QueryError(f"near: radius {self.radius_km} km must be more than 0 and at most 20050 km")

    def to_text(self) -> str:
        return f"{_num(self.lat)},{_num(self.lon)},{_num(self.radius_km)}km"

    @classmethod
    def parse(cls, text: str) -> "Near":
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (2, 3):
            raise QueryError(f"invalid near:{text}: write near:LAT,LON or near:LAT,LON,RADIUS like near:38.72,-9.14,5km")
        try:
            lat, lon = float(parts[0]), float(parts[1])
        except ValueError:
            raise QueryError(f"invalid near:{text}: latitude and longitude must be numbers in degrees") from None
        radius = 1.0
        if len(parts) == 3:
            m = _DISTANCE.match(parts[2])
            if not m:
                raise QueryError(f"invalid near: radius {parts[2]!r}: write it like 5km, 800m or 2mi")
            radius = float(m.group(1)) * _UNIT_KM[(m.group(2) or "km").lower()]
        return cls(lat, lon, radius)


def _num(x: float) -> str:
    return repr(float(x)).removesuffix(".0") if float(x).is_integer() else repr(float(x))


# -- filters ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    """What a photo must be to match; every field set must hold (alternatives within a field: any).

    An empty Filters matches every photo.
    """

    after: DateBound | None = None
    before: DateBound | None = None
    places: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()
    lenses: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    near: Near | None = None

    def __post_init__(self) -> None:
        for name in ("places", "countries", "cameras", "lenses", "types", "folders"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
        for name in ("after", "before"):
            value = getattr(self, name)
            if isinstance(value, (str, _dt.date)):
                object.__setattr__(self, name, DateBound(value if isinstance(value, str) else value.isoformat()))
        bad = [t for t in self.types if t not in FILE_TYPES]
        if bad:
            raise QueryError(f"unknown type {bad[0]!r}; choose from {', '.join(FILE_TYPES)}")
        for name in ("places", "countries", "cameras", "lenses", "folders"):
            if any(not v.strip() for v in getattr(self, name)):
                raise QueryError(f"empty value in {name}: give a name")

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        """The active filters in words, for status lines: "after 2019-06, place Lisbon"."""
        parts = []
        for key, value in self._pairs():
            parts.append(f"{_KEY_WORDS.get(key, key)} {value.replace('|', ' or ')}")
        return ", ".join(parts)

    def _pairs(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.after:
            out.append(("after", self.after.text))
        if self.before:
            out.append(("before", self.before.text))
        for key, attr in (("place", "places"), ("country", "countries"), ("camera", "cameras"),
                          ("lens", "lenses"), ("type", "types"), ("folder", "folders")):
            values = getattr(self, attr)
            if values:
                out.append((key, "|".join(values)))
        if self.near:
            out.append(("near", self.near.to_text()))
        return out


_KEY_WORDS = {"after": "after", "before": "before", "place": "in", "country": "country", "camera": "camera",
              "lens": "lens", "type": "type", "folder": "folder", "near": "near"}


@dataclass(frozen=True)
class Query:
    """A parsed query: the text of its words (arithmetic and all), filters, order and score cutoff.

    `text` empty means filters alone. `min_score` is a cosine score, `AUTO` (the model's
    calibrated cutoff) or None (no cutoff); `effective_min` says which applies, with date
    orders defaulting to `AUTO`.
    """

    text: str = ""
    filters: Filters = field(default_factory=Filters)
    sort: str = "score"
    min_score: float | Literal["auto"] | None = None
    extra: tuple[tuple[str, str], ...] = ()  # keys added with register_key, as (key, value)

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise QueryError(f"unknown order {self.sort!r}; choose one of {', '.join(SORTS)}")
        if self.min_score is not None and self.min_score != AUTO:
            value = float(self.min_score)
            if not (math.isfinite(value) and -1.0 <= value <= 1.0):
                raise QueryError(f"min:{self.min_score} is not a cosine score: scores run from -1 to 1 "
                                 "(min:0.25, say), or write min:auto")
            object.__setattr__(self, "min_score", value)
        object.__setattr__(self, "text", " ".join(self.text.split()))

    @property
    def has_words(self) -> bool:
        return bool(self.text)

    @property
    def effective_sort(self) -> str:
        """The order results come in: filters alone list by date, newest first, unless asked otherwise."""
        if not self.has_words and self.sort == "score":
            return "newest"
        return self.sort

    @property
    def effective_min(self) -> float | Literal["auto"] | None:
        if self.min_score is None and self.has_words and self.sort != "score":
            return AUTO
        return self.min_score

    def with_filters(self, **changes: Any) -> "Query":
        return replace(self, filters=replace(self.filters, **changes))

    def to_text(self) -> str:
        """The query as text that `parse` reads back into an equal Query."""
        parts = [self.text] if self.text else []
        for key, value in self.filters._pairs():
            parts.append(f"{key}:{_quote(value)}")
        if self.sort != "score":
            parts.append(f"sort:{'date' if self.sort == 'newest' else self.sort}")
        if self.min_score is not None:
            parts.append(f"min:{self.min_score if self.min_score == AUTO else _num(self.min_score)}")
        for key, value in self.extra:
            parts.append(f"{key}:{_quote(value)}")
        return " ".join(parts)

    def describe(self) -> str:
        """The filters, order and cutoff in words (for status lines)."""
        bits = [self.filters.describe()] if self.filters else []
        if self.effective_sort != "score":
            bits.append(f"{self.effective_sort} first")
        if self.effective_min == AUTO:
            bits.append("relevant only")
        elif self.effective_min is not None:
            bits.append(f"score ≥ {self.effective_min:g}")
        return "; ".join(b for b in bits if b)


def _quote(value: str) -> str:
    if value and not re.search(r'[\s"]', value):
        return value
    if '"' in value:
        raise QueryError(f'a filter value cannot hold a double quote: {value!r}')
    return f'"{value}"'


# -- the parser --------------------------------------------------------------------------------
# key:value or key:"quoted value", as a whole whitespace-separated token.
_FILTER = re.compile(r'(?<!\S)([A-Za-z][A-Za-z_-]+):(?:"([^"]*)"|(\S*))(?=\s|$)')

Handler = Callable[[dict[str, Any], str, str], None]
_EXTRA_KEYS: dict[str, str] = {}


def _alternatives(key: str, value: str) -> list[str]:
    out = [v.strip() for v in value.split("|")]
    if not value.strip() or any(not v for v in out):
        raise QueryError(f"{key}: needs a value, like {key}:{_EXAMPLES[key]}")
    return out


def _set_date(key: str) -> Handler:
    def handle(acc: dict[str, Any], _k: str, value: str) -> None:
        if key in acc:
            raise QueryError(f"{key}: given twice; give one {key}: date")
        acc[key] = DateBound(value.strip())
    return handle


def _add(attr: str, norm: Callable[[str], str] = str) -> Handler:
    def handle(acc: dict[str, Any], key: str, value: str) -> None:
        acc.setdefault(attr, [])
        for v in _alternatives(key, value):
            v = norm(v)
            if v not in acc[attr]:
                acc[attr].append(v)
    return handle


def _type(value: str) -> str:
    v = value.lower().lstrip(".")
    v = _TYPE_ALIASES.get(v, v)
    if v not in FILE_TYPES:
        raise QueryError(f"unknown type:{value}; choose from {', '.join(FILE_TYPES)} (several: type:raw|heic)")
    return v


def _folder(value: str) -> str:
    return os.path.abspath(os.path.expanduser(value))


def _near(acc: dict[str, Any], key: str, value: str) -> None:
    if "near" in acc:
        raise QueryError("near: given twice; give one near:LAT,LON,RADIUS")
    acc["near"] = Near.parse(value)


def _sort(acc: dict[str, Any], key: str, value: str) -> None:
    v = _SORT_WORDS.get(value.lower())
    if v is None:
        raise QueryError(f"unknown sort:{value}; choose sort:date (newest first), sort:oldest or sort:score")
    acc["sort"] = v


def _min(acc: dict[str, Any], key: str, value: str) -> None:
    if value.lower() == AUTO:
        acc["min"] = AUTO
        return
    try:
        score = float(value)
    except ValueError:
        raise QueryError(f"invalid min:{value}: give a cosine score like min:0.25, or min:auto") from None
    if not (math.isfinite(score) and -1.0 <= score <= 1.0):
        raise QueryError(f"invalid min:{value}: give a cosine score between -1 and 1, like min:0.25, or min:auto")
    acc["min"] = score


_HANDLERS: dict[str, Handler] = {
    "after": _set_date("after"), "before": _set_date("before"),
    "place": _add("places"), "country": _add("countries"), "camera": _add("cameras"), "lens": _add("lenses"),
    "type": _add("types", _type), "folder": _add("folders", _folder), "near": _near,
    "sort": _sort, "min": _min,
}
_EXAMPLES = {"after": "2019-06", "before": "2019-09", "place": "Lisbon", "country": "PT", "camera": '"Pixel 7"',
             "lens": "35mm", "type": "raw|heic", "folder": "~/Pictures/2019", "near": "38.72,-9.14,5km",
             "sort": "date", "min": "0.25"}
KEYS: tuple[str, ...] = tuple(_HANDLERS)


def register_key(key: str, example: str) -> None:
    """Let queries carry `key:value` for another feature; the pairs land in `Query.extra`, in order."""
    key = key.lower()
    if key in _HANDLERS and key not in _EXTRA_KEYS:
        raise ValueError(f"{key}: is a built-in filter key")
    _EXTRA_KEYS[key] = example
    _EXAMPLES[key] = example


def known_keys() -> tuple[str, ...]:
    return KEYS + tuple(k for k in _EXTRA_KEYS if k not in KEYS)


def parse(text: str) -> Query:
    """The `Query` a text says: its words (with their arithmetic) and its `key:value` filters.

    QueryError names an unknown key or a bad value and shows what is accepted.
    """
    acc: dict[str, Any] = {}
    extra: list[tuple[str, str]] = []
    words: list[str] = []
    pos = 0
    for m in _FILTER.finditer(text):
        key = m.group(1).lower()
        value = m.group(2) if m.group(2) is not None else m.group(3)
        if m.group(2) is None and '"' in value:
            raise QueryError(f'unbalanced double quote in {m.group(0)!r}: quote a whole value, like camera:"Pixel 7"')
        if key in _EXTRA_KEYS:
            extra.append((key, value))
        elif key in _HANDLERS:
            if not value.strip():
                raise QueryError(f"{key}: needs a value, like {key}:{_EXAMPLES[key]}")
            _HANDLERS[key](acc, key, value)
        elif value and _looks_like_filter(key, value):
            close = difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]}:?)" if close else ""
            raise QueryError(f"unknown filter {m.group(1)}: in {text.strip()!r}{hint}; known: "
                             + ", ".join(f"{k}:" for k in known_keys()))
        else:
            continue  # "http://...", "daytime: a car": plain text
        words.append(text[pos:m.start()])
        pos = m.end()
    words.append(text[pos:])
    if '"' in "".join(words):
        raise QueryError(f'unbalanced double quote in {text.strip()!r}: quote a whole value, like camera:"Pixel 7"')
    try:
        filters = Filters(
            after=acc.get("after"), before=acc.get("before"),
            **{attr: tuple(acc.get(attr, ())) for attr in ("places", "countries", "cameras", "lenses", "types",
                                                            "folders")},
            near=acc.get("near"))
    except QueryError:
        raise
    if filters.after and filters.before and filters.after.start >= filters.before.start:
        raise QueryError(f"after:{filters.after.text} is not before before:{filters.before.text}: nothing could match")
    return Query(text=" ".join("".join(words).split()), filters=filters, sort=acc.get("sort", "score"),
                 min_score=acc.get("min"), extra=tuple(extra))


def _looks_like_filter(key: str, value: str) -> bool:
    """Whether an unknown `key:value` is a mistyped filter (an error) rather than words.

    A URL is words; so is a word before a number ("purple:2", "16:9" ratios), unless the
    word is close to a filter key ("aftr:2019").
    """
    if value.startswith("//") or not key.isalpha():
        return False
    if re.fullmatch(r"[\d.,:]+", value):
        return bool(difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.7))
    return True


# -- filters as SQL ------------------------------------------------------------------------------
# lens:35mm also means a focal length of 35 mm (within half a millimetre).
LENS_MM = re.compile(r"^(\d+(?:\.\d+)?)\s*mm$", re.IGNORECASE)
_KM_PER_DEGREE = 111.19492664455873


@dataclass(frozen=True)
class NearBox:
    """The latitude and longitude bounds around a `Near` circle (what the SQL indexes can serve).

    `lon_lo`/`lon_hi` None: any longitude (the circle reaches a pole). `wraps`: the box
    crosses the antimeridian, so a longitude matches when >= lon_lo OR <= lon_hi.
    """

    lat_lo: float
    lat_hi: float
    lon_lo: float | None
    lon_hi: float | None
    wraps: bool = False


def near_box(near: Near) -> NearBox:
    """The bounding box `filters_where` narrows a `near:` filter with before measuring distances."""
    dlat = near.radius_km / _KM_PER_DEGREE
    cos = math.cos(math.radians(min(89.9, abs(near.lat) + dlat)))
    dlon = near.radius_km / (_KM_PER_DEGREE * cos) if cos > 1e-6 else 360.0
    lat_lo, lat_hi = near.lat - dlat, near.lat + dlat
    if dlon >= 180:
        return NearBox(lat_lo, lat_hi, None, None)
    lo, hi = near.lon - dlon, near.lon + dlon
    if lo < -180:
        return NearBox(lat_lo, lat_hi, lo + 360, hi, wraps=True)
    if hi > 180:
        return NearBox(lat_lo, lat_hi, lo, hi - 360, wraps=True)
    return NearBox(lat_lo, lat_hi, lo, hi)


def _prefix(column: str, value: str) -> tuple[str, list[Any]]:
    # A range on the indexed column instead of LIKE, which would scan every row.
    return f"({column} >= ? AND {column} < ?)", [value, value + "\uffff"]


def filters_where(filters: Filters) -> tuple[str, list[Any]]:
    """A SQL condition on the catalog's images table (with the metadata columns) and its parameters.

    "1" when nothing is filtered. `near` calls the SQL function `distance_km(lat, lon,
    lat0, lon0)` that the catalog registers.
    """
    from clipsearch.places import fold

    clauses: list[str] = []
    params: list[Any] = []

    def any_of(parts: list[tuple[str, list[Any]]]) -> None:
        clauses.append("(" + " OR ".join(p for p, _ in parts) + ")")
        for _, ps in parts:
            params.extend(ps)

    if filters.after is not None:
        clauses.append("taken_ts >= ?")
        params.append(filters.after.seconds)
    if filters.before is not None:
        clauses.append("taken_ts < ?")
        params.append(filters.before.seconds)
    if filters.places:
        parts = []
        for name in filters.places:
            key = fold(name) or ""
            parts += [("city_key = ?", [key]), ("region_key = ?", [key]), ("country_key = ?", [key])]
            if len(name) == 2 and name.isalpha():
                parts.append(("country_code = ?", [name.upper()]))
        any_of(parts)
    if filters.countries:
        parts = []
        for name in filters.countries:
            parts.append(("country_key = ?", [fold(name) or ""]))
            if len(name) == 2 and name.isalpha():
                parts.append(("country_code = ?", [name.upper()]))
        any_of(parts)
    if filters.cameras:
        parts = []
        for name in filters.cameras:
            key = fold(name) or ""
            parts += [_prefix("camera_key", key), _prefix("model_key", key)]
        any_of(parts)
    if filters.lenses:
        parts = []
        for name in filters.lenses:
            key = fold(name) or ""
            compact = key.replace(" ", "")
            parts.append(("(instr(replace(lens_key, ' ', ''), ?) > 0)", [compact]))
            m = LENS_MM.match(name.strip())
            if m:
                mm = float(m.group(1))
                parts.append(("(focal_length BETWEEN ? AND ?)", [mm - 0.5, mm + 0.5]))
                parts.append(("(focal_length_35mm BETWEEN ? AND ?)", [mm - 0.5, mm + 0.5]))
        any_of(parts)
    if filters.types:
        clauses.append(f"file_type IN ({','.join('?' * len(filters.types))})")
        params.extend(filters.types)
    if filters.folders:
        parts = []
        for folder in filters.folders:
            folder = folder.rstrip("/") or "/"
            lo = folder if folder.endswith("/") else folder + "/"
            parts.append(("(path >= ? AND path < ?)", [lo, lo[:-1] + "0"]))
        any_of(parts)
    if filters.near is not None:
        n = filters.near
        box = near_box(n)
        clauses.append("gps_lat BETWEEN ? AND ?")
        params += [box.lat_lo, box.lat_hi]
        if box.lon_lo is not None:
            if box.wraps:
                clauses.append("(gps_lon >= ? OR gps_lon <= ?)")
            else:
                clauses.append("gps_lon BETWEEN ? AND ?")
            params += [box.lon_lo, box.lon_hi]
        clauses.append("distance_km(gps_lat, gps_lon, ?, ?) <= ?")
        params += [n.lat, n.lon, n.radius_km]
    return (" AND ".join(clauses) if clauses else "1"), params


def distance_km(lat: float | None, lon: float | None, lat0: float, lon0: float) -> float | None:
    """Great-circle distance in km (haversine); None when a position is missing."""
    if lat is None or lon is None:
        return None
    p1, p2 = math.radians(lat), math.radians(lat0)
    dp, dl = p2 - p1, math.radians(lon0 - lon)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))
