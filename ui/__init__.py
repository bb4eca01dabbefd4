"""clipsearch's Gradio web UI (installed as the package `clipsearch_ui`).

    from clipsearch import Library
    from clipsearch_ui import serve

    with Library.open("my-library") as lib:
        serve(lib)                      # http://127.0.0.1:7860, until Ctrl-C

`build_app(library)` returns the `gr.Blocks` without launching it. Importing this package
is cheap: Gradio is imported on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clipsearch_ui.app import build_app
    from clipsearch_ui.handlers import Handlers
    from clipsearch_ui.server import serve

__all__ = ["build_app", "serve", "Handlers"]


def __getattr__(name: str) -> Any:
    if name == "build_app":
        from clipsearch_ui.app import build_app
        return build_app
    if name == "serve":
        from clipsearch_ui.server import serve
        return serve
    if name == "Handlers":
        from clipsearch_ui.handlers import Handlers
        return Handlers
    raise AttributeError(f"module 'clipsearch_ui' has no attribute {name!r}")
