"""The Library tab: counts, model, index, folders, the last indexing run, and re-indexing."""
from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

if TYPE_CHECKING:
    from clipsearch_ui.app import AppContext


def build(ctx: "AppContext", tab: gr.Tab) -> dict:
    h = ctx.handlers
    overview = gr.Markdown(elem_id="overview")
    with gr.Row():
        reindex_btn = gr.Button("Re-index photo folders", variant="primary", scale=0, min_width=280)
        reindex_status = gr.Markdown()
    skipped = gr.Dataframe(headers=["file", "why it was skipped"], interactive=False, wrap=True,
                           label="Skipped files (last indexing run)", elem_id="skipped")

    def on_overview() -> tuple:
        return tuple(h.overview())

    search = ctx.parts.get("search")
    folder = search.folder if search is not None else gr.State(None)

    def on_reindex(progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
        out, message = h.reindex(progress)
        return (*out, message, gr.Dropdown(choices=h.folder_choices()), ctx.header_text())

    tab.select(on_overview, None, [overview, skipped], api_name="library")
    reindex_btn.click(on_reindex, None, [overview, skipped, reindex_status, folder, ctx.header],
                      concurrency_limit=1, api_visibility="private")
    ctx.on_load(on_overview, [overview, skipped])
    return {}
