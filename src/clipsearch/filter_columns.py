"""Filters resolved in memory: the catalog's filterable columns as numpy arrays, kept per catalog version.

`clipsearch.query.filters_where` compiles `Filters` to SQL, and SQL stays the source of
truth. But a broad filter resolved there is SQLite handing Python one id after another:
36 ms for 10 % and 166 ms for 50 % of 100,000 photos, more than the vector search itself
(docs/performance.md, "Filtered search"). `FilterColumns` holds the columns filters read
as arrays indexed by image id, each loaded the first time a filter needs it, and evaluates
the same conditions vectorised into an `IdSet`: a boolean mask over id space, which the
vector search uses as it is (a FAISS bitmap selector, one lookup per candidate).

Kept current with `Catalog.images_version`, which every writer bumps, in any process. When
the writes since the columns were read only added rows (a sync of new photos, a watcher),
the cached columns read those rows alone and grow (`extended`); a write that changed or
removed rows already there (a fact back-fill, a move, a deletion, a replaced file) drops
them all, and the next filter reads again what it needs.

Same answers as the SQL, tested against it (tests/test_filter_columns.py): every filter is
a conjunction of disjunctions of comparisons, with no negation, so a NULL, which never
satisfies a comparison in SQL, is an array value that fails every comparison here (NaN, or
the code -1 of a text column); text compares by code point, which is the order of
SQLite's BINARY collation over UTF-8; a `near:` distance within a rounding error of the
radius is recomputed with the very function SQLite calls.

Memory: 8 bytes per id for each numeric column a filter has read (taken_ts, gps_lat,
gps_lon, focal lengths) and 1, 2 or 4 for each text column (its values are codes into a
sorted vocabulary of its distinct values): 8 MB for the date of a million photos, 1 MB for
their camera.
"""
from __future__ import annotations

import bisect
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clipsearch.index.idset import IdSet
from clipsearch.query import Filters, LENS_MM, distance_km, near_box

if TYPE_CHECKING:
    from clipsearch.catalog import Catalog, ImagesVersion

__all__ = ["FilterColumns", "TextColumn"]

log = logging.getLogger(__name__)

_PATH_DIR = "path/"  # pseudo column: the folder of each path, with its trailing "/"
# Matching at most this many distinct values of a text column compares the codes with each;
# more, looks every row's code up in a table of the values (one gather, whatever their number).
FEW_CODES = 4
# A text column with at most this many distinct values (and an index) is read value by value
# from its index, ids only: 4x faster than row by row (0.8 s against 3 s for a city at 1M).
GROUPED_MAX = 256


class TextColumn:
    """A text column as codes into its sorted distinct values (-1: NULL)."""

    __slots__ = ("codes", "vocab", "index")

    def __init__(self, codes: np.ndarray, vocab: list[str]) -> None:
        self.codes = codes
        self.vocab = vocab
        self.index = {v: i for i, v in enumerate(vocab)}

    def among(self, values: Sequence[str]) -> np.ndarray:
        """Rows equal to one of `values`."""
        return self.where([self.index[v] for v in values if v in self.index])

    def where(self, codes: Sequence[int]) -> np.ndarray:
        """Rows whose code is one of `codes`."""
        codes = sorted(set(codes))
        if len(codes) <= FEW_CODES:  # a few comparisons over the codes are faster than a gather
            out = np.zeros(len(self.codes), np.bool_)
            for c in codes:
                out |= self.codes == c
            return out
        table = np.zeros(len(self.vocab) + 1, np.bool_)  # the last entry, False, is what code -1 reads
        table[codes] = True
        return table[self.codes]

    def in_range(self, lo: str, hi: str) -> np.ndarray:
        """Rows with lo <= value < hi (the vocabulary is sorted, so its codes are ranks)."""
        a, b = bisect.bisect_left(self.vocab, lo), bisect.bisect_left(self.vocab, hi)
        if a >= b:
            return np.zeros(len(self.codes), np.bool_)
        return (self.codes >= a) & (self.codes < b)


def _narrowest(codes: np.ndarray, values: int) -> np.ndarray:
    """The codes in the narrowest type that holds them: a camera or a country is one byte a photo."""
    for small in (np.int8, np.int16):
        if values <= np.iinfo(small).max:
            return codes.astype(small)
    return codes.astype(np.int32)


class FilterColumns:
    """Evaluates `Filters` over in-memory copies of a catalog's columns; same ids as `Catalog.ids_where`."""

    def __init__(self, catalog: "Catalog") -> None:
        self.catalog = catalog
        self._version: "ImagesVersion | None" = None
        self._size = 0
        self._numeric: dict[str, np.ndarray] = {}
        self._text: dict[str, TextColumn] = {}
        self._frames: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.loads = 0  # columns read from the catalog so far (for tests and logs)
        self.extended = 0  # times the cached columns took in new rows alone (rows were only added)

    # -- the cache -----------------------------------------------------------------------
    def clear(self) -> None:
        """Drop every cached column: the next filter reloads what it reads (as after a change to the catalog)."""
        self._version = None

    def _refresh(self) -> None:
        version = self.catalog.images_version
        if version == self._version:
            return
        old, size = self._version, self.catalog.max_id() + 1
        if old is not None and version.rewritten == old.rewritten and size >= self._size:
            self._extend(size)  # rows were only added (a sync of new photos, a watcher): read those alone
        else:
            self._numeric.clear()
            self._text.clear()
            self._frames = None
            self._size = size
        self._version = version

    def _extend(self, size: int) -> None:
        """Take the rows with ids from the current size up to `size` into every cached column."""
        started, start, self._size = time.perf_counter(), self._size, size
        for column, old in list(self._numeric.items()):
            arr = np.full(size, np.nan)
            arr[:start] = old
            if column in self.catalog.fact_columns:
                self._read_numeric(column, arr, since=start)
            self._numeric[column] = arr
        for column, col in list(self._text.items()):
            ids, values = self._text_rows(column, since=start)
            new = {v for v in values if v not in col.index}
            codes = np.full(size, -1, np.int32)
            if new:  # new values: the old codes move to their ranks in the new sorted vocabulary (-1 stays -1)
                vocab = sorted([*col.vocab, *new])
                rank = {v: i for i, v in enumerate(vocab)}
                codes[:start] = np.array([rank[v] for v in col.vocab] + [-1], np.int32)[col.codes]
            else:
                vocab, rank = col.vocab, col.index
                codes[:start] = col.codes
            codes[ids] = np.fromiter((rank[v] for v in values), np.int32, len(values))
            self._text[column] = TextColumn(_narrowest(codes, len(vocab)), vocab)
        self._frames = None
        self.extended += 1
        log.debug("filter columns: rows %d-%d added in %.0f ms", start, size - 1, 1000 * (time.perf_counter() - started))

    def _values(self, column: str, since: int = 0) -> tuple[np.ndarray, list[Any]]:
        started = time.perf_counter()
        ids, values = self.catalog.column_values(column, since=since)
        keep = ids < self._size  # rows added since the version was read: the next query reads them
        if not keep.all():
            ids, values = ids[keep], [v for v, k in zip(values, keep.tolist()) if k]
        self.loads += 1
        log.debug("filter column %s: %d values loaded in %.0f ms", column, len(ids),
                  1000 * (time.perf_counter() - started))
        return ids, values

    def numeric(self, column: str) -> np.ndarray:
        """The column as float64 by id: NaN for NULL (and for ids not in use), +inf for a non-number.

        SQLite orders any text or blob after every number, which +inf reproduces for the
        comparisons filters make. Current: reloaded when the catalog changed.
        """
        self._refresh()
        return self._numeric_column(column)

    def _numeric_column(self, column: str) -> np.ndarray:
        arr = self._numeric.get(column)
        if arr is None:
            arr = np.full(self._size, np.nan)
            if column in self.catalog.fact_columns:
                self._read_numeric(column, arr)
            self._numeric[column] = arr
        return arr

    def _read_numeric(self, column: str, arr: np.ndarray, since: int = 0) -> None:
        """Fill `arr` (by id) with a fact column's values of the rows from id `since` on."""
        started = time.perf_counter()
        ids, values, others = self.catalog.numeric_column(column, since=since)
        keep = ids < self._size  # rows added since the version was read: the next query reads them
        arr[ids[keep]] = values[keep]
        arr[others[others < self._size]] = math.inf
        self.loads += 1
        log.debug("filter column %s: %d values loaded in %.0f ms", column, len(ids),
                  1000 * (time.perf_counter() - started))

    def text(self, column: str) -> TextColumn:
        """The column as codes by id into its sorted distinct values; -1 for NULL, ids not in use and blobs."""
        self._refresh()
        return self._text_column(column)

    def _text_column(self, column: str) -> TextColumn:
        col = self._text.get(column)
        if col is None:
            codes = np.full(self._size, -1, np.int32)
            vocab: list[str] = []
            groups = self.catalog.text_groups(column, GROUPED_MAX) if column != _PATH_DIR else None
            if groups is not None:  # few values (a camera, a country): each one's ids from the column's index
                self.loads += 1
                vocab = sorted(v for v, _ in groups)
                rank = {v: i for i, v in enumerate(vocab)}
                for value, ids in groups:
                    codes[ids[ids < self._size]] = rank[value]
            else:
                ids, values = self._text_rows(column)
                vocab = sorted(set(values))
                index = {v: i for i, v in enumerate(vocab)}
                codes[ids] = np.fromiter((index[v] for v in values), np.int32, len(values))
            col = self._text[column] = TextColumn(_narrowest(codes, len(vocab)), vocab)
        return col

    def _text_rows(self, column: str, since: int = 0) -> tuple[np.ndarray, list[str]]:
        """(ids, text values) of a text column's rows from id `since` on, row by row (none for a column the
        catalog lacks)."""
        source = "path" if column == _PATH_DIR else column
        if source != "path" and source not in self.catalog.fact_columns:
            return np.zeros(0, np.int64), []
        ids, values = self._values(source, since)
        if column == _PATH_DIR:
            values = [v[:v.rfind("/") + 1] for v in values]
        is_text = [isinstance(v, str) for v in values]
        if not all(is_text):  # a blob never equals, nor sorts among, text
            keep = np.array(is_text, np.bool_)
            ids, values = ids[keep], [v for v, t in zip(values, is_text) if t]
        return ids, values

    def _video_frames(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame row ids, their videos' ids, mask of rows with a time): how a matching video brings its frames."""
        if self._frames is None:
            frame_ids, videos = self._values("video_id")
            has_time = np.zeros(self._size, np.bool_)
            if len(frame_ids):  # (no video, no scan of the unindexed time column)
                timed, _ = self._values("time")
                has_time[timed] = True
            video_ids = np.asarray(videos, np.int64)
            keep = (video_ids >= 0) & (video_ids < self._size)
            self._frames = frame_ids[keep], video_ids[keep], has_time
        return self._frames

    # -- filters -----------------------------------------------------------------------------
    def id_set(self, filters: Filters) -> IdSet:
        """The ids of the rows `filters` lets through: what `Catalog.ids_where(*filters_where(filters))` returns.

        Every id in use when nothing is filtered.
        """
        from clipsearch.places import fold

        self._refresh()
        mask: np.ndarray | None = None

        def both(m: np.ndarray) -> None:
            nonlocal mask
            if mask is None:
                mask = m
            else:
                mask &= m

        if filters.after is not None:
            both(self._numeric_column("taken_ts") >= filters.after.seconds)
        if filters.before is not None:
            both(self._numeric_column("taken_ts") < filters.before.seconds)
        if filters.places:
            keys = [fold(name) or "" for name in filters.places]
            codes = [name.upper() for name in filters.places if len(name) == 2 and name.isalpha()]
            m = self._text_column("city_key").among(keys) | self._text_column("region_key").among(keys) \
                | self._text_column("country_key").among(keys)
            if codes:
                m |= self._text_column("country_code").among(codes)
            both(m)
        if filters.countries:
            m = self._text_column("country_key").among([fold(name) or "" for name in filters.countries])
            codes = [name.upper() for name in filters.countries if len(name) == 2 and name.isalpha()]
            if codes:
                m |= self._text_column("country_code").among(codes)
            both(m)
        if filters.cameras:
            cam, model = self._text_column("camera_key"), self._text_column("model_key")
            m = np.zeros(self._size, np.bool_)
            for name in filters.cameras:
                key = fold(name) or ""
                m |= cam.in_range(key, key + "\uffff") | model.in_range(key, key + "\uffff")
            both(m)
        if filters.lenses:
            lens = self._text_column("lens_key")
            compact_vocab = [v.replace(" ", "") for v in lens.vocab]
            wanted: set[int] = set()
            m = np.zeros(self._size, np.bool_)
            for name in filters.lenses:
                compact = (fold(name) or "").replace(" ", "")
                wanted.update(i for i, v in enumerate(compact_vocab) if compact in v)
                mm = LENS_MM.match(name.strip())
                if mm:
                    focal = float(mm.group(1))
                    for column in ("focal_length", "focal_length_35mm"):
                        values = self._numeric_column(column)
                        m |= (values >= focal - 0.5) & (values <= focal + 0.5)
            both(m | lens.where(sorted(wanted)))
        if filters.types:
            both(self._text_column("file_type").among(list(filters.types)))
        if filters.folders:
            dirs = self._text_column(_PATH_DIR)
            m = np.zeros(self._size, np.bool_)
            for folder in filters.folders:
                folder = folder.rstrip("/") or "/"
                lo = folder if folder.endswith("/") else folder + "/"
                # A path is under the folder exactly when its own folder is (both end in "/").
                m |= dirs.in_range(lo, lo[:-1] + "0")
            both(m)
        if filters.near is not None:
            both(self._near(filters))
        if mask is None:  # nothing filtered: every id in use (every row has a path)
            mask = self._text_column(_PATH_DIR).codes >= 0
        frame_ids, videos, has_time = self._video_frames()
        if len(frame_ids):
            # A matching video's further frames match with it (its facts are on its own row).
            brought = (mask & has_time)[videos]
            mask[frame_ids[brought]] = True
        return IdSet(mask)

    def _near(self, filters: Filters) -> np.ndarray:
        near = filters.near
        assert near is not None
        lat, lon = self._numeric_column("gps_lat"), self._numeric_column("gps_lon")
        box = near_box(near)
        m = (lat >= box.lat_lo) & (lat <= box.lat_hi)
        if box.lon_lo is not None and box.lon_hi is not None:
            if box.wraps:
                m &= (lon >= box.lon_lo) | (lon <= box.lon_hi)
            else:
                m &= (lon >= box.lon_lo) & (lon <= box.lon_hi)
        rows = np.flatnonzero(m)
        if not len(rows):
            return m
        p1, p2 = np.radians(lat[rows]), math.radians(near.lat)
        dp, dl = p2 - p1, np.radians(near.lon - lon[rows])
        a = np.sin(dp / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(dl / 2) ** 2
        with np.errstate(invalid="ignore"):
            d = 2 * 6371.0088 * np.arcsin(np.minimum(1.0, np.sqrt(a)))
        inside = d <= near.radius_km
        # numpy's sin and cos may differ from libm's in the last bit: at the border, ask the SQL's own function.
        border = np.flatnonzero(np.abs(d - near.radius_km) <= 1e-9 * max(near.radius_km, 1.0))
        for j in border.tolist():
            exact = distance_km(float(lat[rows[j]]), float(lon[rows[j]]), near.lat, near.lon)
            inside[j] = exact is not None and exact <= near.radius_km
        out = np.zeros(self._size, np.bool_)
        out[rows[inside]] = True
        return out
