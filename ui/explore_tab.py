"""The Explore tab: a 2-D map of the collection, coloured by folder or nearest label, with a query marked."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from clipsearch_ui.handlers import NO_PHOTO

if TYPE_CHECKING:
    from clipsearch_ui.app import AppContext


def build(ctx: "AppContext", tab: gr.Tab) -> dict:
    h = ctx.handlers
    view = gr.State(None)      # the session's map (points and their pixels)
    selected = gr.State(None)  # id of the photo clicked on the map
    with gr.Row():
        colour_by = gr.Radio([("Folder", "folder"), ("Nearest label", "label")], value="folder", label="Colour by",
                             scale=1, min_width=200)
        query = gr.Textbox(label="Mark a query on the map", placeholder="sunset", scale=2, max_length=500,
                           min_width=200)
        draw_btn = gr.Button("Draw map", variant="primary", scale=0, min_width=140)
    status = gr.Markdown(elem_id="map-status")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            image = gr.Image(show_label=False, interactive=False, format="jpeg", elem_id="map",
                             buttons=["fullscreen"])
        with gr.Column(scale=1, min_width=260, elem_id="map-panel"):
            photo = gr.HTML(NO_PHOTO, elem_id="map-photo")
            details = gr.Markdown("Click a point on the map to see its photo.", elem_id="map-details")
            like_btn = gr.Button("More like this")

    search = ctx.parts.get("search")
    search_query = search.query if search is not None else gr.State("")

    def on_map(colour: str, q: str, search_q: str) -> tuple:
        q = q or search_q or ""
        return (*h.draw_map(colour, q), q, None)

    def on_click(v: Any, evt: gr.SelectData) -> tuple:
        drawn, out = h.click_map(v, *evt.index)
        return (drawn if drawn is not None else gr.skip()), out.image, out.details, out.selected

    gr.on([tab.select, draw_btn.click, query.submit, colour_by.input], on_map, [colour_by, query, search_query],
          [image, status, view, query, selected], trigger_mode="always_last", api_name="map", queue=False)
    image.select(on_click, [view], [image, photo, details, selected], api_visibility="private", queue=False)
    if search is not None:
        search.show_like(like_btn.click, selected)
    return {"selected": selected}
