"""Atomic file writes: a crash leaves either the old file or the new one, never a mix.

The one way clipsearch replaces a file: a uniquely named temp file in the same folder,
written and fsynced, `os.replace`d over the target, then the folder fsynced so the
rename itself survives a power cut.
"""
from __future__ import annotations

import glob
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_stale_temp_files(path: str | Path) -> int:
    """Delete the temp files of `atomic_write_bytes(path)` (and of its sidecar) left by a killed process.

    Only safe while no other process can be writing `path` (the library's write lock).
    """
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d temp files a killed process left next to %s", removed, path)
    return removed


__all__ = ["atomic_write_bytes", "remove_stale_temp_files"]
