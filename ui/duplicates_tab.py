"""The Duplicates tab: groups of copies (or of moments) side by side, sizes and the suggested keeper;
moving the others to a folder behind a confirmation, with the journal that undoes it."""
from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

import gradio as gr

from clipsearch_ui.handlers import human_bytes

if TYPE_CHECKING:
    from clipsearch.duplicates import DuplicateGroup
    from clipsearch_ui.app import AppContext

DUPLICATES_TAB = "duplicates"

TEMPLATE = """
<div class="dup-groups">
{{#each value.groups}}
  <section class="dup-group">
    <div class="dup-head">Group {{this.n}} · {{this.count}} photos · keep <b>{{this.keep_name}}</b>: {{this.reason}}</div>
    <div class="dup-row">
    {{#each this.members}}
      <figure class="dup-tile{{#if this.keep}} keep{{/if}}" title="{{this.path}}">
        <img src="/api/photos/{{this.id}}/thumb" alt="{{this.name}}" loading="lazy" decoding="async">
        <figcaption>{{#if this.keep}}<span class="dup-keep">KEEP</span> {{/if}}{{this.name}}<br>
          <span class="dup-size">{{this.size}} · {{this.bytes}}</span><br><span class="dup-why">{{this.why}}</span></figcaption>
      </figure>
    {{/each}}
    </div>
  </section>
{{/each}}
</div>
"""

CSS = """
.dup-group { margin: 0 0 14px 0; padding: 8px; border-radius: 8px; background: var(--background-fill-secondary); }
.dup-head { font-size: 14px; margin-bottom: 6px; overflow-wrap: anywhere; }
.dup-row { display: flex; gap: 8px; overflow-x: auto; }
.dup-tile { margin: 0; flex: 0 0 170px; border: 2px solid transparent; border-radius: 8px; overflow: hidden; }
.dup-tile.keep { border-color: var(--color-accent); }
.dup-tile img { display: block; width: 100%; aspect-ratio: 1 / 1; object-fit: contain; background: #e4e4e7; }
.dup-tile figcaption { font-size: 12px; line-height: 1.3; padding: 3px 5px; overflow-wrap: anywhere; }
.dup-keep { font-weight: 700; color: var(--color-accent); }
.dup-size, .dup-why { color: var(--body-text-color-subdued); }
"""


def groups_value(groups: Sequence["DuplicateGroup"]) -> dict[str, Any]:
    """The HTML component's value: each group's members with their names, sizes and why."""
    out = []
    for n, g in enumerate(groups, 1):
        members = [{"id": m.id, "path": m.path, "name": os.path.basename(m.path), "keep": m.id == g.keep_id,
                    "size": f"{m.width}×{m.height}" if m.width else "?",
                    "bytes": human_bytes(m.file_size) if m.file_size is not None else "?", "why": m.why}
                   for m in g.members]
        out.append({"n": n, "count": len(g.members), "keep_name": os.path.basename(g.keep), "reason": g.reason,
                    "members": members})
    return {"groups": out}


def find(library: Any, lock: Any, level: str, folder: str | None,
         progress: Callable[..., Any] | None = None) -> tuple[list["DuplicateGroup"], str]:
    """Groups of one level (under `folder`), and a status line."""
    with lock:
        groups = library.duplicates(level, folder=folder or None, progress=progress is not None)
    others = sum(len(g.others) for g in groups)
    if not groups:
        return [], f"No {level} found."
    return groups, (f"{len(groups)} groups of {level}: {others} photos besides the suggested keepers. "
                    "Nothing is deleted; you can move the others to a folder below.")


def move(library: Any, lock: Any, groups: Sequence["DuplicateGroup"] | None, dest: str | None,
         confirmed: bool) -> str:
    """Move the non-keepers to `dest` once confirmed; the status names the journal that undoes it."""
    if not groups:
        return "Find duplicates first."
    dest = (dest or "").strip()
    if not dest:
        return "Give the folder to move the other photos to."
    if not confirmed:
        return "Tick the confirmation box first: the photos will be moved (not deleted)."
    with lock:
        journal = library.move_duplicates(list(groups), os.path.expanduser(dest))
    msg = f"Moved {len(journal.done)} photos to {html.escape(dest)}."
    if journal.failed:
        msg += f" {len(journal.failed)} could not be moved (they stay where they were): " + "; ".join(
            f"{html.escape(p)}: {html.escape(r)}" for p, r in journal.failed[:5])
    if journal.path:
        msg += f" To put them back: `clipsearch duplicates --undo {journal.path}`"
    return msg


def build(ctx: "AppContext", tab: gr.Tab) -> dict:
    h = ctx.handlers
    groups_state = gr.State([])
    with gr.Row():
        level = gr.Radio(["copies", "moments"], value="copies", label="Find",
                         info="copies: the same picture (resized, converted, cropped, rotated, edited); "
                              "moments: shots of one burst")
        folder = gr.Dropdown(choices=[("All folders", "")], value="", label="Folder", allow_custom_value=False)
        find_btn = gr.Button("Find duplicates", variant="primary", scale=0, min_width=200)
    status = gr.Markdown(elem_id="dup-status")
    view = gr.HTML(groups_value([]), html_template=TEMPLATE, css_template=CSS, elem_id="dup-groups")
    with gr.Accordion("Move the others to a folder", open=False):
        dest = gr.Textbox(label="Folder to move them to", placeholder="~/Pictures/duplicates", elem_id="dup-dest")
        confirm = gr.Checkbox(label="Move every photo but the suggested keeper of each group shown above "
                                    "(a journal lets you undo it)", value=False, elem_id="dup-confirm")
        move_btn = gr.Button("Move the others", variant="stop", elem_id="dup-move")
        move_status = gr.Markdown(elem_id="dup-move-status")

    def on_find(lv: str, fo: str | None, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
        groups, message = find(h.library, h.lock, lv, fo, progress)
        return groups, groups_value(groups), message, gr.Checkbox(value=False)

    def on_move(groups: list, d: str, ok: bool) -> tuple:
        message = move(h.library, h.lock, groups, d, ok)
        if message.startswith("Moved"):
            return [], groups_value([]), message, gr.Checkbox(value=False)
        return groups, groups_value(groups), message, gr.Checkbox(value=ok)

    def folders() -> gr.Dropdown:
        return gr.Dropdown(choices=[("All folders", ""), *h.folder_choices()], value="")

    find_btn.click(on_find, [level, folder], [groups_state, view, status, confirm], concurrency_limit=1,
                   api_visibility="private")
    move_btn.click(on_move, [groups_state, dest, confirm], [groups_state, view, move_status, confirm],
                   concurrency_limit=1, api_visibility="private")
    ctx.on_load(folders, [folder])
    return {"find": find_btn, "view": view, "state": groups_state}
