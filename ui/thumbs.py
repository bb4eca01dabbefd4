"""Thumbnails and previews of catalogued photos, looked up by catalog id only.

The web UI never serves a photo by path: it asks for an id, the catalog says which file
that is (and whether it is indexed), and the safe loader decodes it. Thumbnails are cached
as `LIBRARY/thumbs/<id>.jpg`; ids are never reused, so a cached thumbnail never goes stale
(a changed photo gets a new id when it is re-indexed).
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from clipsearch.errors import ImageLoadError
from clipsearch.images import load_image

if TYPE_CHECKING:
    from clipsearch.catalog import ImageRow
    from clipsearch.library import Library

log = logging.getLogger(__name__)

THUMBS_DIR = "thumbs"
THUMB_SIZE = 256
PREVIEW_SIZE = 1600
_MISSING = "missing.jpg"


class Thumbnails:
    """Makes and caches thumbnails for indexed images of one library."""

    def __init__(self, library: "Library", size: int = THUMB_SIZE) -> None:
        self.library = library
        self.size = size
        self.folder = Path(library.folder) / THUMBS_DIR
        self._lock = threading.Lock()

    def row(self, image_id: int) -> "ImageRow | None":
        """The catalog row of an indexed image; None for an unknown id or a file that failed to index."""
        row = self.library.get_image(int(image_id))
        return row if row is not None and row.status == "ok" else None

    def path(self, image_id: int) -> Path | None:
        """The thumbnail file of an indexed image (made on first use); None when the id is not indexed.

        An indexed photo that can no longer be read gets a neutral placeholder.
        """
        row = self.row(image_id)
        if row is None:
            return None
        dest = self.folder / f"{row.id}.jpg"
        if dest.exists():
            return dest
        try:
            image = load_image(row.path, target_size=self.size)
        except ImageLoadError as exc:
            log.warning("no thumbnail for %s", exc)
            return self._placeholder()
        image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        self._save(image, dest)
        return dest

    def preview(self, image_id: int, max_side: int = PREVIEW_SIZE) -> Image.Image:
        """The photo itself, decoded by the safe loader and scaled down to `max_side` for the browser."""
        row = self.row(image_id)
        if row is None:
            raise KeyError(image_id)
        image = load_image(row.path, target_size=max_side)
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return image

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
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".jpg")
            try:
                with os.fdopen(fd, "wb") as fh:
                    image.save(fh, "JPEG", quality=85)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
