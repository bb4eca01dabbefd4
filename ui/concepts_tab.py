"""The Concepts tab: select photos, "name these", then search with the name like a word.

Photos are gathered from the Search tab (the selected result, one by one) or uploaded;
the examples box holds them as `#ID` (indexed photos; no file paths: the UI reads no file a visitor
names) and stays editable.
`ConceptActions` does the work as plain methods (a test calls them without a browser);
`build` places the components and wires them.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import gradio as gr

from clipsearch.errors import ClipSearchError
from clipsearch.search import image_ref

if TYPE_CHECKING:
    from clipsearch_ui.app import AppContext
    from clipsearch_ui.handlers import Handlers

CONCEPTS_TAB = "concepts"
HEADERS = ["name", "examples", "coherence", "weak", "stale"]


class ConceptOutput(NamedTuple):
    status: str
    rows: list[list[Any]]
    examples: str


def split_examples(text: str | None) -> tuple[list[str], list[str]]:
    """The words of the examples box (spaces, commas or lines between them): the `#ID`s, and the rest.

    Only ids are used: the web UI reads no file a visitor names (as in queries).
    """
    words = [t for t in re.split(r"[\s,]+", text or "") if t]
    ids = [t for t in words if isinstance(image_ref(t), int)]
    return ids, [t for t in words if t not in ids]


class ConceptActions:
    """What the tab does, over the UI's shared library and its lock."""

    def __init__(self, handlers: "Handlers") -> None:
        self.handlers = handlers

    def rows(self) -> list[list[Any]]:
        with self.handlers.lock:
            concepts = self.handlers.library.concepts()
        return [[c.name, c.examples, None if c.coherence is None else round(c.coherence, 3), c.weak, c.stale]
                for c in concepts]

    @staticmethod
    def add_selected(examples: str | None, image_id: int | None) -> str:
        """The examples box with the selected search result appended (once)."""
        text = (examples or "").strip()
        if image_id is None or f"#{image_id}" in re.split(r"[\s,]+", text):
            return text
        return f"{text} #{image_id}".strip()

    @staticmethod
    def examples_of(text: str | None, uploads: Sequence[str] | None) -> list[str]:
        """The `#ID`s of the examples box, then the uploads (`split_examples`)."""
        return split_examples(text)[0] + [str(u) for u in uploads or []]

    def name_these(self, name: str | None, examples: str | None, uploads: Sequence[str] | None,
                   replace: bool = False) -> ConceptOutput:
        """Make (or remake) a concept from the gathered photos; the status says how it went."""
        items = self.examples_of(examples, uploads)
        if not (name or "").strip():
            return ConceptOutput("Give the concept a **name** first (one word, e.g. *bella*).", self.rows(),
                                 examples or "")
        if not items:
            return ConceptOutput("Select photos first: pick a result in **Search** and press **Add the selected "
                                 "photo**, or upload some.", self.rows(), examples or "")
        try:
            with self.handlers.lock:
                concept = self.handlers.library.add_concept(name or "", items, replace=replace)
        except ClipSearchError as exc:
            return ConceptOutput(f"Could not make the concept: {exc}", self.rows(), examples or "")
        status = f"Made **{concept.name}** from {concept.examples} photos. Search for *{concept.name} at night*."
        ignored = split_examples(examples)[1]
        if ignored:
            shown = ", ".join("`" + t.replace("`", "'") + "`" for t in ignored[:5])
            status += (f"\n\nLeft out {shown}: the box takes indexed photos as "
                       "*#ID*; upload other images instead.")
        if concept.weak:
            status += (f"\n\n**Weak concept** (coherence {concept.coherence:.2f}): the photos look like different "
                       "things, so searches with it will mix them. Keep photos of one thing only.")
        return ConceptOutput(status, self.rows(), "")

    def remove(self, name: str | None) -> ConceptOutput:
        try:
            with self.handlers.lock:
                removed = self.handlers.library.remove_concept(name or "")
        except ClipSearchError as exc:
            return ConceptOutput(str(exc), self.rows(), gr.skip())
        status = f"Removed **{name}**." if removed else f"No concept named **{name}**."
        return ConceptOutput(status, self.rows(), gr.skip())


def build(ctx: "AppContext", tab: gr.Tab) -> dict:
    actions = ConceptActions(ctx.handlers)
    gr.Markdown("Teach the search a name: select a few photos of one thing (your dog, your house), name them, "
                "then use the name like a word: *bella on a beach*, *bella - snow*, *#7 + bella*. "
                "No training run; 5 photos or more work best.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=280):
            name = gr.Textbox(label="Name", placeholder="bella", max_length=40, elem_id="concept-name")
            examples = gr.Textbox(label="Photos", lines=2, max_length=4000, elem_id="concept-examples",
                                  placeholder="#12 #45 (indexed photos)",
                                  info="Pick a result in Search, then press the button below; or type #IDs.")
            with gr.Row():
                add_btn = gr.Button("Add the selected photo", min_width=160, elem_id="concept-add-selected")
                name_btn = gr.Button("Name these", variant="primary", min_width=160, elem_id="concept-name-these")
            uploads = gr.File(type="filepath", file_count="multiple", label="Or upload photos", height=100)
            replace = gr.Checkbox(label="Replace a concept of the same name", value=False)
            status = gr.Markdown(elem_id="concept-status")
        with gr.Column(scale=2, min_width=260):
            table = gr.Dataframe(headers=HEADERS, value=actions.rows, interactive=False, label="Concepts",
                                 elem_id="concept-table")
            with gr.Row():
                remove_name = gr.Textbox(show_label=False, placeholder="name to remove", max_length=40, scale=2,
                                         elem_id="concept-remove-name")
                remove_btn = gr.Button("Remove", min_width=100, scale=1, elem_id="concept-remove")

    search = ctx.parts.get("search")
    if search is not None:
        add_btn.click(actions.add_selected, [examples, search.selected], examples, api_visibility="private")
    name_btn.click(lambda n, e, u, r: tuple(actions.name_these(n, e, u, r)), [name, examples, uploads, replace],
                   [status, table, examples], api_visibility="private")
    remove_btn.click(lambda n: tuple(actions.remove(n)), [remove_name], [status, table, examples],
                     api_visibility="private")
    tab.select(actions.rows, None, table, api_visibility="private")
    return {"actions": actions}
