"""The web UI served for a test: on a free loopback port, closed (with its library) afterwards."""
from __future__ import annotations

import contextlib
import socket
from typing import Any, Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(library: Any, **serve_kwargs: Any) -> Iterator[tuple[str, Any, int]]:
    """(the UI's URL, the Gradio app, its port); the app and `library` are closed after, and the
    Gradio temp folder `serve` chose is released so the next server picks its own."""
    from clipsearch_ui import serve
    from clipsearch_ui.server import release_temp_dir

    port = free_port()
    demo = serve(library, port=port, block=False, on_ready=lambda url: None, **serve_kwargs)
    try:
        yield f"http://127.0.0.1:{port}/", demo, port
    finally:
        demo.close()
        library.close()
        release_temp_dir()
