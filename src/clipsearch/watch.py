"""Keep a library in step with its photo folders as files change: `Watcher`.

Events only say *that* something under a root changed; what changed is decided by one
ordinary sync of that root (`Library.index`: scan, diff against the catalog, encode what
is new), so whatever the events missed the sync still finds, a restart catches up with
one sync per root, and an unmounted drive keeps its photos exactly as `index` keeps them.

Events come from watchdog (inotify on Linux). A root is polled instead (watchdog's
polling observer, which compares directory snapshots) when events cannot be had there: a
network share or FUSE mount, whose changes made by other machines the kernel never hears
of, or a tree that does not fit in the inotify watch limit. Each fallback is reported.

A batch waits until events have stopped for `debounce` seconds (at most `max_delay`
after the first, so a long copy is synced as it goes); a file written less than `settle`
seconds ago and not closed since is left for the next batch, so a photo still being
copied is never read half-written. A sync holds the library's write lock only while it
runs; readers (the web UI, `clipsearch search`) take in its work at its next index save.

Longer than most modules on purpose: the event source, the polling fallback, batching, files
still being written, lost roots and stopping share one watcher state; each piece is small.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from clipsearch.errors import ClipSearchError, LibraryLockedError, PhotoRootError
from clipsearch.scan import INDEXED_EXTENSIONS

if TYPE_CHECKING:
    from clipsearch.indexer import IndexReport
    from clipsearch.library import Library
    from clipsearch.scan import FileRecord

__all__ = ["NETWORK_FILESYSTEMS", "WatchConfig", "WatchNotice", "Watcher", "WatchThread", "filesystem_type",
           "inotify_watch_count", "watch_method"]

log = logging.getLogger(__name__)

# File systems whose changes may come from elsewhere (another machine, a FUSE daemon), so
# inotify never hears of them: polled. fuseblk (ntfs-3g, exfat on a USB drive) is local.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre", "gpfs",
    "davfs", "fuse", "fuse.sshfs", "fuse.rclone", "fuse.s3fs", "fuse.gcsfuse", "fuse.davfs2",
})


@dataclass(frozen=True)
class WatchConfig:
    """How a `Watcher` batches and checks. Times in seconds."""

    debounce: float = 0.5        # a batch starts once events have stopped this long...
    max_delay: float = 10.0      # ...or this long after its first event, during a long copy
    settle: float = 2.0          # a file modified this recently and not closed since waits
    poll: float | None = None    # poll every root at this interval; None: events where they work
    fallback_poll: float = 30.0  # the interval for a root that cannot have events
    recheck: float = 10.0        # how often a missing root, and the mounts under the roots, are looked at
    full_sync_every: float | None = 3600.0  # a sync of every root even without events (lost events)
    lock_wait: float = 2.0       # how long a batch waits for another writer before trying later


@dataclass(frozen=True)
class WatchNotice:
    """What the watcher tells its caller: a sync done, a root gone or back, a fallback to polling."""

    kind: str                    # "sync", "missing", "back", "polling", "events", "busy", "error"
    root: str
    message: str
    report: "IndexReport | None" = None

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "root": self.root, "message": self.message,
                "report": self.report.to_dict() if self.report is not None else None}


# -- where events work ---------------------------------------------------------------------

def _unescape_mount(field_: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as octal escapes.
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and len(field_[i + 1:i + 4]) == 3 and field_[i + 1:i + 4].isdigit():
            out.append(chr(int(field_[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def _mount_table() -> list[tuple[str, str]]:
    """(mount point, file system type) of every mount this process sees; empty where unknown."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    table = []
    for line in lines:
        left, _, right = line.partition(" - ")
        parts, kinds = left.split(), right.split()
        if len(parts) >= 5 and kinds:
            table.append((_unescape_mount(parts[4]), kinds[0]))
    return table


def _is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def filesystem_type(path: str, mounts: Sequence[tuple[str, str]] | None = None) -> str | None:
    """The type of the file system holding `path` ("ext4", "nfs4", "fuse.sshfs"...), or None if unknown.

    `mounts`: (mount point, type) pairs; default this process's mount table.
    """
    real = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for mount, kind in (_mount_table() if mounts is None else mounts):
        if _is_under(real, mount) and (best is None or len(mount) >= best[0]):
            best = (len(mount), kind)
    return best[1] if best else None


def _mounts_under(path: str, mounts: Sequence[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    real = os.path.realpath(path)
    return sorted((m, k) for m, k in (_mount_table() if mounts is None else mounts) if m != real and _is_under(m, real))


def watch_method(root: str, poll: float | None = None, *,
                 mounts: Sequence[tuple[str, str]] | None = None) -> tuple[str, str]:
    """("events" or "poll", why) for `root`: polled when asked (`poll`), or when it or a
    drive mounted inside it is a network or FUSE file system. `mounts`: as for `filesystem_type`."""
    if poll is not None:
        return "poll", "polling was asked for (--poll)"
    if mounts is None:
        mounts = _mount_table()
    for mount, kind in [(root, filesystem_type(root, mounts) or "")] + _mounts_under(root, mounts):
        if kind in NETWORK_FILESYSTEMS or kind.startswith("fuse."):
            return "poll", (f"{mount} is on a {kind} file system, whose changes made elsewhere send no events")
    return "events", "inotify"


def inotify_watch_count() -> int | None:
    """How many inotify watches this process holds (all its inotify instances), or None if unknown."""
    total, found = 0, False
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as fh:
                total += sum(1 for line in fh if line.startswith("inotify wd:"))
            found = True
        except OSError:
            continue
    return total if found else None


def _count_dirs(root: str) -> int:
    """The folders under `root` (itself included) an inotify watch of the tree needs, as watchdog walks them."""
    count = 1
    for top, dirs, _ in os.walk(root):
        count += sum(1 for d in dirs if not os.path.islink(os.path.join(top, d)))
    return count


def _max_user_watches() -> str:
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown"


# -- the watcher -------------------------------------------------------------------------------

@dataclass
class _Root:
    """What the watcher knows of one root."""

    path: str
    observer: Any = None              # the watchdog observer watching it (None: covered by an outer root, or missing)
    method: str = ""                  # "events" or "poll"
    first_event: float | None = None  # monotonic time of the first event since the last batch
    last_event: float = 0.0
    closed: set[str] = field(default_factory=set)  # files closed after writing (or moved in) since the last batch
    new_dirs: bool = False            # a folder appeared: check the watch limit after the batch
    arrivals: int = 0                 # files created or moved in since the last batch
    due_at: float | None = None       # a sync due at this time without events (waiting files, a retry)
    missing: bool = False             # the last sync could not read it (deleted, drive unmounted)
    identity: tuple[Any, ...] = ()    # (st_dev, st_ino, mounts under it) when its observer started
    last_sync: float = 0.0


class _Handler:
    """Receives watchdog's events for one observed tree and hands the relevant ones to the watcher."""

    def __init__(self, watcher: "Watcher") -> None:
        self.watcher = watcher

    def dispatch(self, event: Any) -> None:
        self.watcher._note(event)


class Watcher:
    """Syncs a library's roots as their files change, until `stop` is set (`run`).

    The library must stay with the thread that calls `run`. `notify` receives a
    `WatchNotice` for each sync that changed something and for each root lost, found
    again or moved to polling (the CLI prints them); library code only logs.
    """

    def __init__(self, library: "Library", roots: Sequence[str | os.PathLike], *,
                 exclude: Iterable[str | os.PathLike] = (), config: WatchConfig | None = None,
                 notify: Callable[[WatchNotice], None] | None = None,
                 watch_count: Callable[[], int | None] = inotify_watch_count) -> None:
        if not roots:
            raise ClipSearchError(f"nothing to watch: library {library.folder} has no photo folders yet; "
                                  "name the folders to watch, or index one first")
        self.library = library
        self.config = config or WatchConfig()
        self.exclude = [os.path.abspath(os.path.expanduser(os.fspath(p))) for p in exclude]
        self.notify = notify or (lambda notice: None)
        self.watch_count = watch_count
        paths = list(dict.fromkeys(os.path.abspath(os.path.expanduser(os.fspath(r))) for r in roots))
        self.roots = {p: _Root(p) for p in paths}
        self._ignored = [str(library.folder), *self.exclude]
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._next_mount_check = 0.0

    # -- running ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask `run` to return: after the chunk a sync is storing, or at once when idle. Safe from a signal handler."""
        self._stop.set()
        # No lock: a signal handler may run while this thread holds the condition's lock.
        # `run` waits at most a second at a time, so it sees the flag without a notify.

    def run(self, stop: threading.Event | None = None) -> None:
        """Catch up with one sync per root, then sync each root as its files change, until stopped."""
        if stop is not None:
            self._stop = stop
        try:
            for root in self.roots.values():
                self._observe(root)
            for root in list(self.roots.values()):
                if self._stop.is_set():
                    break
                self._sync(root, catch_up=True)
            while not self._stop.is_set():
                self._check_mounts()
                due = self._due()
                for root in due:
                    if self._stop.is_set():
                        break
                    self._sync(root)
                if not due:
                    with self._cond:
                        self._cond.wait(min(self._idle_timeout(), 1.0))
        finally:
            for root in self.roots.values():
                self._unobserve(root)

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        waits = [self.config.recheck]
        for root in self.roots.values():
            if root.first_event is not None:
                waits.append(min(root.last_event + self.config.debounce, root.first_event + self.config.max_delay) - now)
            if root.due_at is not None:
                waits.append(root.due_at - now)
        return max(0.01, min(waits))

    def _due(self) -> list[_Root]:
        now = time.monotonic()
        due = []
        with self._cond:
            for root in self.roots.values():
                if root.first_event is not None and (now - root.last_event >= self.config.debounce
                                                     or now - root.first_event >= self.config.max_delay):
                    due.append(root)
                elif root.due_at is not None and now >= root.due_at:
                    due.append(root)
                elif (self.config.full_sync_every and not root.missing
                      and now - root.last_sync >= self.config.full_sync_every):
                    due.append(root)
        # Roots that files arrived in first: a photo moved from one root to another is then
        # found as a move by the root it arrived in, before the other could count it deleted.
        due.sort(key=lambda root: -root.arrivals)
        return due

    # -- events ----------------------------------------------------------------------------
    def _note(self, event: Any) -> None:
        """An event from an observer thread: mark the roots it concerns as changed."""
        from watchdog.events import DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent, FileMovedEvent

        paths = [os.fsdecode(event.src_path)]
        dest = os.fsdecode(getattr(event, "dest_path", "") or "")
        if dest:
            paths.append(dest)
        now = time.monotonic()
        with self._cond:
            touched = False
            for path in paths:
                if not self._relevant(path, event.is_directory):
                    continue
                for root in self.roots.values():
                    if not _is_under(path, root.path) or self._hidden_under(path, root.path):
                        continue
                    touched = True
                    if root.first_event is None:
                        root.first_event = now
                    root.last_event = now
                    if isinstance(event, FileClosedEvent) or isinstance(event, FileMovedEvent) and path == dest:
                        root.closed.add(path)  # written and closed, or renamed into place: complete
                    elif not event.is_directory:
                        root.closed.discard(path)
                    if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
                        root.new_dirs = True
                    if isinstance(event, (FileCreatedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent)) and (
                            path == dest or not dest):
                        root.arrivals += 1
            if touched:
                self._cond.notify_all()

    def _relevant(self, path: str, is_directory: bool) -> bool:
        if any(_is_under(path, p) for p in self._ignored):
            return False  # the library's own files (a library inside a photo root), and --exclude
        return is_directory or os.path.splitext(path)[1].lower() in INDEXED_EXTENSIONS

    @staticmethod
    def _hidden_under(path: str, root: str) -> bool:
        rel = os.path.relpath(path, root)
        return rel != "." and any(part.startswith(".") for part in rel.split(os.sep))

    # -- observers ---------------------------------------------------------------------------
    def _outer(self, root: _Root) -> _Root | None:
        """The watched root that contains `root`, whose observer sees its events too."""
        for other in self.roots.values():
            if other is not root and _is_under(root.path, other.path) and not other.missing:
                return other
        return None

    def _observe(self, root: _Root) -> None:
        """Start watching `root`: events where they work, else polling (said in a notice)."""
        self._unobserve(root)
        if not os.path.isdir(root.path) or self._outer(root) is not None:
            return
        method, why = watch_method(root.path, self.config.poll)
        if method == "events":
            problem = self._start_events(root)
            if problem is None:
                root.method = "events"
                log.info("watching %s with inotify", root.path)
                return
            why = problem
        interval = self.config.poll if self.config.poll is not None else self.config.fallback_poll
        self._start_polling(root, interval)
        message = f"polling every {interval:g} s: {why}"
        log.info("%s: %s", root.path, message)
        if self.config.poll is None:
            log.warning("%s: %s", root.path, message)
        self.notify(WatchNotice("polling", root.path, message))

    def _event_kinds(self) -> list[type]:
        from watchdog.events import (
            DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent,
            FileModifiedEvent, FileMovedEvent,
        )

        # Not opens and no-write closes: the sync's own reads of the photos would wake it again.
        return [FileCreatedEvent, FileModifiedEvent, FileDeletedEvent, FileMovedEvent, FileClosedEvent,
                DirCreatedEvent, DirDeletedEvent, DirMovedEvent]

    def _start_events(self, root: _Root) -> str | None:
        """Watch `root` with inotify; None, or why it cannot be (then nothing is left running)."""
        from watchdog.observers.inotify import InotifyObserver

        before = self.watch_count()
        observer = InotifyObserver()
        try:
            observer.schedule(_Handler(self), root.path, recursive=True, event_filter=self._event_kinds())
            observer.start()
        except OSError as exc:
            _stop_observer(observer)
            if exc.errno == errno.ENOSPC:
                return (f"the inotify watch limit is reached (fs.inotify.max_user_watches = {_max_user_watches()}); "
                        "raise it to have events for this tree (docs/watch.md)")
            if exc.errno == errno.EMFILE:
                return "the inotify instance limit is reached (fs.inotify.max_user_instances); raise it (docs/watch.md)"
            return f"inotify could not watch it ({exc.strerror or exc})"
        # watchdog skips the subfolders it cannot watch without a word: count them ourselves.
        after = self.watch_count()
        if before is not None and after is not None:
            needed = _count_dirs(root.path)
            if after - before < needed:
                _stop_observer(observer)
                return (f"the inotify watch limit is reached: {needed} folders need a watch each but only "
                        f"{after - before} could be had (fs.inotify.max_user_watches = {_max_user_watches()}); "
                        "raise it to have events for this tree (docs/watch.md)")
        root.observer = observer
        root.identity = self._identity(root.path)
        return None

    def _start_polling(self, root: _Root, interval: float) -> None:
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=interval)
        observer.schedule(_Handler(self), root.path, recursive=True)
        observer.start()
        root.observer = observer
        root.method = "poll"
        root.identity = self._identity(root.path)

    def _unobserve(self, root: _Root) -> None:
        if root.observer is not None:
            _stop_observer(root.observer)
            root.observer = None

    @staticmethod
    def _identity(path: str, *, content: bool = False) -> tuple[Any, ...]:
        """What changes when a drive is mounted at or under `path`, or it is deleted or created
        (with `content`, also when entries are added to or removed from it)."""
        try:
            st = os.stat(path)
        except OSError:
            return ()
        return (st.st_dev, st.st_ino, tuple(m for m, _ in _mounts_under(path))) + ((st.st_mtime_ns,) if content else ())

    def _check_mounts(self) -> None:
        """Every `recheck` s: a root that came back, or whose drives were mounted or unmounted
        (events never say), is synced and watched afresh; a missing one is looked for."""
        now = time.monotonic()
        if now < self._next_mount_check:
            return
        self._next_mount_check = now + self.config.recheck
        for root in self.roots.values():
            if root.missing:
                if self._identity(root.path, content=True) != root.identity:
                    root.due_at = now  # created again, mounted again, or photos put back
                continue
            if root.observer is not None and self._identity(root.path) != root.identity:
                log.info("%s: a drive was mounted or unmounted under it; syncing it and watching it afresh", root.path)
                self._observe(root)
                root.due_at = now

    # -- syncing -------------------------------------------------------------------------------
    def _sync(self, root: _Root, *, catch_up: bool = False) -> None:
        cfg = self.config
        with self._cond:
            closed, root.closed = root.closed, set()
            new_dirs, root.new_dirs = root.new_dirs, False
            root.arrivals = 0
            root.first_event, root.due_at = None, None
        waiting: list[str] = []
        started = time.time()

        def defer(rec: "FileRecord") -> bool:
            # Written in the last `settle` seconds and not closed since: maybe still being written.
            if rec.path in closed or not 0 <= started - rec.mtime_ns / 1e9 < cfg.settle:
                return False
            waiting.append(rec.path)
            return True

        root.last_sync = time.monotonic()
        try:
            report = self.library.index(root.path, exclude=self.exclude, defer=defer, stop=self._stop,
                                        wait=cfg.lock_wait)
        except LibraryLockedError:
            self._retry(root, closed, cfg.max_delay)
            message = "another process is writing to the library; trying again shortly"
            log.info("%s: %s", root.path, message)
            self.notify(WatchNotice("busy", root.path, message))
            return
        except PhotoRootError as exc:
            self._lost(root, str(exc))
            return
        except ClipSearchError as exc:
            self._retry(root, closed, cfg.recheck)
            log.warning("%s: %s", root.path, exc)
            self.notify(WatchNotice("error", root.path, str(exc)))
            return
        if root.missing:
            root.missing = False
            message = "back: watching it again"
            log.warning("%s: %s", root.path, message)
            self.notify(WatchNotice("back", root.path, message))
            self._observe(root)
            for inner in self.roots.values():  # an inner root watched on its own meanwhile
                if inner is not root and _is_under(inner.path, root.path):
                    self._unobserve(inner)
        elif root.observer is None and self._outer(root) is None:
            self._observe(root)
        with self._cond:
            if waiting:
                root.due_at = time.monotonic() + cfg.settle
            if report.interrupted:
                root.due_at = time.monotonic()
            if report.unmounted and root.due_at is None:
                root.due_at = time.monotonic() + cfg.recheck  # look again for the drive
        if new_dirs and root.method == "events":
            self._check_watch_limit(root)
        changed = report.added or report.updated or report.removed or report.moved
        if changed or catch_up or report.waiting or report.interrupted:
            log.info("%s", report.summary())
            self.notify(WatchNotice("sync", root.path, report.summary(), report))

    def _retry(self, root: _Root, closed: set[str], after: float) -> None:
        with self._cond:
            root.closed |= closed
            root.due_at = time.monotonic() + after

    def _lost(self, root: _Root, why: str) -> None:
        with self._cond:
            root.due_at = None
        root.identity = self._identity(root.path, content=True)
        if not root.missing:
            root.missing = True
            message = f"{why}; its photos are kept and the other folders are still watched"
            log.warning("%s", message)
            self.notify(WatchNotice("missing", root.path, message))
        if os.path.isdir(root.path):
            return  # emptied, or a drive unmounted from it: its events still say when photos come back
        self._unobserve(root)
        for inner in self.roots.values():  # inner roots lose their outer observer: watch them on their own
            if inner is not root and _is_under(inner.path, root.path) and inner.observer is None and not inner.missing:
                self._observe(inner)

    def _check_watch_limit(self, root: _Root) -> None:
        """After folders appeared under an inotify root: did each get a watch? If not, poll it."""
        have = self.watch_count()
        if have is None:
            return
        needed = sum(_count_dirs(r.path) for r in self.roots.values() if r.method == "events" and r.observer)
        if have < needed:
            log.warning("%s: new folders could not all be watched (%d watches for %d folders)", root.path, have, needed)
            self._unobserve(root)
            interval = self.config.fallback_poll
            self._start_polling(root, interval)
            message = (f"polling every {interval:g} s: the inotify watch limit is reached "
                       f"(fs.inotify.max_user_watches = {_max_user_watches()}); raise it to have events (docs/watch.md)")
            log.warning("%s: %s", root.path, message)
            self.notify(WatchNotice("polling", root.path, message))
            root.due_at = time.monotonic()


class _QuietStop(logging.Filter):
    """watchdog logs an error when an emitter is asked for events as it stops: not one of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


_QUIET_STOP = _QuietStop()


def _stop_observer(observer: Any) -> None:
    logger = logging.getLogger("watchdog.observers.inotify")
    if _QUIET_STOP not in logger.filters:
        logger.addFilter(_QUIET_STOP)
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=5)
    except Exception:  # a half-started observer: nothing of it must outlive the watcher
        log.debug("stopping an observer failed", exc_info=True)


class WatchThread:
    """A `Watcher` on its own thread with its own `Library` object (`clipsearch serve --watch`).

    Its library is opened in the thread, apart from the caller's: the two meet only at
    the library's files and lock, as two processes would.
    """

    def __init__(self, folder: str | os.PathLike, roots: Sequence[str | os.PathLike] | None = None, *,
                 exclude: Iterable[str | os.PathLike] = (), config: WatchConfig | None = None,
                 notify: Callable[[WatchNotice], None] | None = None, **open_kwargs: Any) -> None:
        self.folder = folder
        self.roots = roots
        self.exclude = list(exclude)
        self.config = config
        self.notify = notify
        self.open_kwargs = open_kwargs
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clipsearch-watch", daemon=True)

    def start(self) -> "WatchThread":
        self._thread.start()
        return self

    def _run(self) -> None:
        from clipsearch.library import Library

        try:
            with Library.open(self.folder, create=False, **self.open_kwargs) as lib:
                roots = self.roots if self.roots else lib.roots()
                Watcher(lib, roots, exclude=self.exclude, config=self.config, notify=self.notify).run(self._stop)
        except BaseException as exc:  # reported by stop(); the thread must not die silently
            log.error("the watcher stopped: %s", exc, exc_info=not isinstance(exc, ClipSearchError))
            self.error = exc

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop the watcher (after the chunk a sync is storing) and wait for it."""
        self._stop.set()
        self._thread.join(timeout)
