"""Stage 4, store: a chunk of read-and-encoded files into the catalog (one transaction), then into the index.

Both executors store through `store_chunk`, chunk by chunk in listing order, so a library
built on Ray gets the catalog ids the single-machine indexer gives the same files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from clipsearch.catalog import NewImage
from clipsearch.images import decoder_stack
from clipsearch.pipeline.faults import FILE, RUNTIME, check_systematic
from clipsearch.pipeline.plan import IndexReport, SkippedFile
from clipsearch.scan import FileRecord

if TYPE_CHECKING:
    from clipsearch.catalog import Catalog, ImageRow
    from clipsearch.index import VectorIndex


@dataclass(frozen=True)
class FileResult:
    """One file through read and encode: its vector and facts, or why it was skipped and whose fault that is."""

    record: FileRecord
    vector: np.ndarray | None = None
    original_size: tuple[int, int] | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    fault: str = FILE  # clipsearch.pipeline.faults; an encode failure is RUNTIME
    times: tuple[float, ...] = ()  # a video: its frames' times, one row of `vector` each

    @property
    def retry(self) -> bool:
        """Whether the failure is not the file's own: not stored, tried again next run."""
        return self.error is not None and self.fault != FILE


def store_chunk(catalog: "Catalog", index: "VectorIndex | None", results: Sequence[FileResult],
                known: "Mapping[str, ImageRow]", report: IndexReport) -> None:
    """Write `results` in one catalog transaction, then replace their old entries in `index` (None: the
    index is rebuilt later) and count them in `report`.

    Stored: the indexed files, then the files that failed by their own fault (stamped with
    the decoder stack), each in listing order. A failure that is not the file's own leaves
    its row as it was (the next run sees the file new or changed again) and is reported
    with `retry=True`. When nothing of the chunk was indexed and every file failed for the
    same runtime reason, IndexingError is raised before anything is written
    (`faults.check_systematic`). `known`: the catalog rows under the root before the run
    (`SyncPlan.known`), to tell updated files from added ones. If this raises after the
    commit, the index lags the catalog: the caller must not save it stamped with the
    catalog's generation.
    """
    encoded = [r for r in results if r.error is None]
    own = [r for r in results if r.error is not None and not r.retry]
    transient = [r for r in results if r.retry]
    if not encoded:
        check_systematic([r.error or "" for r in results if r.error is not None and r.fault == RUNTIME], len(results))
    replaced = [known[r.record.path].id for r in (*encoded, *own) if r.record.path in known]
    if replaced:
        replaced = [int(i) for i in catalog.with_frames(replaced)]  # a replaced video's frames leave with it
    new_rows = [NewImage(r.record.path, r.record.size, r.record.mtime_ns, r.vector, *(r.original_size or (None, None)),
                         facts=r.facts, times=r.times) for r in encoded]
    with catalog.transaction():
        ids = catalog.add_images(new_rows)
        catalog.add_failures([(r.record.path, r.record.size, r.record.mtime_ns, r.error or "unknown error")
                              for r in own], stack=decoder_stack())
    if index is not None:
        if replaced:
            index.remove(np.array(replaced, dtype=np.int64))
        if new_rows:
            index.add(np.array(ids, dtype=np.int64),
                      np.concatenate([np.atleast_2d(np.asarray(im.vector, np.float32)) for im in new_rows]))
    for r in encoded:
        if r.record.path in known:
            report.updated += 1
        else:
            report.added += 1
    report.skipped.extend(SkippedFile(r.record.path, r.error or "unknown error") for r in own)
    report.skipped.extend(SkippedFile(r.record.path, r.error or "unknown error", retry=True) for r in transient)


__all__ = ["FileResult", "store_chunk"]
