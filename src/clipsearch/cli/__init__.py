"""The `clipsearch` command: the only place in the project that prints or exits.

Each command group lives in its own module under `clipsearch.cli` and exposes
`register(subparsers)`, which adds its sub-commands and sets `func` on each parser.
`func(args)` returns the process exit code.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from clipsearch.errors import ClipSearchError

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = (
    "clipsearch.cli.core",
    "clipsearch.cli.duplicates",
    "clipsearch.cli.concepts",
    "clipsearch.cli.toyworld",
    "clipsearch.cli.model",
    "clipsearch.cli.demo",
    "clipsearch.cli.serve",
    "clipsearch.cli.watch",
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command module registered."""
    parser = argparse.ArgumentParser(
        prog="clipsearch",
        description="Search your photos by text, by image and by arithmetic on meaning.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from clipsearch.runtime import configure_process

    configure_process()  # before any command loads torch or faiss
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is caught below and not at exit
        return code
    except BrokenPipeError:
        # `clipsearch info | head`: the reader has all it wants. Quiet, as `cat` is: no
        # traceback now, and none at exit when Python flushes stdout again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left
    except ClipSearchError as exc:
        print(f"clipsearch: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("clipsearch: interrupted; finished work is saved, run the command again to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
