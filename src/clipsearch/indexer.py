"""The single-machine executor of the indexing stages (`clipsearch.pipeline`): plan, read, encode, store.

Work is committed in chunks, so an interrupted run keeps what it finished and the next
run resumes with only the files still missing. The indexer returns a report; it never prints.

Decoding a camera JPEG costs a third as much CPU as encoding it with ViT-B/32 even at
1/8 scale (as much, at full size with the usual resize), so files are read (decoded, and
their facts read: `clipsearch.facts`) in worker processes (`clipsearch.workers`: they
never run the caller's `__main__`, and a decoder crash costs one file, not the run), a
bounded window ahead of the encoder, straight to the model's input pixels when the
encoder can take them (`pixel_spec` / `encode_pixels`), else to PIL images for
`encode_images`.

Only a file's own faults are remembered in the catalog; everything else is reported with
`retry=True` and tried again by the next run, and the same runtime failure on every file
of a batch stops the run (`IndexingError`) with nothing recorded: see
`clipsearch.pipeline.faults`. A worker that dies names its file: killed from outside, the
file is tried again next run; crashed by itself twice, it is remembered as the file's fault.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from clipsearch.catalog import Catalog
from clipsearch.encoder import input_size, pixel_encoder
from clipsearch.facts import FactReader, default_readers
from clipsearch.images import PixelSpec
from clipsearch.index import VectorIndex
from clipsearch.moves import store_moves, store_twins
from clipsearch.pipeline.encode import encode_batch, encode_files, pixel_spec_of
from clipsearch.pipeline.faults import FILE, READ, RUNTIME, SYSTEMATIC_MIN, check_systematic
from clipsearch.pipeline.plan import IndexReport, SkippedFile, StageClock, SyncPlan, plan_sync
from clipsearch.pipeline.read import Decoded, read_facts_only, read_file
from clipsearch.pipeline.store import FileResult, store_chunk
from clipsearch.scan import FileRecord
from clipsearch.workers import WorkerDied, WorkerPool, WorkerStartError, WorkerTimeout, describe_exit

if TYPE_CHECKING:
    from clipsearch.encoder import Encoder

log = logging.getLogger(__name__)

# Below this many files a sync decodes in threads: starting worker processes costs more.
PROCESS_MIN_FILES = 16
# A file whose decoder crashed (SIGSEGV, SIGABRT...) on its bytes in two fresh processes:
# remembered, with the decoder stack, so that a fixed Pillow/pillow-heif/rawpy tries it again.
DECODER_CRASHED = "the decoder crashed on this file's bytes twice ({how}); it is tried again when the decoders are upgraded"
DECODER_KILLED = "the decoder process {how} while reading this file (out of memory, or killed from outside)"
DECODE_TIMEOUT_S = 300.0
DECODE_TIMED_OUT = "decoding took longer than {seconds:g} s; the decoder was stopped"
# The smallest batch sent to the model early, rather than waiting for a full one: on CPU a
# ViT encodes 16 images nearly as fast per image as 64.
MIN_EARLY_BATCH = 16
# The size a back-fill decodes to (by JPEG draft) for the fact readers: a back-fill never
# loads the model, so it cannot ask it; this is the input size of open_clip's ViT-B models.
BACKFILL_IMAGE_SIZE = 224


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


class Indexer:
    """Syncs one folder into a catalog + index with an encoder.

    `save_index` is called periodically and at the end so a crash loses at most a few
    seconds of index work (and none of the catalog, which the index is rebuilt from).
    """

    def __init__(self, catalog: Catalog, index: VectorIndex, encoder: "Encoder", *,
                 save_index: Callable[[], None] | None = None, batch_size: int = 64, chunk_size: int = 256,
                 decode_workers: int | None = None, processes: bool | None = None,
                 encode_threads: int | None = None, save_every_s: float = 30.0,
                 readers: Sequence[FactReader] | None = None) -> None:
        """`processes`: decode in worker processes (True), threads (False), or processes
        once a sync has PROCESS_MIN_FILES files or more (None). `encode_threads`: the
        model's CPU threads during the sync, for encoders with `image_threads` (None
        leaves them as they are: on 2 cores all threads beat one by 1.5x when the machine
        was quiet, and lost by up to 1.7x only while other jobs held the cores).
        `readers`: the per-file fact readers (default `default_readers()`; see `clipsearch.facts`)."""
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
        self.readers = tuple(default_readers() if readers is None else readers)
        self._stop: threading.Event | None = None

    def sync(self, root: str | os.PathLike, *, exclude: Iterable[str | os.PathLike] = (), progress: bool = False,
             allow_empty: bool = False, retry_failed: bool = False, defer: Callable[[FileRecord], bool] | None = None,
             stop: threading.Event | None = None) -> IndexReport:
        """Bring the catalog in line with the files under `root`, then back-fill missing facts; returns what changed.

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
        self.catalog.ensure_columns(self.readers)
        plan = plan_sync(self.catalog, root, exclude=exclude, allow_empty=allow_empty, retry_failed=retry_failed,
                         defer=defer)
        report, known, gone, todo = plan.report, plan.known, plan.gone, plan.todo
        clock = StageClock(report.stages)  # plan_sync timed its own stages

        if plan.matches:
            self._index_behind = True
            report.moved, report.copied = store_moves(self.catalog, self.index, plan.matches, self.index.dim)
            report.added += report.copied
            self._index_behind = False
            clock.lap("store_moves")
        if gone:
            gone_ids = self.catalog.with_frames([row.id for row in gone])  # a video's frames go with it
            self._index_behind = True
            self.catalog.remove_images(gone_ids)
            self.index.remove(gone_ids)
            self._index_behind = False
            report.removed = len(gone)
            log.info("removed %d files no longer under %s", len(gone), root)
            clock.lap("remove")

        try:
            if todo:
                self._encode_all(todo, known, report, progress)
                clock.lap("encode")
            if plan.matches.twins and not report.interrupted:
                self._index_behind = True
                twins = store_twins(self.catalog, self.index, plan.matches.twins, self.index.dim)
                self._index_behind = False
                report.added += twins
                report.copied += twins
                clock.lap("store_twins")
        except KeyboardInterrupt:
            report.interrupted = True
            raise
        finally:
            # An index that missed a committed catalog change must not be saved stamped with
            # the catalog's generation; left as it was on disk, it is reconciled at the next open.
            if (gone or todo or plan.matches.copies or plan.matches.twins) and not self._index_behind:
                self.save_index()
                clock.lap("save_index")
            report.seconds = time.monotonic() - started
        if not report.interrupted:
            report.backfilled = self.backfill_facts(root, progress=progress)
            clock.lap("backfill")
            report.seconds = time.monotonic() - started
        log.info("%s: synced in %.2f s: %s", root, report.seconds, report.stage_summary())
        return report

    def _encode_all(self, todo: list[FileRecord], known: dict, report: IndexReport, progress: bool) -> None:
        if not todo:
            return
        report.attempted = len(todo)
        from tqdm import tqdm

        bulk = pixel_encoder(self.encoder)
        if bulk is not None:
            bulk.prepare_bulk_encoding(len(todo))  # e.g. move a CPU encoder to onnxruntime for a big job
        spec = pixel_spec_of(self.encoder)
        processes = self.processes if self.processes is not None else len(todo) >= PROCESS_MIN_FILES
        stream = _DecodeStream(todo, input_size(self.encoder), spec,
                               workers=self.decode_workers, processes=processes,
                               window=2 * self.batch_size + self.decode_workers, readers=self.readers)
        bar = tqdm(total=len(todo), unit="img", desc="indexing", disable=not progress, leave=False)
        last_save = time.monotonic()
        threads = bulk.image_threads(self.encode_threads) if bulk is not None and self.encode_threads else None
        with stream, (threads or contextlib.nullcontext()):
            for start in range(0, len(todo), self.chunk_size):
                if self._stop is not None and self._stop.is_set():
                    report.interrupted = True
                    log.info("stopped after %d of %d files; the next sync does the rest", start, len(todo))
                    break
                count = min(self.chunk_size, len(todo) - start)
                results = self._encode_chunk(stream, count, spec)
                self._index_behind = True
                store_chunk(self.catalog, self.index, results, known, report)
                self._index_behind = False
                bar.update(count)
                if time.monotonic() - last_save > self.save_every_s:
                    self.save_index()
                    last_save = time.monotonic()
        bar.close()

    def _encode_chunk(self, stream: "_DecodeStream", count: int, spec: PixelSpec | None) -> list[FileResult]:
        """Encode the next `count` files batch by batch as they arrive, so decoding overlaps encoding.

        A batch goes to the model when full, or early (from MIN_EARLY_BATCH files) when the
        next file is not decoded yet: the model starts seconds sooner and never idles while
        a batch fills. Returns every file's result, in listing order. A batch of which no
        file encoded raises IndexingError when that is systematic (`check_systematic`).
        """
        results: list[FileResult | None] = []
        batch: list[tuple[int, Decoded]] = []
        early = min(MIN_EARLY_BATCH, self.batch_size)
        for n in range(count):
            d = next(stream)
            if d.error is None:
                results.append(None)
                batch.append((n, d))
            else:
                results.append(FileResult(d.record, error=d.error, fault=d.fault))
            inputs = sum(len(d.model_inputs) for _, d in batch)  # a video brings one per frame
            if batch and (inputs >= self.batch_size or n == count - 1
                          or (inputs >= early and not stream.next_ready())):
                for i, result in zip((i for i, _ in batch), encode_files(self.encoder, [d for _, d in batch], spec,
                                                                          batch_size=self.batch_size)):
                    results[i] = result
                batch = []
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def backfill_facts(self, root: str | None = None, *, progress: bool = False) -> int:
        """`backfill_facts` with this indexer's readers and decode settings."""
        return backfill_facts(self.catalog, self.readers, root, progress=progress, workers=self.decode_workers,
                              processes=self.processes, chunk_size=self.chunk_size)


def backfill_facts(catalog: Catalog, readers: Sequence[FactReader], root: str | None = None, *,
                   target_size: int = BACKFILL_IMAGE_SIZE, progress: bool = False, workers: int | None = None,
                   processes: bool | None = None, chunk_size: int = 256) -> int:
    """Read the facts of indexed files (under `root`) that some reader has not read at its current version.

    Files are decoded for the readers (draft-reduced towards `target_size`) in decode
    workers; no model is loaded or run. A file that changed since it was indexed is left
    to the next sync. Returns the rows updated.
    """
    readers = tuple(readers)
    if not readers:
        return 0
    catalog.ensure_columns(readers)
    rows = catalog.rows_missing_facts(readers, root)
    if not rows:
        return 0
    from tqdm import tqdm

    records = [FileRecord(r.path, r.size, r.mtime_ns) for r in rows]
    ids = {r.path: r.id for r in rows}
    workers = workers or default_decode_workers()
    stream = _DecodeStream(records, target_size, None, workers=workers,
                           processes=processes if processes is not None else len(records) >= PROCESS_MIN_FILES,
                           window=4 * workers, decode=read_facts_only, readers=readers)
    done = 0
    bar = tqdm(total=len(records), unit="img", desc="reading facts", disable=not progress, leave=False)
    with stream:
        for start in range(0, len(records), chunk_size):
            chunk = [next(stream) for _ in range(min(chunk_size, len(records) - start))]
            done += catalog.set_facts([(ids[d.record.path], d.facts) for d in chunk if d.error is None])
            bar.update(len(chunk))
    bar.close()
    log.info("read the facts of %d indexed files again", done)
    return done


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
                 decode: Callable[[FileRecord, int | None, PixelSpec | None], Decoded] | None = None,
                 timeout: float | None = DECODE_TIMEOUT_S, readers: Sequence[FactReader] = ()) -> None:
        """`decode`: the read stage (default `read_file`), called as decode(record, target_size, spec),
        with readers=`readers` when there are fact readers."""
        self.todo = todo
        self.args = (target_size, spec)
        self.decode = decode or read_file  # a module-level function: workers unpickle it by name
        if readers:
            self.decode = functools.partial(self.decode, readers=tuple(readers))  # a partial pickles by name too
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

    def __next__(self) -> Decoded:
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

    def _result(self, record: FileRecord, future: Future, *, again: bool) -> Decoded:
        try:
            return future.result()
        except WorkerDied as exc:
            if not exc.crashed:
                log.warning("the decoder process %s on %s; it is tried again next run",
                            describe_exit(exc.returncode), record.path)
                return Decoded(record, error=DECODER_KILLED.format(how=describe_exit(exc.returncode)), fault=RUNTIME)
            if again:
                log.warning("the decoder process %s on %s; trying it once more in a fresh process",
                            describe_exit(exc.returncode), record.path)
                return self._result(record, self._submit(record), again=False)
            log.warning("the decoder crashed twice on %s: remembered as failed until the decoders change",
                        record.path)
            return Decoded(record, error=DECODER_CRASHED.format(how=describe_exit(exc.returncode)), fault=FILE)
        except WorkerTimeout:
            log.warning("decoding %s took longer than %g s; it is tried again next run", record.path, self.timeout)
            return Decoded(record, error=DECODE_TIMED_OUT.format(seconds=self.timeout), fault=RUNTIME)
        except WorkerStartError as exc:
            return Decoded(record, error=str(exc), fault=RUNTIME)
        except Exception as exc:  # e.g. a result that could not be sent back
            log.warning("unexpected error decoding %s", record.path, exc_info=True)
            return Decoded(record, error=f"unexpected error: {exc}", fault=RUNTIME)

    def next_ready(self) -> bool:
        """True when the next file is decoded already, so reading it will not wait."""
        return bool(self._pending) and self._pending[0][1].done()

    def _top_up(self) -> None:
        while len(self._pending) < self.window:
            record = next(self._records, None)
            if record is None:
                return
            self._pending.append((record, self._submit(record)))


__all__ = [
    "BACKFILL_IMAGE_SIZE", "DECODER_CRASHED", "DECODER_KILLED", "DECODE_TIMED_OUT", "DECODE_TIMEOUT_S", "FILE",
    "IndexReport", "Indexer", "MIN_EARLY_BATCH", "PROCESS_MIN_FILES", "READ", "RUNTIME", "SYSTEMATIC_MIN",
    "SkippedFile", "StageClock", "SyncPlan",
    "backfill_facts", "check_systematic", "default_decode_workers", "plan_sync",
]
