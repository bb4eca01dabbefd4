"""The incremental sync: scan a folder, diff against the catalog, decode, encode, store.

Work is committed in chunks, so an interrupted run keeps what it finished and the next
run resumes with only the files still missing. The indexer returns a report; it never prints.

Decoding a camera JPEG costs a third as much CPU as encoding it with ViT-B/32 even at
1/8 scale (as much, at full size with the usual resize), so files are decoded in worker
processes (`clipsearch.workers`: they never run the caller's `__main__`, and a decoder
crash costs one file, not the run), a bounded window ahead of the encoder, straight to the
model's input pixels when the encoder can take them (`pixel_spec` / `encode_pixels`), else
to PIL images for `encode_images`.

Only a file's own faults are remembered in the catalog (not an image, truncated, corrupt,
unsupported, over a cap, a decoder that crashes on its bytes twice), stamped with the
decoder stack that judged it (`images.decoder_stack`): a later Pillow, pillow-heif, rawpy or
clipsearch tries the file again. Everything else (a worker killed from outside or by the
OOM killer, a timeout, an encoder or runtime error, a file that could not be read right
now) is reported with `retry=True` and tried again by the next run; the same runtime
failure on every file of a batch stops the run (`IndexingError`) with nothing recorded.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from clipsearch.catalog import Catalog, NewImage
from clipsearch.errors import ClipSearchError, ImageLoadError, IndexingError, PhotoRootError
from clipsearch.images import PixelSpec, decoder_stack, load_image, to_pixels
from clipsearch.index import VectorIndex
from clipsearch.scan import FileRecord, scan
from clipsearch.workers import WorkerDied, WorkerPool, WorkerStartError, WorkerTimeout, describe_exit

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.encoder import Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not indexed, and why.

    `retry`: the failure was not the file's own (a worker killed from outside, a timeout,
    an encoder error, a read error): nothing was recorded and the next run tries it again.
    Otherwise the catalog remembers it until the file, or the decoder stack, changes.
    """

    path: str
    reason: str
    retry: bool = False


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
    waiting: int = 0  # new or changed files held back (still being written): the next sync takes them
    skipped: list[SkippedFile] = field(default_factory=list)
    unmounted: list[str] = field(default_factory=list)  # drives mounted inside the root at the last sync, not now
    seconds: float = 0.0
    interrupted: bool = False
    attempted: int = 0  # files this run tried to decode and encode
    retried_failures: int = 0  # stored failures tried again (--retry-failed, or a new decoder stack)

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
        retry = sum(s.retry for s in self.skipped)
        if retry:
            parts[-1] += f" ({retry} to be tried again next run)"
        if self.previously_failed:
            parts.append(f"{self.previously_failed} still failing from earlier runs (--retry-failed tries them again)")
        if self.waiting:
            parts.append(f"{self.waiting} still being written")
        if self.interrupted:
            parts.append("stopped early")
        return f"{self.root}: " + ", ".join(parts) + f" in {self.seconds:.1f}s"

    @property
    def all_failed(self) -> bool:
        """True when the run tried files and every file under the root failed: none is indexed (the CLI exits 1).

        One new broken photo in a library of good ones is not this: it is skipped and
        remembered, and the run succeeds.
        """
        return self.attempted > 0 and self.added + self.updated + self.unchanged == 0


# Below this many files a sync decodes in threads: starting worker processes costs more.
PROCESS_MIN_FILES = 16
# A file whose decoder crashed (SIGSEGV, SIGABRT...) on its bytes in two fresh processes:
# remembered, with the decoder stack, so that a fixed Pillow/pillow-heif/rawpy tries it again.
DECODER_CRASHED = "the decoder crashed on this file's bytes twice ({how}); it is tried again when the decoders are upgraded"
DECODER_KILLED = "the decoder process {how} while reading this file (out of memory, or killed from outside)"
DECODE_TIMEOUT_S = 300.0
DECODE_TIMED_OUT = "decoding took longer than {seconds:g} s; the decoder was stopped"
# Whose fault a failure is. FILE: the bytes' (remembered). READ: the file could not be read
# just now (gone, permissions, I/O error, changed while read). RUNTIME: the machine's or the
# model's (a worker killed, a timeout, an encoder error); both of these are tried again.
FILE, READ, RUNTIME = "file", "read", "runtime"
# A batch of at least this many files that all fail the same way, for a reason not their
# own, stops the run: the fault is the machine's or the model's, not the files'.
SYSTEMATIC_MIN = 4
# The smallest batch sent to the model early, rather than waiting for a full one: on CPU a
# ViT encodes 16 images nearly as fast per image as 64.
MIN_EARLY_BATCH = 16


MOUNTS_META = "mounts"  # catalog meta: {root: [mount points under it seen by the last sync]}


def _not_mounted(count: int) -> str:
    return (f"drive not mounted here now: its {count} indexed photos were kept; mount it again, "
            "or pass --allow-empty to remove them from the library")


@dataclass
class SyncPlan:
    """What a sync must do under one root: catalog rows gone, files to (re-)encode."""

    report: IndexReport
    known: dict = field(default_factory=dict)      # path -> catalog row, under the root
    gone: list = field(default_factory=list)       # catalog rows whose files are gone
    todo: list[FileRecord] = field(default_factory=list)


def plan_sync(catalog: Catalog, root: str, *, exclude: Iterable[str | os.PathLike] = (),
              allow_empty: bool = False, retry_failed: bool = False,
              defer: Callable[[FileRecord], bool] | None = None) -> SyncPlan:
    """Scan `root` (absolute) and diff it against the catalog; the one diff both the
    single-machine and the Ray indexer use.

    Unchanged files stored as failed are tried again when `retry_failed`, or when the
    failure was recorded by another decoder stack (`images.decoder_stack`).

    Never counts as deleted: the photos of a root that is now empty (PhotoRootError,
    unless `allow_empty`), of a folder that could not be read, or of a drive that was
    mounted inside the root at the last sync and is not now (kept and reported, unless
    `allow_empty`). Records the mount points seen, for the next sync. A new or changed
    file for which `defer` returns True (a watcher's "still being written") is left as
    it is, counted in `waiting`.
    """
    report = IndexReport(root=root)
    found = scan(root, exclude=exclude)
    report.scanned = len(found.files)
    report.skipped.extend(SkippedFile(p, r) for p, r in found.errors)
    known = catalog.images_under(root)
    indexed = sum(row.status == "ok" for row in known.values())
    if not found.files and indexed and not allow_empty:
        raise PhotoRootError(
            f"{root} has no photos now but {indexed} are indexed from it; is the drive unmounted? "
            "Nothing was removed. Pass --allow-empty to remove them from the library")

    # A folder we could not read is not a folder whose photos were deleted; nor is a drive
    # that was mounted at the last sync and is not now.
    keep = [p for p, _ in found.errors]
    mounts = json.loads(catalog.get_meta(MOUNTS_META) or "{}")
    remembered = set(found.mounts)
    for mount in sorted(set(mounts.get(root, [])) - set(found.mounts)):
        count = sum(1 for path, row in known.items() if row.status == "ok" and _under_any(path, [mount]))
        if count and not allow_empty:
            keep.append(mount)
            remembered.add(mount)
            report.unmounted.append(mount)
            report.skipped.append(SkippedFile(mount, _not_mounted(count)))
            log.warning("%s: %s", mount, _not_mounted(count))
    if sorted(remembered) != sorted(mounts.get(root, [])):
        mounts[root] = sorted(remembered)
        catalog.set_meta(MOUNTS_META, {r: m for r, m in mounts.items() if m})

    on_disk = {f.path for f in found.files}
    plan = SyncPlan(report, known=known)
    plan.gone = [row for path, row in known.items() if path not in on_disk and not _under_any(path, keep)]
    stale = set() if retry_failed else catalog.failures_from_other_stack(root, decoder_stack())
    for rec in found.files:
        row = known.get(rec.path)
        if row is None or row.size != rec.size or row.mtime_ns != rec.mtime_ns:
            if defer is not None and defer(rec):
                report.waiting += 1
            else:
                plan.todo.append(rec)
        elif row.status == "error":
            if retry_failed or rec.path in stale:
                plan.todo.append(rec)
                report.retried_failures += 1
            else:
                report.previously_failed += 1
        else:
            report.unchanged += 1
    return plan


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_decode_workers() -> int:
    """Decode workers for this machine: half the cores plus one.

    A camera JPEG decoded at 1/8 scale costs about a third of a ViT-B/32 forward pass of
    CPU. The model keeps all its threads: decoding fills the gaps between its parallel
    regions. The bounded window idles workers that run ahead, so the spare worker costs
    nothing when decoding keeps up and takes up the slack when it does not (measured in
    docs/performance.md, "Indexing throughput").
    """
    return _cores() // 2 + 1


@dataclass(frozen=True)
class _Decoded:
    """One file, decoded: model pixels (pixel path) or an image (PIL path), or why not."""

    record: FileRecord
    image: "Image.Image | None" = None
    pixels: np.ndarray | None = None
    original_size: tuple[int, int] | None = None
    error: str | None = None
    fault: str = "file"  # whose fault the error is: FILE (remembered), READ or RUNTIME (tried again next run)

    @property
    def retry(self) -> bool:
        return self.error is not None and self.fault != FILE


def _under_any(path: str, folders: Sequence[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


class Indexer:
    """Syncs one folder into a catalog + index with an encoder.

    `save_index` is called periodically and at the end so a crash loses at most a few
    seconds of index work (and none of the catalog, which the index is rebuilt from).
    """

    def __init__(self, catalog: Catalog, index: VectorIndex, encoder: "Encoder", *,
                 save_index: Callable[[], None] | None = None, batch_size: int = 64, chunk_size: int = 256,
                 decode_workers: int | None = None, processes: bool | None = None,
                 encode_threads: int | None = None, save_every_s: float = 30.0) -> None:
        """`processes`: decode in worker processes (True), threads (False), or processes
        once a sync has PROCESS_MIN_FILES files or more (None). `encode_threads`: the
        model's CPU threads during the sync, for encoders with `image_threads` (None
        leaves them as they are: on 2 cores all threads beat one by 1.5x when the machine
        was quiet, and lost by up to 1.7x only while other jobs held the cores)."""
        self.catalog = catalog
        self.index = index
        self.encoder = encoder
        self.save_index = save_index or (lambda: None)
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.decode_workers = decode_workers or default_decode_workers()
        self.processes = processes
        self.encode_threads = encode_threads
        self.save_every_s = save_every_s
        self._stop: threading.Event | None = None

    def sync(self, root: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = (), progress: bool = False,
             allow_empty: bool = False, retry_failed: bool = False, defer: Callable[[FileRecord], bool] | None = None,
             stop: threading.Event | None = None) -> IndexReport:
        """Bring the catalog in line with the files under `root`; returns what changed.

        `retry_failed`: also try again the unchanged files stored as failed. Raises
        IndexingError, with nothing recorded for the batch, when every file of a batch
        fails the same way for a reason not its own (a broken encoder, decoders that die).
        `defer`: see `plan_sync`. `stop`: once set, the sync ends after the chunk it is
        storing (`interrupted` in the report); what it stored is kept.
        """
        started = time.monotonic()
        root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self._index_behind = False
        self._stop = stop
        plan = plan_sync(self.catalog, root, exclude=exclude, allow_empty=allow_empty, retry_failed=retry_failed,
                         defer=defer)
        report, known, gone, todo = plan.report, plan.known, plan.gone, plan.todo

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
        report.attempted = len(todo)
        from tqdm import tqdm

        prepare = getattr(self.encoder, "prepare_bulk_encoding", None)
        if prepare is not None:
            prepare(len(todo))  # e.g. move a CPU encoder to onnxruntime for a big job
        spec = self._pixel_spec()
        processes = self.processes if self.processes is not None else len(todo) >= PROCESS_MIN_FILES
        stream = _DecodeStream(todo, getattr(self.encoder, "image_size", None), spec,
                               workers=self.decode_workers, processes=processes,
                               window=2 * self.batch_size + self.decode_workers)
        bar = tqdm(total=len(todo), unit="img", desc="indexing", disable=not progress, leave=False)
        last_save = time.monotonic()
        threads = getattr(self.encoder, "image_threads", None)
        with stream, (threads(self.encode_threads) if threads and self.encode_threads else contextlib.nullcontext()):
            for start in range(0, len(todo), self.chunk_size):
                if self._stop is not None and self._stop.is_set():
                    report.interrupted = True
                    log.info("stopped after %d of %d files; the next sync does the rest", start, len(todo))
                    break
                count = min(self.chunk_size, len(todo) - start)
                self._store_chunk(*self._encode_chunk(stream, count, spec), known, report)
                bar.update(count)
                if time.monotonic() - last_save > self.save_every_s:
                    self.save_index()
                    last_save = time.monotonic()
        bar.close()

    def _pixel_spec(self) -> PixelSpec | None:
        spec = getattr(self.encoder, "pixel_spec", None)
        return spec if isinstance(spec, PixelSpec) and callable(getattr(self.encoder, "encode_pixels", None)) else None

    def _encode_chunk(self, stream: "_DecodeStream", count: int, spec: PixelSpec | None
                      ) -> tuple[list[_Decoded], list[_Decoded], np.ndarray, list[tuple[FileRecord, str]]]:
        """Encode the next `count` files batch by batch as they arrive, so decoding overlaps encoding.

        A batch goes to the model when full, or early (from MIN_EARLY_BATCH files) when the
        next file is not decoded yet: the model starts seconds sooner and never idles while
        a batch fills. Returns (every file, the encoded ones, their vectors, the failures).
        """
        decoded: list[_Decoded] = []
        encoded: list[_Decoded] = []
        vectors = [np.zeros((0, self.encoder.dim), np.float32)]
        failures: list[tuple[FileRecord, str]] = []
        batch: list[_Decoded] = []
        early = min(MIN_EARLY_BATCH, self.batch_size)
        for n in range(count):
            d = next(stream)
            decoded.append(d)
            if d.error is None:
                batch.append(d)
            if batch and (len(batch) == self.batch_size or n == count - 1
                          or (len(batch) >= early and not stream.next_ready())):
                ok, vecs, failed = self._encode(batch, spec)
                encoded.extend(ok)
                vectors.append(vecs)
                failures.extend(failed)
                batch = []
        return decoded, encoded, np.concatenate(vectors), failures

    def _store_chunk(self, decoded: list[_Decoded], encoded: list[_Decoded], vectors: np.ndarray,
                     encode_failures: list[tuple[FileRecord, str]], known: dict, report: IndexReport) -> None:
        own = [(d.record, d.error or "unknown error") for d in decoded if d.error is not None and not d.retry]
        transient = [(d.record, d.error or "unknown error") for d in decoded if d.retry]
        transient.extend(encode_failures)
        if not encoded:
            check_systematic([d.error or "" for d in decoded if d.fault == RUNTIME] +
                             [reason for _, reason in encode_failures], len(decoded))
        # A transient failure leaves the file's row as it was: the next run sees it changed (or new) again.
        replaced = [known[d.record.path].id for d in encoded if d.record.path in known]
        replaced += [known[r.path].id for r, _ in own if r.path in known]
        new_rows = [NewImage(d.record.path, d.record.size, d.record.mtime_ns, v, *(d.original_size or (None, None)))
                    for d, v in zip(encoded, vectors)]
        self._index_behind = True
        with self.catalog.transaction():
            ids = self.catalog.add_images(new_rows)
            self.catalog.add_failures([(r.path, r.size, r.mtime_ns, reason) for r, reason in own],
                                      stack=decoder_stack())
        if replaced:
            self.index.remove(np.array(replaced, dtype=np.int64))
        self.index.add(np.array(ids, dtype=np.int64), vectors)
        self._index_behind = False
        for d in encoded:
            if d.record.path in known:
                report.updated += 1
            else:
                report.added += 1
        report.skipped.extend(SkippedFile(r.path, reason) for r, reason in own)
        report.skipped.extend(SkippedFile(r.path, reason, retry=True) for r, reason in transient)

    def _encode(self, batch: list[_Decoded], spec: PixelSpec | None
                ) -> tuple[list[_Decoded], np.ndarray, list[tuple[FileRecord, str]]]:
        """(the files encoded, their vectors, the files that failed with why)."""
        def encode(items: list[_Decoded]) -> np.ndarray:
            if spec is not None:
                return self.encoder.encode_pixels(np.stack([d.pixels for d in items]))
            return self.encoder.encode_images([d.image for d in items], batch_size=self.batch_size)

        try:
            return batch, encode(batch), []
        except ClipSearchError:
            raise
        except Exception:  # one odd image must not sink the batch: find it
            log.debug("batch encode failed; retrying one by one", exc_info=True)
        encoded, vectors, failures = [], [], []
        for d in batch:
            try:
                vectors.append(encode([d])[0])
                encoded.append(d)
            except ClipSearchError:
                raise
            except Exception as exc:
                failures.append((d.record, f"could not encode: {exc}"))
        if not encoded:  # the same fault on every file: the model's, not theirs
            check_systematic([reason for _, reason in failures], len(batch))
        return encoded, (np.stack(vectors) if vectors else np.zeros((0, self.encoder.dim), np.float32)), failures


def check_systematic(reasons: Sequence[str], total: int) -> None:
    """Raise IndexingError when all `total` files of a batch (or a run of files in a row) failed for a reason not their own.

    `reasons`: the batch's runtime failures (workers killed, timeouts, encoder errors).
    Nothing of the batch has been recorded when this raises.
    """
    if total < SYSTEMATIC_MIN or len(reasons) < total:
        return
    counts: dict[str, int] = {}
    for r in reasons:
        counts[r] = counts.get(r, 0) + 1
    common, n = max(counts.items(), key=lambda kv: kv[1])
    raise IndexingError(
        f"{total} files in a row failed, none indexed ({n} with: {common}); this is not the files' fault, so the "
        "run stopped and nothing was recorded against them. Fix the cause and run again: what was indexed "
        "before is kept")


class _DecodeStream:
    """The decoded files of `todo`, in order, decoded by a pool a bounded window ahead of the reader.

    The window bounds memory (at most `window` decoded files wait) and keeps the workers
    busy while the reader encodes. Processes are `clipsearch.workers.WorkerPool`'s: fresh
    interpreters that never import the caller's `__main__` (nor inherit torch's thread
    pool, as a fork would). Each worker decodes one file at a time, so a worker that dies
    names its file: one killed from outside (SIGKILL: the OOM killer, a user) costs that
    file this run only; one that crashes by itself (SIGSEGV, SIGABRT...) is given the file
    once more in a fresh process, and a second crash is remembered as the file's fault.
    Where worker processes cannot start, decoding falls back to threads, with a warning.
    """

    def __init__(self, todo: Sequence[FileRecord], target_size: int | None, spec: PixelSpec | None, *,
                 workers: int, processes: bool, window: int,
                 decode: Callable[[FileRecord, int | None, PixelSpec | None], _Decoded] | None = None,
                 timeout: float | None = DECODE_TIMEOUT_S) -> None:
        self.todo = todo
        self.args = (target_size, spec)
        self.decode = decode or _decode  # a module-level function: workers unpickle it by name
        self.workers = max(1, workers)
        self.processes = processes
        self.window = max(1, window)
        self.timeout = timeout
        self._pool: Executor | None = None
        self._records = iter(todo)
        self._pending: deque[tuple[FileRecord, Future]] = deque()
        self._streak: list[str] = []  # the reasons of the last runtime failures in a row

    def __enter__(self) -> "_DecodeStream":
        self._pool = self._new_pool()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            if exc[0] is not None and isinstance(self._pool, WorkerPool):
                self._pool.terminate()  # Ctrl-C, an error: don't wait for the files in flight
            else:
                self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _new_pool(self) -> Executor:
        if self.processes:
            try:
                pool = WorkerPool(self.workers, timeout=self.timeout)
            except WorkerStartError as exc:
                log.warning("%s; decoding in threads instead", exc)
            else:
                log.info("decoding in %d worker processes", self.workers)
                return pool
        return ThreadPoolExecutor(self.workers, thread_name_prefix="decode")

    def _submit(self, record: FileRecord) -> Future:
        assert self._pool is not None, "use _DecodeStream in a with block"
        return self._pool.submit(self.decode, record, *self.args)

    def __iter__(self) -> "_DecodeStream":
        return self

    def __next__(self) -> _Decoded:
        self._top_up()
        if not self._pending:
            raise StopIteration
        record, future = self._pending.popleft()
        result = self._result(record, future, again=True)
        # Decoders dying (or timing out) on file after file: the machine's fault; stop before
        # spending a worker restart on every remaining file.
        self._streak = self._streak + [result.error or ""] if result.fault == RUNTIME and result.error else []
        if len(self._streak) >= 2 * SYSTEMATIC_MIN:
            check_systematic(self._streak, len(self._streak))
        self._top_up()  # before handing over, so the workers keep going while the reader encodes
        return result

    def _result(self, record: FileRecord, future: Future, *, again: bool) -> _Decoded:
        try:
            return future.result()
        except WorkerDied as exc:
            if not exc.crashed:
                log.warning("the decoder process %s on %s; it is tried again next run",
                            describe_exit(exc.returncode), record.path)
                return _Decoded(record, error=DECODER_KILLED.format(how=describe_exit(exc.returncode)), fault=RUNTIME)
            if again:
                log.warning("the decoder process %s on %s; trying it once more in a fresh process",
                            describe_exit(exc.returncode), record.path)
                return self._result(record, self._submit(record), again=False)
            log.warning("the decoder crashed twice on %s: remembered as failed until the decoders change",
                        record.path)
            return _Decoded(record, error=DECODER_CRASHED.format(how=describe_exit(exc.returncode)), fault=FILE)
        except WorkerTimeout:
            log.warning("decoding %s took longer than %g s; it is tried again next run", record.path, self.timeout)
            return _Decoded(record, error=DECODE_TIMED_OUT.format(seconds=self.timeout), fault=RUNTIME)
        except WorkerStartError as exc:
            return _Decoded(record, error=str(exc), fault=RUNTIME)
        except Exception as exc:  # e.g. a result that could not be sent back
            log.warning("unexpected error decoding %s", record.path, exc_info=True)
            return _Decoded(record, error=f"unexpected error: {exc}", fault=RUNTIME)

    def next_ready(self) -> bool:
        """True when the next file is decoded already, so reading it will not wait."""
        return bool(self._pending) and self._pending[0][1].done()

    def _top_up(self) -> None:
        while len(self._pending) < self.window:
            record = next(self._records, None)
            if record is None:
                return
            self._pending.append((record, self._submit(record)))


def _decode(record: FileRecord, target_size: int | None, spec: PixelSpec | None) -> _Decoded:
    """Runs in a decode worker: the file as model pixels (when `spec` is given) or as an image."""
    try:
        image = load_image(record.path, target_size=target_size)
    except ImageLoadError as exc:
        return _Decoded(record, error=exc.reason, fault=READ if exc.transient else FILE)
    except Exception as exc:  # a loader bug must cost one file, not the run, and is not the file's fault
        log.warning("unexpected error decoding %s", record.path, exc_info=True)
        return _Decoded(record, error=f"unexpected error: {exc}", fault=RUNTIME)
    original_size = image.info.get("original_size")
    read = image.info.get("file_stat")
    if read is not None and read != (record.size, record.mtime_ns):
        # Changed since the scan: the catalog must record the version decoded, not the one scanned.
        record = FileRecord(record.path, *read)
    if spec is None:
        return _Decoded(record, image=image, original_size=original_size)
    try:
        return _Decoded(record, pixels=to_pixels(image, spec), original_size=original_size)
    except Exception as exc:  # as encode_images would have failed on it in the model's preprocess
        return _Decoded(record, error=f"could not encode: {exc}", fault=RUNTIME)
