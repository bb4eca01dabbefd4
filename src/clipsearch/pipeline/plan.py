"""Stage 1, plan: scan a folder and diff it against the catalog (`plan_sync`), the one diff both executors use.

Also the report every run returns (`IndexReport`, `SkippedFile`).
"""
from __future__ import annotations

import json
import logging
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from clipsearch.errors import PhotoRootError
from clipsearch.images import decoder_stack
from clipsearch.moves import MovePlan, find_moves
from clipsearch.scan import FileRecord, scan

if TYPE_CHECKING:
    from clipsearch.catalog import Catalog, ImageRow

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
    moved: int = 0  # photos found under a new path: same id, vector, metadata and labels, nothing encoded
    copied: int = 0  # of `added`: copies of indexed photos (same bytes), given their vector, not encoded
    skipped: list[SkippedFile] = field(default_factory=list)
    unmounted: list[str] = field(default_factory=list)  # drives mounted inside the root at the last sync, not now
    seconds: float = 0.0
    interrupted: bool = False
    attempted: int = 0  # files this run tried to decode and encode
    retried_failures: int = 0  # stored failures tried again (--retry-failed, or a new decoder stack)
    backfilled: int = 0  # unchanged files whose facts were read again (see clipsearch.facts)
    # Where the run's time went, stage by stage, in run order (`StageClock`): {"scan": {"seconds":
    # wall, "cpu_seconds", "system_seconds", "major_faults"}, ...}, this process and its decode workers.
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "IndexReport":
        data = dict(data)
        data["skipped"] = [SkippedFile(**s) for s in data.get("skipped", [])]
        return cls(**data)

    def summary(self) -> str:
        parts = [f"{self.added} added" + (f" ({self.copied} copies, not encoded)" if self.copied else ""),
                 f"{self.updated} updated", f"{self.moved} moved", f"{self.removed} removed",
                 f"{self.unchanged} unchanged", f"{len(self.skipped)} skipped"]
        retry = sum(s.retry for s in self.skipped)
        if retry:
            parts[-1] += f" ({retry} to be tried again next run)"
        if self.previously_failed:
            parts.append(f"{self.previously_failed} still failing from earlier runs (--retry-failed tries them again)")
        if self.waiting:
            parts.append(f"{self.waiting} still being written")
        if self.backfilled:
            parts.append(f"{self.backfilled} facts back-filled")
        if self.interrupted:
            parts.append("stopped early")
        return f"{self.root}: " + ", ".join(parts) + f" in {self.seconds:.1f}s"

    def stage_summary(self) -> str:
        """The stages' times on one line: 'scan 0.41 s (CPU 0.38 s, system 0.20 s, 0 page-ins), ...'."""
        return ", ".join(f"{name} {t['seconds']:.2f} s (CPU {t['cpu_seconds']:.2f} s, system "
                         f"{t.get('system_seconds', 0):.2f} s, {t.get('major_faults', 0)} page-ins)"
                         for name, t in self.stages.items())

    @property
    def all_failed(self) -> bool:
        """True when the run tried files and every file under the root failed: none is indexed (the CLI exits 1).

        One new broken photo in a library of good ones is not this: it is skipped and
        remembered, and the run succeeds.
        """
        return self.attempted > 0 and self.added + self.updated + self.unchanged == 0


class StageClock:
    """Times consecutive stages of a run into a report's `stages`.

    Each stage gets `seconds` (wall), `cpu_seconds` (user + system), `system_seconds` (the
    kernel's part: file system, page reclaim under memory pressure) and `major_faults`
    (pages read back from disk, e.g. code evicted by memory pressure), counting this
    process (all threads) and its child processes once reaped (decode workers are, when
    their stage closes its pool). A stage whose wall time far exceeds its CPU waited (for
    the cores, the disk, a lock); one whose CPU is as long worked, in Python or native
    code when it is user time, in the kernel when it is system time. A stage timed twice
    adds up.
    """

    def __init__(self, stages: dict[str, dict[str, float]]) -> None:
        self.stages = stages
        self._last = _clock()

    def lap(self, stage: str) -> None:
        """Record the time since the previous lap (or the clock's start) as `stage`."""
        now = _clock()
        old = self.stages.get(stage, {})
        self.stages[stage] = {key: round(old.get(key, 0) + now[key] - self._last[key], 4) for key in now}
        self.stages[stage]["major_faults"] = int(self.stages[stage]["major_faults"])
        self._last = now


def _clock() -> dict[str, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    system = own.ru_stime + children.ru_stime
    return {"seconds": time.monotonic(), "cpu_seconds": own.ru_utime + children.ru_utime + system,
            "system_seconds": system, "major_faults": own.ru_majflt + children.ru_majflt}


MOUNTS_META = "mounts"  # catalog meta: {root: [mount points under it seen by the last sync]}


def _not_mounted(count: int) -> str:
    return (f"drive not mounted here now: its {count} indexed photos were kept; mount it again, "
            "or pass --allow-empty to remove them from the library")


@dataclass
class SyncPlan:
    """What a sync must do under one root: catalog rows gone, files to (re-)encode."""

    report: IndexReport
    known: "dict[str, ImageRow]" = field(default_factory=dict)  # path -> catalog row, under the root
    gone: "list[ImageRow]" = field(default_factory=list)         # catalog rows whose files are gone
    todo: list[FileRecord] = field(default_factory=list)
    matches: MovePlan = field(default_factory=MovePlan)  # new files here that are moved or copied photos


def plan_sync(catalog: "Catalog", root: str, *, exclude: Iterable[str | os.PathLike] = (),
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
    clock = StageClock(report.stages)
    found = scan(root, exclude=exclude)
    clock.lap("scan")
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
        count = sum(1 for path, row in known.items() if row.status == "ok" and under_any(path, [mount]))
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
    plan.gone = [row for path, row in known.items() if path not in on_disk and not under_any(path, keep)]
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
    clock.lap("diff")
    _match_moves(catalog, plan)
    clock.lap("match_moves")
    return plan


def _match_moves(catalog: "Catalog", plan: SyncPlan) -> None:
    """Take out of the plan the new files that are moved or copied photos (`clipsearch.moves`),
    and the gone rows that moved: they are stored without encoding, and not removed."""
    matches = find_moves(catalog, [rec for rec in plan.todo if rec.path not in plan.known], plan.gone)
    if not matches:
        return
    taken = {rec.path for _, rec, _ in [*matches.moves, *matches.copies]} | {rec.path for rec, _ in matches.twins}
    moved = {row.id for row, _, _ in matches.moves}
    plan.todo = [rec for rec in plan.todo if rec.path not in taken]
    plan.gone = [row for row in plan.gone if row.id not in moved]
    plan.matches = matches
    log.info("%d moved, %d copies of indexed photos, %d copies of new ones (%d files hashed)",
             len(matches.moves), len(matches.copies), len(matches.twins), matches.hashed)


def under_any(path: str, folders: Sequence[str]) -> bool:
    """Whether `path` is one of `folders` or inside one."""
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


__all__ = ["IndexReport", "MOUNTS_META", "SkippedFile", "StageClock", "SyncPlan", "plan_sync", "under_any"]
