"""Whose fault a failed file is, shared by the stages and both executors.

FILE: the bytes' (not an image, truncated, corrupt, unsupported, over a cap, a decoder
that crashes on them twice): remembered in the catalog, stamped with the decoder stack
(`images.decoder_stack`), until the file or the decoders change. READ: the file could not
be read just now (gone, permissions, I/O error, changed while read). RUNTIME: the
machine's or the model's (a worker killed, a timeout, an encoder error). READ and RUNTIME
failures are reported with `retry=True` and never stored: the next run tries the file
again. The same runtime failure on every file of a batch stops the run (`IndexingError`).
"""
from __future__ import annotations

from typing import Sequence

from clipsearch.errors import IndexingError

FILE, READ, RUNTIME = "file", "read", "runtime"
# A batch of at least this many files that all fail the same way, for a reason not their
# own, stops the run: the fault is the machine's or the model's, not the files'.
SYSTEMATIC_MIN = 4


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


__all__ = ["FILE", "READ", "RUNTIME", "SYSTEMATIC_MIN", "check_systematic"]
