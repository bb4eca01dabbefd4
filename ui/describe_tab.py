"""The Describe tab: image → text against the library's text collection, and adding labels."""
from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

if TYPE_CHECKING:
    from clipsearch_ui.app import AppContext

EMPTY = "Upload an image, or select a search result and press **Describe this photo**."


def build(ctx: "AppContext", tab: gr.Tab) -> dict:
    h = ctx.handlers
    source = gr.State(None)  # {"id": n} or {"path": upload}
    gr.Markdown("The texts of your collection that are closest to an image (image → text). "
                "Add your own labels to sort photos by them: zero-shot labelling.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=280):
            # A plain file input, so that our loader (not Gradio's) says why a file is not usable.
            upload = gr.File(type="filepath", label="Image to describe", file_count="single", height=120,
                             elem_id="describe-upload")
            image = gr.Image(show_label=False, interactive=False, format="jpeg", height=320, elem_id="describe-image",
                             buttons=["fullscreen"])
            k = gr.Slider(1, 50, value=8, step=1, label="Texts to show")
        with gr.Column(scale=3, min_width=280):
            status = gr.Markdown(EMPTY, elem_id="describe-status")
            table = gr.Dataframe(headers=["text", "score"], datatype=["str", "number"], interactive=False,
                                 label="Closest texts", wrap=True, elem_id="describe-table")
            labels = gr.Textbox(label="Add labels", lines=3, max_length=20000,
                                placeholder="a dog, a cat, a birthday party\nsunset at the beach",
                                info="Separated by commas or new lines; they join the text collection.")
            labels_btn = gr.Button("Add labels and describe again", variant="primary")

    outputs = [image, table, status, source]

    def on_selected(image_id: int | None, k_: int) -> tuple:
        src = {"id": image_id} if image_id is not None else None
        return (*h.describe(src, k_), gr.Tabs(selected="describe"))

    def on_upload(path: str | None, k_: int) -> tuple:
        return tuple(h.describe({"path": path} if path else None, k_))

    def on_again(src: dict | None, k_: int) -> tuple:
        out = h.describe(src, k_)
        return out.rows, out.status

    def on_labels(text: str, src: dict | None, k_: int) -> tuple:
        out, box = h.add_labels(text, src, k_)
        return out.rows, out.status, box, ctx.header_text()

    search = ctx.parts.get("search")
    if search is not None:
        search.describe_btn.click(on_selected, [search.selected, k], [*outputs, ctx.tabs], api_visibility="private")
    upload.upload(on_upload, [upload, k], outputs, api_name="describe")
    upload.clear(lambda: (None, [], EMPTY, None), None, outputs, api_visibility="private")
    k.release(on_again, [source, k], [table, status], api_visibility="private")
    labels_btn.click(on_labels, [labels, source, k], [table, status, labels, ctx.header], api_visibility="private")
    return {"source": source}
