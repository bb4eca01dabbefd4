"""`clipsearch demo`: generate a sample collection, index it with the bundled model, serve the UI."""
from __future__ import annotations

import argparse
import logging


def _cmd_demo(args: argparse.Namespace) -> int:
    from clipsearch.demo import EXAMPLE_QUERIES, prepare_demo
    from clipsearch.library import Library

    progress = logging.getLogger().getEffectiveLevel() <= logging.WARNING
    print(f"preparing the demo in {args.data} ({args.n} toy-world photos, bundled model) ...")
    setup = prepare_demo(args.data, args.n, progress=progress, workers=args.workers)
    print(setup.report.summary())
    if setup.texts_added:
        print(f"{setup.texts_added} captions loaded as the text collection")
    with Library.open(setup.library, create=False) as lib:
        if args.no_serve:
            for query in EXAMPLE_QUERIES:
                print(f"\nsearch: {query}")
                for hit in lib.search(query, k=3):
                    score = "-" if hit.score is None else f"{hit.score:.3f}"
                    print(f"  {score}  {hit.path}")
            return 0
        from clipsearch_ui import serve

        def ready(url: str) -> None:  # the port Gradio took: 7860, or the next free one
            print(f"serving the web UI on {url}  (Ctrl-C to stop)", flush=True)

        serve(lib, host=args.host, port=args.port, open_browser=not args.no_browser, on_ready=ready)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="index a generated sample collection with the bundled model and serve the UI")
    p.add_argument("--data", default="data/demo", help="where the sample photos and library go (default data/demo)")
    p.add_argument("--n", type=int, default=3000, help="number of sample photos (default 3000)")
    p.add_argument("--workers", type=int, default=None, help="processes for drawing photos (default: all CPUs)")
    p.add_argument("--no-serve", action="store_true", help="print example searches instead of serving the UI")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860 or the next free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(func=_cmd_demo)
