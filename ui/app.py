"""`build_app(library) -> gr.Blocks`: the page, its tabs, and the context they share.

Each tab lives in its own module with one public function, `build(ctx, tab) -> parts`,
called inside its `gr.Tab` (`tab`, to react to it being opened): it places the tab's components, wires their events to `Handlers`,
and returns the components other tabs may use (for example the search tab's selected
photo, or a function that sends "More like this" into its results). A new tab is one
entry in `TABS`. Per-session values live in `gr.State`, so two browser tabs never see each
other's work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from clipsearch_ui import concepts_tab, describe_tab, duplicates_tab, explore_tab, library_tab, search_tab
from clipsearch_ui.handlers import Handlers, code_span

if TYPE_CHECKING:
    from clipsearch.library import Library

THEME = gr.themes.Default(primary_hue="indigo", secondary_hue="slate", neutral_hue="zinc")
CSS = """
.gradio-container { max-width: 1400px !important; }
#header h2 { margin-bottom: 0; }
#header p { color: var(--body-text-color-subdued); margin-top: 2px; overflow-wrap: anywhere; }
#status p { margin: 0; }
#photo-panel img { display: block; width: 100%; max-height: 62vh; object-fit: contain; border-radius: 8px;
                   background: var(--background-fill-secondary); }
.cs-nophoto { padding: 2em 1em; text-align: center; color: var(--body-text-color-subdued);
              border: 1px dashed var(--border-color-primary); border-radius: 8px; }
#details p { overflow-wrap: anywhere; }
#map img { cursor: crosshair; }
@media (max-width: 640px) {
  .gradio-container { padding-left: 6px !important; padding-right: 6px !important; }
  #map img { width: 100% !important; height: auto !important; }
  #photo-panel img { max-height: 42vh; }
}
"""
SEARCH_TAB, DESCRIBE_TAB, EXPLORE_TAB, LIBRARY_TAB = "search", "describe", "explore", "library"


@dataclass
class AppContext:
    """What the tabs share: the handlers, the page's header and tab bar, and each built tab's parts."""

    handlers: Handlers
    header: gr.Markdown
    tabs: gr.Tabs
    parts: dict[str, Any] = field(default_factory=dict)  # tab id -> what its build() returned
    loads: list[tuple[Callable[[], Any], list[Any]]] = field(default_factory=list)

    def on_load(self, fn: Callable[[], Any], outputs: list[Any]) -> None:
        """Run `fn` when a browser opens the page (fresh values: folders, counts), into `outputs`."""
        self.loads.append((fn, outputs))

    def header_text(self) -> str:
        return header_text(self.handlers)


# (id, label, build): the order of the tab bar. Tabs may use the parts of the tabs before them.
TABS: list[tuple[str, str, Callable[[AppContext, gr.Tab], Any]]] = [
    (SEARCH_TAB, "Search", search_tab.build),
    (DESCRIBE_TAB, "Describe", describe_tab.build),
    (EXPLORE_TAB, "Explore", explore_tab.build),
    (LIBRARY_TAB, "Library", library_tab.build),
    (duplicates_tab.DUPLICATES_TAB, "Duplicates", duplicates_tab.build),
    (concepts_tab.CONCEPTS_TAB, "Concepts", concepts_tab.build),
]


def launch_kwargs() -> dict[str, Any]:
    """The look of the app: Gradio 6 takes theme and CSS at launch, not in the Blocks."""
    return {"theme": THEME, "css": CSS}


def header_text(handlers: Handlers) -> str:
    info = handlers.overview_counts()
    return (f"## clipsearch\n{info['images']:,} photos · {info['texts']:,} texts · model {code_span(info['model'])} · "
            f"library {code_span(info['folder'])}")


def build_app(library: "Library", *, handlers: Handlers | None = None) -> gr.Blocks:
    """The web UI over one open library. Launch it with `clipsearch_ui.serve` (safe defaults)."""
    # Nothing phones home: Blocks' argument here; the environment Gradio's version check reads is serve's.
    h = handlers or Handlers(library)

    with gr.Blocks(title="clipsearch", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        header = gr.Markdown(header_text(h), elem_id="header")
        with gr.Tabs(selected=SEARCH_TAB) as tabs:
            ctx = AppContext(handlers=h, header=header, tabs=tabs)
            for tab_id, label, build in TABS:
                with gr.Tab(label, id=tab_id) as tab:
                    ctx.parts[tab_id] = build(ctx, tab)
        demo.load(lambda: header_text(h), None, header, api_visibility="private")
        for fn, outputs in ctx.loads:
            demo.load(fn, None, outputs, api_visibility="private")
    demo.clipsearch_handlers = h  # type: ignore[attr-defined]  # for tests and embedding apps
    demo.clipsearch_context = ctx  # type: ignore[attr-defined]
    return demo

