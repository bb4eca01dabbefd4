"""The incremental sync: scan a folder, diff against the catalog, decode, encode, store.

Work is committed in chunks, so an interrupted run keeps what it finished and the next
run resumes with only the files still missing. The indexer returns a report; it never prints.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from clipsearch.catalog import Catalog, NewImage
from clipsearch.errors import ClipSearchError, ImageLoadError, PhotoRootError
from clipsearch.images import load_image
from clipsearch.index import VectorIndex
from clipsearch.scan import FileRecord, scan

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.encoder import Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not indexed, and why."""

    path: str
    reason: str


@dataclass
class IndexReport:
    """What one indexing run did."""

    root: str
    scanned: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    previously_failed: int = 0  # unchanged files that failed before and were not retried
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "IndexReport":
        data = dict(data)
        data["skipped"] = [SkippedFile(**s) for s in data.get("skipped", [])]
        return cls(**data)

    def summary(self) -> str:
        parts = [f"{self.added} added", f"{self.updated} updated", f"{self.removed} removed",
                 f"{self.unchanged} unchanged", f"{len(self.skipped)} skipped"]
        if self.previously_failed:
            parts.append(f"{self.previously_failed} still failing from earlier runs")
        return f"{self.root}: " + ", ".join(parts) + f" in {self.seconds:.1f}s"


@dataclass(frozen=True)
class _Decoded:
    record: FileRecord
    image: "Image.Image | None"
    error: str | None


def _under_any(path: str, folders: Sequence[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


class Indexer:
    """Syncs one folder into a catalog + index with an encoder.

    `save_index` is called periodically and at the end so a crash loses at most a few
    seconds of index work (and none of the catalog, which the index is rebuilt from).
    """

    def __init__(self, catalog: Catalog, index: VectorIndex, encoder: "Encoder", *,
                 save_index: Callable[[], None] | None = None, batch_size: int = 64, chunk_size: int = 256,
                 decode_workers: int | None = None, save_every_s: float = 30.0) -> None:
        self.catalog = catalog
        self.index = index
        self.encoder = encoder
        self.save_index = save_index or (lambda: None)
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.decode_workers = decode_workers or min(4, os.cpu_count() or 1)
        self.save_every_s = save_every_s

    def sync(self, root: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = (), progress: bool = False,
             allow_empty: bool = False) -> IndexReport:
        """Bring the catalog in line with the files under `root`; returns what changed."""
        started = time.monotonic()
        root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        report = IndexReport(root=root)
        self._index_behind = False
        found = scan(root, exclude=exclude)
        report.scanned = len(found.files)
        report.skipped.extend(SkippedFile(p, r) for p, r in found.errors)
        known = self.catalog.images_under(root)

        if not found.files and any(row.status == "ok" for row in known.values()) and not allow_empty:
            raise PhotoRootError(
                f"{root} has no photos now but {sum(r.status == 'ok' for r in known.values())} are indexed from it; "
                "is the drive unmounted? Nothing was removed. Pass --allow-empty to remove them from the library")

        on_disk = {f.path: f for f in found.files}
        # A folder we could not read is not a folder whose photos were deleted.
        unreadable = [p for p, _ in found.errors]
        gone = [row for path, row in known.items() if path not in on_disk and not _under_any(path, unreadable)]
        todo: list[FileRecord] = []
        for rec in found.files:
            row = known.get(rec.path)
            if row is None:
                todo.append(rec)
            elif row.size != rec.size or row.mtime_ns != rec.mtime_ns:
                todo.append(rec)
            elif row.status == "error":
                report.previously_failed += 1
            else:
                report.unchanged += 1

        if gone:
            gone_ids = np.array([row.id for row in gone], dtype=np.int64)
            self._index_behind = True
            self.catalog.remove_images(gone_ids)
            self.index.remove(gone_ids)
            self._index_behind = False
            report.removed = len(gone)
            log.info("removed %d files no longer under %s", len(gone), root)

        try:
            self._encode_all(todo, known, report, progress)
        except KeyboardInterrupt:
            report.interrupted = True
            raise
        finally:
            # An index that missed a committed catalog change must not be saved stamped with
            # the catalog's generation; left as it was on disk, it is reconciled at the next open.
            if (gone or todo) and not self._index_behind:
                self.save_index()
            report.seconds = time.monotonic() - started
        return report

    def _encode_all(self, todo: list[FileRecord], known: dict, report: IndexReport, progress: bool) -> None:
        if not todo:
            return
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="indexing", disable=not progress, leave=False)
        last_save = time.monotonic()
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="decode") as pool:
            for decoded in self._decoded_chunks(todo, pool):
                self._store_chunk(decoded, known, report)
                bar.update(len(decoded))
                if time.monotonic() - last_save > self.save_every_s:
                    self.save_index()
                    last_save = time.monotonic()
        bar.close()

    def _decoded_chunks(self, todo: list[FileRecord], pool: Executor) -> Iterator[list[_Decoded]]:
        # Decode chunk i+1 in the pool while chunk i is being encoded.
        target = getattr(self.encoder, "image_size", None)
        chunks = [todo[i:i + self.chunk_size] for i in range(0, len(todo), self.chunk_size)]
        pending = [pool.submit(_decode, rec, target) for rec in chunks[0]] if chunks else []
        for n in range(len(chunks)):
            current = pending
            pending = [pool.submit(_decode, rec, target) for rec in chunks[n + 1]] if n + 1 < len(chunks) else []
            yield [f.result() for f in current]

    def _store_chunk(self, decoded: list[_Decoded], known: dict, report: IndexReport) -> None:
        good = [d for d in decoded if d.image is not None]
        failures = [(d.record, d.error or "unknown error") for d in decoded if d.image is None]
        vectors, encode_failures = self._encode(good)
        failures.extend(encode_failures)
        encoded = [d for d in good if d.record.path not in {r.path for r, _ in encode_failures}]

        replaced = [known[d.record.path].id for d in encoded if d.record.path in known]
        replaced += [known[r.path].id for r, _ in failures if r.path in known]
        new_rows = [NewImage(d.record.path, d.record.size, d.record.mtime_ns, v,
                             *d.image.info.get("original_size", (None, None)))
                    for d, v in zip(encoded, vectors)]
        self._index_behind = True
        with self.catalog.transaction():
            ids = self.catalog.add_images(new_rows)
            self.catalog.add_failures([(r.path, r.size, r.mtime_ns, reason) for r, reason in failures])
        if replaced:
            self.index.remove(np.array(replaced, dtype=np.int64))
        self.index.add(np.array(ids, dtype=np.int64), vectors)
        self._index_behind = False
        for d in encoded:
            if d.record.path in known:
                report.updated += 1
            else:
                report.added += 1
        report.skipped.extend(SkippedFile(r.path, reason) for r, reason in failures)

    def _encode(self, good: list[_Decoded]) -> tuple[np.ndarray, list[tuple[FileRecord, str]]]:
        dim = self.encoder.dim
        if not good:
            return np.zeros((0, dim), np.float32), []
        try:
            return self.encoder.encode_images([d.image for d in good], batch_size=self.batch_size), []
        except ClipSearchError:
            raise
        except Exception:  # one odd image must not sink the batch: find it
            log.debug("batch encode failed; retrying one by one", exc_info=True)
        vectors, failures = [], []
        for d in good:
            try:
                vectors.append(self.encoder.encode_images([d.image])[0])
            except Exception as exc:
                failures.append((d.record, f"could not encode: {exc}"))
        return (np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)), failures


def _decode(record: FileRecord, target_size: int | None) -> _Decoded:
    try:
        image = load_image(record.path, target_size=target_size)
    except ImageLoadError as exc:
        return _Decoded(record, None, exc.reason)
    except Exception as exc:  # a loader bug must cost one file, not the run
        log.warning("unexpected error decoding %s", record.path, exc_info=True)
        return _Decoded(record, None, f"unexpected error: {exc}")
    read = image.info.get("file_stat")
    if read is not None and read != (record.size, record.mtime_ns):
        # Changed since the scan: the catalog must record the version decoded, not the one scanned.
        record = FileRecord(record.path, *read)
    return _Decoded(record, image, None)
