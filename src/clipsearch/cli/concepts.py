"""`clipsearch concept add/list/remove`: personal concepts taught by a few example photos."""
from __future__ import annotations

import argparse
import json
import sys

from clipsearch.cli.common import add_library_args, open_library


def _cmd_concept(args: argparse.Namespace) -> int:
    with open_library(args) as lib:
        if args.concept_command == "add":
            concept = lib.add_concept(args.name, args.examples, replace=args.replace)
            print(f"concept {concept.summary()}")
            if concept.weak:
                print(f"warning: {concept.name!r} is weak: its examples look like different things, so searches "
                      "with it will mix them. Give examples of one thing only (or fewer, closer ones).")
            print(f"use it:  clipsearch search '{concept.name} at night'")
        elif args.concept_command == "list":
            concepts = lib.concepts()
            if args.json:
                print(json.dumps([{"name": c.name, "examples": c.examples, "sources": list(c.sources),
                                   "coherence": c.coherence, "weak": c.weak, "stale": c.stale, "model": c.model,
                                   "method": c.method, "created_at": c.created_at} for c in concepts], indent=1))
            elif not concepts:
                print("no concepts yet: clipsearch concept add NAME '#ID' PHOTO.jpg ...")
            for c in concepts if not args.json else ():
                print(c.summary())
                if args.verbose_list:
                    for source in c.sources:
                        print(f"  {source}")
        elif args.concept_command == "remove":
            missing = [name for name in args.names if not lib.remove_concept(name)]
            removed = len(args.names) - len(missing)
            print(f"{removed} concept{'s' if removed != 1 else ''} removed")
            if missing:
                print(f"clipsearch: error: no concept named {', '.join(missing)}", file=sys.stderr)
                return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("concept", help="teach the search a name from a few example photos (bella, grandma)",
                       description="Personal concepts: a name taught by example photos, then used like a word "
                                   "in queries: 'bella on a beach', 'bella - snow', '#7 + bella'. No training "
                                   "run; stored in the library. See docs/concepts.md.")
    csub = p.add_subparsers(dest="concept_command", required=True)
    a = csub.add_parser("add", help="make a concept from example photos ('#ID' of indexed photos, or files)")
    a.add_argument("name", help="one word: letters, digits, '-' or '_'")
    a.add_argument("examples", nargs="+", metavar="EXAMPLE", help="'#12' (an indexed photo) or an image file")
    a.add_argument("--replace", action="store_true", help="replace a concept of the same name")
    add_library_args(a, model=False)
    a.set_defaults(func=_cmd_concept)
    ls = csub.add_parser("list", help="the library's concepts, with their spread (weak) and model (stale)")
    ls.add_argument("--examples", dest="verbose_list", action="store_true", help="also list each example")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add_library_args(ls, model=False)
    ls.set_defaults(func=_cmd_concept)
    rm = csub.add_parser("remove", help="forget concepts")
    rm.add_argument("names", nargs="+", metavar="NAME")
    add_library_args(rm, model=False)
    rm.set_defaults(func=_cmd_concept)
