"""`serve(library, ...)`: launch the UI with private defaults.

Loopback only unless asked, no share link unless asked, no analytics, uploads capped, and
Gradio's file routes limited to the library's thumbnail folder (never the photo folders,
never the catalog or the index).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from clipsearch.errors import ClipSearchError

if TYPE_CHECKING:
    import gradio as gr

    from clipsearch.library import Library

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# Host headers a loopback-only server answers to (Starlette keeps the brackets of IPv6 literals).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
MAX_FILE_SIZE = "25mb"
WARM_THUMBNAILS = 2000  # thumbnails made in the background at start (newest photos first); the rest on first sight
GRADIO_CACHE_DIR = "cache/gradio"
_PRIVATE_FILES = ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm", "index.faiss", "index.faiss.json",
                  "lock")
_our_temp_dir: str | None = None


def parse_auth(value: str) -> tuple[str, str]:
    """`user:password` → (user, password); the password may contain colons."""
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ClipSearchError(f"--auth wants user:password, got {value!r}")
    return user.strip(), password


def read_auth_file(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Logins from a file of `user:password` lines (blank lines and # comments ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ClipSearchError(f"cannot read auth file {path}: {exc.strerror or exc}") from exc
    logins = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            logins.append(parse_auth(line))
        except ClipSearchError:
            raise ClipSearchError(f"{path}:{n}: expected user:password") from None
    if not logins:
        raise ClipSearchError(f"auth file {path} has no user:password lines")
    return logins


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _use_private_temp_dir(library: "Library") -> None:
    # Gradio copies every image it sends (thumbnails, previews) and every upload into its
    # temp folder, by default a world-readable /tmp/gradio. Keep them in the library instead,
    # unless the user chose a folder.
    global _our_temp_dir
    current = os.environ.get("GRADIO_TEMP_DIR")
    if current and current != _our_temp_dir:
        return
    folder = Path(library.folder) / GRADIO_CACHE_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _our_temp_dir = os.environ["GRADIO_TEMP_DIR"] = str(folder)


def release_temp_dir() -> None:
    """Undo what `serve` did to $GRADIO_TEMP_DIR (pointed it into the library's folder), for a
    process that serves another library afterwards, as tests do. A folder the user chose stays."""
    global _our_temp_dir
    if _our_temp_dir is not None and os.environ.get("GRADIO_TEMP_DIR") == _our_temp_dir:
        del os.environ["GRADIO_TEMP_DIR"]
    _our_temp_dir = None


def blocked_paths(library: "Library", thumbs: Path) -> list[str]:
    """What Gradio must never serve even if asked: the catalog and index, and the photo folders."""
    folder = Path(library.folder)
    blocked = [str(folder / name) for name in _PRIVATE_FILES]
    # A photo folder may hold the library (and so the thumbnails): then only its files are blocked by name.
    blocked += [r for r in library.roots() if not str(thumbs).startswith(r.rstrip("/") + "/")]
    return blocked


def _warm_up(library: "Library") -> None:
    """Load the text encoder before the server says it is ready, so the first search is as quick as any."""
    try:
        library.warm_up()
    except ClipSearchError as exc:  # an empty or unusable library still serves its UI, which says why
        log.warning("could not load the model ahead: %s", exc)


def _prepare(handlers: Any) -> None:
    """In the background once serving: the map's projection, then thumbnails of the first photos."""
    try:
        handlers.draw_map("folder")
        with handlers.lock:
            ids = handlers.library.image_ids()[-WARM_THUMBNAILS:][::-1]
        handlers.thumbs.warm(ids, lock=handlers.lock)
    except Exception:  # noqa: BLE001 - only a head start: the same work happens on demand
        log.debug("preparing the UI ahead failed", exc_info=True)


def _gradio_login(app: Any) -> Callable[[Any], bool]:
    """Whether a request carries the UI's login cookie (Gradio's App keeps the logged-in tokens)."""
    def logged_in(request: Any) -> bool:
        token = (request.cookies.get(f"access-token-{app.cookie_id}")
                 or request.cookies.get(f"access-token-unsecure-{app.cookie_id}"))
        return token is not None and app.tokens.get(token) is not None
    return logged_in


def serve(library: "Library", host: str = DEFAULT_HOST, port: int | None = None,
          auth: tuple[str, str] | list[tuple[str, str]] | Callable[[str, str], bool] | None = None,
          share: bool = False, open_browser: bool = False, block: bool = True, *,
          on_ready: Callable[[str], None] | None = None, api_token: str | None = None,
          serve_originals: bool = False) -> "gr.Blocks":
    """Launch the web UI and the JSON API (at /api) over `library`; returns the running app (`.close()` stops it).

    `auth` is (user, password), a list of them, or a callable; `share=True` asks Gradio for a
    public link (off by default: this serves private photos). `api_token`: a secret that apps
    send as `Authorization: Bearer TOKEN` (with a login or a token, the API wants one of them);
    `serve_originals` lets the API send the photo files themselves. With `block`, returns only
    when the server stops (Ctrl-C). `on_ready(url)` is called once the server listens; without
    it Gradio prints its own banner.
    """
    from clipsearch.runtime import configure_process

    configure_process()  # a process that serves: OpenMP threads that sleep (see clipsearch.runtime)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # Gradio's analytics and version check read it
    _use_private_temp_dir(library)
    from clipsearch_ui.app import build_app, launch_kwargs

    demo = build_app(library)
    thumbs = demo.clipsearch_handlers.thumbs.folder  # type: ignore[attr-defined]
    thumbs.mkdir(mode=0o700, parents=True, exist_ok=True)
    if isinstance(auth, list) and not auth:
        auth = None
    if not is_loopback(host) and auth is None:
        log.warning("serving on %s without a login: anyone who can reach this address sees your photos", host)
    demo.queue(default_concurrency_limit=4)
    from starlette.routing import Mount

    from clipsearch_ui.api import API_PREFIX, Access, build_api

    handlers = demo.clipsearch_handlers  # type: ignore[attr-defined]
    access = Access(token=api_token, login_required=auth is not None)
    api = build_api(library, access=access, lock=handlers.lock, thumbs=handlers.thumbs,
                    serve_originals=serve_originals)
    # Routes given to the app's constructor come before Gradio's own: /api is ours.
    app_kwargs: dict = {"routes": [Mount(API_PREFIX, app=api)]}
    if is_loopback(host) and not share:
        # DNS rebinding: a web page whose name is made to resolve to 127.0.0.1 would be "same
        # origin" with the UI and could read the library through the visitor's browser.
        from starlette.middleware import Middleware
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        allowed = sorted({*LOOPBACK_HOSTS, f"[{host}]" if ":" in host else host})
        app_kwargs["middleware"] = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed)]
    _warm_up(library)
    demo.launch(
        server_name=host, server_port=port, share=share, auth=auth, inbrowser=open_browser,
        prevent_thread_lock=True, quiet=on_ready is not None, show_error=False,
        # No folder of ours: thumbnails and photos go out through the API, by id. Gradio's file
        # route serves only its own cache (what the app sent, what users uploaded).
        allowed_paths=[], blocked_paths=blocked_paths(library, thumbs),
        max_file_size=MAX_FILE_SIZE, enable_monitoring=False, ssr_mode=False, mcp_server=False, pwa=False,
        run_history=False, footer_links=["settings"], auth_message="clipsearch: log in to see this photo library",
        app_kwargs=app_kwargs, **launch_kwargs(),
    )
    if auth is not None:
        access.logged_in = _gradio_login(demo.server_app)
    threading.Thread(target=_prepare, args=(handlers,), name="clipsearch-prepare", daemon=True).start()
    demo.clipsearch_api = api  # type: ignore[attr-defined]
    if on_ready is not None:
        on_ready(demo.share_url or demo.local_url or f"http://{host}:{port}/")
    if block:
        demo.block_thread()
    return demo
