"""The Concepts tab's actions: gather selected photos, name them, search with the name, remove it."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("gradio")

from clipsearch_ui.app import build_app  # noqa: E402
from clipsearch_ui.concepts_tab import ConceptActions  # noqa: E402
from clipsearch_ui.handlers import Handlers  # noqa: E402


@pytest.fixture
def actions(library) -> ConceptActions:
    return ConceptActions(Handlers(library))


def test_selected_photos_named_become_a_word_in_search(actions, library, colour_photos):
    ids = {n: library.catalog.find_path(os.path.abspath(p)).id for n, p in colour_photos.items()}
    box = actions.add_selected("", ids["red"])
    box = actions.add_selected(box, ids["orange"])
    assert actions.add_selected(box, ids["red"]) == box == f"#{ids['red']} #{ids['orange']}"
    out = actions.name_these("Warm", box, None)
    assert "Made **warm** from 2 photos" in out.status and out.examples == ""
    assert out.rows[0][:2] == ["warm", 2]
    top = {h.path for h in library.search("warm", k=2)}
    assert top == {colour_photos["red"], colour_photos["orange"]}
    # A file path typed in the box is not read (the UI reads no file a visitor names): left out, and said.
    out = actions.name_these("warm", f"#{ids['red']} {colour_photos['blue']}", None, replace=True)
    assert "from 1 photos" in out.status and "Left out" in out.status and colour_photos["blue"] in out.status


def test_name_these_says_what_is_missing_or_wrong(actions, library, colour_photos):
    assert "name" in actions.name_these("", "#1", None).status
    assert "Select photos first" in actions.name_these("bella", "", None).status
    bad = actions.name_these("two words", "#1", None)
    assert "not one word" in bad.status and bad.examples == "#1"
    actions.name_these("bella", "", [colour_photos["blue"]])
    assert "already exists" in actions.name_these("bella", "", [colour_photos["blue"]]).status
    assert "Removed **bella**" in actions.remove("bella").status and actions.rows() == []


def test_the_app_has_a_concepts_tab(library):
    demo = build_app(library)
    assert "concepts" in demo.clipsearch_context.parts
