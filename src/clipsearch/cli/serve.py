"""`clipsearch serve`: the web UI and the JSON API over a library, private by default."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from clipsearch.cli.common import add_library_args, open_library
from clipsearch.cli.watch import add_watch_args
from clipsearch.errors import ClipSearchError

TOKEN_ENV = "CLIPSEARCH_API_TOKEN"  # the same name as clipsearch_ui.api.TOKEN_ENV (importing it needs Gradio)
if TYPE_CHECKING:
    from clipsearch.library import Library
    from clipsearch.watch import WatchThread


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from clipsearch_ui.api import read_token
        from clipsearch_ui.server import is_loopback, parse_auth, read_auth_file, serve
    except ImportError as exc:  # gradio is an optional extra
        raise ClipSearchError(f"the web UI needs Gradio ({exc.name} is missing): pip install 'clipsearch[ui]'") \
            from exc

    auth = None
    if args.auth:
        auth = parse_auth(args.auth)
    elif args.auth_file:
        auth = read_auth_file(args.auth_file)
    token = read_token(args.api_token_file)
    if not is_loopback(args.host) and auth is None and token is None:
        print(f"clipsearch: warning: serving on {args.host} without --auth: anyone who can reach it sees your photos",
              file=sys.stderr)
    elif not is_loopback(args.host) and auth is None:
        print(f"clipsearch: warning: serving the web UI on {args.host} without --auth (the API needs the token)",
              file=sys.stderr)
    if args.share:
        print("clipsearch: warning: --share publishes this UI on a public gradio.live link", file=sys.stderr)

    def ready(url: str) -> None:
        api = f"{url.rstrip('/')}/api/docs"
        print(f"clipsearch UI: {url}  API: {api}{' (token needed)' if token else ''}  (Ctrl-C to stop)", flush=True)

    with open_library(args) as lib:
        watcher = _start_watching(args, lib) if args.watch else None
        try:
            serve(lib, host=args.host, port=args.port, auth=auth, share=args.share,
                  open_browser=not args.no_browser, block=True, on_ready=ready, api_token=token,
                  serve_originals=args.serve_originals)
        finally:
            if watcher is not None:
                watcher.stop()
    return 0


def _start_watching(args: argparse.Namespace, lib: "Library") -> "WatchThread":
    """`--watch`: a watcher thread with its own handle on the library (see `clipsearch watch`)."""
    from clipsearch.cli.watch import notice_printer, watch_config
    from clipsearch.watch import WatchThread

    roots = lib.roots()
    if not roots:
        raise ClipSearchError("--watch: the library has no photo folders yet; index one first")
    print(f"clipsearch: watching {', '.join(roots)}", file=sys.stderr, flush=True)
    return WatchThread(lib.folder, roots, exclude=args.exclude, config=watch_config(args),
                       notify=notice_printer(False), device=args.device).start()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="open the web UI (search, describe, explore) in a browser",
                       description="Serve the web UI for a library. It listens on 127.0.0.1 only, with no public "
                                   "link, unless --host or --share say otherwise.")
    add_library_args(p, model=False)
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface: add --auth)")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    login = p.add_mutually_exclusive_group()
    login.add_argument("--auth", metavar="USER:PASSWORD", default=None,
                       help="require this login (visible to other local users in `ps`: prefer --auth-file)")
    login.add_argument("--auth-file", metavar="FILE", default=None,
                       help="require a login from FILE's user:password lines")
    p.add_argument("--share", action="store_true",
                   help="also publish a temporary public gradio.live link (off by default)")
    p.add_argument("--api-token-file", metavar="FILE", default=None,
                   help=f"a secret (first line of FILE, mode 600) that apps send as 'Authorization: Bearer TOKEN' "
                        f"to the JSON API at /api (default: ${{{TOKEN_ENV}}} when set)")
    p.add_argument("--serve-originals", action="store_true",
                   help="let the API send the photo files themselves (GET /api/photos/ID/original); off by default")
    p.add_argument("--no-browser", action="store_true", help="don't open a browser tab")
    p.add_argument("--watch", action="store_true",
                   help="also keep the library in step with its photo folders while serving (clipsearch watch)")
    add_watch_args(p)
    p.set_defaults(func=_cmd_serve)
