"""The UI's handlers: plain functions over a `Library`, one per thing a person can do.

Each returns exactly what its Gradio outputs show (a NamedTuple, so the wiring in
`app.py` stays one line per event and a test can call a handler without a browser).
Per-session values (the results shown, the selected photo, the map) are passed in and
returned, never kept here; this object holds only the shared library and a lock, because
a library's catalog and index serve one caller at a time.

Longer than most modules on purpose: one short handler per thing a person can do in the UI,
over shared session helpers (the results shown, paging, the photo panel); the tabs' layouts
are in their own modules.
"""
from __future__ import annotations

import contextlib
import html
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence


from clipsearch.errors import ClipSearchError, ImageLoadError, QueryError
from clipsearch.images import load_image
from clipsearch.places import place_label
from clipsearch.video import format_time, is_video, split_frame_path
from clipsearch.query import Filters, Query, parse
from clipsearch.search import names_image_file
from clipsearch.texts import parse_labels  # noqa: F401  (re-exported: the labels box)

from clipsearch_ui import explore
from clipsearch_ui.grid import grid_value
from clipsearch_ui.paging import stable_top
from clipsearch_ui.thumbs import THUMB_SIZES, Thumbnails

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.catalog import ImageRow
    from clipsearch.library import Library
    from clipsearch.search import Hit

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_UPLOAD_PIXELS = 60_000_000
ALL_FOLDERS = ""
PREVIEW_THUMB = THUMB_SIZES[-1]  # the selected photo's size in the browser
NO_PHOTO = '<div class="cs-nophoto">Click a result to see it larger, with its id, folder, size and date.</div>'
QUERY_HINT = ("Words, or arithmetic on meaning: `beach + sunset - people`, `2:dog + cat` (weights), "
              "`#42 + at night` (#42 is an indexed photo). Operators need spaces around them.")
EMPTY_TEXTS = ("The text collection is empty: add labels below (for example *a dog, a beach, a birthday "
               "party*) and press **Add labels**.")

Shown = list[dict]  # the results a session's grid shows, in order: {"id", "path", "score"}
Last = dict  # what the session searched last: {"kind": "text"|"upload"|"like", ...}; re-run by filters and "load more"


@dataclass(frozen=True)
class Where:
    """The filter widgets' values (capture dates, place, camera, file types, newest first).

    `apply` adds them to a `Query` (the typed query object every interface builds): the
    widgets and any filters typed into the query box must all hold.
    """

    after: str = ""
    before: str = ""
    place: str = ""
    camera: str = ""
    types: tuple[str, ...] = ()
    newest: bool = False

    @classmethod
    def of(cls, after: str | None = "", before: str | None = "", place: str | None = "", camera: str | None = "",
           types: Sequence[str] | None = (), newest: bool | None = False) -> "Where":
        return cls((after or "").strip(), (before or "").strip(), (place or "").strip(), (camera or "").strip(),
                   tuple(types or ()), bool(newest))

    def apply(self, query: Query) -> Query:
        """`query` with these filters added; QueryError names a bad value (e.g. a date)."""
        f = query.filters
        changes: dict[str, Any] = {}
        for name in ("after", "before"):
            value = getattr(self, name)
            if value:
                if getattr(f, name) is not None and getattr(f, name).text != value:
                    raise QueryError(f"{name}: is set both in the query and in the filters; keep one")
                changes[name] = value
        for attr, value in (("places", self.place), ("cameras", self.camera)):
            if value:
                changes[attr] = tuple(dict.fromkeys([*getattr(f, attr), *[v.strip() for v in value.split("|")]]))
        if self.types:
            changes["types"] = tuple(dict.fromkeys([*f.types, *self.types]))
        out = replace(query, filters=Filters(**{**{k: getattr(f, k) for k in f.__dataclass_fields__}, **changes}))
        if self.newest and out.sort == "score":
            out = replace(out, sort="newest")
        return out


class SearchOutput(NamedTuple):
    grid: dict          # the results grid's value (clipsearch_ui.grid.grid_value)
    status: str
    shown: Shown
    more: bool = False  # another page follows: "Load more" shows


class PhotoOutput(NamedTuple):
    image: str          # HTML: the photo, from the API's thumbnail route (nothing decoded here)
    details: str        # Markdown: name, id, folder, pixels, size, date
    selected: int | None
    index: int | None = None  # its place in the session's results


class DescribeOutput(NamedTuple):
    image: "Image.Image | None"
    rows: list[list[Any]]
    status: str
    source: dict | None


class MapOutput(NamedTuple):
    image: "Image.Image"
    status: str
    view: "explore.MapView | None"


class LibraryOutput(NamedTuple):
    overview: str
    skipped: list[list[str]]


def check_query(query: str) -> None:
    """Refuse image terms named by file path: the web UI reads no file a visitor names.

    Judged by the extension alone, so the answer never tells whether such a file exists.
    """
    if names_image_file(query):
        raise QueryError("photos can't be named by file path here: upload the image (Search → By image), "
                         "or use #ID of an indexed photo")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def code_span(text: str) -> str:
    """Text as a Markdown code span (shown literally: no escapes are needed, or possible, inside)."""
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md(text: str) -> str:
    """Text from a user or a file name, safe to put into Markdown."""
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", html.escape(text, quote=False))


class Handlers:
    """Everything the UI does, as plain methods over one library."""

    def __init__(self, library: "Library", *, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
        self.library = library
        self.thumbs = Thumbnails(library)
        self.max_upload_bytes = max_upload_bytes
        # One caller at a time: the catalog's SQLite connection and the FAISS index are shared.
        self.lock = threading.RLock()
        self._map_cache: dict[tuple, tuple] = {}

    @contextlib.contextmanager
    def _lib(self) -> Iterator["Library"]:
        with self.lock:
            yield self.library

    # -- helpers ------------------------------------------------------------------------
    def folder_choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the folder filter: every folder holding photos, relative to its root's parent."""
        with self._lib() as lib:
            roots, folders = lib.roots(), lib.folders()
        choices = [("All folders", ALL_FOLDERS)]
        for folder in folders:
            root = max((r for r in roots if folder == r or folder.startswith(r.rstrip("/") + "/")), key=len,
                       default=None)
            label = os.path.relpath(folder, os.path.dirname(root)) if root else folder
            choices.append((label, folder))
        return choices

    def _ranked(self, last: Last, n: int, min_score: float | None, folder: str | None,
                where: Where | None = None) -> list["Hit"]:
        """The top `n` of the session's search, ordered by score then id (stable across pages), or by date."""
        kind = last["kind"]
        query = (where or Where()).apply(parse(last["query"]) if kind == "text" else Query())

        def run(fetch: int) -> list["Hit"]:
            with self._lib() as lib:
                if kind == "text":
                    return lib.search(query, k=fetch, min_score=min_score, folder=folder)
                image = last["image"] if kind == "upload" else int(last["id"])
                return lib.search_image(image, k=fetch, text=last.get("text"), min_score=min_score, folder=folder,
                                        query=query)
        # An image query has no words but a vector: its order is the query's own sort.
        by_score = (query.effective_sort if kind == "text" else query.sort) == "score"
        return stable_top(run, n, by_score=by_score)

    def _page(self, last: Last, what: str, k: int, min_score: float | None, folder: str | None,
              shown: Shown | None = None, where: Where | None = None) -> SearchOutput:
        """The first page of a search, or (with `shown`) the next page appended to the results shown."""
        shown = list(shown or [])
        k = max(1, int(k))
        hits = self._ranked(last, len(shown) + k + 1, min_score, folder, where)
        query = (where or Where()).apply(parse(last["query"]) if last["kind"] == "text" else Query())
        if query.describe():  # the status names the active filters and the order
            what += f" · {_md(query.describe())}"
        seen = {s["id"] for s in shown}
        page = [h for h in hits[len(shown):len(shown) + k] if h.id not in seen]
        more = len(hits) > len(shown) + k
        shown += [{"id": h.id, "path": h.path, "score": None if h.score is None else float(h.score),
                   **({"segment": list(h.segment), "moments": [list(m) for m in h.moments]}
                      if getattr(h, "segment", None) is not None else {})} for h in page]
        if shown:
            status = f"**{len(shown)}** photo{'s' if len(shown) != 1 else ''} for {what}"
            status += " · more below" if more else ""
        elif not self.library.info().images:
            status = ("The library is empty: index a folder first (Library tab → **Re-index**, "
                      "or `clipsearch index PHOTOS`).")
        else:
            status = f"No photos for {what}"
            hints = []
            if min_score:
                hints.append(f"lower the minimum score (now {min_score:.2f})")
            elif query.effective_min == "auto" and query.has_words:
                # Date order keeps only the photos past this query's relevance cutoff (min:auto);
                # a vague query or one that matches many photos may have none.
                hints.append("set a minimum score (0.3, say) to list more in date order, past the relevance "
                             "cutoff this query got")
            if folder:
                hints.append("choose *All folders*")
            if where is not None and where != Where():
                hints.append("clear the date, place, camera or type filters")
            status += (": " + " or ".join(hints) + "." if hints else ".")
        return SearchOutput(grid_value(shown, more=more), status, shown, more)

    @staticmethod
    def _empty(status: str) -> SearchOutput:
        return SearchOutput(grid_value([]), status, [], False)

    @staticmethod
    def _filters(min_score: float | None, folder: str | None) -> tuple[float | None, str | None]:
        # The 0 of "Minimum score" means "no minimum": cosine scores can be negative.
        return (float(min_score) if min_score else None), (folder or None)

    def _load_upload(self, image_path: str) -> "Image.Image":
        return load_image(image_path, max_bytes=self.max_upload_bytes, max_pixels=MAX_UPLOAD_PIXELS,
                          name=os.path.basename(image_path))

    @staticmethod
    def _what(last: Last) -> str:
        text = f" + “{_md(last['text'])}”" if last.get("text") else ""
        if last["kind"] == "text":
            return f"“{_md(last['query'])}”"
        if last["kind"] == "upload":
            return f"your image {_md(last['name'])}" + text
        return f"photos like {_md(last['name'])}" + text

    # -- search ---------------------------------------------------------------------------
    def search_text(self, query: str | None, k: int = 24, min_score: float | None = 0.0,
                    folder: str | None = ALL_FOLDERS, where: Where | None = None) -> SearchOutput:
        """Text → image search; the query may use arithmetic and filters. The first page of `k` results.

        With no words but some filters (`where`, or typed ones), the matching photos by date.
        """
        query = (query or "").strip()
        if not query and (where is None or where == Where()):
            return self._empty("Type what you are looking for. " + QUERY_HINT)
        min_score, folder = self._filters(min_score, folder)
        try:
            check_query(query)
            last = {"kind": "text", "query": query}
            return self._page(last, self._what(last) if query else "the filters", k, min_score, folder, where=where)
        except ClipSearchError as exc:
            return self._empty(f"⚠️ {_md(str(exc))}")

    def search_upload(self, image_path: str | None, text: str | None = None, k: int = 24,
                      min_score: float | None = 0.0, folder: str | None = ALL_FOLDERS,
                      where: Where | None = None) -> SearchOutput:
        """Image → image search with an uploaded file (decoded by our capped loader), optionally plus text."""
        if not image_path:
            return self._empty("Upload an image to find photos like it.")
        min_score, folder = self._filters(min_score, folder)
        text = (text or "").strip() or None
        try:
            image = self._load_upload(image_path)
        except ImageLoadError as exc:
            return self._empty(f"⚠️ Can't use {_md(os.path.basename(image_path))}: {_md(exc.reason)}.")
        try:
            last = {"kind": "upload", "image": image, "name": os.path.basename(image_path), "text": text}
            return self._page(last, self._what(last), k, min_score, folder, where=where)
        except ClipSearchError as exc:
            return self._empty(f"⚠️ {_md(str(exc))}")

    def more_like(self, image_id: int | None, text: str | None = None, k: int = 24,
                  min_score: float | None = 0.0, folder: str | None = ALL_FOLDERS,
                  where: Where | None = None) -> SearchOutput:
        """Photos like an indexed one (by id), optionally modified by text."""
        if image_id is None:
            return self._empty("Select a photo first, then press **More like this**.")
        min_score, folder = self._filters(min_score, folder)
        text = (text or "").strip() or None
        try:
            with self._lib():
                row = self.thumbs.row(image_id)
            if row is None:
                return self._empty(f"⚠️ No indexed photo with id {int(image_id)}.")
            last = {"kind": "like", "id": row.id, "name": os.path.basename(row.path), "text": text}
            return self._page(last, self._what(last), k, min_score, folder, where=where)
        except ClipSearchError as exc:
            return self._empty(f"⚠️ {_md(str(exc))}")

    def rerun(self, last: dict | None, k: int = 24, min_score: float | None = 0.0,
              folder: str | None = ALL_FOLDERS, where: Where | None = None) -> SearchOutput | None:
        """The session's last search again with new filters (first page); None when there was none."""
        kind = (last or {}).get("kind")
        if kind == "text":
            return self.search_text(last["query"], k, min_score, folder, where)  # type: ignore[index]
        if kind == "upload":
            return self.search_upload(last["path"], last.get("text"), k, min_score, folder, where)  # type: ignore[index]
        if kind == "like":
            return self.more_like(last["id"], last.get("text"), k, min_score, folder, where)  # type: ignore[index]
        if where is not None and where != Where():  # filters chosen before any search: list what they match
            return self.search_text("", k, min_score, folder, where)
        return None

    def load_more(self, last: dict | None, shown: Shown | None, k: int = 24, min_score: float | None = 0.0,
                  folder: str | None = ALL_FOLDERS, where: Where | None = None) -> SearchOutput | None:
        """The next `k` results of the session's last search, appended to those shown; None when there was none."""
        if not last or not shown:
            return None
        min_score, folder = self._filters(min_score, folder)
        try:
            if last["kind"] == "text":
                query = {"kind": "text", "query": last["query"]}
            elif last["kind"] == "upload":
                query = {"kind": "upload", "image": self._load_upload(last["path"]),
                         "name": os.path.basename(last["path"]), "text": last.get("text")}
            else:
                row = self.thumbs.row(last["id"])
                if row is None:
                    return self._empty(f"⚠️ No indexed photo with id {int(last['id'])}.")
                query = {"kind": "like", "id": row.id, "name": os.path.basename(row.path), "text": last.get("text")}
            what = self._what(query) if query.get("query", True) else "the filters"
            return self._page(query, what, k, min_score, folder, shown, where)
        except ImageLoadError as exc:
            return self._empty(f"⚠️ Can't use this image: {_md(exc.reason)}.")
        except ClipSearchError as exc:
            return self._empty(f"⚠️ {_md(str(exc))}")

    # -- a selected photo ---------------------------------------------------------------
    def select(self, shown: Shown | None, index: int | None) -> PhotoOutput:
        """The photo at `index` of the session's results (clamped to them)."""
        if not shown or index is None:
            return PhotoOutput(NO_PHOTO, "", None)
        index = max(0, min(len(shown) - 1, int(index)))
        return self.photo(shown[index]["id"], moment=shown[index])._replace(index=index)

    def step(self, shown: Shown | None, index: int | None, delta: int, more: bool = False) -> tuple[PhotoOutput, dict]:
        """The previous (-1) or next (+1) photo of the results, and the grid with it highlighted."""
        if not shown:
            return PhotoOutput(NO_PHOTO, "", None), grid_value([], more=more)
        index = 0 if index is None else max(0, min(len(shown) - 1, int(index) + int(delta)))
        return self.select(shown, index), grid_value(shown, index, more=more)

    def photo(self, image_id: int | None, *, moment: dict | None = None) -> PhotoOutput:
        """An indexed photo, larger, and its facts: id, name, folder, pixels, size, date.

        A video's moment (a result with a "segment", and its other good "moments") plays
        from the start of the segment, with the other moments to jump to.
        """
        if image_id is None:
            return PhotoOutput(NO_PHOTO, "", None)
        with self._lib() as lib:
            row = self.thumbs.row(image_id)
            if row is None:
                return PhotoOutput(NO_PHOTO, f"⚠️ No indexed photo with id {int(image_id)}.", None)
            roots = lib.roots()
        path, seconds = split_frame_path(row.path)
        root = max((r for r in roots if path.startswith(r.rstrip("/") + "/")), key=len, default=None)
        folder = os.path.relpath(os.path.dirname(path), os.path.dirname(root)) if root else os.path.dirname(path)
        name = os.path.basename(path)
        if is_video(path):
            return self._video(row, name, folder, seconds or 0.0, moment or {})
        dims = f"{row.width} × {row.height} px" if row.width and row.height else "size unknown"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.mtime_ns / 1e9))
        taken = self._taken(row.id)
        if taken:
            when = taken
        size = human_bytes(row.size) + (f" ({row.size:,} bytes)" if row.size >= 1024 else "")
        details = (f"**{_md(name)}** · id **#{row.id}**  \n"
                   f"{code_span(folder)}  \n"
                   f"{dims} · {size} · {when}")
        url = f"/api/photos/{row.id}/thumb?size={PREVIEW_THUMB}"
        image = (f'<a href="{url}" target="_blank" rel="noopener" title="open larger">'
                 f'<img src="{url}" alt="{html.escape(name)}" data-id="{row.id}"></a>')
        return PhotoOutput(image, details, row.id)

    def _video(self, row: "ImageRow", name: str, folder: str, seconds: float, moment: dict) -> PhotoOutput:
        """A video in the detail panel: played from its moment (served by id, seekable), other moments to jump to."""
        start, end = moment.get("segment") or (seconds, seconds)
        url = f"/api/photos/{row.id}/video"
        poster = f"/api/photos/{row.id}/thumb?size={PREVIEW_THUMB}"
        jumps = [(start, end)] + [tuple(m) for m in moment.get("moments", [])]
        links = " ".join(
            f'<button type="button" class="cs-moment" data-t="{a:.2f}" '
            "onclick=\"const v=this.closest('.cs-video').querySelector('video');"
            f"v.currentTime={a:.2f};v.play()\">"
            f"▶ {format_time(a)}–{format_time(b)}</button>" for a, b in jumps)
        player = (f'<div class="cs-video"><video controls preload="metadata" playsinline poster="{poster}" '
                  f'src="{url}#t={start:.2f}" data-id="{row.id}" style="max-width:100%"></video>'
                  f'<div class="cs-moments">{links}</div></div>')
        dims = f"{row.width} × {row.height} px" if row.width and row.height else "size unknown"
        details = (f"**{_md(name)}** · id **#{row.id}** · ▶ **{format_time(start)}–{format_time(end)}**  \n"
                   f"{code_span(folder)}  \n{dims} · {human_bytes(row.size)}")
        return PhotoOutput(player, details, row.id)
    def _taken(self, image_id: int) -> str:
        """"taken 2019-07-04 18:30 (UTC+01:00) · Lisbon, Portugal · Google Pixel 7", or "" without metadata."""
        columns = ("taken_at", "taken_source", "place_city", "place_country", "camera")
        with self._lib() as lib:
            f = lib.facts(int(image_id), columns)
        parts = []
        if f.get("taken_at"):
            stamp = f["taken_at"]
            text = stamp[:16].replace("T", " ")
            offset = stamp[19:].lstrip(".0123456789") if len(stamp) > 19 else ""
            if offset:
                text += f" (UTC{offset})"
            source = {"filename": "date from the file name", "mtime": "date from the file",
                      "gps": "date from GPS"}.get(f.get("taken_source") or "")
            parts.append(f"taken {text}" + (f" — {source}" if source else ""))
        place = place_label(f.get("place_city"), f.get("place_country"))
        if place:
            parts.append(_md(place))
        if f.get("camera"):
            parts.append(_md(f["camera"]))
        return " · ".join(parts)

    # -- describe (image → text) ----------------------------------------------------------
    def describe(self, source: dict | None, k: int = 8) -> DescribeOutput:
        """The closest texts of the collection to an uploaded image ({"path"}) or an indexed one ({"id"})."""
        if not source:
            return DescribeOutput(None, [], "Upload an image, or select a search result and press **Describe**.",
                                  None)
        try:
            if "id" in source:
                with self._lib():
                    row = self.thumbs.row(source["id"])
                if row is None:
                    return DescribeOutput(None, [], f"⚠️ No indexed photo with id {int(source['id'])}.", None)
                image, subject = self.thumbs.preview(row.id, max_side=PREVIEW_THUMB), row.id
            else:
                image = subject = self._load_upload(source["path"])
        except ImageLoadError as exc:
            return DescribeOutput(None, [], f"⚠️ Can't use this image: {_md(exc.reason)}.", None)
        with self._lib() as lib:
            total = lib.info().texts
            if not total:
                return DescribeOutput(image, [], EMPTY_TEXTS, source)
            try:
                hits = lib.describe(subject, k=int(k))
            except ClipSearchError as exc:
                return DescribeOutput(image, [], f"⚠️ {_md(str(exc))}", source)
        rows = [[h.text, round(h.score, 4)] for h in hits]
        return DescribeOutput(image, rows, f"The {len(rows)} closest of {total} texts in the collection.", source)

    def add_labels(self, labels: str | None, source: dict | None, k: int = 8) -> tuple[DescribeOutput, str]:
        """Add comma/line-separated labels to the text collection, then describe again. Also returns the
        new content of the labels box (emptied when the labels were added)."""
        wanted = parse_labels(labels)
        if not wanted:
            out = self.describe(source, k)
            return out._replace(status="Type some labels first, separated by commas or new lines."), labels or ""
        try:
            with self._lib() as lib:
                added = lib.add_texts(wanted)
        except ClipSearchError as exc:
            out = self.describe(source, k)
            return out._replace(status=f"⚠️ {_md(str(exc))}"), labels or ""
        out = self.describe(source, k)
        note = f"Added {added} new label{'s' if added != 1 else ''}"
        if added < len(wanted):
            note += f" ({len(wanted) - added} already there)"
        if out.source:
            return out._replace(status=f"{note}. {out.status}"), ""
        return out._replace(status=f"{note}. Upload an image or pick a result to describe it."), ""

    # -- explore ------------------------------------------------------------------------
    def draw_map(self, colour_by: str = "folder", query: str | None = None, *,
                 max_points: int = explore.MAX_POINTS, method: str = "auto") -> MapOutput:
        """The map of the collection's embeddings, coloured by folder or nearest label, with the query marked."""
        query = (query or "").strip() or None
        notes: list[str] = []
        with self._lib() as lib:
            all_ids = lib.image_ids()
            if not len(all_ids):
                return MapOutput(explore.empty_map("The library is empty: index some photos first."),
                                 "The library is empty.", None)
            ids = explore.sample_ids(all_ids, max_points)
            ids, vectors = lib.vectors(ids.tolist())
            # The sample's projection and folders only change when the photos do: kept between draws
            # (a new query, another colouring, another session), keyed by the ids drawn.
            key = (ids.tobytes(), method, tuple(lib.roots()))
            cached = self._map_cache.get(key)
            if cached is None:
                paths = [p or "" for p in lib.paths(ids.tolist())]
                cached = (explore.fit_projection(vectors, method), self._folder_groups(paths, lib.roots()))
                self._map_cache = {key: cached}
            projection, groups = cached
            if colour_by == "label":
                try:
                    groups = lib.nearest_texts(vectors)  # one batch, in the Searcher
                except QueryError:  # the collection is empty
                    notes.append("The text collection is empty: add labels in the Describe tab to colour by label; "
                                 "coloured by folder instead.")
                    colour_by = "folder"
            qvec = None
            if query:
                try:
                    check_query(query)
                    qvec = lib.query_vector(query)
                except ClipSearchError as exc:
                    notes.append(f"⚠️ The query is not marked: {_md(str(exc))}")
                    query = None
        view = explore.build_view(ids, vectors, groups, total=len(all_ids), colour_by=colour_by,
                                  query=query, query_vector=qvec, method=method, projection=projection)
        status = f"{view.method} map of {len(ids)}" + (f" of {len(all_ids)}" if len(ids) < len(all_ids) else "")
        status += " photos. Click a point to see the photo."
        if query:
            status += f" ★ marks “{_md(query)}”."
        return MapOutput(explore.render(view), " ".join([status, *notes]), view)

    @staticmethod
    def _folder_groups(paths: Sequence[str], roots: Sequence[str]) -> list[str]:
        out = []
        for p in paths:
            folder = os.path.dirname(p)
            root = max((r for r in roots if folder == r or folder.startswith(r.rstrip("/") + "/")), key=len,
                       default=None)
            out.append(os.path.relpath(folder, os.path.dirname(root)) if root else folder)
        return out

    def click_map(self, view: "explore.MapView | None", x: float, y: float) -> tuple["Image.Image | None", PhotoOutput]:
        """The photo under a click at pixel (x, y) of the map, and the map with it ringed (None: unchanged)."""
        if view is None:
            return None, PhotoOutput(NO_PHOTO, "", None)
        image_id = view.point_at(x, y)
        if image_id is None:
            return None, PhotoOutput(NO_PHOTO, "No photo there: click on a point.", None)
        return explore.render(view, selected=image_id), self.photo(image_id)

    # -- library ------------------------------------------------------------------------
    def overview_counts(self) -> dict[str, Any]:
        with self._lib() as lib:
            info = lib.info()
        return {"images": info.images, "texts": info.texts, "model": info.model, "folder": info.folder}

    def overview(self) -> LibraryOutput:
        """Counts, model, index, roots and the last indexing report, with its skipped files."""
        with self._lib() as lib:
            info = lib.info()
            report = lib.last_report()
        lines = [
            f"**{info.images:,}** photos indexed · **{info.failed:,}** skipped · **{info.texts:,}** texts",
            "",
            f"- Model: {code_span(info.model)} / {code_span(str(info.pretrained or 'random weights'))} ({info.dim}-d)",
            f"- Index: {code_span(info.index_kind)}, {info.index_count:,} vectors",
            f"- Library folder: {code_span(info.folder)}",
        ]
        lines += [f"- Photo folder: {code_span(r)}" for r in info.roots] or ["- No photo folders yet."]
        skipped: list[list[str]] = []
        if report is not None:
            lines += ["", f"Last indexing run: {_md(report.summary())}"]
            if report.interrupted:
                lines.append("(interrupted: re-index to finish)")
            skipped = [[s.path, s.reason] for s in report.skipped]
            if not skipped:
                lines.append("No file was skipped.")
        return LibraryOutput("\n".join(lines), skipped)

    def reindex(self, progress: Callable[..., Any] | None = None) -> tuple[LibraryOutput, str]:
        """Re-sync every root of the library (blocking; searches wait until it's done)."""
        with self._lib() as lib:
            roots = lib.roots()
            if not roots:
                return self.overview(), "No photo folders to re-index: add one with `clipsearch index PHOTOS`."
            done = []
            try:
                for n, root in enumerate(roots):
                    if progress is not None:
                        progress((n, len(roots)), desc=f"indexing {root}")
                    report = lib.index(root, progress=progress is not None)
                    done.append(f"{_md(report.summary())}")
            except ClipSearchError as exc:
                done.append(f"⚠️ {_md(str(exc))}")
        return self.overview(), "  \n".join(done)
