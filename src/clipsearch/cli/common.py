"""What the command modules share: the library options, opening a library, printing an index run.

Every module under `clipsearch.cli` imports from here; none imports another command module
(`core` dispatches `--ray` to `distributed`, which needs nothing of `core`).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def default_library() -> str:
    """$CLIPSEARCH_LIBRARY, else a folder in the user's data directory."""
    env = os.environ.get("CLIPSEARCH_LIBRARY")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "clipsearch", "library")


def add_library_args(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    p.add_argument("--library", "-l", default=None, metavar="DIR",
                   help="library folder (default: $CLIPSEARCH_LIBRARY or ~/.local/share/clipsearch/library)")
    if model:
        p.add_argument("--model", default=None,
                       help="open_clip model name or JSON config (new libraries; default toyworld, bundled)")
        p.add_argument("--pretrained", default=None,
                       help="pretrained tag, checkpoint file, 'bundled' or 'none' (random weights)")
        p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
        p.add_argument("--no-fast-path", dest="fast_path", action="store_false", default=None,
                       help="encode query texts with torch and open_clip instead of the exported text tower "
                            "(slower start; $CLIPSEARCH_FAST_PATH=0 does the same)")


def open_library(args: argparse.Namespace, *, create: bool = False) -> Any:
    from clipsearch.encoder import pretrained_name
    from clipsearch.library import Library

    given: dict[str, Any] = {}  # --pretrained only when given: without it, a library keeps its own
    if getattr(args, "pretrained", None) is not None:
        given["pretrained"] = pretrained_name(args.pretrained)
    return Library.open(args.library or default_library(), model=getattr(args, "model", None),
                        **given, device=getattr(args, "device", None), create=create,
                        image_backend=getattr(args, "image_backend", None),
                        fast_path=getattr(args, "fast_path", None))


def index_line(lib: Any) -> str:
    """The index, its size and recall, on one line (index, info and rebuild-index print it)."""
    info = lib.info()
    recall = "exact" if info.index_kind == "flat" else (
        f"recall@10 {info.index_recall:.3f}" if info.index_recall is not None else "recall not measured")
    from clipsearch.sizes import format_size

    return (f"{lib.vector_index.describe()}, {info.index_count} vectors, ~{format_size(info.index_bytes)}, "
            f"{recall}")


def run_status(report: Any) -> int:
    """The exit status of an index run (`Library.index` or `index_on_ray`): 1, said on stderr, when it tried
    files and could index none of them; else 0."""
    status = 0
    if report.all_failed:
        # A run that indexed nothing of what it tried is trouble for a scheduled job, not a success.
        status = 1
        print(f"clipsearch: error: none of the {report.attempted} files tried under {report.root} could be "
              "indexed, and none is indexed from it; see the reasons listed (clipsearch info --failures)",
              file=sys.stderr)
    return status


def print_index_report(report: Any, show_skipped: int) -> None:
    """The summary line of an index run and up to `show_skipped` skipped files."""
    print(report.summary())
    for s in report.skipped[:show_skipped]:
        print(f"  skipped {s.path}: {s.reason}" + (" (tried again next run)" if s.retry else ""))
    if len(report.skipped) > show_skipped:
        print(f"  ... and {len(report.skipped) - show_skipped} more (clipsearch info --failures)")


__all__ = ["add_library_args", "default_library", "index_line", "open_library", "print_index_report",
           "run_status"]
