"""Index a collection beyond one machine, on Ray: embedding on Ray Data, index build by Ray tasks.

    clipsearch index PHOTOS --library LIB --ray [ADDRESS]

The single-machine path stays the default; nothing here imports Ray until it is asked
for (`pip install 'clipsearch[distributed]'`). The flow, and who does what:

* the driver (this process, which owns the library folder) scans the folder and diffs
  it against the catalog exactly as `Indexer.sync` does;
* Ray Data embeds what changed: `from_items` of the file records, then `map_batches`
  with `_Embedder`, a callable class run by an actor pool (one actor per worker slot,
  `num_gpus=1` each where the cluster has GPUs) that builds the encoder once from an
  `EncoderSpec` and reads each file by path with the read stage (`read_file`). The
  workers must see the photos under the same paths (a shared mount), as they would
  for `read_binary_files`; reading by path also keeps the single-machine reasons for a
  skipped file (vanished, permission denied, changed while read) and its size re-check;
* the driver writes the results, in listing order, as Parquet shards in
  LIB/shards/<root key>/ as they arrive (temp file, fsync, rename), so a run that dies
  resumes at shard granularity: the files of completed shards are not embedded again;
* the shards are ingested into the catalog (vectors stored as on one machine, so
  search, rebuild and the UI work unchanged) and deleted;
* the stages are the single machine's (`clipsearch.pipeline`): the actors run
  `read_file` (with the library's fact readers, pickled to them: see
  `clipsearch.facts`) and `encode_files`; the driver plans with `plan_sync` and stores
  with `store_chunk`, and back-fills missing facts of unchanged files in its own decode
  workers (no model) after the run;
* an index of a trained kind (IVF-PQ, IVF-SQ, ...: whatever `choose_index` picks for the
  library's size and memory budget) is trained on a random sample of the stored
  vectors, each block of vectors is added by a Ray task to a copy of the trained, empty
  index, and the parts are merged with `faiss.contrib.ondisk.merge_ondisk` into one
  index whose inverted lists live in LIB/index-<stamp>.ivfdata, memory-mapped, so it
  may be larger than the RAM of the machine that serves it. Ids are catalog ids; the
  index is tuned and its recall@10 measured as on one machine. Flat and HNSW indexes
  are built by the single-machine code.

Longer than most modules on purpose: the Ray executor in one place (session, shards,
the embedding actor, the driver's ingest, the parallel index build), all of whose stages
are the single machine's (`clipsearch.pipeline`, `clipsearch.index`), reached through
public names only.

Worker failures are Ray's to retry: Ray Data restarts a dead actor and retries its batch
(max_restarts / max_task_retries default to infinite for actor pools); index tasks are
retried by Ray too. A driver that dies loses at most the shard it was writing.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from clipsearch.atomic import atomic_writer
from clipsearch.errors import ClipSearchError
from clipsearch.encoder import input_size
from clipsearch.facts import FactReader
from clipsearch.indexer import backfill_facts
from clipsearch.moves import store_moves, store_twins
from clipsearch.pipeline import (
    FILE, RUNTIME, FileResult, IndexReport, SyncPlan, encode_files, pixel_spec_of, plan_sync, read_file, store_chunk,
)
from clipsearch.scan import FileRecord

if TYPE_CHECKING:
    from clipsearch.encoder import Encoder
    from clipsearch.index import IndexSpec, VectorIndex
    from clipsearch.library import Library

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
SHARD_SUFFIX = ".parquet"
IVFDATA_PREFIX = "index-"
IVFDATA_SUFFIX = ".ivfdata"
# Rows per shard: a multiple of INGEST_CHUNK. A dead run loses at most one shard of work.
DEFAULT_SHARD_ROWS = 4096
# Catalog rows per transaction at ingest, as `Indexer.chunk_size`, so that a library built
# here gets the ids the single-machine path would give the same files.
INGEST_CHUNK = 256
# Vectors per index-build task: about 100 MB of float32 at 512-d.
DEFAULT_PART_ROWS = 50_000
INSTALL_HINT = "pip install 'clipsearch[distributed]' (Ray Data and pyarrow)"
_META_MODEL = b"clipsearch.model"
_META_DIM = b"clipsearch.dim"


class DistributedError(ClipSearchError):
    """Ray is missing or unreachable, or a distributed run cannot go on as asked."""


# -- configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderSpec:
    """What each Ray worker builds its encoder from: a model name and weights, never a model object.

    `factory` (a picklable callable returning an Encoder, e.g. a class) replaces the
    model name for tests and custom encoders. Weights must be on each node: a checkpoint
    path on shared storage, the bundled model, or each node's cache (no download).
    """

    model: str = ""
    pretrained: str | None = None
    device: str | None = None
    factory: Callable[[], "Encoder"] | None = None
    # "onnxruntime" puts each worker's image tower on onnxruntime with the worker's own
    # CPUs as threads; anything else is torch (one actor per worker slot: "auto"'s one
    # pool per core in every actor would oversubscribe the node).
    image_backend: str | None = None

    @property
    def precision(self) -> str:
        """"int8" or "fp32": what the workers' image vectors are (a factory's encoder says by its `image_backend`)."""
        from clipsearch.encoder import precision_of

        backend = getattr(self.factory, "image_backend", "torch") if self.factory is not None else self.image_backend
        return precision_of(backend if isinstance(backend, str) else "torch")

    def build(self, threads: int | None = None) -> "Encoder":
        if self.factory is not None:
            return self.factory()
        from clipsearch.encoder import INT8_BACKEND, load_encoder

        encoder = load_encoder(self.model, self.pretrained, device=self.device, allow_download=False,
                               image_backend="torch")
        if self.image_backend == INT8_BACKEND:
            # No fallback: a worker on fp32 beside int8 ones would mix the library's vectors.
            encoder.use_onnxruntime(threads=threads, int8=True)
        elif self.image_backend == "onnxruntime":
            try:
                encoder.use_onnxruntime(threads=threads)
            except ClipSearchError as exc:
                log.warning("%s; encoding images with torch", exc)
        return encoder


@dataclass(frozen=True)
class RayOptions:
    """How a run uses the cluster.

    `address`: None or "" starts a Ray instance on this machine (loopback only), unless
    $RAY_ADDRESS names a cluster; "auto" joins the cluster started on this machine with
    `ray start`; "HOST:PORT" or "ray://HOST:PORT" joins that one.
    `workers`: embedding actors (default: one per GPU, else one per `cpus_per_worker` CPUs).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None   # None: 1 where the cluster has GPUs, else 0
    batch_size: int = 64
    shard_rows: int = DEFAULT_SHARD_ROWS
    part_rows: int = DEFAULT_PART_ROWS
    num_cpus: int | None = None             # CPUs of a Ray instance started here (default: all)
    object_store_memory: int | None = None  # bytes, for a Ray instance started here


# -- Ray session ----------------------------------------------------------------------------
def _import_ray() -> Any:
    # Before the first import: no usage statistics leave the machine.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise DistributedError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


@contextlib.contextmanager
def ray_session(options: RayOptions | None = None) -> Iterator[Any]:
    """The `ray` module, connected: to the session already open in this process, else as `options` says.

    A Ray instance started here listens on loopback only and is shut down on exit; a
    cluster joined here is left running.
    """
    options = options or RayOptions()
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    if address is None and "ray" not in sys.modules:
        # Ray picks the machine's network address for a local instance; this keeps it on 127.0.0.1.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    try:
        if address is None:
            ray.init(num_cpus=options.num_cpus, object_store_memory=options.object_store_memory,
                     include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise DistributedError(f"could not connect to {where}: {exc}; check the address "
                               "(ray status on the head node prints it)") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


# -- shards ---------------------------------------------------------------------------------
def shard_folder(library_folder: str | os.PathLike, root: str) -> Path:
    """Where a run over `root` keeps its shards: one folder per root, so runs over other roots don't mix."""
    key = hashlib.sha1(os.fsencode(root)).hexdigest()[:16]
    return Path(library_folder) / SHARDS_DIR / key


@dataclass
class Shard:
    """One shard's rows: files in listing order, a vector for each indexed one, a reason for each skipped one."""

    paths: list[str]
    sizes: np.ndarray          # int64
    mtimes: np.ndarray         # int64 (ns)
    widths: np.ndarray         # int32, -1: unknown
    heights: np.ndarray        # int32, -1: unknown
    errors: list[str | None]   # None: indexed
    vectors: np.ndarray        # (n, dim) float32; zeros for skipped files
    facts: list[Mapping[str, Any]] | None = None  # per row, from the fact readers (None: none at all)
    faults: list[str] | None = None  # per row, whose fault an error is (clipsearch.pipeline.faults); None: FILE
    # Videos: per row, the sampled frames' times ("" for a photo, else JSON) and all their
    # vectors (float32 bytes, one `dim` row per time); `vectors` holds the first frame's.
    times: list[str] | None = None
    frames: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def results(self, rows: Iterable[int]) -> list[FileResult]:
        """The given rows as the store stage takes them."""
        out = []
        for i in rows:
            w, h = int(self.widths[i]), int(self.heights[i])
            times = tuple(json.loads(self.times[i])) if self.times is not None and self.times[i] else ()
            vector = None if self.errors[i] else self.vectors[i]
            if times and vector is not None and self.frames is not None:
                vector = np.frombuffer(self.frames[i], np.float32).reshape(len(times), -1)
            out.append(FileResult(FileRecord(self.paths[i], int(self.sizes[i]), int(self.mtimes[i])),
                                  vector,
                                  (w, h) if w >= 0 and h >= 0 else None,
                                  self.facts[i] if self.facts is not None else {}, self.errors[i] or None,
                                  self.faults[i] if self.faults is not None and self.errors[i] else FILE,
                                  times=times))
        return out


def facts_to_json(facts: Mapping[str, Any]) -> str:
    """One row's facts as the shards carry them: JSON, bytes values as {"$bytes": base64}; "" for none."""
    if not facts:
        return ""
    return json.dumps({k: {"$bytes": base64.b64encode(v).decode()} if isinstance(v, (bytes, bytearray)) else v
                       for k, v in facts.items()})


def facts_from_json(text: str | None) -> dict[str, Any]:
    """The inverse of `facts_to_json`."""
    if not text:
        return {}
    return {k: base64.b64decode(v["$bytes"]) if isinstance(v, dict) and "$bytes" in v else v
            for k, v in json.loads(text).items()}


def write_shard(path: Path, shard: Shard, *, model: str) -> None:
    """Write `shard` as Parquet atomically (`clipsearch.atomic.atomic_writer`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = shard.vectors.shape[1]
    vectors = np.ascontiguousarray(shard.vectors, dtype=np.float32)
    table = pa.table({
        "path": pa.array(shard.paths, pa.string()),
        "size": pa.array(shard.sizes, pa.int64()),
        "mtime_ns": pa.array(shard.mtimes, pa.int64()),
        "width": pa.array(shard.widths, pa.int32()),
        "height": pa.array(shard.heights, pa.int32()),
        "error": pa.array(shard.errors, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        "facts": pa.array([facts_to_json(f) for f in shard.facts] if shard.facts is not None else [""] * len(shard),
                          pa.string()),
        "fault": pa.array(shard.faults if shard.faults is not None else [FILE] * len(shard), pa.string()),
        "times": pa.array(shard.times if shard.times is not None else [""] * len(shard), pa.string()),
        "frames": pa.array(shard.frames if shard.frames is not None else [b""] * len(shard), pa.binary()),
    }).replace_schema_metadata({_META_MODEL: model.encode(), _META_DIM: str(dim).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as fh:
        pq.write_table(table, fh)


def read_shard(path: Path, *, dim: int, model: str | None = None) -> Shard | None:
    """A shard written by `write_shard`, or None (with a warning) when it is unreadable or for another model."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        foreign = model is not None and meta.get(_META_MODEL, b"").decode() != model
        if int(meta.get(_META_DIM, b"0")) != dim or foreign:
            log.warning("shard %s was made by another model; ignoring it", path)
            return None
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return Shard(
            paths=table.column("path").to_pylist(),
            sizes=table.column("size").to_numpy().astype(np.int64),
            mtimes=table.column("mtime_ns").to_numpy().astype(np.int64),
            widths=table.column("width").to_numpy().astype(np.int32),
            heights=table.column("height").to_numpy().astype(np.int32),
            errors=table.column("error").to_pylist(),
            vectors=np.asarray(flat, np.float32).reshape(-1, dim),
            # Shards of a clipsearch without fact readers have no facts column: a back-fill reads them.
            facts=([facts_from_json(f) for f in table.column("facts").to_pylist()]
                   if "facts" in table.column_names else None),
            faults=_faults_of(table),
            times=table.column("times").to_pylist() if "times" in table.column_names else None,
            frames=table.column("frames").to_pylist() if "frames" in table.column_names else None,
        )
    except Exception as exc:  # pyarrow raises several types for a damaged file
        log.warning("shard %s is unreadable (%s); its files will be embedded again", path, exc)
        return None


def _faults_of(table: Any) -> list[str] | None:
    if "fault" in table.column_names:
        return table.column("fault").to_pylist()
    if "retry" in table.column_names:  # shards of a clipsearch that recorded only whether to retry
        return [RUNTIME if r else FILE for r in table.column("retry").to_pylist()]
    return None


def _shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SHARD_SUFFIX}")) if folder.is_dir() else []


# -- the embedding actor --------------------------------------------------------------------
class _Embedder:
    """A Ray Data callable class: builds the encoder once per actor, then reads and encodes batches of files.

    In: batches of {path, size, mtime_ns}. Out: the same rows with width, height, error
    ("" when indexed), fault (whose fault the error is), embedding (zeros for a skipped
    file) and facts (JSON, see `facts_to_json`). The stages are the single machine's: `read_file` in a thread pool
    (with the library's fact readers), then `encode_files` batch by batch (a video brings a row per frame).
    """

    def __init__(self, encoder_spec: EncoderSpec, batch_size: int, threads: int,
                 readers: Sequence[FactReader] = ()) -> None:
        self.encoder = encoder_spec.build(threads=max(1, threads))
        self.batch_size = batch_size
        if "torch" in sys.modules:  # one actor per worker slot: no more threads than its CPUs
            import torch

            torch.set_num_threads(max(1, threads))
        self.spec = pixel_spec_of(self.encoder)
        self.read = functools.partial(read_file, target_size=input_size(self.encoder),
                                      spec=self.spec, readers=tuple(readers))
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="decode")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [FileRecord(str(p), int(s), int(m))
                   for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"])]
        decoded = list(self.pool.map(self.read, records))
        vectors = np.zeros((len(records), int(self.encoder.dim)), np.float32)
        errors = [d.error for d in decoded]
        faults = [d.fault for d in decoded]
        times = [""] * len(decoded)
        frames = [b""] * len(decoded)
        ok = [i for i, d in enumerate(decoded) if d.error is None]
        for start in range(0, len(ok), self.batch_size):
            rows = ok[start:start + self.batch_size]
            # A video brings one input per sampled frame; the store stage judges systematic faults.
            results = encode_files(self.encoder, [decoded[i] for i in rows], self.spec, batch_size=self.batch_size,
                                   check=False)
            for i, result in zip(rows, results):
                if result.error:
                    errors[i], faults[i] = result.error, RUNTIME
                elif result.times:
                    vectors[i] = result.vector[0]
                    times[i] = json.dumps(list(result.times))
                    frames[i] = np.ascontiguousarray(result.vector, np.float32).tobytes()
                else:
                    vectors[i] = result.vector
        sizes = [d.original_size for d in decoded]
        return {
            "path": np.array([d.record.path for d in decoded], dtype=object),
            "size": np.array([d.record.size for d in decoded], np.int64),
            "mtime_ns": np.array([d.record.mtime_ns for d in decoded], np.int64),
            "width": np.array([s[0] if s else -1 for s in sizes], np.int32),
            "height": np.array([s[1] if s else -1 for s in sizes], np.int32),
            "error": np.array([e or "" for e in errors], dtype=object),
            "embedding": vectors,
            "facts": np.array([facts_to_json(d.facts) for d in decoded], dtype=object),
            "fault": np.array(faults, dtype=object),
            "times": np.array(times, dtype=object),
            "frames": np.array(frames, dtype=object),
        }


# -- the run --------------------------------------------------------------------------------
def index_on_ray(lib: "Library", root: str | os.PathLike, *, encoder: EncoderSpec | None = None,
                 options: RayOptions | None = None, exclude: Iterable[str | os.PathLike] = (),
                 allow_empty: bool = False, progress: bool = False, index_kind: str | None = None,
                 max_memory: int | str | None = None, wait: float = 0.0, retry_failed: bool = False) -> IndexReport:
    """Sync the photos under `root` into `lib`, embedding on Ray; returns the same report as `Library.index`.

    `encoder` defaults to the library's model and weights. `index_kind` and `max_memory`
    change the library's index choice as for `Library.index`; a trained index kind is
    built on Ray (see the module docstring). `wait` as for `Library.index`.
    """
    from clipsearch.encoder import INT8_BACKEND

    options = options or RayOptions()
    encoder = encoder or EncoderSpec(lib.model, lib.pretrained, lib.device)
    started = time.monotonic()
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    with lib.write_lock(wait), ray_session(options) as ray:
        held = lib.held_precision()
        if held == "int8" and encoder.factory is None and encoder.image_backend in (None, "auto"):
            encoder = replace(encoder, image_backend=INT8_BACKEND)  # as `auto` does on one machine: keep to int8
        lib.indexes.set_choice(index_kind, max_memory)
        lib.catalog.ensure_columns(lib.readers)
        plan = plan_sync(lib.catalog, root, exclude=[lib.folder, *exclude], allow_empty=allow_empty,
                         retry_failed=retry_failed)
        plan.report.attempted = len(plan.todo)
        report = plan.report
        # The index this run ends with, judged before it starts: when it is to be built on
        # Ray anyway, the current one is not updated file by file on the way.
        copies = len(plan.matches.copies) + len(plan.matches.twins)
        expected = lib.catalog.count("ok") - len(plan.gone) + len(plan.todo) + copies
        rebuild = bool(plan.gone or plan.todo or copies) and _needs_ray_build(lib, expected)
        if plan.matches:  # moved and copied photos: nothing to embed
            report.moved, report.copied = store_moves(lib.catalog, None if rebuild else lib.vector_index,
                                                      plan.matches, lib.dim)
            report.added += report.copied
        if plan.gone:
            gone_ids = lib.catalog.with_frames([row.id for row in plan.gone])  # a video's frames go with it
            lib.catalog.remove_images(gone_ids)
            if not rebuild:
                lib.vector_index.remove(gone_ids)
            report.removed = len(plan.gone)
        try:
            _embed_and_ingest(lib, ray, plan, encoder, options, progress, update_index=not rebuild)
            twins = store_twins(lib.catalog, None if rebuild else lib.vector_index, plan.matches.twins, lib.dim)
            report.added += twins
            report.copied += twins
        except KeyboardInterrupt:
            report.interrupted = True
            raise
        finally:
            report.seconds = time.monotonic() - started
        if report.added - report.copied > 0 or report.updated:
            lib.record_precision(held, encoder.precision)
        lib.catalog.set_meta("roots", sorted({*lib.roots(), root}))
        # Facts the library's readers have not read yet, of files not embedded now: read here, no model.
        report.backfilled = backfill_facts(lib.catalog, lib.readers, root, progress=progress)
        if rebuild or _needs_ray_build(lib, lib.catalog.count("ok")) and (plan.gone or plan.todo or copies):
            _install(lib, build_index_on_ray(lib, options=options, ray=ray))
        elif plan.gone or plan.todo or copies:
            from clipsearch.index import IndexConfigError

            try:
                lib.indexes.fit()  # flat or HNSW: as on one machine
            except IndexConfigError as exc:
                log.warning("%s; keeping the %s index", exc, lib.vector_index.describe())
            lib.save_index()
        report.seconds = time.monotonic() - started
        lib.catalog.set_meta("last_report", report.to_dict())
    return report


def rebuild_index_on_ray(lib: "Library", *, options: RayOptions | None = None, index_kind: str | None = None,
                         max_memory: int | str | None = None, wait: float = 0.0) -> int:
    """`Library.rebuild_index` with the build on Ray when the chosen kind is trained; returns the count."""
    with lib.write_lock(wait), ray_session(options) as ray:
        lib.indexes.set_choice(index_kind, max_memory)
        _install(lib, build_index_on_ray(lib, options=options, ray=ray))
    return lib.vector_index.ntotal


def _needs_ray_build(lib: "Library", n: int) -> bool:
    from clipsearch.index import IndexConfigError, needs_rebuild

    try:
        wanted = lib.indexes.wanted_spec(n)
    except IndexConfigError:
        return False  # the single-machine path warns and keeps the index it has
    current = lib.vector_index
    return wanted.needs_training and n > 0 and (needs_rebuild(current.spec, wanted) or is_on_disk(current))


def _embed_and_ingest(lib: "Library", ray: Any, plan: SyncPlan, encoder: EncoderSpec, options: RayOptions,
                      progress: bool, *, update_index: bool) -> None:
    """Embed `plan.todo` on Ray into shards (reusing the shards a dead run completed), then ingest them."""
    if not plan.todo:
        return
    from tqdm import tqdm

    folder = shard_folder(lib.folder, plan.report.root)
    model = f"{lib.model}/{lib.pretrained}"  # the library's model: shards of another are not reused
    for tmp in folder.glob(f".*{SHARD_SUFFIX}.*.tmp") if folder.is_dir() else ():
        tmp.unlink(missing_ok=True)  # a shard a killed run was writing
    wanted = {rec.path: rec for rec in plan.todo}
    # Leftover shards of a run that died: each file they hold, as scanned now, is not embedded again.
    source: dict[str, Path] = {}
    leftovers = _shard_files(folder)
    for path in leftovers:
        shard = read_shard(path, dim=lib.dim, model=model)
        if shard is None:
            path.unlink(missing_ok=True)
            continue
        for p, size, mtime in zip(shard.paths, shard.sizes.tolist(), shard.mtimes.tolist()):
            rec = wanted.get(p)
            if rec is not None and (rec.size, rec.mtime_ns) == (size, mtime):
                source[p] = path
    todo = [rec for rec in plan.todo if rec.path not in source]
    if source:
        log.info("%d files are in shards a previous run completed; embedding the other %d", len(source), len(todo))

    new_shards: list[Path] = []
    if todo:
        bar = tqdm(total=len(todo), unit="img", desc="embedding on ray", disable=not progress, leave=False)
        run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        for n, shard in enumerate(_embed(ray, todo, encoder, options, lib.readers)):
            if shard.vectors.shape[1] != lib.dim:
                raise DistributedError(f"the workers' encoder gives {shard.vectors.shape[1]}-d vectors but library "
                                       f"{lib.folder} holds {lib.dim}-d ones: check --model and --pretrained")
            path = folder / f"{run}-{n:06d}{SHARD_SUFFIX}"
            write_shard(path, shard, model=model)
            new_shards.append(path)
            bar.update(len(shard))
        bar.close()

    # Ingest in order: leftovers first (by name: by run, then by position), then this run's shards.
    for path in [p for p in leftovers if p.exists()] + new_shards:
        shard = read_shard(path, dim=lib.dim, model=model)
        if shard is None:
            raise DistributedError(f"shard {path} was written by this run and cannot be read back")
        keep = [i for i, p in enumerate(shard.paths)
                if p in wanted and source.get(p, path if path in new_shards else None) == path]
        for p in (shard.paths[i] for i in keep):
            del wanted[p]  # a file is ingested once, even if a shard held it twice
        for start in range(0, len(keep), INGEST_CHUNK):
            store_chunk(lib.catalog, lib.vector_index if update_index else None,
                        shard.results(keep[start:start + INGEST_CHUNK]), plan.known, plan.report)
    # Everything a shard held is in the catalog now (or was stale): the shards have done their job.
    for path in _shard_files(folder):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _worker_resources(ray: Any, options: RayOptions) -> tuple[int, float, float]:
    """(actors, CPUs each, GPUs each) for the embedding pool."""
    resources = ray.cluster_resources()
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    if options.workers:
        workers = options.workers
    elif gpus:
        workers = max(1, int(resources.get("GPU", 0) // gpus))
    else:
        workers = max(1, int(resources.get("CPU", 1) // options.cpus_per_worker))
    return workers, options.cpus_per_worker, gpus


def _embed(ray: Any, todo: Sequence[FileRecord], encoder: EncoderSpec, options: RayOptions,
           readers: Sequence[FactReader] = ()) -> Iterator[Shard]:
    """Run the Ray Data pipeline over `todo`; yields shards of `options.shard_rows` rows in listing order."""
    import ray.data

    workers, cpus, gpus = _worker_resources(ray, options)
    if gpus and encoder.factory is None and encoder.device is None:
        encoder = replace(encoder, device="cuda")
    items = [{"path": r.path, "size": r.size, "mtime_ns": r.mtime_ns} for r in todo]
    blocks = max(1, min(len(items), math.ceil(len(items) / options.batch_size)))
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    # In order, so shards (and catalog ids) follow the listing; a slow batch holds the others back a little.
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            _Embedder,
            fn_constructor_kwargs={"encoder_spec": encoder, "batch_size": options.batch_size,
                                   "threads": max(1, int(cpus)), "readers": readers},
            batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus,
            num_gpus=gpus or None,
        )
        log.info("embedding %d files on Ray with %d workers (%s CPU, %s GPU each)", len(items), workers, cpus, gpus)
        for batch in ds.iter_batches(batch_size=options.shard_rows, batch_format="numpy"):
            errors = [str(e) or None for e in batch["error"]]
            yield Shard(paths=[str(p) for p in batch["path"]], sizes=batch["size"], mtimes=batch["mtime_ns"],
                        widths=batch["width"], heights=batch["height"], errors=errors,
                        vectors=np.asarray(batch["embedding"], np.float32),
                        facts=[facts_from_json(f) for f in batch["facts"]], faults=[str(f) for f in batch["fault"]],
                        times=[str(t) for t in batch["times"]], frames=[bytes(f) for f in batch["frames"]])
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


# -- the index build ------------------------------------------------------------------------
def is_on_disk(index: "VectorIndex") -> bool:
    """Whether `index` serves its inverted lists from a memory-mapped .ivfdata file."""
    import faiss

    if not index.spec.needs_training:
        return False
    invlists = faiss.extract_index_ivf(index.faiss_index).invlists
    return isinstance(faiss.downcast_InvertedLists(invlists), faiss.OnDiskInvertedLists)


def _train_part(factory_spec: "IndexSpec", dim: int, train: np.ndarray, threads: int) -> np.ndarray:
    """Ray task: the empty index of `factory_spec`, trained on `train`, serialized."""
    import faiss

    from clipsearch.index import new_faiss_index, train_index

    faiss.omp_set_num_threads(max(1, threads))
    index = new_faiss_index(factory_spec, dim)
    train_index(index, factory_spec, np.ascontiguousarray(train, dtype=np.float32))
    return faiss.serialize_index(index)


def _add_part(trained: np.ndarray, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int,
              threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray task: a block of vectors added to a copy of the trained index, and the block's exact top-k for `queries`."""
    import faiss

    from clipsearch.index.exact import block_top_k

    faiss.omp_set_num_threads(max(1, threads))
    index = faiss.deserialize_index(trained)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
    scores, found = block_top_k(queries, vectors, ids, k)
    return faiss.serialize_index(index), scores, found


def build_index_on_ray(lib: "Library", spec: "IndexSpec | None" = None, *, options: RayOptions | None = None,
                       ray: Any = None) -> "VectorIndex":
    """Build `lib`'s index from its stored vectors; trained kinds on Ray into a memory-mapped on-disk index.

    `spec` defaults to what the library's index choice picks for its size. Flat and HNSW
    are built as on one machine. The result is not installed: see `_install`.
    """
    from clipsearch.index import RECALL_K, TARGET_RECALL, TRAIN_MAX, IndexMeta, VectorIndex, spec_fields, tune
    from clipsearch.index.lifecycle import build_from_catalog, build_sample, exact_vectors_from

    options = options or RayOptions()
    if ray is None:
        with ray_session(options) as ray:
            return build_index_on_ray(lib, spec, options=options, ray=ray)
    catalog, dim = lib.catalog, lib.dim
    n = catalog.count("ok")
    spec = spec or lib.indexes.wanted_spec(n)
    if not spec.needs_training or not n:
        return build_from_catalog(catalog, dim, spec)

    started = time.monotonic()
    # The single-machine build's sample and queries (real text embeddings among them).
    sample, queries = build_sample(catalog, dim, TRAIN_MAX, np.random.default_rng(0))

    cpus = max(1, int(options.cpus_per_worker))
    total_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    train_cpus = min(total_cpus, 4)
    trained = ray.get(ray.remote(num_cpus=train_cpus)(_train_part).remote(spec, dim, sample, train_cpus))
    trained_ref, queries_ref = ray.put(trained), ray.put(queries)
    add = ray.remote(num_cpus=cpus, max_retries=3)(_add_part).options(num_returns=3)

    build_dir = Path(tempfile.mkdtemp(prefix=".index-build-", dir=lib.folder))
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    ivfdata = lib.folder / f"{IVFDATA_PREFIX}{stamp}{IVFDATA_SUFFIX}"
    import faiss

    try:
        part_files: list[str] = []
        exact = faiss.ResultHeap(len(queries), RECALL_K, keep_max=True)  # each part's exact top-k, merged
        pending: list[tuple[Any, Any, Any]] = []
        in_flight = max(2, 2 * total_cpus // cpus)  # bounds the vectors waiting in the object store

        def collect(refs: tuple[Any, Any, Any]) -> None:
            part, scores, ids = ray.get(list(refs))
            path = build_dir / f"part-{len(part_files):06d}.index"
            part.tofile(path)
            part_files.append(str(path))
            exact.add_result(scores, ids)

        for ids, vectors in catalog.iter_vectors(dim, batch=options.part_rows):
            pending.append(add.remote(trained_ref, ids, vectors, queries_ref, RECALL_K, cpus))
            if len(pending) >= in_flight:
                ready, _ = ray.wait([p[0] for p in pending], num_returns=1)
                done = next(p for p in pending if p[0] == ready[0])
                pending.remove(done)
                collect(done)
        for refs in pending:
            collect(refs)

        from faiss.contrib.ondisk import merge_ondisk

        merged = faiss.deserialize_index(trained)
        merge_ondisk(merged, part_files, str(ivfdata))
    except BaseException:
        ivfdata.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)

    exact.finalize()
    true_ids = exact.I
    meta = IndexMeta(kind=spec.kind, dim=dim, spec=spec_fields(spec), factory=spec.factory(dim),
                     built_at=time.time(),
                     extra={"layout": "ondisk", "ivfdata": ivfdata.name, "built_on": "ray",
                            "parts": len(part_files)})
    index = VectorIndex(merged, meta)
    index.exact_vectors = exact_vectors_from(lib.catalog, dim)  # lossy codes are tuned as they will search
    tune(index, queries, true_ids, TARGET_RECALL, RECALL_K)
    meta.build_seconds = round(time.monotonic() - started, 3)
    log.info("built %s over %d vectors on Ray in %d parts in %.1fs, recall@%d %s", index.describe(), index.ntotal,
             len(part_files), meta.build_seconds, RECALL_K, meta.recall_at_10)
    return index


def _install(lib: "Library", index: "VectorIndex") -> None:
    """Make `index` the library's (saved atomically), then delete .ivfdata files no index refers to any more."""
    lib.indexes.install(index)
    keep = index.meta.extra.get("ivfdata") if is_on_disk(index) else None
    for path in lib.folder.glob(f"{IVFDATA_PREFIX}*{IVFDATA_SUFFIX}"):
        if path.name != keep:
            path.unlink(missing_ok=True)


__all__ = [
    "DEFAULT_SHARD_ROWS", "DistributedError", "EncoderSpec", "RayOptions", "Shard", "build_index_on_ray",
    "index_on_ray", "is_on_disk", "ray_session", "read_shard", "rebuild_index_on_ray", "shard_folder",
    "write_shard",
]
