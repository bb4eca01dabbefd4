"""Thumbnails and previews of catalogued photos, looked up by catalog id only.

The web UI and the HTTP API never serve a photo by path: they ask for an id, the catalog
says which file that is (and whether it is indexed), and the safe loader decodes it.
Thumbnails are made lazily, for the photos a page actually shows, and cached as
`LIBRARY/thumbs/<id>.jpg` (the default size) or `LIBRARY/thumbs/<size>/<id>.jpg`; ids are
never reused, so a cached thumbnail never goes stale (a changed photo gets a new id when
it is re-indexed). The cache is bounded: past `max_bytes`, the least recently made
thumbnails are deleted (they are made again when shown).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from PIL import Image, ImageDraw

from clipsearch.atomic import atomic_writer
from clipsearch.errors import ImageLoadError
from clipsearch.video import load_picture  # a photo, or a video's frame

if TYPE_CHECKING:
    from clipsearch.catalog import ImageRow
    from clipsearch.library import Library

log = logging.getLogger(__name__)

THUMBS_DIR = "thumbs"
THUMB_SIZE = 256
# The sizes the API makes (a size asked for is rounded up to one of these): a few, so the cache stays small.
THUMB_SIZES = (128, 256, 512, 1024)
PREVIEW_SIZE = 1600
MAX_CACHE_BYTES = 2 * 1024**3
_TRIM_EVERY = 500  # new thumbnails between two checks of the cache's size
_MISSING = "missing.jpg"


def snap_size(size: int | None) -> int:
    """The cached size used for a requested one: the smallest of THUMB_SIZES at least as big (capped at the largest)."""
    if size is None:
        return THUMB_SIZE
    return next((s for s in THUMB_SIZES if s >= int(size)), THUMB_SIZES[-1])


class Thumbnails:
    """Makes and caches thumbnails for indexed images of one library."""

    def __init__(self, library: "Library", size: int = THUMB_SIZE, *, max_bytes: int = MAX_CACHE_BYTES) -> None:
        self.library = library
        self.size = size
        self.max_bytes = max_bytes
        self.folder = Path(library.folder) / THUMBS_DIR
        self._lock = threading.Lock()
        self._made = 0

    def row(self, image_id: int) -> "ImageRow | None":
        """The catalog row of an indexed image; None for an unknown id or a file that failed to index."""
        row = self.library.get_image(int(image_id))
        return row if row is not None and row.status == "ok" else None

    def cached(self, image_id: int, size: int | None = None) -> Path:
        """Where the thumbnail of `image_id` at `size` is (or will be) cached."""
        size = snap_size(size or self.size)
        folder = self.folder if size == self.size else self.folder / str(size)
        return folder / f"{int(image_id)}.jpg"

    def path(self, image_id: int, size: int | None = None) -> Path | None:
        """The thumbnail file of an indexed image (made on first use); None when the id is not indexed.

        An indexed photo that can no longer be read gets a neutral placeholder.
        """
        row = self.row(image_id)
        if row is None:
            return None
        return self.path_for(row, size)

    def path_for(self, row: "ImageRow", size: int | None = None) -> Path:
        """The thumbnail of a catalog row known to be indexed (made on first use)."""
        size = snap_size(size or self.size)
        dest = self.cached(row.id, size)
        if dest.exists():
            return dest
        try:
            image = load_picture(row.path, target_size=size)
        except ImageLoadError as exc:
            log.warning("no thumbnail for %s", exc)
            return self._placeholder()
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        self._save(image, dest)
        return dest

    def warm(self, ids: Iterable[int], *, lock: "contextlib.AbstractContextManager | None" = None,
             pause: float = 0.002) -> int:
        """Make the missing default-size thumbnails of `ids` in the background (resting twice as long as
        each took, at least `pause` s); returns how many were made. `lock` guards the catalog."""
        made = 0
        for image_id in ids:
            if self.cached(int(image_id)).exists():
                continue
            with lock or contextlib.nullcontext():
                row = self.row(int(image_id))
            if row is None:
                continue
            started = time.perf_counter()
            self.path_for(row)
            made += 1
            # At most a third of one core: searches and the page's own thumbnails come first.
            time.sleep(max(pause, 2 * (time.perf_counter() - started)))
        return made

    def preview(self, image_id: int, max_side: int = PREVIEW_SIZE) -> Image.Image:
        """The photo itself, decoded by the safe loader and scaled down to `max_side` for the browser."""
        row = self.row(image_id)
        if row is None:
            raise KeyError(image_id)
        image = load_picture(row.path, target_size=max_side)
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return image

    def trim(self) -> int:
        """Delete the oldest thumbnails until the cache is under 90 % of `max_bytes`; returns how many went."""
        files = []
        for path in self.folder.rglob("*.jpg"):
            try:
                st = path.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        if total <= self.max_bytes:
            return 0
        removed = 0
        for _, size, path in sorted(files):
            if total <= self.max_bytes * 0.9:
                break
            if path.name == _MISSING:
                continue
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        log.info("thumbnail cache over %d bytes: removed %d old thumbnails", self.max_bytes, removed)
        return removed

    def _placeholder(self) -> Path:
        dest = self.folder / _MISSING
        if not dest.exists():
            image = Image.new("RGB", (self.size, self.size), (228, 228, 231))
            draw = ImageDraw.Draw(image)
            c, r = self.size // 2, self.size // 6
            draw.line([(c - r, c - r), (c + r, c + r)], fill=(160, 160, 168), width=6)
            draw.line([(c - r, c + r), (c + r, c - r)], fill=(160, 160, 168), width=6)
            self._save(image, dest)
        return dest

    def _save(self, image: Image.Image, dest: Path) -> None:
        # Written to a temp file and renamed, so a reader never sees half a JPEG.
        with self._lock:
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with atomic_writer(dest, "wb", durable=False) as fh:  # a cache: no fsync
                image.save(fh, "JPEG", quality=85)
            self._made += 1
            trim = self._made % _TRIM_EVERY == 0
        if trim:
            self.trim()
