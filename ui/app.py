"""`build_app(library) -> gr.Blocks`: the layout, and one line of wiring per event.

Everything the UI does lives in `Handlers`; this module only places components and
connects their events. Per-session values (the results shown, the selected photo, the last
search, the map) live in `gr.State`, so two browser tabs never see each other's work.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import gradio as gr

from clipsearch_ui.handlers import ALL_FOLDERS, QUERY_HINT, Handlers, code_span

if TYPE_CHECKING:
    from clipsearch.library import Library

THEME = gr.themes.Default(primary_hue="indigo", secondary_hue="slate", neutral_hue="zinc")
CSS = """
.gradio-container { max-width: 1400px !important; }
#header h2 { margin-bottom: 0; }
#header p { color: var(--body-text-color-subdued); margin-top: 2px; }
#status p { margin: 0; }
#results .caption-label { font-size: 12px; }
#map img { cursor: crosshair; }
"""
SEARCH_TAB, DESCRIBE_TAB, EXPLORE_TAB, LIBRARY_TAB = "search", "describe", "explore", "library"


def launch_kwargs() -> dict[str, Any]:
    """The look of the app: Gradio 6 takes theme and CSS at launch, not in the Blocks."""
    return {"theme": THEME, "css": CSS}


def _header(handlers: Handlers) -> str:
    info = handlers.overview_counts()
    return (f"## clipsearch\n{info['images']:,} photos · {info['texts']:,} texts · model {code_span(info['model'])} · "
            f"library {code_span(info['folder'])}")


def _welcome(handlers: Handlers) -> str:
    if not handlers.overview_counts()["images"]:
        return ("The library is empty: index a folder of photos (`clipsearch index PHOTOS --library ...`), "
                "then come back.")
    return "Type what you are looking for, or search **By image**."


def build_app(library: "Library", *, handlers: Handlers | None = None) -> gr.Blocks:
    """The web UI over one open library. Launch it with `clipsearch_ui.serve` (safe defaults)."""
    # Nothing phones home: Gradio's analytics and version check read this (and Blocks' argument).
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    h = handlers or Handlers(library)

    with gr.Blocks(title="clipsearch", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        shown = gr.State([])          # the results the gallery shows: [{"id", "path", "score"}]
        selected = gr.State(None)     # id of the photo in the detail panel
        last_search = gr.State(None)  # what to re-run when a filter changes
        describe_source = gr.State(None)  # {"id": n} or {"path": upload}
        map_view = gr.State(None)     # the session's map (points and their pixels)
        map_selected = gr.State(None)

        header = gr.Markdown(_header(h), elem_id="header")
        with gr.Tabs(selected=SEARCH_TAB) as tabs:
            # -- Search ------------------------------------------------------------------
            with gr.Tab("Search", id=SEARCH_TAB):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        with gr.Tabs():
                            with gr.Tab("By text"):
                                query = gr.Textbox(label="Describe the photo you're looking for", info=QUERY_HINT,
                                                   placeholder="beach + sunset - people", autofocus=True,
                                                   elem_id="query", max_length=500)
                            with gr.Tab("By image"):
                                with gr.Row():
                                    # image_mode=None: Gradio hands uploads over undecoded (its convert() would
                                    # decode a 20 KB PNG bomb in full); only our capped loader decodes them.
                                    upload = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                                      label="Upload or paste an image", height=200, elem_id="upload")
                                    with gr.Column():
                                        upload_text = gr.Textbox(label="Plus text (optional)",
                                                                 placeholder="at night", max_length=200)
                                        upload_btn = gr.Button("Find similar photos", variant="primary")
                    with gr.Column(scale=2, min_width=280):
                        k = gr.Slider(1, 200, value=24, step=1, label="Results")
                        min_score = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Minimum score",
                                              info="0 = no minimum")
                        folder = gr.Dropdown(choices=h.folder_choices(), value=ALL_FOLDERS, label="Folder",
                                             elem_id="folder")
                status = gr.Markdown(_welcome(h), elem_id="status")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        gallery = gr.Gallery(label="Results", show_label=False, columns=5, height="auto",
                                             allow_preview=False, object_fit="cover", elem_id="results")
                    with gr.Column(scale=2, min_width=300):
                        photo = gr.Image(label="Selected photo", interactive=False, format="jpeg", height=380,
                                         elem_id="photo", buttons=["fullscreen"])
                        details = gr.Markdown("Click a result to see it larger, with its path, size and date.",
                                              elem_id="details")
                        like_text = gr.Textbox(show_label=False, container=False, max_length=200,
                                               placeholder="optional text to add, e.g. at night")
                        with gr.Row():
                            like_btn = gr.Button("More like this", variant="primary")
                            describe_btn = gr.Button("Describe this photo")

            # -- Describe ----------------------------------------------------------------
            with gr.Tab("Describe", id=DESCRIBE_TAB):
                gr.Markdown("The texts of your collection that are closest to an image (image → text). "
                            "Add your own labels to sort photos by them: zero-shot labelling.")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2):
                        describe_image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                                  label="Image to describe", height=360, elem_id="describe-image")
                        describe_k = gr.Slider(1, 50, value=8, step=1, label="Texts to show")
                    with gr.Column(scale=3):
                        describe_status = gr.Markdown("Upload an image, or select a search result and press "
                                                      "**Describe this photo**.", elem_id="describe-status")
                        describe_table = gr.Dataframe(headers=["text", "score"], datatype=["str", "number"],
                                                      interactive=False, label="Closest texts", wrap=True,
                                                      elem_id="describe-table")
                        labels = gr.Textbox(label="Add labels", lines=3, max_length=20000,
                                            placeholder="a dog, a cat, a birthday party\nsunset at the beach",
                                            info="Separated by commas or new lines; they join the text collection.")
                        labels_btn = gr.Button("Add labels and describe again", variant="primary")

            # -- Explore -----------------------------------------------------------------
            with gr.Tab("Explore", id=EXPLORE_TAB) as explore_tab:
                with gr.Row():
                    colour_by = gr.Radio([("Folder", "folder"), ("Nearest label", "label")], value="folder",
                                         label="Colour by", scale=1)
                    map_query = gr.Textbox(label="Mark a query on the map", placeholder="sunset", scale=2,
                                           max_length=500)
                    map_btn = gr.Button("Draw map", variant="primary", scale=0, min_width=140)
                map_status = gr.Markdown(elem_id="map-status")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        map_image = gr.Image(show_label=False, interactive=False, format="png", elem_id="map",
                                             buttons=["fullscreen"])
                    with gr.Column(scale=1, min_width=260):
                        map_photo = gr.Image(label="Photo", interactive=False, format="jpeg", height=260)
                        map_details = gr.Markdown("Click a point on the map to see its photo.", elem_id="map-details")
                        map_like_btn = gr.Button("More like this")

            # -- Library -----------------------------------------------------------------
            with gr.Tab("Library", id=LIBRARY_TAB) as library_tab:
                overview = gr.Markdown(elem_id="overview")
                with gr.Row():
                    reindex_btn = gr.Button("Re-index photo folders", variant="primary", scale=0, min_width=280)
                    reindex_status = gr.Markdown()
                skipped = gr.Dataframe(headers=["file", "why it was skipped"], interactive=False, wrap=True,
                                       label="Skipped files (last indexing run)", elem_id="skipped")

        # -- wiring: Search ---------------------------------------------------------------
        filters = [k, min_score, folder]
        results = [gallery, status, shown]

        def on_query(q: str, k_: int, m: float, f: str) -> tuple:
            return (*h.search_text(q, k_, m, f), {"kind": "text", "query": q})

        def on_upload(path: str | None, text: str, k_: int, m: float, f: str) -> tuple:
            return (*h.search_upload(path, text, k_, m, f), {"kind": "upload", "path": path, "text": text})

        def on_like(image_id: int | None, text: str, k_: int, m: float, f: str) -> tuple:
            return (*h.more_like(image_id, text, k_, m, f), {"kind": "like", "id": image_id, "text": text},
                    gr.Tabs(selected=SEARCH_TAB))

        def on_filter(last: dict | None, k_: int, m: float, f: str) -> tuple:
            out = h.rerun(last, k_, m, f)
            return tuple(out) if out is not None else (gr.skip(), gr.skip(), gr.skip())

        def on_select(rows: list, evt: gr.SelectData) -> tuple:
            return tuple(h.select(rows, evt.index))

        gr.on([query.submit, query.change], on_query, [query, *filters], [*results, last_search],
              trigger_mode="always_last", show_progress="minimal", api_name="search")
        gr.on([upload.upload, upload_btn.click, upload_text.submit], on_upload, [upload, upload_text, *filters],
              [*results, last_search], trigger_mode="always_last", api_name="search_image")
        gr.on([k.release, min_score.release, folder.input], on_filter, [last_search, *filters], results,
              trigger_mode="always_last", show_progress="minimal", api_visibility="private")
        gallery.select(on_select, [shown], [photo, details, selected], api_visibility="private")
        gr.on([like_btn.click, like_text.submit], on_like, [selected, like_text, *filters],
              [*results, last_search, tabs], api_visibility="private")

        # -- wiring: Describe -------------------------------------------------------------
        def on_describe_selected(image_id: int | None, k_: int) -> tuple:
            source = {"id": image_id} if image_id is not None else None
            return (*h.describe(source, k_), gr.Tabs(selected=DESCRIBE_TAB))

        def on_describe_upload(path: str | None, k_: int) -> tuple:
            return tuple(h.describe({"path": path} if path else None, k_))

        def on_describe_again(source: dict | None, k_: int) -> tuple:
            out = h.describe(source, k_)
            return out.rows, out.status

        def on_labels(text: str, source: dict | None, k_: int) -> tuple:
            out, box = h.add_labels(text, source, k_)
            return out.rows, out.status, box, _header(h)

        describe_outputs = [describe_image, describe_table, describe_status, describe_source]
        describe_btn.click(on_describe_selected, [selected, describe_k], [*describe_outputs, tabs],
                           api_visibility="private")
        describe_image.upload(on_describe_upload, [describe_image, describe_k], describe_outputs, api_name="describe")
        describe_image.clear(lambda: (None, [], "Upload an image, or select a search result.", None), None,
                             describe_outputs, api_visibility="private")
        describe_k.release(on_describe_again, [describe_source, describe_k], [describe_table, describe_status],
                           api_visibility="private")
        labels_btn.click(on_labels, [labels, describe_source, describe_k],
                         [describe_table, describe_status, labels, header], api_visibility="private")

        # -- wiring: Explore --------------------------------------------------------------
        def on_map(colour: str, q: str, search_q: str) -> tuple:
            q = q or search_q or ""
            return (*h.draw_map(colour, q), q, None)

        def on_map_click(view: Any, evt: gr.SelectData) -> tuple:
            image, out = h.click_map(view, *evt.index)
            return (image if image is not None else gr.skip()), *out

        def on_map_like(image_id: int | None, k_: int, m: float, f: str) -> tuple:
            return on_like(image_id, "", k_, m, f)

        map_outputs = [map_image, map_status, map_view, map_query, map_selected]
        gr.on([explore_tab.select, map_btn.click, map_query.submit, colour_by.input], on_map,
              [colour_by, map_query, query], map_outputs, trigger_mode="always_last", api_name="map")
        map_image.select(on_map_click, [map_view], [map_image, map_photo, map_details, map_selected],
                         api_visibility="private")
        map_like_btn.click(on_map_like, [map_selected, *filters], [*results, last_search, tabs],
                           api_visibility="private")

        # -- wiring: Library --------------------------------------------------------------
        def on_overview() -> tuple:
            return tuple(h.overview())

        def on_reindex(progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
            out, message = h.reindex(progress)
            return (*out, message, gr.Dropdown(choices=h.folder_choices()), _header(h))

        library_tab.select(on_overview, None, [overview, skipped], api_name="library")
        reindex_btn.click(on_reindex, None, [overview, skipped, reindex_status, folder, header],
                          concurrency_limit=1, api_visibility="private")
        demo.load(lambda: (*h.overview(), gr.Dropdown(choices=h.folder_choices()), _header(h)), None,
                  [overview, skipped, folder, header], api_visibility="private")
    demo.clipsearch_handlers = h  # type: ignore[attr-defined]  # for tests and embedding apps
    return demo
