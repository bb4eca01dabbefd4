"""Worker processes that never run the caller's `__main__`.

`multiprocessing`'s forkserver and spawn start methods import the parent's main module in
every worker, so a plain script without an `if __name__ == "__main__":` guard runs again
in each decoder process (opening the library, hitting its lock, dying). `WorkerPool` starts
its workers as `python -c "from clipsearch.workers import serve; ..."`: a fresh
interpreter with the parent's `sys.path` that imports only clipsearch, and talks to the
parent over one socket. It is a `concurrent.futures.Executor`:

* each worker runs one task at a time, so a worker that dies names the task it was on
  (`WorkerDied`, with the exit status or signal) and only that worker is replaced;
* a task running past `timeout` seconds gets its worker killed (`WorkerTimeout`);
* workers end with the parent however it ends (end of input on the socket, and a watcher
  thread for a parent killed while a worker is busy), and leave nothing in the temp
  directory (no `pymp-*` folders: no multiprocessing start method is involved).

The measurement behind the choice (versus threads and versus a forkserver pool) is in
docs/performance.md, "Decoder workers"; `bench/decode_workers.py` reproduces it.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Executor, Future
from multiprocessing.connection import Connection
from typing import Any, Callable

from clipsearch.errors import ClipSearchError

log = logging.getLogger(__name__)

__all__ = ["WorkerDied", "WorkerPool", "WorkerStartError", "WorkerTimeout", "serve"]

# A worker that has not said hello in this time is taken as unable to start.
START_TIMEOUT_S = 60.0
_BOOT = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
         "from clipsearch.workers import serve; serve(int(sys.argv[2]), int(sys.argv[3]))")
_HELLO = "clipsearch-worker-ready"
# Signals that mean the process crashed on its own (as opposed to being killed from outside).
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE})


class WorkerDied(Exception):
    """The worker process ended while it ran this task."""

    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode
        super().__init__(f"the worker process {describe_exit(returncode)}")

    @property
    def crashed(self) -> bool:
        """True when the process crashed by itself (SIGSEGV, SIGABRT, ...), not killed from outside."""
        return self.returncode is not None and self.returncode < 0 and -self.returncode in CRASH_SIGNALS


class WorkerTimeout(Exception):
    """The task ran longer than the pool's timeout; its worker was killed."""


class WorkerStartError(ClipSearchError):
    """Worker processes could not be started in this environment."""


def describe_exit(returncode: int | None) -> str:
    """'was killed by SIGKILL', 'crashed (SIGSEGV)', 'exited with status 3'."""
    if returncode is None:
        return "ended"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"crashed ({name})" if -returncode in CRASH_SIGNALS else f"was killed by {name}"
    return f"exited with status {returncode}"


class _Worker:
    """One worker process and the socket to it."""

    def __init__(self) -> None:
        if getattr(sys, "frozen", False) or not sys.executable:
            # A frozen app's executable is the app itself, not a Python that takes -c.
            raise WorkerStartError("this Python has no interpreter to start worker processes with")
        parent_end, child_end = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, json.dumps(sys.path), str(child_end.fileno()), str(os.getpid())],
                pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            parent_end.close()
            raise WorkerStartError(f"could not start a worker process ({sys.executable}): {exc}") from exc
        finally:
            child_end.close()
        self.conn = Connection(parent_end.detach())
        try:
            ready = self.conn.poll(START_TIMEOUT_S) and self.conn.recv() == _HELLO
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise WorkerStartError(f"a worker process did not start: it {describe_exit(self.proc.returncode)} "
                                   "(its error, if any, is printed above)")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.conn.close()

    def close(self) -> None:
        """Let the worker end by itself (end of input), then reap it."""
        self.conn.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()


class WorkerPool(Executor):
    """`workers` processes running submitted module-level functions; see the module docstring.

    All workers are started (and have answered) before the constructor returns: a
    WorkerStartError there means this environment cannot run them (the caller can fall
    back to threads). `fn` and its arguments must pickle by reference (module-level).
    """

    def __init__(self, workers: int, *, timeout: float | None = None) -> None:
        self.timeout = timeout
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._shutdown = False
        self._lock = threading.Lock()
        started: list[_Worker] = []
        try:
            for _ in range(max(1, workers)):
                started.append(_Worker())
        except BaseException:
            for w in started:
                w.kill()
            raise
        self._live: dict[int, _Worker] = dict(enumerate(started))  # each thread's current worker
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"decode-worker-{i}", daemon=True)
                         for i in range(len(started))]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a WorkerPool after shutdown")
            future: Future = Future()
            self._tasks.put((future, fn, args, kwargs))
            return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._tasks.get_nowait()
                    except queue.Empty:
                        break
                    item[0].cancel()
            for _ in self._threads:
                self._tasks.put(None)
        if wait:
            for t in self._threads:
                t.join()

    def terminate(self) -> None:
        """Kill every worker now (their tasks fail with WorkerDied) and shut down without waiting on them."""
        self.shutdown(wait=False, cancel_futures=True)
        for worker in list(self._live.values()):
            if worker.proc.poll() is None:
                worker.proc.kill()
        for t in self._threads:
            t.join()

    def _run(self, slot: int) -> None:
        """One thread per worker: hand it a task, wait for the answer; replace it when it dies."""
        worker: _Worker | None = self._live[slot]
        try:
            while True:
                item = self._tasks.get()
                if item is None:
                    return
                future, fn, args, kwargs = item
                if not future.set_running_or_notify_cancel():
                    continue
                if worker is None:
                    try:
                        worker = self._live[slot] = _Worker()
                    except WorkerStartError as exc:
                        future.set_exception(exc)
                        continue
                try:
                    worker.conn.send((fn, args, kwargs))
                except (pickle.PicklingError, TypeError, AttributeError) as exc:
                    future.set_exception(exc)  # nothing was written: pickling happens first
                    continue
                except OSError:
                    pass  # the worker is gone; recv below reports how it ended
                try:
                    if self.timeout is not None and not worker.conn.poll(self.timeout):
                        worker.kill()
                        future.set_exception(WorkerTimeout(f"the task ran longer than {self.timeout:g} s"))
                        worker = None
                        continue
                    ok, value = worker.conn.recv()
                except (EOFError, OSError):
                    worker.kill()
                    future.set_exception(WorkerDied(worker.proc.returncode))
                    worker = None
                    continue
                except Exception as exc:  # an answer that could not be unpickled here
                    future.set_exception(exc)
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        finally:
            if worker is not None:
                worker.close()


def serve(fd: int, parent: int) -> None:
    """A worker's main loop: run each (fn, args, kwargs) received, send back (ok, result or exception)."""
    # Ctrl-C is the parent's to handle; a worker must not print a traceback for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), name="exit-with-parent", daemon=True).start()
    conn = Connection(fd)
    conn.send(_HELLO)
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except EOFError:
            return
        try:
            answer = (True, fn(*args, **kwargs))
        except Exception as exc:
            answer = (False, exc)
        try:
            conn.send(answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            conn.send((False, RuntimeError(f"the result could not be sent back: {exc}")))
        except OSError:
            return  # the parent is gone


def _exit_with(pid: int) -> None:
    """Block until process `pid` ends, then end this process (a parent killed while we decode)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # before Linux 5.3, or not Linux; or already gone
        while _alive(pid):
            time.sleep(0.5)
    else:
        select.select([fd], [], [])  # a pidfd turns readable when its process ends
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
