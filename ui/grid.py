"""The results grid: a `gr.HTML` component drawn in the browser from a small JSON value.

Gradio's `gr.Gallery` keeps a fixed number of columns (5 at 400 px, two hidden behind a
sideways scroll), cuts captions short, and copies every thumbnail into its file cache on
each search. This grid is a CSS grid that fills the width it gets (3 columns on a phone,
4–7 at 1400 px), shows each file's full name (wrapped, and on hover), and loads each
thumbnail from the API (`/api/photos/ID/thumb`, cached by the browser: ids are never
reused), so a search sends only ids, names and scores.

Clicking a tile, or moving with the arrow keys (Home/End too), selects it: the tile is
highlighted and scrolled into view at once in the browser, and a `select` event tells the
server which index was chosen (`SelectData.index`); on a narrow screen the page then
scrolls to the selected photo's panel.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import gradio as gr

from clipsearch.video import format_time

TEMPLATE = """
<div class="cs-grid" tabindex="0" role="listbox" aria-label="Results" data-count="{{value.hits.length}}">
{{#each value.hits}}
  <figure class="cs-tile{{#if this.selected}} selected{{/if}}" data-index="{{@index}}" data-id="{{this.id}}"
          role="option" aria-selected="{{#if this.selected}}true{{else}}false{{/if}}" title="{{this.title}}">
    <img src="{{this.thumb}}" alt="{{this.name}}" loading="lazy" decoding="async">
    <figcaption><span class="cs-score">{{this.score}}</span> <span class="cs-name">{{this.name}}</span></figcaption>
  </figure>
{{/each}}
</div>
"""

CSS = """
.cs-grid { display: grid; gap: 8px; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); outline: none; }
.cs-tile { margin: 0; cursor: pointer; border-radius: 8px; overflow: hidden; border: 2px solid transparent;
           background: var(--background-fill-secondary); }
.cs-tile img { display: block; width: 100%; aspect-ratio: 1 / 1; object-fit: cover; background: #e4e4e7; }
.cs-tile figcaption { font-size: 12px; line-height: 1.3; padding: 3px 5px; overflow-wrap: anywhere; }
.cs-score { color: var(--body-text-color-subdued); font-variant-numeric: tabular-nums; }
.cs-tile.selected { border-color: var(--color-accent); box-shadow: 0 0 0 2px var(--color-accent); }
.cs-grid:focus-visible .cs-tile.selected { outline: 2px dashed var(--color-accent); outline-offset: 2px; }
@media (max-width: 480px) { .cs-grid { grid-template-columns: repeat(auto-fill, minmax(92px, 1fr)); gap: 6px; }
                            .cs-tile figcaption { font-size: 11px; padding: 2px 3px; } }
"""

# `element`, `trigger` and `watch` come from Gradio (see gr.HTML's js_on_load).
JS = """
const tiles = () => element.querySelectorAll('.cs-tile');
const columns = () => {
  const t = tiles();
  if (t.length < 2) return 1;
  const top = t[0].offsetTop;
  let n = 0;
  while (n < t.length && t[n].offsetTop === top) n++;
  return n;
};
const current = () => [...tiles()].findIndex(t => t.classList.contains('selected'));
function choose(i, notify) {
  const t = tiles();
  if (!t.length) return;
  i = Math.max(0, Math.min(t.length - 1, i));
  t.forEach((tile, j) => {
    tile.classList.toggle('selected', j === i);
    tile.setAttribute('aria-selected', j === i ? 'true' : 'false');
  });
  t[i].scrollIntoView({block: 'nearest'});
  if (notify) trigger('select', {index: i, value: Number(t[i].dataset.id)});
}
element.addEventListener('click', (e) => {
  const tile = e.target.closest('.cs-tile');
  if (!tile) return;
  choose(Number(tile.dataset.index), true);
  const grid = element.querySelector('.cs-grid');
  if (grid) grid.focus({preventScroll: true});
  if (window.innerWidth < 760) {
    const panel = document.getElementById('photo-panel');
    if (panel) setTimeout(() => panel.scrollIntoView({behavior: 'smooth', block: 'start'}), 50);
  }
});
element.addEventListener('keydown', (e) => {
  const step = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns(), ArrowUp: -columns()}[e.key];
  const n = tiles().length;
  if (!n) return;
  let i = current();
  if (step !== undefined) i = i < 0 ? 0 : i + step;
  else if (e.key === 'Home') i = 0;
  else if (e.key === 'End') i = n - 1;
  else return;
  e.preventDefault();
  choose(i, true);
});
watch('value', () => {
  const s = element.querySelector('.cs-tile.selected');
  if (s) s.scrollIntoView({block: 'nearest'});
});
"""


def grid_value(shown: Sequence[dict], selected: int | None = None, *, more: bool = False) -> dict[str, Any]:
    """The grid's value for the results a session shows (`{"id", "path", "score"}` each)."""
    hits = []
    for i, s in enumerate(shown):
        name = os.path.basename(s["path"])
        if s.get("segment"):  # a video: the play mark and the moment
            name = f"▶ {name} @ {format_time(s['segment'][0])}"
        score = "" if s["score"] is None else f"{s['score']:.3f}"
        hits.append({"id": int(s["id"]), "name": name, "score": score,
                     "title": f"{name} · #{s['id']}" + (f" · score {score}" if score else ""),
                     "thumb": f"/api/photos/{int(s['id'])}/thumb", "selected": i == selected})
    return {"hits": hits, "more": bool(more)}


def results_grid(**kwargs: Any) -> gr.HTML:
    """The grid component (place it inside the layout)."""
    return gr.HTML(grid_value([]), html_template=TEMPLATE, css_template=CSS, js_on_load=JS, **kwargs)
