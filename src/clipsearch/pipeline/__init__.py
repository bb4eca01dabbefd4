"""Indexing as a row of named stages with public signatures, composed by two executors.

    plan ──────────► read ───────────────► encode ─────────► store
    scan + diff      file → model pixels    batch → vectors   catalog chunk (one
    against the      + per-file facts       (one-by-one       transaction) + index
    catalog          (clipsearch.facts)     retry on failure) add / remove

| stage | module | entry point |
|---|---|---|
| plan | `pipeline.plan` | `plan_sync(catalog, root) -> SyncPlan` (what is gone, what to read) |
| read | `pipeline.read` | `read_file(record, target_size, spec, readers) -> Decoded`, in decode workers |
| encode | `pipeline.encode` | `encode_batch(encoder, inputs, spec) -> (vectors, errors)` |
| store | `pipeline.store` | `store_chunk(catalog, index, results, known, report)` |

Whose fault a failed file is (stored, or tried again next run) is `pipeline.faults`'.

The executors: `clipsearch.indexer.Indexer` runs read in a process pool a bounded window
ahead of encode and store on one machine; `clipsearch.distributed` runs read and encode
in Ray Data actors, writes Parquet shards, and stores them with the same `store_chunk`.
A new per-file field is a `FactReader` (see `clipsearch.facts`): no executor changes.
"""
from __future__ import annotations

from clipsearch.pipeline.encode import encode_batch, encode_files, pixel_spec_of
from clipsearch.pipeline.faults import FILE, READ, RUNTIME, check_systematic
from clipsearch.pipeline.plan import IndexReport, SkippedFile, SyncPlan, plan_sync
from clipsearch.pipeline.read import Decoded, read_facts_only, read_file
from clipsearch.pipeline.store import FileResult, store_chunk

__all__ = [
    "FILE", "READ", "RUNTIME", "Decoded", "FileResult", "IndexReport", "SkippedFile", "SyncPlan", "check_systematic",
    "encode_batch", "encode_files", "pixel_spec_of", "plan_sync",
    "read_facts_only", "read_file", "store_chunk",
]
