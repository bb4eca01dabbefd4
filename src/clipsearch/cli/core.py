"""Core commands: index, search, similar, describe, texts, info, rebuild-index."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any, Sequence

from clipsearch.cli.common import (  # noqa: F401  (add_library_args, open_library: used by every command module)
    add_library_args, default_library, index_line, open_library, print_index_report, run_status,
)


def _print_hits(hits: Sequence[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(h) for h in hits], indent=1))
        return
    if not hits:
        print("no results", file=sys.stderr)
    for h in hits:
        label = getattr(h, "path", None) or getattr(h, "text", "")
        if getattr(h, "kind", "text") == "concept":
            label += "  (concept)"
        segment = getattr(h, "segment", None)
        if segment is not None:  # a video: where in it
            from clipsearch.video import format_time

            label += f" @ {format_time(segment[0])}–{format_time(segment[1])}"
        taken = getattr(h, "taken_at", None)
        about = " · ".join(x for x in (taken[:16].replace("T", " ") if taken else None, getattr(h, "place", None),
                                      getattr(h, "camera", None)) if x)
        score = "-" if h.score is None else f"{h.score:.4f}"
        print(f"{score}  " + (f"[{about}]  " if about else "") + label)


def add_index_choice_args(p: argparse.ArgumentParser) -> None:
    """--index and --max-memory: which vector index the library uses (kept for later runs); --wait."""
    from clipsearch.index import AUTO, FLAT_MAX_VECTORS, INDEX_KINDS

    p.add_argument("--index", default=None, choices=[AUTO, *INDEX_KINDS], metavar="KIND",
                   help=f"vector index: {AUTO} (exact search up to {FLAT_MAX_VECTORS:,} images, IVF-SQ8 "
                        f"above), or one of {', '.join(INDEX_KINDS)}; kept for later runs")
    p.add_argument("--max-memory", default=None, type=_memory_size, metavar="SIZE",
                   help="memory budget for the index, like 600MB or 2GB ('none' to drop it): auto then "
                        "picks smaller codes (less recall) until the index fits; kept for later runs")
    p.add_argument("--wait", default=0.0, type=_seconds, metavar="SECONDS",
                   help="if another clipsearch process is writing to the library, wait up to this long "
                        "for it (default: stop at once with a message)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}; give one like 600")
    return value


def _memory_size(text: str) -> int:
    from clipsearch.sizes import parse_size

    if text.strip().lower() == "none":
        return 0
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_index(args: argparse.Namespace) -> int:
    if getattr(args, "ray", None) is not None:
        from clipsearch.cli.distributed import cmd_index_ray

        return cmd_index_ray(args)
    with open_library(args, create=True) as lib:
        status = 0
        reports = []
        before = lib.vector_index
        for root in args.photos:
            report = lib.index(root, progress=not args.quiet, allow_empty=args.allow_empty, exclude=args.exclude,
                               wait=args.wait, retry_failed=args.retry_failed,
                               index_kind=args.index, max_memory=args.max_memory)
            status = max(status, run_status(report))
            if args.json:
                reports.append(report.to_dict())
                continue
            print_index_report(report, args.show_skipped)
        if args.json:
            # One JSON document: the report, or a list of them for several folders.
            print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=1))
        elif lib.vector_index is not before:
            # A new library's first index is built, not rebuilt.
            print(f"index {'rebuilt' if before.ntotal else 'built'}: {index_line(lib)}")
        return status


def _common_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--min-score", type=float, default=None, help="drop results under this cosine score")
    p.add_argument("--folder", default=None, help="only results under this folder")
    p.add_argument("--json", action="store_true", help="print JSON")


def _cmd_search(args: argparse.Namespace) -> int:
    from clipsearch.query import parse

    query = parse(" ".join(args.query))  # a bad filter is reported before the library and model load
    with open_library(args) as lib:
        hits = lib.search(query, k=args.k, min_score=args.min_score, folder=args.folder)
        _print_hits(hits, args.json)
        if not hits and args.min_score is None and query.effective_min == "auto" and query.has_words:
            cutoff = lib.searcher.relevance_cutoff(query.text)
            shown = "above every photo" if cutoff == float("inf") else f"{cutoff:.3f}"
            print(f"(date order keeps the photos that match this query: its relevance cutoff min:auto = {shown}, "
                  "set for this query and this library's model; no photo reached it. A vague query, or one that "
                  "matches many photos, scores lower: add min:0.3, say, to see more)", file=sys.stderr)
    return 0


def _cmd_similar(args: argparse.Namespace) -> int:
    with open_library(args) as lib:
        hits = lib.search_image(args.image, k=args.k, text=args.text, min_score=args.min_score, folder=args.folder,
                                query=args.query)
        _print_hits(hits, args.json)
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    with open_library(args) as lib:
        _print_hits(lib.describe(args.image, k=args.k), args.json)
    return 0


def _cmd_texts(args: argparse.Namespace) -> int:
    with open_library(args) as lib:
        if args.texts_command == "add":
            from clipsearch.texts import read_texts

            lines: list[str] = []
            for src in args.files:
                lines.extend(read_texts(src))
            added = lib.add_texts(lines)
            print(f"{added} texts added ({len(lib.texts())} in the collection)")
        elif args.texts_command == "list":
            for t in lib.texts():
                print(t)
        elif args.texts_command == "remove":
            print(f"{lib.remove_texts(args.texts)} texts removed")
    return 0


def _print_formats(as_json: bool) -> int:
    from clipsearch.images import formats

    found = formats()
    if as_json:
        print(json.dumps([asdict(f) for f in found], indent=1))
        return 0
    for f in found:
        print(f"{'yes' if f.readable else 'no ':3}  {f.name:36}  {' '.join(f.extensions)}")
        print(f"     {'':36}  {f.note}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    if args.formats:
        return _print_formats(args.json)
    from clipsearch.library import Library

    from clipsearch.sizes import format_size

    with Library.open(args.library or default_library(), create=False) as lib:
        info = lib.info()
        if args.json:
            print(json.dumps(asdict(info), indent=1))
            return 0
        print(f"library:   {info.folder}")
        print(f"model:     {info.model} / {info.pretrained or 'random weights'} ({info.dim}-d)")
        print(f"images:    {info.images} indexed, {info.failed} skipped")
        if info.videos:
            print(f"videos:    {info.videos} of the indexed, {info.videos + info.video_frames} moments sampled")
        print(f"texts:     {info.texts}")
        print(f"vectors:   {info.image_precision} ({info.image_precision_note})")
        print(f"index:     {index_line(lib)}")
        if info.index_kind != "flat" and info.index_recall is not None:
            print(f"recall:    {info.index_recall:.3f} recall@10 {info.index_recall_note}")
        setting = info.index_setting + (f", at most {format_size(info.index_max_memory)}" if info.index_max_memory
                                        else "")
        print(f"setting:   --index {setting}")
        for root in info.roots:
            print(f"root:      {root}")
        if info.last_report:
            from clipsearch.indexer import IndexReport

            print(f"last run:  {IndexReport.from_dict(info.last_report).summary()}")
        if args.failures:
            for row in lib.catalog.failures():
                print(f"  skipped {row.path}: {row.error}")
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    if getattr(args, "ray", None) is not None:
        from clipsearch.cli.distributed import cmd_rebuild_ray

        return cmd_rebuild_ray(args)
    with open_library(args) as lib:
        count = lib.rebuild_index(index_kind=args.index, max_memory=args.max_memory, wait=args.wait)
        print(f"index rebuilt from stored vectors: {count} images")
        print(f"index:     {index_line(lib)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from clipsearch.cli.distributed import add_ray_args

    p = sub.add_parser("index", help="index (or re-sync) photo folders")
    p.add_argument("photos", nargs="+", metavar="PHOTOS", help="folders of photos")
    add_library_args(p)
    p.add_argument("--allow-empty", action="store_true",
                   help="let a root with no photos, or a drive no longer mounted inside it, remove its "
                        "images from the library (they are kept otherwise: an unplugged drive is not a deletion)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATH", help="skip this folder (repeatable)")
    p.add_argument("--show-skipped", type=int, default=20, metavar="N", help="list at most N skipped files")
    p.add_argument("--retry-failed", action="store_true",
                   help="try again the unchanged files stored as failed (they are tried again anyway when they "
                        "change, or when Pillow, pillow-heif, rawpy or clipsearch was upgraded since)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--image-backend", default=None, choices=["auto", "torch", "onnxruntime", "onnx-int8"],
                   help="what encodes the photos on the CPU: auto (default, $CLIPSEARCH_IMAGE_BACKEND: "
                        "onnxruntime for big jobs when installed, 2x faster, in int8 for a new library where "
                        "that measures faster here), torch, onnxruntime, or onnx-int8 (1.5x fp32 onnxruntime "
                        "with VNNI; vectors within cosine 0.99 of fp32, and `info` says when a library mixes them)")
    add_index_choice_args(p)
    add_ray_args(p)
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("search", help="text → image search (with query arithmetic and filters)",
                       description="Query arithmetic: 'beach + sunset - people', '2:dog + cat', "
                                   "'photo.jpg + at night', '#42 - snow' (#42: indexed image id 42). "
                                   "Filters: after:2019-06 before:2019-09 place:Lisbon country:PT "
                                   "camera:\"Pixel 7\" lens:35mm type:raw|heic folder:~/Pictures "
                                   "near:38.72,-9.14,5km; order and cutoff: sort:date (newest first), "
                                   "sort:oldest, min:0.25, min:auto. Filters alone list photos newest first.")
    p.add_argument("query", nargs="+", help="the query")
    add_library_args(p)
    _common_search_args(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("similar", help="image → image search")
    p.add_argument("image", help="an image file, or #ID of an indexed image")
    p.add_argument("--text", default=None, help="a text modifier added to the image, e.g. 'at night'")
    p.add_argument("--query", default=None, metavar="FILTERS",
                   help="filters, order and cutoff in the search syntax, e.g. 'place:Lisbon after:2019 sort:date'")
    add_library_args(p)
    _common_search_args(p)
    p.set_defaults(func=_cmd_similar)

    p = sub.add_parser("describe", help="image → text over the library's text collection")
    p.add_argument("image", help="an image file, or #ID of an indexed image")
    add_library_args(p)
    p.add_argument("-k", type=int, default=5, help="number of texts (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_describe)

    p = sub.add_parser("texts", help="manage the text collection (captions, labels)")
    tsub = p.add_subparsers(dest="texts_command", required=True)
    a = tsub.add_parser("add", help="add texts from files (one per line, or a CSV with a title/caption column; - for stdin)")
    a.add_argument("files", nargs="+")
    add_library_args(a)
    a.set_defaults(func=_cmd_texts)
    ls = tsub.add_parser("list", help="print the collection")
    add_library_args(ls)
    ls.set_defaults(func=_cmd_texts)
    rm = tsub.add_parser("remove", help="remove texts")
    rm.add_argument("texts", nargs="+")
    add_library_args(rm)
    rm.set_defaults(func=_cmd_texts)

    p = sub.add_parser("info", help="what a library holds")
    add_library_args(p, model=False)
    p.add_argument("--failures", action="store_true", help="list every skipped file and why")
    p.add_argument("--formats", action="store_true",
                   help="list the photo formats this installation reads (and what to install for the others)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("rebuild-index", help="rebuild the vector index from stored vectors (no re-encoding)",
                       description="Rebuild (and retrain) the vector index from the stored vectors; with --index "
                                   "or --max-memory, change the library's index choice first.")
    add_library_args(p)
    add_index_choice_args(p)
    add_ray_args(p, embedding=False)
    p.set_defaults(func=_cmd_rebuild)
