"""Per-photo facts duplicate detection needs: the hash, sharpness, format, metadata, capture time.

`PhashReader` is the catalog's per-file facts reader (`clipsearch.facts`): every indexed
photo gets its hash (`phash`, an indexed column) and sharpness while it is decoded for
the model, and photos indexed before it existed are back-filled by the next index run
(decoding, never re-encoding). `PhotoFacts` (a few numbers more: format, size, metadata,
capture time) are read for the members of candidate pairs only, once per file version,
and kept in the library folder (`duplicates.sqlite`, keyed by catalog id, size and
mtime); a photo whose hash the catalog lacks (a library opened without the reader) is
read the same way.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from clipsearch.duplicates.pixels import SIDE, Signature, signature_of_image
from clipsearch.images import load_image

log = logging.getLogger(__name__)

CACHE_FILE = "duplicates.sqlite"
FACTS_VERSION = 1
# Formats a camera writes; a PNG, WebP or GIF of the same picture is an export.
CAMERA_FORMATS = frozenset({"jpeg", "heic", "tiff", "raw", "avif"})
CAPTURE_SOURCES = frozenset({"exif", "exif-create"})


@dataclass(frozen=True)
class PhotoFacts:
    """What one file says about itself, for choosing a keeper and dating a shot."""

    phash: int                       # 63-bit DCT sign hash (see pixels.dct_hash)
    sharpness: float                 # variance of the Laplacian on a 256 px grey copy
    width: int                       # displayed size
    height: int
    file_type: str | None            # jpeg, png, webp, heic, ...
    file_size: int
    has_metadata: bool               # camera EXIF (capture time or camera model)
    taken_ts: float | None           # capture time (wall-clock seconds) from EXIF, else None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def bytes_per_pixel(self) -> float:
        return self.file_size / max(1, self.pixels)


def read_photo(path: str) -> tuple[Signature, PhotoFacts]:
    """Decode `path` once (EXIF rotation applied, JPEGs at reduced scale): its signature and facts."""
    from clipsearch.metadata import read_metadata

    image = load_image(path, target_size=2 * SIDE)
    sig = signature_of_image(image)
    return sig, _facts_of(path, image, sig, read_metadata(path, image))


def _facts_of(path: str, image: Image.Image, sig: Signature, meta: Any) -> PhotoFacts:
    size = meta.file_size if meta.file_size is not None else os.path.getsize(path)
    has_meta = meta.taken_source in CAPTURE_SOURCES or meta.camera_model is not None
    taken = meta.taken_ts if meta.taken_source in CAPTURE_SOURCES else None
    return PhotoFacts(sig.phash, sig.sharpness, sig.width, sig.height, meta.file_type, int(size), bool(has_meta),
                      taken)


@dataclass(frozen=True)
class PhashReader:
    """The per-file facts reader (clipsearch.facts' FactReader contract) for duplicates."""

    name: str = "phash"
    version: int = FACTS_VERSION

    @property
    def columns(self) -> dict[str, str]:
        return {"phash": "INTEGER", "sharpness": "REAL"}

    @property
    def indexed(self) -> tuple[str, ...]:
        return ("phash",)

    def read(self, path: str, image: Image.Image | None) -> dict[str, Any]:
        # The hash of a draft-reduced image is the hash of the photo: it is taken at 32 px.
        try:
            sig = signature_of_image(image) if image is not None else read_photo(path)[0]
        except Exception as exc:  # noqa: BLE001 - a reader never raises for what a file holds
            log.debug("%s: no perceptual hash (%s)", path, exc)
            return {}
        return {"phash": sig.phash, "sharpness": sig.sharpness}


PHASH_READER = PhashReader()


class FactsCache:
    """`PhotoFacts` of catalogued photos, by (id, size, mtime): a file that changed is read again."""

    _COLUMNS = tuple(f.name for f in fields(PhotoFacts))

    def __init__(self, path: str | os.PathLike | None) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:" if path is None else os.fspath(path), check_same_thread=False,
                                   isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        cols = ", ".join(f"{c} {'INTEGER' if c in ('phash', 'width', 'height', 'file_size', 'has_metadata') else 'REAL' if c in ('sharpness', 'taken_ts') else 'TEXT'}"
                         for c in self._COLUMNS)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS facts (image_id INTEGER PRIMARY KEY, size INTEGER, "
                         f"mtime_ns INTEGER, version INTEGER, {cols})")

    @classmethod
    def for_library(cls, folder: str | os.PathLike) -> "FactsCache":
        return cls(Path(folder) / CACHE_FILE)

    def close(self) -> None:
        self._db.close()

    def get(self, rows: Iterable[Any]) -> dict[int, PhotoFacts]:
        """Cached facts of catalog rows (ImageRow-like: id, size, mtime_ns) whose file is unchanged."""
        rows = list(rows)
        want = {int(r.id): (int(r.size), int(r.mtime_ns)) for r in rows}
        out: dict[int, PhotoFacts] = {}
        ids = list(want)
        with self._lock:
            for start in range(0, len(ids), 900):
                chunk = ids[start:start + 900]
                cur = self._db.execute(
                    f"SELECT image_id, size, mtime_ns, version, {', '.join(self._COLUMNS)} FROM facts "
                    f"WHERE image_id IN ({','.join('?' * len(chunk))})", chunk)
                for r in cur:
                    if (r[1], r[2]) == want[r[0]] and r[3] == FACTS_VERSION:
                        values = dict(zip(self._COLUMNS, r[4:]))
                        values["has_metadata"] = bool(values["has_metadata"])
                        out[r[0]] = PhotoFacts(**values)
        return out

    def put(self, items: Iterable[tuple[Any, PhotoFacts]]) -> None:
        marks = ",".join("?" * (4 + len(self._COLUMNS)))
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for row, facts in items:
                    values = asdict(facts)
                    values["has_metadata"] = int(values["has_metadata"])
                    self._db.execute(f"INSERT OR REPLACE INTO facts VALUES ({marks})",
                                     (int(row.id), int(row.size), int(row.mtime_ns), FACTS_VERSION,
                                      *(values[c] for c in self._COLUMNS)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
