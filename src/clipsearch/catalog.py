"""The library's SQLite catalog: images, their vectors, the text collection and metadata.

The catalog is the source of truth. The FAISS index is derived from the vectors stored
here and can always be rebuilt from them without re-encoding a photo.

Longer than most modules on purpose: `Catalog` is the one owner of the SQLite schema, so
every query against it (images, vectors, fact columns, texts, metadata) lives here and
nowhere else.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from clipsearch.errors import CatalogError, SchemaVersionError
from clipsearch.video import frame_path

if TYPE_CHECKING:
    from clipsearch.facts import FactReader

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# What a library must record at creation, all at once (`Catalog.create_library`).
LIBRARY_KEYS = ("model", "pretrained", "dim")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- AUTOINCREMENT: an id is never reused, so a stale index entry can't point at a new photo.
CREATE TABLE IF NOT EXISTS images (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    path       TEXT NOT NULL UNIQUE,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error      TEXT,
    width      INTEGER,
    height     INTEGER,
    indexed_at REAL NOT NULL
);
-- Files new to a sync are matched with catalogued photos of the same size (clipsearch.moves).
CREATE INDEX IF NOT EXISTS images_size ON images(size);
-- Vectors apart from the rows, so a diff over a million paths doesn't read 2 GB of floats.
CREATE TABLE IF NOT EXISTS vectors (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    vector   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS texts (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    text     TEXT NOT NULL UNIQUE,
    vector   BLOB NOT NULL,
    added_at REAL NOT NULL
);
-- Personal concepts ("bella"): a query vector made from a few example photos, usable as a
-- word in queries. Kept apart from images, so re-indexing and index rebuilds leave them be;
-- `model` is the model signature they were made with (another model cannot use them).
CREATE TABLE IF NOT EXISTS concepts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    vector     BLOB NOT NULL,
    examples   BLOB NOT NULL,
    sources    TEXT NOT NULL,
    model      TEXT NOT NULL,
    params     TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


class ImagesVersion(NamedTuple):
    """`Catalog.images_version`: the index generation, a count of writes to image rows, and a count of those
    writes that changed or removed rows already there (the others only added rows)."""

    generation: int
    changes: int
    rewritten: int


@dataclass(frozen=True)
class ImageRow:
    """One catalogued file. `status` is 'ok' (indexed) or 'error' (skipped; `error` says why)."""

    id: int
    path: str
    size: int
    mtime_ns: int
    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    indexed_at: float = 0.0


@dataclass(frozen=True)
class ConceptRow:
    """A stored concept: its query vector, its examples' vectors, where they came from, and the model used."""

    id: int
    name: str
    vector: np.ndarray
    examples: np.ndarray          # (k, dim) image vectors of the examples
    sources: list[str]            # what each example was: "#12 /photos/a.jpg" or a file path
    model: str                    # the model signature the vectors belong to
    params: dict[str, Any]        # how the vector was made, and its spread
    created_at: float


@dataclass(frozen=True)
class NewImage:
    """An image ready to be written: its file facts, its vector, and its readers' facts (see `clipsearch.facts`)."""

    path: str
    size: int
    mtime_ns: int
    vector: np.ndarray
    width: int | None = None
    height: int | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)  # column -> value, columns from ensure_columns
    # A video: the times (seconds) of its sampled frames, one row of `vector` each. The
    # video's own row holds the first frame; each further frame is a row of its own
    # (`video_id` names the video, `path` is "VIDEO#t=SECONDS"), so the index and every
    # search treat a moment like a photo (clipsearch.moments groups them back).
    times: tuple[float, ...] = ()


# The images table's own columns; every other column of it belongs to a fact reader.
_BASE_COLUMNS = frozenset({"id", "path", "size", "mtime_ns", "status", "error", "width", "height", "indexed_at",
                           "error_stack", "video_id", "time"})


_ROW_COLUMNS = "id, path, size, mtime_ns, status, error, width, height, indexed_at"


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _prefix_bounds(folder: str) -> tuple[str, str]:
    # Paths under "a/b" are exactly those in ["a/b/", "a/b0"): '0' sorts right after '/'.
    folder = folder.rstrip("/")
    return folder + "/", folder + "0"


class Catalog:
    """A library's SQLite database. Not thread-safe: use it from one thread at a time.

    It may be opened in one thread and used in another (the web UI's workers do, one at a
    time under a lock), so the connection does not insist on its creating thread.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.create_function("distance_km", 4, _distance_km, deterministic=True)  # near: filters
            self._check_schema()
            self._fact_columns = self._columns() - _BASE_COLUMNS
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"{self.path} is not a usable clipsearch catalog ({exc}); "
                               "move it aside and index again") from exc
        self._in_tx = False

    def _check_schema(self) -> None:
        has_meta = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if has_meta:
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self.path} has catalog schema version {version}, newer than this clipsearch "
                    f"understands ({SCHEMA_VERSION}); upgrade clipsearch to open it")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()
        self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('generation', '0')")

    def _add_missing_columns(self) -> None:
        """Columns added since schema 1, which older clipsearch versions ignore (they name their columns)."""
        have = {r[1] for r in self._db.execute("PRAGMA table_info(images)")}
        if "error_stack" not in have:
            # The decoder stack (images.decoder_stack) that judged a failed file: another one retries it.
            self._db.execute("ALTER TABLE images ADD COLUMN error_stack TEXT")
        if "video_id" not in have:
            # Videos: a frame row names its video (and goes with it); `time` is the frame's second.
            self._db.execute("ALTER TABLE images ADD COLUMN video_id INTEGER REFERENCES images(id) ON DELETE CASCADE")
            self._db.execute("ALTER TABLE images ADD COLUMN time REAL")
        self._db.execute("CREATE INDEX IF NOT EXISTS images_video_id ON images(video_id)")

    def close(self) -> None:
        self._db.close()

    # -- fact columns (clipsearch.facts) -----------------------------------------------
    def _columns(self) -> set[str]:
        return {r[1] for r in self._db.execute("PRAGMA table_info(images)")}

    @property
    def fact_columns(self) -> frozenset[str]:
        """The images table's columns that fact readers own (their facts and version columns)."""
        return frozenset(self._fact_columns)

    def ensure_columns(self, readers: "Sequence[FactReader]") -> None:
        """Add the readers' columns, their SQL indexes and each reader's version column where missing.

        CatalogError for a column that clashes with the catalog's own; ValueError (from
        `check_readers`) for readers that are malformed or share a column.
        """
        from clipsearch.facts import check_readers, version_column

        readers = check_readers(readers)
        have = self._columns()
        wanted: dict[str, str] = {}
        for reader in readers:
            wanted.update(reader.columns)
            wanted[version_column(reader.name)] = "INTEGER"
        clash = sorted(set(wanted) & _BASE_COLUMNS)
        if clash:
            raise CatalogError(f"fact column {clash[0]!r} is one of the catalog's own columns; rename it")
        indexes = [c for reader in readers for c in reader.indexed]
        missing = [c for c in wanted if c not in have]
        existing_indexes = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        if not missing and all(f"images_{c}" in existing_indexes for c in indexes):
            return
        with self.transaction(bump=False):
            for column in missing:
                self._db.execute(f'ALTER TABLE images ADD COLUMN "{column}" {wanted[column]}')
            for column in indexes:
                self._db.execute(f'CREATE INDEX IF NOT EXISTS "images_{column}" ON images("{column}")')
        self._fact_columns = self._columns() - _BASE_COLUMNS
        if missing:
            log.info("catalog %s: added fact columns %s", self.path, ", ".join(missing))

    def facts(self, ids: Iterable[int], columns: Sequence[str]) -> dict[int, dict[str, Any]]:
        """{id: {column: value}} of the given image ids for fact `columns` (CatalogError for an unknown column)."""
        unknown = [c for c in columns if c not in self._fact_columns]
        if unknown:
            raise CatalogError(f"the catalog {self.path} has no fact column {unknown[0]!r}; "
                               "open the library with the reader that declares it")
        ids = [int(i) for i in ids]
        cols = ", ".join(f'"{c}"' for c in columns)
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            for row in self._db.execute(f"SELECT id, {cols} FROM images WHERE id IN ({','.join('?' * len(chunk))})",
                                        chunk):
                out[row[0]] = dict(zip(columns, row[1:]))
        return out

    def ids_where(self, where: str, params: Sequence[Any] = ()) -> np.ndarray:
        """Ids of the images matching a SQL condition on the images table (see `clipsearch.query.filters_where`).

        Failed rows may be among them (they have no vector, so no search returns them):
        checking `status` would read every matching row instead of the column's index
        alone, 270x slower at 1,000 of 100,000 photos (docs/performance.md).
        """
        rows = self._db.execute(f"SELECT id FROM images WHERE ({where})", list(params))
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64)
        if self._db.execute("SELECT 1 FROM images WHERE video_id IS NOT NULL LIMIT 1").fetchone() is None:
            return ids
        # A matching video's further frames match with it (facts are stored on the video's own row).
        frames = self._db.execute(f"SELECT id FROM images WHERE video_id IN "
                                  f"(SELECT id FROM images WHERE time IS NOT NULL AND ({where}))", list(params))
        return np.concatenate([ids, np.fromiter((r[0] for r in frames), dtype=np.int64)])

    def column_values(self, column: str, *, since: int = 0) -> tuple[np.ndarray, list[Any]]:
        """(ids, values) of every image row (with an id of at least `since`) whose `column` is not NULL, in no set
        order: for in-memory filters.

        `column` is a fact column or one of path, time, video_id (CatalogError otherwise).
        An indexed column is read from its index alone.
        """
        if column not in self._fact_columns and column not in ("path", "time", "video_id"):
            raise CatalogError(f"the catalog {self.path} has no column {column!r} to filter on")
        # Only with `since`: "id >= 0" would turn SQLite from the column's covering index to the table (+45 %).
        above = " AND id >= ?" if since > 0 else ""
        rows = self._db.execute(f'SELECT id, "{column}" FROM images WHERE "{column}" IS NOT NULL{above}',
                                (int(since),) if since > 0 else ()).fetchall()
        if not rows:
            return np.zeros(0, np.int64), []
        ids, values = zip(*rows)
        return np.asarray(ids, np.int64), list(values)

    def numeric_column(self, column: str, *, since: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, float64 values) of a fact column's numbers, and the ids whose value is text or a blob (rows with
        an id of at least `since`).

        Read straight into numpy, for in-memory filters (`clipsearch.filter_columns`).
        """
        if column not in self._fact_columns:
            raise CatalogError(f"the catalog {self.path} has no fact column {column!r}")
        above, args = (" AND id >= ?", (int(since),)) if since > 0 else ("", ())
        pairs = np.fromiter(self._db.execute(
            f'SELECT id, "{column}" FROM images WHERE typeof("{column}") IN (\'real\', \'integer\'){above}', args),
            dtype=[("id", np.int64), ("value", np.float64)])
        others = np.fromiter((r[0] for r in self._db.execute(
            f'SELECT id FROM images WHERE typeof("{column}") IN (\'text\', \'blob\'){above}', args)), np.int64)
        return pairs["id"], pairs["value"], others

    def text_groups(self, column: str, max_values: int) -> list[tuple[str, np.ndarray]] | None:
        """[(value, ids)] for each distinct text value of an indexed fact column, read from its index.

        None when the column has no index of its own or more than `max_values` distinct
        values (then `column_values` reads it row by row).
        """
        if column not in self._fact_columns or self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='index' AND name=?", (f"images_{column}",)).fetchone() is None:
            return None
        values = [r[0] for r in self._db.execute(
            f'SELECT DISTINCT "{column}" FROM images WHERE "{column}" IS NOT NULL LIMIT ?', (max_values + 1,))]
        if len(values) > max_values:
            return None
        out = []
        for value in values:
            if isinstance(value, str):
                ids = np.fromiter((r[0] for r in self._db.execute(
                    f'SELECT id FROM images WHERE "{column}" = ?', (value,))), np.int64)
                out.append((value, ids))
        return out

    def max_id(self) -> int:
        """The largest image id in use (0 for an empty catalog)."""
        return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM images").fetchone()[0])

    def ordered_ids(self, where: str, params: Sequence[Any], column: str, *, descending: bool = True,
                    ids: Sequence[int] | None = None, limit: int | None = None) -> list[int]:
        """Ids of indexed images matching `where` (and among `ids` when given) ordered by fact `column`, missing values last."""
        if column not in self._fact_columns:
            raise CatalogError(f"the catalog {self.path} has no fact column {column!r}")
        if ids is not None:
            ids = [int(i) for i in ids]
            found: list[tuple[Any, int]] = []
            for start in range(0, len(ids), 900):
                chunk = ids[start:start + 900]
                found += self._db.execute(
                    f'SELECT "{column}", id FROM images WHERE status=\'ok\' AND ({where}) AND id IN '
                    f"({','.join('?' * len(chunk))})", [*params, *chunk]).fetchall()
            known = sorted((r for r in found if r[0] is not None), reverse=descending)
            order = [i for _, i in known] + sorted((i for v, i in found if v is None), reverse=descending)
            return order[:limit] if limit is not None else order
        # NULLs sort first in SQLite: descending puts them last and lets the column's index serve the order.
        sql = (f"SELECT id FROM images WHERE status='ok' AND ({where}) ORDER BY "
               + (f'"{column}" DESC, id DESC' if descending else f'"{column}" IS NULL, "{column}", id'))
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [r[0] for r in self._db.execute(sql, list(params))]

    def rows_missing_facts(self, readers: "Sequence[FactReader]", root: str | None = None) -> list[ImageRow]:
        """Indexed rows (under folder `root`, if given) that some reader has not read at its current version."""
        from clipsearch.facts import version_column

        conds = [f'("{version_column(r.name)}" IS NULL OR "{version_column(r.name)}" < ?)' for r in readers]
        if not conds:
            return []
        sql = (f"SELECT {_ROW_COLUMNS} FROM images WHERE status='ok' AND video_id IS NULL AND ({' OR '.join(conds)})")
        args: list[Any] = [int(r.version) for r in readers]
        if root is not None:
            sql += " AND path >= ? AND path < ?"
            args.extend(_prefix_bounds(root))
        return [ImageRow(*r) for r in self._db.execute(sql + " ORDER BY id", args)]

    def set_facts(self, updates: Sequence[tuple[int, Mapping[str, Any]]]) -> int:
        """Write facts of existing rows ((id, {column: value}) pairs) in one transaction; returns rows updated.

        Facts are not what the index is built from: the generation is not bumped.
        """
        done = 0
        with self.transaction(bump=False):
            for image_id, facts in updates:
                cols = self._known_facts(facts)
                if not cols:
                    continue
                sets = ", ".join(f'"{c}" = ?' for c in cols)
                done += self._db.execute(f"UPDATE images SET {sets} WHERE id = ?",
                                         [facts[c] for c in cols] + [int(image_id)]).rowcount
            if done:
                self._bump_images_version()  # not the index's business, but filters read facts
        return done

    def _known_facts(self, facts: Mapping[str, Any]) -> list[str]:
        unknown = [c for c in facts if c not in self._fact_columns]
        if unknown:
            raise CatalogError(f"no fact column {unknown[0]!r} in the catalog {self.path}: "
                               "Catalog.ensure_columns(readers) must run first")
        return list(facts)

    @contextlib.contextmanager
    def transaction(self, *, bump: bool = True) -> Iterator[None]:
        """Group writes: all of them land, or none (also on a crash).

        `bump=False` for writes that don't touch images, so the index stays current.
        """
        if self._in_tx:
            yield
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._write_error(exc) from exc
        self._in_tx = True
        try:
            yield
            if bump:
                self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
            self._db.execute("COMMIT")
        except BaseException as exc:
            # SQLite may already have rolled back (a full disk does that); a second ROLLBACK
            # would raise and hide the real error.
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    log.warning("rollback of %s failed; SQLite undoes the change when it next opens", self.path)
            if isinstance(exc, sqlite3.Error):
                raise self._write_error(exc) from exc
            raise
        finally:
            self._in_tx = False

    def _write_error(self, exc: sqlite3.Error) -> CatalogError:
        return CatalogError(f"could not write to the catalog {self.path} ({exc}); nothing of this change was "
                            "saved and what was there before is intact: free some disk space (or wait for the "
                            "other writer) and run again")

    # -- metadata -------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: Any) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        with self.transaction(bump=False):
            self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                             (key, text))

    def create_library(self, model: str, pretrained: str, dim: int) -> bool:
        """Record a new library's model, pretrained tag, vector size and schema version in one transaction.

        False (and nothing written) when the library already has a model: another
        process created it first; read its settings instead.
        """
        with self.transaction(bump=False):
            if self.get_meta("model") is not None:
                return False
            for key, value in (("model", model), ("pretrained", pretrained), ("dim", str(int(dim))),
                               ("schema_version", str(SCHEMA_VERSION))):
                self._db.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                                 "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))
        return True

    def missing_library_keys(self) -> list[str]:
        """The LIBRARY_KEYS this catalog lacks (all of them for a new one)."""
        have = {r[0] for r in self._db.execute(
            f"SELECT key FROM meta WHERE key IN ({','.join('?' * len(LIBRARY_KEYS))})", LIBRARY_KEYS)}
        return [k for k in LIBRARY_KEYS if k not in have]

    def is_empty(self) -> bool:
        """True when the catalog holds no file (indexed or failed) and no text."""
        return (self._db.execute("SELECT 1 FROM images LIMIT 1").fetchone() is None
                and self._db.execute("SELECT 1 FROM texts LIMIT 1").fetchone() is None)

    def forget_library_keys(self) -> None:
        """Drop a half-recorded creation (an older clipsearch wrote the keys one by one) from an empty catalog."""
        with self.transaction(bump=False):
            self._db.execute(f"DELETE FROM meta WHERE key IN ({','.join('?' * len(LIBRARY_KEYS))})", LIBRARY_KEYS)

    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def model_signature(self) -> str:
        """The model the stored vectors belong to, as "model/pretrained/dim": vectors of another signature don't mix."""
        return f"{self.get_meta('model')}/{self.get_meta('pretrained')}/{self.get_meta('dim')}"

    @property
    def generation(self) -> int:
        """Bumped by every committed transaction; the index records the one it matches."""
        return int(self.get_meta("generation", "0") or 0)

    # -- images ---------------------------------------------------------------------
    def images_under(self, root: str) -> dict[str, ImageRow]:
        """Every catalogued file under folder `root` (absolute), keyed by path."""
        lo, hi = _prefix_bounds(root)
        rows = self._db.execute(
            "SELECT id, path, size, mtime_ns, status, error, width, height, indexed_at FROM images "
            "WHERE path >= ? AND path < ? AND video_id IS NULL", (lo, hi))
        return {r[1]: ImageRow(*r) for r in rows}

    def ids_under(self, folder: str) -> np.ndarray:
        """Ids of indexed (status ok) images under `folder`."""
        lo, hi = _prefix_bounds(folder)
        rows = self._db.execute("SELECT id FROM images WHERE status='ok' AND path >= ? AND path < ?", (lo, hi))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def get_images(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        ids = [int(i) for i in ids]
        out: dict[int, ImageRow] = {}
        for start in range(0, len(ids), 900):  # SQLite's parameter limit
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            for r in self._db.execute(
                    f"SELECT id, path, size, mtime_ns, status, error, width, height, indexed_at FROM images "
                    f"WHERE id IN ({marks})", chunk):
                out[r[0]] = ImageRow(*r)
        return out

    def get_image(self, image_id: int) -> ImageRow | None:
        return self.get_images([image_id]).get(int(image_id))

    def find_path(self, path: str) -> ImageRow | None:
        r = self._db.execute("SELECT id, path, size, mtime_ns, status, error, width, height, indexed_at "
                             "FROM images WHERE path=?", (path,)).fetchone()
        return ImageRow(*r) if r else None

    def add_images(self, images: Sequence[NewImage]) -> list[int]:
        """Insert indexed images (replacing any row with the same path, and a replaced video's frames).

        Returns the new ids, one per vector row: a photo's id; for a video its own id then
        its further frames' ids, in time order (`NewImage.times`).
        """
        now = time.time()
        ids = []
        with self.transaction():
            self._bump_images_version(rewritten=False)
            replaced = False
            for im in images:
                replaced |= self._db.execute("DELETE FROM images WHERE path=?", (im.path,)).rowcount > 0
                facts = self._known_facts(im.facts)
                cols = "".join(f', "{c}"' for c in facts)
                vectors = np.atleast_2d(np.asarray(im.vector, np.float32)) if im.times else None
                first_time = float(im.times[0]) if im.times else None
                cur = self._db.execute(
                    f"INSERT INTO images(path, size, mtime_ns, status, width, height, indexed_at, time{cols}) "
                    f"VALUES (?, ?, ?, 'ok', ?, ?, ?, ?{', ?' * len(facts)})",
                    (im.path, im.size, im.mtime_ns, im.width, im.height, now, first_time,
                     *(im.facts[c] for c in facts)))
                video_id = int(cur.lastrowid)
                ids.append(video_id)
                self._db.execute("INSERT INTO vectors(image_id, vector) VALUES (?, ?)",
                                 (video_id, _blob(vectors[0] if vectors is not None else im.vector)))
                for t, vector in zip(im.times[1:], vectors[1:] if vectors is not None else ()):
                    cur = self._db.execute(
                        "INSERT INTO images(path, size, mtime_ns, status, width, height, indexed_at, video_id, time) "
                        "VALUES (?, ?, ?, 'ok', ?, ?, ?, ?, ?)",
                        (frame_path(im.path, t), im.size, im.mtime_ns, im.width, im.height, now, video_id, float(t)))
                    ids.append(int(cur.lastrowid))
                    self._db.execute("INSERT INTO vectors(image_id, vector) VALUES (?, ?)", (cur.lastrowid, _blob(vector)))
            if replaced:
                self._bump_counter("images_rewritten")
        return ids

    # -- videos ---------------------------------------------------------------------
    def with_frames(self, ids: Iterable[int]) -> np.ndarray:
        """`ids` plus the ids of the frame rows of those that are videos (what leaves the index with them)."""
        ids = [int(i) for i in ids]
        out = list(ids)
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            out.extend(r[0] for r in self._db.execute(
                f"SELECT id FROM images WHERE video_id IN ({','.join('?' * len(chunk))})", chunk))
        return np.array(out, dtype=np.int64)

    def moments(self, ids: Iterable[int]) -> dict[int, tuple[int, float]]:
        """{id: (video id, seconds)} for those of `ids` that are video frames (a video's own row included)."""
        ids = [int(i) for i in ids]
        out: dict[int, tuple[int, float]] = {}
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            for image_id, video_id, t in self._db.execute(
                    f"SELECT id, video_id, time FROM images WHERE time IS NOT NULL "
                    f"AND id IN ({','.join('?' * len(chunk))})", chunk):
                out[int(image_id)] = (int(video_id) if video_id is not None else int(image_id), float(t))
        return out

    def frames_of(self, video_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, seconds) of every frame of a video, in time order (its own row first)."""
        rows = self._db.execute("SELECT id, time FROM images WHERE (id = ? OR video_id = ?) AND time IS NOT NULL "
                                "ORDER BY time", (int(video_id), int(video_id))).fetchall()
        return np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.float64)

    def count_videos(self) -> tuple[int, int]:
        """(videos, their frame rows beyond each video's first) among the indexed files."""
        videos = self._db.execute("SELECT COUNT(*) FROM images WHERE time IS NOT NULL AND video_id IS NULL "
                                  "AND status='ok'").fetchone()[0]
        frames = self._db.execute("SELECT COUNT(*) FROM images WHERE video_id IS NOT NULL").fetchone()[0]
        return int(videos), int(frames)

    def add_failures(self, failures: Sequence[tuple[str, int, int, str]], *, stack: str | None = None) -> None:
        """Record files that could not be indexed as (path, size, mtime_ns, reason), so they aren't retried until they change.

        `stack`: the decoder stack that judged them (`images.decoder_stack()`); a sync run
        by another stack tries them again (`failures_from_other_stack`).
        """
        now = time.time()
        with self.transaction():
            self._bump_images_version(rewritten=False)
            replaced = False
            for path, size, mtime_ns, reason in failures:
                replaced |= self._db.execute("DELETE FROM images WHERE path=?", (path,)).rowcount > 0
                self._db.execute(
                    "INSERT INTO images(path, size, mtime_ns, status, error, indexed_at, error_stack) "
                    "VALUES (?, ?, ?, 'error', ?, ?, ?)", (path, size, mtime_ns, reason, now, stack))
            if replaced:
                self._bump_counter("images_rewritten")

    def failures_from_other_stack(self, root: str, stack: str) -> set[str]:
        """Paths under `root` stored as failed by a decoder stack other than `stack` (or an unknown one)."""
        lo, hi = _prefix_bounds(root)
        rows = self._db.execute(
            "SELECT path FROM images WHERE status='error' AND path >= ? AND path < ? "
            "AND (error_stack IS NULL OR error_stack != ?)", (lo, hi, stack))
        return {r[0] for r in rows}

    def remove_images(self, ids: Iterable[int]) -> int:
        ids = [int(i) for i in ids]
        with self.transaction():
            self._bump_images_version()
            for start in range(0, len(ids), 900):
                chunk = ids[start:start + 900]
                self._db.execute(f"DELETE FROM images WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        return len(ids)

    def rename_path(self, old: str, new: str) -> bool:
        """Record that the file catalogued at `old` now lives at `new` (moved, same bytes): no re-encoding.

        Returns False when `old` is not catalogued. A row already at `new` (a stale one) is
        replaced. The index is unaffected (ids stay), so the generation is not bumped.
        """
        with self.transaction(bump=False):
            if self._db.execute("SELECT 1 FROM images WHERE path=?", (old,)).fetchone() is None:
                return False
            if old != new:
                self._db.execute("DELETE FROM images WHERE path=?", (new,))
                self._bump_images_version()
                self._db.execute("UPDATE images SET path=? WHERE path=?", (new, old))
                # A video's frame rows follow it ("OLD#t=..." becomes "NEW#t=...").
                self._db.execute("UPDATE images SET path = ? || substr(path, ?) WHERE video_id = "
                                 "(SELECT id FROM images WHERE path = ?)", (new, len(old) + 1, new))
        return True

    def images_with_sizes(self, sizes: Iterable[int]) -> list[ImageRow]:
        """Indexed (status ok) images whose file has one of `sizes` bytes: the candidates a new file may be a copy of."""
        sizes = sorted({int(s) for s in sizes})
        out: list[ImageRow] = []
        for start in range(0, len(sizes), 900):
            chunk = sizes[start:start + 900]
            out.extend(ImageRow(*r) for r in self._db.execute(
                "SELECT id, path, size, mtime_ns, status, error, width, height, indexed_at FROM images "
                f"WHERE status='ok' AND video_id IS NULL AND size IN ({','.join('?' * len(chunk))}) ORDER BY id",
                chunk))
        return out

    def move_images(self, moves: Sequence[tuple[int, str, int, int, Mapping[str, Any]]]) -> None:
        """Give images a new path: (id, path, size, mtime_ns, {fact column: value}). Ids, vectors and
        every other column stay: a moved photo keeps its metadata and labels; a moved video's
        frame rows follow it."""
        with self.transaction():
            self._bump_images_version()
            for image_id, path, size, mtime_ns, facts in moves:
                old = self._db.execute("SELECT path FROM images WHERE id = ?", (int(image_id),)).fetchone()
                self._db.execute("DELETE FROM images WHERE path=? AND id != ?", (path, int(image_id)))
                sets = "".join(f', "{c}" = ?' for c in facts)
                self._db.execute(f"UPDATE images SET path = ?, size = ?, mtime_ns = ?{sets} WHERE id = ?",
                                 (path, size, mtime_ns, *facts.values(), int(image_id)))
                if old is not None:  # "OLD#t=..." becomes "NEW#t=..."
                    self._db.execute("UPDATE images SET path = ? || substr(path, ?), size = ?, mtime_ns = ? "
                                     "WHERE video_id = ?", (path, len(old[0]) + 1, size, mtime_ns, int(image_id)))

    def copy_images(self, copies: Sequence[tuple[int, str, int, int, Mapping[str, Any]]]) -> list[int]:
        """New images that are copies of indexed ones, (source id, path, size, mtime_ns, {fact column:
        value}): each takes its source's vector and other columns. Returns the new ids."""
        fixed = {"id", "path", "size", "mtime_ns", "indexed_at"}
        now = time.time()
        ids = []
        with self.transaction():
            columns = [r[1] for r in self._db.execute("PRAGMA table_info(images)") if r[1] not in fixed]
            self._bump_images_version(rewritten=False)
            replaced = False
            for source, path, size, mtime_ns, facts in copies:
                replaced |= self._db.execute("DELETE FROM images WHERE path=?", (path,)).rowcount > 0
                kept = "".join(f', "{c}"' for c in columns if c not in facts)
                given = "".join(f', "{c}"' for c in facts)
                cur = self._db.execute(
                    f"INSERT INTO images(path, size, mtime_ns, indexed_at{kept}{given}) "
                    f"SELECT ?, ?, ?, ?{kept}{', ?' * len(facts)} FROM images WHERE id = ?",
                    (path, size, mtime_ns, now, *facts.values(), int(source)))
                new_id = int(cur.lastrowid)
                self._db.execute("INSERT INTO vectors(image_id, vector) SELECT ?, vector FROM vectors WHERE image_id = ?",
                                 (new_id, int(source)))
                ids.append(new_id)
            if replaced:
                self._bump_counter("images_rewritten")
        return ids

    def count(self, status: str | None = "ok") -> int:
        if status is None:
            return int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM images WHERE status=?", (status,)).fetchone()[0])

    def failures(self, limit: int | None = None) -> list[ImageRow]:
        sql = ("SELECT id, path, size, mtime_ns, status, error, width, height, indexed_at FROM images "
               "WHERE status='error' ORDER BY path")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [ImageRow(*r) for r in self._db.execute(sql)]

    def ok_ids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self._db.execute("SELECT id FROM images WHERE status='ok' ORDER BY id")),
                           dtype=np.int64)

    def iter_vectors(self, dim: int, batch: int = 8192, ids: Sequence[int] | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stored image vectors as (ids, vectors) blocks, optionally only for `ids`."""
        if ids is not None:
            ids = [int(i) for i in ids]
            for start in range(0, len(ids), 900):
                chunk = ids[start:start + 900]
                rows = self._db.execute(
                    f"SELECT image_id, vector FROM vectors WHERE image_id IN ({','.join('?' * len(chunk))}) "
                    "ORDER BY image_id", chunk).fetchall()
                if rows:
                    yield self._unpack(rows, dim)
            return
        last = -1
        while True:
            rows = self._db.execute("SELECT image_id, vector FROM vectors WHERE image_id > ? ORDER BY image_id LIMIT ?",
                                    (last, batch)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield self._unpack(rows, dim)

    @staticmethod
    def _unpack(rows: list[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, vecs

    def vectors_of(self, ids: Sequence[int] | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the given image ids that have vectors (all when None), by id."""
        blocks = list(self.iter_vectors(dim, ids=ids))
        if not blocks:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])

    def vectors_for(self, ids: Sequence[int], dim: int) -> dict[int, np.ndarray]:
        """The same as `vectors_of`, keyed by id."""
        found, vecs = self.vectors_of(ids, dim)
        return dict(zip(found.tolist(), vecs))

    # -- texts ----------------------------------------------------------------------
    def add_texts(self, texts: Sequence[str], vectors: np.ndarray) -> int:
        """Add texts to the collection, skipping ones already there; returns how many were new."""
        now = time.time()
        added = 0
        with self.transaction(bump=False):
            for text, vec in zip(texts, vectors):
                cur = self._db.execute("INSERT OR IGNORE INTO texts(text, vector, added_at) VALUES (?, ?, ?)",
                                       (text, _blob(vec), now))
                added += cur.rowcount
            if added:
                self._bump_texts_version()
        return added

    def _bump_images_version(self, rewritten: bool = True) -> None:
        """Inside a writer's transaction. `rewritten`: rows already there changed or went, not only new ones came
        (ids only grow: AUTOINCREMENT), so a cache that adds new rows to what it holds must drop it instead."""
        self._bump_counter("images_version")
        if rewritten:
            self._bump_counter("images_rewritten")

    @property
    def images_version(self) -> ImagesVersion:
        """Changes with every write to any image row (by any process): what caches of image columns key on.

        The generation alone does not: fact and path updates leave it be, since the index
        does not change with them. `rewritten` changes only when rows already there changed
        or went: while it stays, the rows above the largest id a cache read are all it lacks.
        """
        rows = dict(self._db.execute(
            "SELECT key, value FROM meta WHERE key IN ('generation', 'images_version', 'images_rewritten')").fetchall())
        return ImagesVersion(int(rows.get("generation", 0) or 0), int(rows.get("images_version", 0) or 0),
                             int(rows.get("images_rewritten", 0) or 0))

    def _bump_texts_version(self) -> None:
        self._bump_counter("texts_version")

    def _bump_counter(self, key: str) -> None:
        """Add one to a meta counter (inside the caller's transaction): another process's caches see the change."""
        self._db.execute("INSERT INTO meta(key, value) VALUES (?, '1') "
                         "ON CONFLICT(key) DO UPDATE SET value=CAST(value AS INTEGER) + 1", (key,))

    @property
    def texts_version(self) -> int:
        """Bumped by every change to the text collection (by any process): for caches of it."""
        return int(self.get_meta("texts_version", "0") or 0)

    def remove_texts(self, texts: Sequence[str]) -> int:
        removed = 0
        with self.transaction(bump=False):
            for text in texts:
                removed += self._db.execute("DELETE FROM texts WHERE text=?", (text,)).rowcount
            if removed:
                self._bump_texts_version()
        return removed

    def texts(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT text FROM texts ORDER BY id")]

    def text_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM texts").fetchone()[0])

    def text_vectors(self, dim: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        rows = self._db.execute("SELECT id, text, vector FROM texts ORDER BY id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vecs = (np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), dim)
                if rows else np.zeros((0, dim), np.float32))
        return ids, [r[1] for r in rows], vecs

    # -- concepts -------------------------------------------------------------------
    def put_concept(self, name: str, vector: np.ndarray, examples: np.ndarray, sources: Sequence[str], model: str,
                    params: dict[str, Any], *, replace: bool = False) -> bool:
        """Store a concept; False (and nothing written) if `name` exists and not `replace`."""
        with self.transaction(bump=False):
            exists = self._db.execute("SELECT 1 FROM concepts WHERE name=?", (name,)).fetchone()
            if exists and not replace:
                return False
            self._db.execute("DELETE FROM concepts WHERE name=?", (name,))
            self._db.execute(
                "INSERT INTO concepts(name, vector, examples, sources, model, params, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, _blob(vector), _blob(examples), json.dumps(list(sources)), model, json.dumps(params),
                 time.time()))
            self._bump_concepts_version()
        return True

    def remove_concept(self, name: str) -> bool:
        with self.transaction(bump=False):
            removed = self._db.execute("DELETE FROM concepts WHERE name=?", (name,)).rowcount
            if removed:
                self._bump_concepts_version()
        return bool(removed)

    def concepts(self, dim: int) -> list[ConceptRow]:
        """Every stored concept, by name."""
        rows = self._db.execute("SELECT id, name, vector, examples, sources, model, params, created_at "
                                "FROM concepts ORDER BY name").fetchall()
        return [ConceptRow(r[0], r[1], np.frombuffer(r[2], np.float32).copy(),
                           np.frombuffer(r[3], np.float32).reshape(-1, dim).copy(), json.loads(r[4]), r[5],
                           json.loads(r[6]), r[7]) for r in rows]

    def _bump_concepts_version(self) -> None:
        self._bump_counter("concepts_version")

    @property
    def concepts_version(self) -> int:
        """Bumped by every change to the concepts (by any process): for caches of them."""
        return int(self.get_meta("concepts_version", "0") or 0)

def _distance_km(lat: float | None, lon: float | None, lat0: float, lon0: float) -> float | None:
    from clipsearch.query import distance_km

    return distance_km(lat, lon, lat0, lon0)
