"""Moving the others of duplicate groups to a folder, with a journal, and putting them back.

clipsearch never deletes a photo. `move_others` moves every member of each group except
the keeper under a destination folder, keeping the path below its photo root
(`DEST/<root name>/<path under the root>`), and the catalog follows each move (same id,
same vector: nothing is encoded again).

The journal (`DEST/clipsearch-moves-<time>.jsonl`) is written and flushed to disk
*before* the first move: its first line is the plan (every source and destination),
then one line per completed move. A move is a rename on one file system; across file
systems a copy to a temporary name, fsync, rename into place, then removal of the
source: an interruption at any point leaves the file in its old place, its new place, or
(after the copy, before the removal) both, never neither. `undo` reads the plan and looks
at the disk, not at the completion lines, so it is right whatever happened: a file at
its destination goes back, a file still at its source stays, and a leftover copy next to
an intact source is removed.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clipsearch.atomic import fsync_dir
from clipsearch.errors import ClipSearchError

if TYPE_CHECKING:
    from clipsearch.catalog import Catalog
    from clipsearch.duplicates.groups import DuplicateGroup

log = logging.getLogger(__name__)

JOURNAL_VERSION = 1


class MoveError(ClipSearchError):
    """Files could not be moved (or put back) as asked; the message says which and what to do."""


@dataclass(frozen=True)
class Move:
    """One file to move: from `src` to `dst`; `id` is its catalog id."""

    src: str
    dst: str
    id: int | None = None


@dataclass(frozen=True)
class MoveJournal:
    """What a move (or an undo) did: `done` moves completed, `failed` as (path, reason)."""

    path: str | None
    moves: tuple[Move, ...]
    done: tuple[Move, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"journal": self.path, "dry_run": self.dry_run,
                "moves": [{"from": m.src, "to": m.dst, "id": m.id} for m in self.moves],
                "done": len(self.done), "failed": [{"path": p, "reason": r} for p, r in self.failed]}


def plan_moves(groups: "Sequence[DuplicateGroup]", dest: str | os.PathLike, roots: Sequence[str] = ()) -> list[Move]:
    """Where each non-keeper would go: DEST/<root name>/<path under its root> (DEST/<full path> outside the roots)."""
    dest_p = Path(os.path.abspath(os.path.expanduser(os.fspath(dest))))
    roots = sorted((os.path.abspath(r) for r in roots), key=len, reverse=True)
    taken: set[str] = set()
    keepers = {g.keep_id for g in groups}
    moves: list[Move] = []
    seen: set[int] = set()
    for g in groups:
        for m in g.others:
            if m.id in seen or m.id in keepers:
                continue  # a photo in two groups moves once; a keeper of another group stays
            seen.add(m.id)
            src = os.path.abspath(m.path)
            root = next((r for r in roots if src.startswith(r.rstrip("/") + "/")), None)
            rel = (os.path.join(os.path.basename(root.rstrip("/")) or "root", os.path.relpath(src, root)) if root
                   else src.lstrip("/"))
            dst = str(dest_p / rel)
            stem, ext = os.path.splitext(dst)
            k = 1
            while dst in taken or os.path.lexists(dst):
                dst = f"{stem} ({k}){ext}"
                k += 1
            taken.add(dst)
            moves.append(Move(src, dst, m.id))
    return moves


def _append(fh: Any, record: dict[str, Any]) -> None:
    fh.write(json.dumps(record) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def _move_file(src: str, dst: str) -> None:
    """Move one file so that it is always in its old place or its new one (see the module docstring)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        raise FileExistsError(f"{dst} already exists")
    try:
        os.rename(src, dst)
    except OSError as exc:
        import errno

        if exc.errno != errno.EXDEV:
            raise
        tmp = f"{dst}.clipsearch-tmp"
        try:
            shutil.copy2(src, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dst)
        except BaseException:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise
        try:
            os.unlink(src)
        except OSError:
            os.unlink(dst)  # the source could not go: the copy must not stay
            raise
    fsync_dir(os.path.dirname(dst))
    fsync_dir(os.path.dirname(src))


def move_others(catalog: "Catalog", groups: "Sequence[DuplicateGroup]", dest: str | os.PathLike, *,
                roots: Sequence[str] = (), dry_run: bool = False) -> MoveJournal:
    """Move the non-keepers of `groups` under `dest` with a journal written first; the catalog follows."""
    moves = plan_moves(groups, dest, roots)
    if dry_run or not moves:
        return MoveJournal(None, tuple(moves), dry_run=dry_run)
    dest_p = Path(os.path.abspath(os.path.expanduser(os.fspath(dest))))
    if dest_p.exists() and not dest_p.is_dir():
        raise MoveError(f"--move-to {dest_p} is a file; give a folder (it is created when missing)")
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    journal = dest_p / f"clipsearch-moves-{stamp}.jsonl"
    try:
        dest_p.mkdir(parents=True, exist_ok=True)
        fh = open(journal, "x", encoding="utf-8")
    except OSError as exc:
        raise MoveError(f"cannot write the move journal in {dest_p} ({exc.strerror or exc}); nothing was moved: "
                        "choose a folder you can write to") from exc
    done: list[Move] = []
    failed: list[tuple[str, str]] = []
    with fh:
        _append(fh, {"journal": JOURNAL_VERSION, "created": stamp, "catalog": str(catalog.path),
                     "moves": [{"from": m.src, "to": m.dst, "id": m.id} for m in moves]})
        fsync_dir(str(dest_p))
        for i, m in enumerate(moves):
            try:
                _move_file(m.src, m.dst)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                log.warning("could not move %s to %s: %s", m.src, m.dst, reason)
                failed.append((m.src, reason))
                continue
            try:
                catalog.rename_path(m.src, m.dst)
            except ClipSearchError as exc:
                # The file moved; the catalog still names its old place. The next index run
                # of that root drops the old path; undo puts the file back where it says.
                log.warning("moved %s but could not record it in the catalog: %s", m.src, exc)
            _append(fh, {"done": i})
            done.append(m)
    return MoveJournal(str(journal), tuple(moves), tuple(done), tuple(failed))


def read_journal(path: str | os.PathLike) -> list[Move]:
    """The planned moves of a journal written by `move_others`."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    try:
        with open(path, encoding="utf-8") as fh:
            head = json.loads(fh.readline())
    except FileNotFoundError:
        raise MoveError(f"no move journal at {path}; give the clipsearch-moves-*.jsonl file that "
                        "`clipsearch duplicates --move-to` wrote") from None
    except (OSError, ValueError) as exc:
        raise MoveError(f"{path} is not a clipsearch move journal ({exc})") from None
    if not isinstance(head, dict) or head.get("journal") != JOURNAL_VERSION or not isinstance(head.get("moves"), list):
        raise MoveError(f"{path} is not a clipsearch move journal (version {JOURNAL_VERSION})")
    return [Move(str(m["from"]), str(m["to"]), m.get("id")) for m in head["moves"]]


def undo(catalog: "Catalog", journal: str | os.PathLike) -> MoveJournal:
    """Put back every file of a journal that is at its destination; the catalog follows."""
    path = os.path.abspath(os.path.expanduser(os.fspath(journal)))
    moves = read_journal(path)
    done: list[Move] = []
    failed: list[tuple[str, str]] = []
    with open(path, "a", encoding="utf-8") as fh:
        for i, m in enumerate(moves):
            at_src, at_dst = os.path.lexists(m.src), os.path.lexists(m.dst)
            try:
                if at_dst and not at_src:
                    _move_file(m.dst, m.src)
                    catalog.rename_path(m.dst, m.src)
                    done.append(Move(m.dst, m.src, m.id))
                elif at_dst and at_src:
                    if os.path.getsize(m.dst) == os.path.getsize(m.src) and catalog.find_path(m.dst) is None:
                        os.unlink(m.dst)  # a copy left by an interrupted cross-device move
                    else:
                        failed.append((m.dst, f"both {m.src} and {m.dst} exist; left as they are"))
                        continue
                elif not at_src:
                    failed.append((m.src, "neither the file nor its moved copy exists"))
                    continue
                catalog.rename_path(m.dst, m.src)  # in case the catalog missed the move back
            except (OSError, ClipSearchError) as exc:
                failed.append((m.dst, getattr(exc, "strerror", None) or str(exc)))
                continue
            _append(fh, {"undone": i})
    return MoveJournal(path, tuple(moves), tuple(done), tuple(failed))
