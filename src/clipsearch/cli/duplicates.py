"""`clipsearch duplicates`: groups of copies or of moments, a keeper each; move the others, undo a move."""
from __future__ import annotations

import argparse
import json
import sys

from clipsearch.cli.common import add_library_args, open_library
from clipsearch.sizes import format_size


def _cmd_duplicates(args: argparse.Namespace) -> int:
    from clipsearch.duplicates import DuplicateOptions

    with open_library(args) as lib:
        if args.undo:
            journal = lib.undo_moves(args.undo, wait=args.wait)
            if args.json:
                print(json.dumps(journal.to_dict(), indent=1))
            else:
                print(f"{len(journal.done)} files put back from {journal.path}")
                for path, reason in journal.failed:
                    print(f"  not put back {path}: {reason}", file=sys.stderr)
            return 1 if journal.failed else 0
        options = DuplicateOptions(verify="fast" if args.fast else "pixels", min_similarity=args.min_similarity)
        groups = lib.duplicates(args.level, folder=args.folder, options=options, progress=not args.quiet)
        journal = None
        if args.move_to:
            journal = lib.move_duplicates(groups, args.move_to, dry_run=args.dry_run, wait=args.wait)
        if args.json:
            out = [g.to_dict() for g in groups]
            print(json.dumps(out if journal is None else {"groups": out, "moves": journal.to_dict()}, indent=1))
        else:
            if not groups:
                print(f"no {args.level} found", file=sys.stderr)
            for n, g in enumerate(groups, 1):
                print(f"group {n} ({g.level}, {len(g.members)} photos): keep {g.keep}  [{g.reason}]")
                for m in g.members:
                    mark = "*" if m.id == g.keep_id else " "
                    print(f"  {mark} {m.score:.3f}  {m.width}×{m.height}  {format_size(m.file_size):>9}  {m.path}  ({m.why})")
            if journal is not None:
                verb = "would move" if journal.dry_run else "moved"
                count = len(journal.moves) if journal.dry_run else len(journal.done)
                print(f"{verb} {count} files to {args.move_to}" + (f"; journal {journal.path}" if journal.path else ""))
                if journal.dry_run:
                    for m in journal.moves:
                        print(f"  {m.src} -> {m.dst}")
                for path, reason in journal.failed:
                    print(f"  not moved {path}: {reason}", file=sys.stderr)
                if journal.path:
                    print(f"undo with: clipsearch duplicates --undo {journal.path}")
        return 1 if journal is not None and journal.failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "duplicates", help="find copies of one picture, or shots of one moment; move the others aside",
        description="Groups of copies (the same picture resized, re-encoded, converted, cropped, rotated, "
                    "retouched or captioned) or of moments (shots of one burst), each with a suggested keeper. "
                    "Nothing is deleted: --move-to moves the others to a folder with a journal, and --undo "
                    "puts them back.")
    add_library_args(p, model=False)
    p.add_argument("--level", choices=["copies", "moments"], default="copies",
                   help="copies of one picture (default) or shots of one moment")
    p.add_argument("--folder", default=None, help="only photos under this folder")
    p.add_argument("--json", action="store_true", help="print JSON: a list of groups {level, keep, members}")
    p.add_argument("--fast", action="store_true",
                   help="decide from stored evidence only (hashes, CLIP similarity, capture times), without "
                        "comparing pixels: quicker, less exact (docs/duplicates.md)")
    p.add_argument("--min-similarity", type=float, default=0.8, metavar="COS",
                   help="CLIP cosine under which two photos are never compared (default 0.8)")
    p.add_argument("--move-to", default=None, metavar="DIR",
                   help="move every photo but the keeper of each group under DIR (journalled; the library follows)")
    p.add_argument("--dry-run", action="store_true", help="with --move-to: print the moves, move nothing")
    p.add_argument("--undo", default=None, metavar="JOURNAL", help="put back the files a --move-to journal moved")
    p.add_argument("--wait", default=0.0, type=float, metavar="SECONDS",
                   help="wait up to this long for another process writing to the library")
    p.set_defaults(func=_cmd_duplicates)
