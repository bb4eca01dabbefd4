"""Atomic file writes: a crash leaves either the old file or the new one, never a mix.

The one way clipsearch replaces a file: a uniquely named temp file in the same folder,
written and fsynced, `os.replace`d over the target, then the folder fsynced so the
rename itself survives a power cut. Used by the index and its sidecar, the Ray shards,
training checkpoints and metrics, the ONNX exports, the toy world's CSVs and the
thumbnail cache (without the fsyncs: a cache).
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

log = logging.getLogger(__name__)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (a rename, a new file) durable; quietly a no-op where folders can't be fsynced."""
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


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", *, durable: bool = True,
                  newline: str | None = None) -> Iterator[IO[Any]]:
    """A file to write `path` through: it replaces `path` when the block ends, and not at all if the block raises.

    The temp file (".NAME.<random>.tmp" in the same folder, so the rename stays on one
    file system) is fsynced before the rename and the folder after it. `mode` is "wb"
    or "w" (UTF-8 text; `newline` as for `open`, "" for csv). `durable=False` skips the
    fsyncs, for caches: readers still never see half a file, but a power cut may lose it.
    """
    path = Path(path)
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_writer mode must be 'wb' or 'w', not {mode!r}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text = {"encoding": "utf-8", "newline": newline} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _replace(tmp, path, durable)


def _replace(tmp: str, path: Path, durable: bool) -> None:
    """Put the finished temp file in `path`'s place (and make the rename durable); remove it if that fails."""
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """`atomic_writer` for writers that want a file name (torch.save, an ONNX export): write the yielded path.

    The temp file exists (empty) when the block starts and ends with `path`'s own suffix
    (".tmp.npy": np.save and exporters that judge a file by its suffix write to it as
    named); it replaces `path` when the block ends, and is removed if it raises.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _replace(tmp, path, durable)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never a mix."""
    with atomic_writer(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


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


__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_writer", "fsync_dir", "remove_stale_temp_files"]
