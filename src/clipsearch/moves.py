"""Photos that moved, and photos that are copies: found in the plan, before anything is encoded.

Each indexed file's bytes get a content fingerprint (BLAKE2b-128, `FingerprintReader`,
read in the decode workers with the file's other facts) and its inode number. When a
sync finds files that are new to the catalog, `find_moves` matches them against the
catalogued photos of the same size:

* same inode, size and modification time as a catalogued photo: the same file under a
  new name (`mv`, a renamed folder, a renamed root on the same file system). Not a byte
  is read, so renaming a folder of 10,000 photos costs a scan and one transaction;
* otherwise the new file is hashed and compared with the stored fingerprints (a move
  across file systems, a copy, a tool that sets its own modification time).

A match whose old file is gone is a **move**: the catalog row keeps its id, vector,
metadata and labels and takes the new path. A match whose old file is still there is a
**copy**: a new row gets the old row's vector and facts, nothing is encoded. New files
with the same bytes as each other (**twins**) are encoded once: the others take the
first one's vector after it is stored. A file replaced by other bytes under the same
name is an update, never a move: only files new to the catalog are matched.

An old path outside the synced root counts as gone only when its folder is there and
the file is not (or, for an inode match, when the path is gone at all): a photo on a
drive that is merely unplugged keeps its row, as `index` keeps it.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from clipsearch.scan import FileRecord
from clipsearch.video import is_video

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.catalog import Catalog, ImageRow
    from clipsearch.index import VectorIndex

__all__ = ["FINGERPRINT", "FingerprintReader", "MovePlan", "find_moves", "fingerprint_file", "has_fingerprints",
           "store_moves", "store_twins"]

log = logging.getLogger(__name__)

FINGERPRINT_SIZE = 16  # bytes of BLAKE2b: 128 bits, collision-free for any photo library
_CHUNK = 1 << 20


def fingerprint_file(path: str | os.PathLike) -> bytes | None:
    """BLAKE2b-128 of the file's bytes, or None when it cannot be read."""
    digest = hashlib.blake2b(digest_size=FINGERPRINT_SIZE)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.digest()


class FingerprintReader:
    """The `FactReader` of content fingerprints: `fingerprint` (BLAKE2b-128 of the bytes,
    indexed) and `inode` (the file's inode number when it was read)."""

    name = "fingerprint"
    version = 1
    columns: Mapping[str, str] = {"fingerprint": "BLOB", "inode": "INTEGER"}
    indexed: Sequence[str] = ("fingerprint",)

    def read(self, path: str, image: "Image.Image | None") -> dict[str, Any]:
        try:
            inode = os.stat(path).st_ino
        except OSError:
            return {}
        return {"fingerprint": fingerprint_file(path), "inode": inode}

    def __reduce__(self) -> str:
        return "FINGERPRINT"  # one instance; workers unpickle it by name

    def __repr__(self) -> str:
        return "FingerprintReader()"


FINGERPRINT = FingerprintReader()


@dataclass
class MovePlan:
    """What `find_moves` found: (catalog row, new file, facts to set) for moves and copies; twins as (file, first)."""

    moves: list[tuple["ImageRow", FileRecord, dict[str, Any]]] = field(default_factory=list)
    copies: list[tuple["ImageRow", FileRecord, dict[str, Any]]] = field(default_factory=list)
    twins: list[tuple[FileRecord, FileRecord]] = field(default_factory=list)
    hashed: int = 0  # files read to compare fingerprints

    def __bool__(self) -> bool:
        return bool(self.moves or self.copies or self.twins)


def has_fingerprints(catalog: "Catalog") -> bool:
    """Whether the catalog has the fingerprint columns (its library reads them)."""
    return {"fingerprint", "inode"} <= set(catalog.fact_columns)


def find_moves(catalog: "Catalog", new: Sequence[FileRecord], gone: Iterable["ImageRow"]) -> MovePlan:
    """Match files new to the catalog (`new`) with catalogued photos of the same bytes.

    `gone`: the rows of the synced root whose files are gone (a match with one is a
    move). Reads no file when inode, size and mtime match; hashes the others that have a
    catalogued photo (or another new file) of the same size. Writes nothing.
    """
    out = MovePlan()
    if not new or not has_fingerprints(catalog):
        return out
    gone_ids = {row.id for row in gone}
    by_size: dict[int, list[ImageRow]] = {}
    for row in catalog.images_with_sizes({rec.size for rec in new}):
        by_size.setdefault(row.size, []).append(row)
    facts = catalog.facts([row.id for rows in by_size.values() for row in rows], ["fingerprint", "inode"])
    moved: set[int] = set()
    unmatched: list[FileRecord] = []
    for rec in sorted(new, key=lambda r: r.path):
        rows = by_size.get(rec.size, [])
        if not rows:
            unmatched.append(rec)
            continue
        try:
            inode = os.stat(rec.path).st_ino
        except OSError:
            continue  # gone since the scan: the read stage says so
        match = fingerprint = None
        for row in rows:  # the same file under another name: nothing to read
            if facts[row.id]["inode"] == inode and row.mtime_ns == rec.mtime_ns and row.id not in moved:
                match = row
                break
        if match is None:
            fingerprint = fingerprint_file(rec.path)
            out.hashed += 1
            same = [row for row in rows if fingerprint is not None and facts[row.id]["fingerprint"] == fingerprint]
            # A gone row of this root first (a move), then a row elsewhere whose file is gone, then any (a copy).
            same.sort(key=lambda row: (row.id in moved, row.id not in gone_ids, os.path.lexists(row.path), row.id))
            match = same[0] if same else None
        if match is None:
            unmatched.append(rec)
            continue
        set_facts: dict[str, Any] = {"inode": inode}
        if fingerprint is not None:
            set_facts["fingerprint"] = fingerprint
        if match.id not in moved and _is_gone(match, gone_ids, by_inode=fingerprint is None):
            moved.add(match.id)
            out.moves.append((match, rec, set_facts))
        elif is_video(rec.path):
            unmatched.append(rec)  # a copied video is encoded: its frame rows are not copied
        else:
            if fingerprint is None:
                set_facts["fingerprint"] = facts[match.id]["fingerprint"]
            out.copies.append((match, rec, set_facts))
    out.twins = _twins(unmatched, out)
    return out


def _is_gone(row: "ImageRow", gone_ids: set[int], *, by_inode: bool) -> bool:
    if row.id in gone_ids:
        return True
    if os.path.lexists(row.path):
        return False
    # Outside the synced root: the file is gone, but is its drive merely unplugged? The
    # same inode (same file system, same file) says it moved; otherwise its folder must be there.
    return by_inode or os.path.isdir(os.path.dirname(row.path))


def _twins(unmatched: list[FileRecord], out: MovePlan) -> list[tuple[FileRecord, FileRecord]]:
    """New files with the same bytes as an earlier new file: (file, the first one)."""
    sizes: dict[int, list[FileRecord]] = {}
    for rec in unmatched:
        sizes.setdefault(rec.size, []).append(rec)
    twins = []
    for group in sizes.values():
        group = [rec for rec in group if not is_video(rec.path)]  # videos are encoded, frames and all
        if len(group) < 2:
            continue
        first: dict[bytes, FileRecord] = {}
        for rec in group:
            fingerprint = fingerprint_file(rec.path)
            out.hashed += 1
            if fingerprint is None:
                continue
            if fingerprint in first:
                twins.append((rec, first[fingerprint]))
            else:
                first[fingerprint] = rec
    return twins


def store_moves(catalog: "Catalog", index: "VectorIndex | None", plan: MovePlan, dim: int) -> tuple[int, int]:
    """Write the moves and copies of `plan` (one transaction) and add the copies to `index`; (moved, copied).

    A moved row keeps its id, so the index is unchanged (and the catalog's generation
    too: the saved index stays current); `index` None: rebuilt later.
    """
    if plan.moves:
        # Not a change of what the index holds (ids and vectors stay): its saved file stays
        # current, and searches read the new paths from the catalog at once.
        with catalog.transaction(bump=False):
            catalog.move_images([(row.id, rec.path, rec.size, rec.mtime_ns, facts) for row, rec, facts in plan.moves])
    ids: list[int] = []
    if plan.copies:
        ids = catalog.copy_images([(row.id, rec.path, rec.size, rec.mtime_ns, facts) for row, rec, facts in plan.copies])
    if index is not None and ids:
        _add_copies(catalog, index, [row.id for row, _, _ in plan.copies], ids, dim)
    for row, rec, _ in plan.moves:
        log.debug("moved: %s -> %s", row.path, rec.path)
    return len(plan.moves), len(plan.copies)


def store_twins(catalog: "Catalog", index: "VectorIndex | None", twins: Sequence[tuple[FileRecord, FileRecord]],
                dim: int) -> int:
    """After the first of each group of twins is stored: the others as its copies; how many were stored.

    A twin whose first file was not indexed (it failed, or the run stopped first) is left
    for the next sync, which encodes it.
    """
    if not twins:
        return 0
    sources = {p: catalog.find_path(p) for p in {first.path for _, first in twins}}
    todo = []
    for rec, first in twins:
        row = sources.get(first.path)
        if row is None or row.status != "ok" or (row.size, row.mtime_ns) != (first.size, first.mtime_ns):
            continue
        try:
            inode = os.stat(rec.path).st_ino
        except OSError:
            continue
        todo.append((row.id, rec, {"inode": inode}))
    if not todo:
        return 0
    with catalog.transaction():
        ids = catalog.copy_images([(src, rec.path, rec.size, rec.mtime_ns, facts) for src, rec, facts in todo])
    if index is not None:
        _add_copies(catalog, index, [src for src, _, _ in todo], ids, dim)
    return len(ids)


def _add_copies(catalog: "Catalog", index: "VectorIndex", sources: Sequence[int], ids: Sequence[int],
                dim: int) -> None:
    vectors = catalog.vectors_for(sorted(set(sources)), dim)
    index.add(np.array(ids, dtype=np.int64), np.stack([vectors[s] for s in sources]).astype(np.float32))
