"""`clipsearch watch`: keep a library in step with its photo folders as files change."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from clipsearch.cli.common import add_library_args, open_library

if TYPE_CHECKING:
    from clipsearch.watch import WatchConfig, WatchNotice


def add_watch_args(p: argparse.ArgumentParser) -> None:
    """The options `watch` and `serve --watch` share."""
    p.add_argument("--poll", default=None, type=_positive_seconds, metavar="SECONDS",
                   help="look for changes every SECONDS instead of waiting for file-system events (network "
                        "shares and FUSE mounts are polled anyway, every 30 s)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATH", help="skip this folder (repeatable)")


def watch_config(args: argparse.Namespace) -> "WatchConfig":
    """The watcher's settings from the command line."""
    from clipsearch.watch import WatchConfig

    settle = getattr(args, "settle", None)
    return WatchConfig(poll=args.poll, **({"settle": settle} if settle is not None else {}))


def _positive_seconds(text: str) -> float:
    value = _non_negative_seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}; give one above 0, like 30")
    return value


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}; give one like 2")
    return value


def notice_printer(as_json: bool) -> Callable[["WatchNotice"], None]:
    """Prints each `WatchNotice`: syncs on stdout, the rest on stderr; or one JSON object per line."""
    def show(notice: Any) -> None:
        if as_json:
            print(json.dumps(notice.to_dict()), flush=True)
            return
        stamp = time.strftime("%H:%M:%S")
        text = notice.message if notice.kind == "sync" else f"{notice.root}: {notice.message}"
        print(f"{stamp} {text}", file=sys.stdout if notice.kind == "sync" else sys.stderr, flush=True)
        if notice.report is not None:
            for s in notice.report.skipped[:5]:
                print(f"  skipped {s.path}: {s.reason}", flush=True)
            if len(notice.report.skipped) > 5:
                print(f"  ... and {len(notice.report.skipped) - 5} more (clipsearch info --failures)", flush=True)
    return show


def _cmd_watch(args: argparse.Namespace) -> int:
    from clipsearch.watch import Watcher

    with open_library(args, create=bool(args.folders)) as lib:
        watcher = Watcher(lib, args.folders or lib.roots(), exclude=args.exclude, config=watch_config(args),
                          notify=notice_printer(args.json))
        stopped = []

        def request_stop(signum: int, _frame: Any) -> None:
            if stopped:  # a second Ctrl-C: stop now, as `index` does
                raise KeyboardInterrupt
            stopped.append(signum)
            print("clipsearch: stopping after the current chunk (Ctrl-C again to stop at once)", file=sys.stderr,
                  flush=True)
            watcher.stop()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        if not args.json:
            print(f"clipsearch: watching {', '.join(watcher.roots)} for library {lib.folder} (Ctrl-C to stop)",
                  file=sys.stderr, flush=True)
        watcher.run()
        print("clipsearch: watcher stopped; finished work is saved", file=sys.stderr, flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="keep the library in step with its photo folders as files change",
                       description="Sync the library's photo folders (or FOLDERS, which become its folders) now, "
                                   "then again each time files in them are added, changed, moved or deleted. "
                                   "Runs until Ctrl-C or SIGTERM; see docs/watch.md for running it as a service.")
    p.add_argument("folders", nargs="*", metavar="FOLDERS",
                   help="photo folders to watch (default: every folder the library has indexed)")
    add_library_args(p)
    add_watch_args(p)
    p.add_argument("--settle", default=None, type=_non_negative_seconds, metavar="SECONDS",
                   help="a file modified less than this long ago and not closed since waits for the next "
                        "batch: it may still be being written (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object per line for each sync and notice")
    p.set_defaults(func=_cmd_watch)
