"""Per-file facts computed while indexing: the `FactReader` seam (its final form, as built).

A feature that records something about each file (photo metadata, a content
fingerprint, a perceptual hash) writes one `FactReader` and adds it to
`default_readers()`. That is the whole change; the rest is done for it:

* **where it runs**: in the read stage (`clipsearch.pipeline.read.read_file`), in the
  decode workers of both executors: the single-machine indexer's process pool and the
  Ray path's actors (readers are pickled to them: a module-level instance or a frozen
  dataclass, cheap to construct);
* **what it gets**: `read(path, image)`, with `image` the decoded PIL image (opened by
  `clipsearch.images.load_image`, EXIF-rotated, possibly draft-reduced towards the
  model's input size at index time, towards `indexer.BACKFILL_IMAGE_SIZE` (224) in a
  back-fill, so a reader whose result must not depend on that resizes itself;
  `image.getexif()` / `image.info` may be partial; `image.info` holds "original_size"
  and "file_stat"). In a back-fill of a file that no longer decodes, `image` is None. A
  reader needing the raw bytes or the full EXIF opens `path` itself. It must never raise for anything a file contains: a fact it
  cannot read is absent or None. A reader that raises anyway is logged and contributes
  no facts for that file (its version is still recorded, so the file is not re-read at
  every run; bump the version to retry);
* **where facts go**: `read_facts` merges all readers' dicts; only the columns a reader
  declares are kept. They travel with the file (`Decoded.facts` → `FileResult.facts` →
  `NewImage.facts`; on Ray through the Parquet shards as JSON) and `Catalog.add_images`
  writes them to their columns of the `images` table in the same transaction as the
  row. bytes values are stored as BLOBs.
* **columns**: `Catalog.ensure_columns(readers)` (called by `Library.open`) adds the
  declared columns (`ALTER TABLE images ADD COLUMN`), an SQL index on each of
  `indexed` (named `images_<column>`), and one version column per reader,
  `facts_<name>_version` (`version_column(name)`), holding the reader version that last
  read each row. Column names must be SQL identifiers (letters, digits, _) and must not
  collide with the catalog's own columns or another reader's;
* **back-fill**: rows whose version column is NULL or below the reader's `version`
  (photos indexed before the reader existed, or before its version was bumped) are read
  again, decoding the file but never loading the model or re-encoding:
  `Library.backfill_facts()`, and automatically at the end of every `Library.index`
  run (and Ray run) for the rows under its root; `IndexReport.backfilled` counts them;
* **reading back**: `Catalog.facts(ids, columns) -> {id: {column: value}}`; features
  filter in SQL over their own columns (e.g. issue 13's query filters resolve to an id
  set in SQLite).

Which readers a library uses: `Library.open(..., readers=...)` (default
`default_readers()`), `Indexer(..., readers=...)`, and `index_on_ray` uses the library's.
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@runtime_checkable
class FactReader(Protocol):
    """Computes per-file facts in a decode worker. Must be picklable (a module-level
    instance or a frozen dataclass), cheap to construct, and never raise for anything a
    file contains: a fact it cannot read is simply absent (None)."""

    name: str                        # "metadata", "fingerprint", "phash"
    version: int                     # bump it and existing rows are back-filled
    columns: Mapping[str, str]       # catalog column -> SQLite type, e.g. {"taken_at": "TEXT"}
    indexed: Sequence[str]           # columns that get a SQL index

    def read(self, path: str, image: "Image.Image | None") -> dict[str, Any]:
        """Facts of the file at `path`. `image` is the decoded image when the caller has one."""
        ...


def default_readers() -> tuple[FactReader, ...]:
    """The readers a library uses unless told otherwise (each feature adds its reader here)."""
    from clipsearch.duplicates.facts import PHASH_READER
    from clipsearch.metadata import METADATA_READER
    from clipsearch.moves import FINGERPRINT

    return (PHASH_READER, METADATA_READER, FINGERPRINT)


def version_column(name: str) -> str:
    """The catalog column recording which version of reader `name` last read a row."""
    return f"facts_{name}_version"


def check_readers(readers: Sequence[FactReader]) -> tuple[FactReader, ...]:
    """`readers` as a tuple, checked: each a FactReader with identifier names, no two owning a column; ValueError."""
    out = tuple(readers)
    owner: dict[str, str] = {}
    for reader in out:
        if not isinstance(reader, FactReader):
            raise ValueError(f"{reader!r} is not a FactReader (name, version, columns, indexed, read)")
        names = [reader.name, *reader.columns]
        bad = [n for n in names if not _IDENTIFIER.match(n)]
        if bad:
            raise ValueError(f"fact reader {reader.name!r}: {bad[0]!r} is not a usable column name "
                             "(letters, digits and _ only)")
        for column in [*reader.columns, version_column(reader.name)]:
            if column in owner:
                raise ValueError(f"fact readers {owner[column]!r} and {reader.name!r} both declare column {column!r}")
            owner[column] = reader.name
        missing = [c for c in reader.indexed if c not in reader.columns]
        if missing:
            raise ValueError(f"fact reader {reader.name!r} indexes {missing[0]!r}, which is not one of its columns")
    return out


def read_facts(readers: Sequence[FactReader], path: str, image: "Image.Image | None") -> dict[str, Any]:
    """All readers' facts for one file, plus each reader's version column; a reader that raises is logged and yields no facts."""
    out: dict[str, Any] = {}
    for reader in readers:
        try:
            facts = reader.read(path, image)
        except Exception:  # a reader bug must cost its facts for one file, not the file or the run
            log.warning("fact reader %s failed on %s", reader.name, path, exc_info=True)
            facts = {}
        out.update((k, v) for k, v in facts.items() if k in reader.columns)
        out[version_column(reader.name)] = int(reader.version)
    return out


__all__ = ["FactReader", "check_readers", "default_readers", "read_facts", "version_column"]
