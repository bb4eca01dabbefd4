"""The Search tab: by text or by an uploaded image, a results grid with paging, and the selected photo.

Its parts (`SearchParts`) let other tabs read the selected photo and send a "More like
this" into its results.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from clipsearch_ui.grid import grid_value, results_grid
from clipsearch_ui.handlers import ALL_FOLDERS, NO_PHOTO, QUERY_HINT, SearchOutput, Where

if TYPE_CHECKING:
    from clipsearch_ui.app import AppContext

DEFAULT_K = 24


@dataclass
class SearchParts:
    """What other tabs use: the query box, the filters, the selected photo and a way into the results."""

    query: gr.Textbox
    filters: list[Any]              # [k, min_score, folder, after, before, place, camera, types, newest]
    selected: gr.State              # id of the selected photo (None: none)
    shown: gr.State                 # the results shown, in order: [{"id", "path", "score"}] (e.g. to act on them all)
    status: gr.Markdown
    describe_btn: gr.Button
    folder: gr.Dropdown
    show_like: Callable[..., None]  # show_like(trigger, id_state): "More like this" into the results


def _welcome(ctx: "AppContext") -> str:
    if not ctx.handlers.overview_counts()["images"]:
        return ("The library is empty: index a folder of photos (`clipsearch index PHOTOS --library ...`), "
                "then come back.")
    return "Type what you are looking for, or search **By image**."


def build(ctx: "AppContext", tab: gr.Tab) -> SearchParts:
    h = ctx.handlers
    shown = gr.State([])          # the results the grid shows: [{"id", "path", "score"}]
    selected = gr.State(None)     # id of the photo in the detail panel
    sel_index = gr.State(None)    # its index in `shown`
    more = gr.State(False)        # whether another page follows
    last_search = gr.State(None)  # what to re-run when a filter changes or more are asked for
    uploaded = gr.State(None)     # the last uploaded file (in Gradio's upload cache), for "Find similar" again

    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            with gr.Tabs():
                with gr.Tab("By text"):
                    query = gr.Textbox(label="Describe the photo you're looking for", info=QUERY_HINT,
                                       placeholder="beach + sunset - people", autofocus=True, elem_id="query",
                                       max_length=500)
                with gr.Tab("By image"):
                    with gr.Row():
                        # A plain file input: Gradio's Image input decodes uploads itself and fails with
                        # its own error before our loader can say why a file is not a usable image.
                        upload = gr.File(type="filepath", label="Upload an image", file_count="single",
                                         height=140, elem_id="upload")
                        with gr.Column():
                            upload_text = gr.Textbox(label="Plus text (optional)", placeholder="at night",
                                                     max_length=200)
                            upload_btn = gr.Button("Find similar photos", variant="primary")
        with gr.Column(scale=2, min_width=260):
            k = gr.Slider(1, 200, value=DEFAULT_K, step=1, label="Results per page", elem_id="k")
            min_score = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Minimum score", info="0 = no minimum",
                                  elem_id="min-score")
            folder = gr.Dropdown(choices=h.folder_choices(), value=ALL_FOLDERS, label="Folder", elem_id="folder")
            # Photo metadata filters: they build the same typed query the query box does (clipsearch.query).
            with gr.Accordion("When, where, with what", open=False, elem_id="meta-filters"):
                with gr.Row():
                    after = gr.Textbox(label="Taken from", placeholder="2019-06", max_length=16, elem_id="after",
                                       min_width=100)
                    before = gr.Textbox(label="Taken before", placeholder="2019-09", max_length=16, elem_id="before",
                                        min_width=100)
                with gr.Row():
                    place = gr.Textbox(label="Place", placeholder="Lisbon, or PT", max_length=100, elem_id="place",
                                       min_width=100)
                    camera = gr.Textbox(label="Camera", placeholder="Pixel 7", max_length=100, elem_id="camera",
                                        min_width=100)
                types = gr.CheckboxGroup(["jpeg", "heic", "png", "webp", "raw"], label="Type", elem_id="types")
                newest = gr.Checkbox(label="Newest first (relevant photos only)", elem_id="newest")
    status = gr.Markdown(_welcome(ctx), elem_id="status")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            grid = results_grid(elem_id="results")
            more_btn = gr.Button("Load more", visible=False, elem_id="load-more")
        with gr.Column(scale=2, min_width=280, elem_id="photo-panel"):
            photo = gr.HTML(NO_PHOTO, elem_id="photo")
            details = gr.Markdown("", elem_id="details")
            with gr.Row():
                prev_btn = gr.Button("← Previous", size="sm", elem_id="prev", min_width=80)
                next_btn = gr.Button("Next →", size="sm", elem_id="next", min_width=80)
            like_text = gr.Textbox(show_label=False, container=False, max_length=200,
                                   placeholder="optional text to add, e.g. at night")
            with gr.Row():
                like_btn = gr.Button("More like this", variant="primary", min_width=120)
                describe_btn = gr.Button("Describe this photo", min_width=120)

    filters = [k, min_score, folder, after, before, place, camera, types, newest]
    # A new result list: the grid, its status and paging, and the (cleared) selection.
    results = [grid, status, shown, more, more_btn, photo, details, selected, sel_index]

    def fresh(out: SearchOutput) -> tuple:
        return (out.grid, out.status, out.shown, out.more, gr.Button(visible=out.more), NO_PHOTO, "", None, None)

    def on_query(q: str, k_: int, m: float, f: str, *w: Any) -> tuple:
        return (*fresh(h.search_text(q, k_, m, f, Where.of(*w))), {"kind": "text", "query": q,
                                                                  "filters": [k_, m, f, *w]})

    def on_upload(path: str | None, text: str, k_: int, m: float, f: str, *w: Any) -> tuple:
        last = {"kind": "upload", "path": path, "text": text, "filters": [k_, m, f, *w]}
        # The file input is emptied at once (ready for the next file); the status names the file used.
        return (*fresh(h.search_upload(path, text, k_, m, f, Where.of(*w))), last, None, path)

    def on_like(image_id: int | None, text: str, k_: int, m: float, f: str, *w: Any) -> tuple:
        last = {"kind": "like", "id": image_id, "text": text, "filters": [k_, m, f, *w]}
        return (*fresh(h.more_like(image_id, text, k_, m, f, Where.of(*w))), last, gr.Tabs(selected="search"))

    def on_filter(last: dict | None, k_: int, m: float, f: str, *w: Any) -> tuple:
        # Typing a number fires on each key, on Enter and on leaving the box: run only what changed.
        if last is not None and last.get("filters") == [k_, m, f, *w]:
            return tuple(gr.skip() for _ in range(len(results) + 1))
        out = h.rerun(last, k_, m, f, Where.of(*w))
        if out is None:
            return tuple(gr.skip() for _ in range(len(results) + 1))
        return (*fresh(out), {**(last or {"kind": "text", "query": ""}), "filters": [k_, m, f, *w]})

    def on_more(last: dict | None, rows: list, index: int | None, k_: int, m: float, f: str, *w: Any) -> tuple:
        out = h.load_more(last, rows, k_, m, f, Where.of(*w))
        if out is None:
            return tuple(gr.skip() for _ in range(5))
        keep = index if out.shown[:len(rows)] == rows else None
        return grid_value(out.shown, keep, more=out.more), out.status, out.shown, out.more, gr.Button(visible=out.more)

    def on_select(rows: list, evt: gr.SelectData) -> tuple:
        return tuple(h.select(rows, evt.index))

    def on_step(delta: int) -> Callable[..., tuple]:
        def step(rows: list, index: int | None, has_more: bool) -> tuple:
            out, grid_now = h.step(rows, index, delta, has_more)
            return (*out, grid_now)
        return step

    gr.on([query.submit, query.change], on_query, [query, *filters], [*results, last_search],
          trigger_mode="always_last", show_progress="minimal", api_name="search",
          queue=False)  # Gradio's queue (join, then a server-sent event stream) cost ~0.7 s per search: skipped
    upload.upload(on_upload, [upload, upload_text, *filters], [*results, last_search, upload, uploaded],
                  trigger_mode="always_last", api_name="search_image")
    gr.on([upload_btn.click, upload_text.submit], on_upload, [uploaded, upload_text, *filters],
          [*results, last_search, upload, uploaded], trigger_mode="always_last", api_visibility="private")
    # Sliders: dragging (release) and typing a number (input; Enter or leaving the box) both re-run.
    gr.on([k.release, k.input, min_score.release, min_score.input, folder.input, after.submit, after.blur,
           before.submit, before.blur, place.submit, place.blur, camera.submit, camera.blur, types.input,
           newest.input], on_filter,
          [last_search, *filters], [*results, last_search], trigger_mode="always_last", show_progress="minimal",
          api_visibility="private", queue=False)
    more_btn.click(on_more, [last_search, shown, sel_index, *filters], [grid, status, shown, more, more_btn],
                   api_visibility="private", queue=False)
    photo_out = [photo, details, selected, sel_index]
    grid.select(on_select, [shown], photo_out, api_visibility="private", show_progress="hidden", queue=False)
    prev_btn.click(on_step(-1), [shown, sel_index, more], [*photo_out, grid], api_visibility="private",
                   show_progress="hidden", queue=False)
    next_btn.click(on_step(+1), [shown, sel_index, more], [*photo_out, grid], api_visibility="private",
                   show_progress="hidden", queue=False)

    def show_like(trigger: Any, id_state: gr.State, text: gr.Textbox | None = None) -> None:
        """Wire `trigger` (an event, e.g. a button's .click) to "More like this" of the photo in `id_state`."""
        inputs = [id_state, text if text is not None else gr.State(""), *filters]
        trigger(on_like, inputs, [*results, last_search, ctx.tabs], api_visibility="private")

    gr.on([like_btn.click, like_text.submit], on_like, [selected, like_text, *filters],
          [*results, last_search, ctx.tabs], api_visibility="private")
    ctx.on_load(lambda: gr.Dropdown(choices=h.folder_choices()), [folder])
    return SearchParts(query=query, filters=filters, selected=selected, shown=shown, status=status,
                       describe_btn=describe_btn, folder=folder, show_like=show_like)
