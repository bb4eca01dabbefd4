"""The JSON HTTP API: `build_api(library) -> FastAPI`, mounted at /api beside the web UI.

    GET  /api/search?q=beach+%2B+sunset&k=24&offset=0     text → photos (arithmetic as in the CLI)
    POST /api/search/image                                an uploaded image (+ text) → photos
    GET  /api/photos/{id}                                 one photo's facts
    GET  /api/photos/{id}/similar | /describe | /thumb?size= | /original (only with serve_originals)
    GET  /api/texts, POST /api/texts                      the text collection (labels, captions)
    GET  /api/concepts, POST /api/concepts, DELETE /api/concepts/{name}   personal concepts
    GET  /api/info                                        the library: counts, model, index
    GET  /api/docs, /api/openapi.json                     this, described

Every handler calls `Library` only, under the lock the UI's handlers use (the catalog's
SQLite connection and the FAISS index serve one caller at a time). Photos are named by
catalog id, never by path; errors are JSON `{"error", "detail"}` with a 4xx/5xx status.
Who may call is decided by `Access`: open on loopback without a login; with a login or a
token, a request needs the UI's login cookie or `Authorization: Bearer TOKEN`.

Longer than most modules on purpose: the whole HTTP contract in one place (response models,
routes, access rule, error mapping), which docs/api-openapi.json mirrors.
"""
from __future__ import annotations

import hmac
import html
import json
import logging
import mimetypes
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Sequence

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipsearch.errors import ClipSearchError, ConceptExistsError, ImageLoadError, LibraryLockedError, QueryError
from clipsearch.images import is_supported, load_image
from clipsearch.places import place_label
from clipsearch.video import is_video, split_frame_path

from clipsearch_ui.paging import stable_top
from clipsearch_ui.thumbs import THUMB_SIZES, Thumbnails, snap_size

if TYPE_CHECKING:
    from clipsearch.catalog import ImageRow
    from clipsearch.concepts import Concept
    from clipsearch.library import Library
    from clipsearch.search import Hit as LibraryHit

log = logging.getLogger(__name__)

API_PREFIX = "/api"
API_VERSION = "1"
MAX_K = 200
MAX_DEPTH = 10_000            # offset + k: paging goes this deep into a ranking
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_UPLOAD_PIXELS = 60_000_000
MAX_TEXTS_PER_POST = 10_000
MAX_CONCEPT_EXAMPLES = 50
MAX_TEXT_LENGTH = 500
_MULTIPART_SLACK = 64 * 1024  # headers and boundaries around an upload of MAX_UPLOAD_BYTES
TOKEN_ENV = "CLIPSEARCH_API_TOKEN"


# -- what goes over the wire --------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hit(_Model):
    """One photo in a ranking."""

    id: int = Field(description="catalog id: the only way to name a photo in this API")
    path: str = Field(description="the file's path relative to its photo folder (`root`)")
    root: str = Field(description="the photo folder (as indexed) that holds the file")
    score: float | None = Field(description="cosine similarity to the query, -1..1, higher is closer; null when "
                                            "a query of filters alone listed the photo")
    width: int | None = Field(description="pixels, as indexed")
    height: int | None
    taken_at: str | None = Field(description="capture time, ISO 8601, when the library knows it")
    place: str | None = Field(None, description="where it was taken, \"City, Country\", from its GPS position")
    camera: str | None = Field(None, description="the camera's make and model, from the file's metadata")
    thumb_url: str = Field(description="this photo's thumbnail, on this server")
    time: float | None = Field(None, description="a video: the second of its best-matching moment (null for photos)")
    segment: list[float] | None = Field(None, description="a video: [start, end] seconds of the matching stretch")
    moments: list[list[float]] = Field(default_factory=list,
                                       description="a video: other stretches that match almost as well")
    video_url: str | None = Field(None, description="a video: the file, by id, with range requests (seekable)")


class SearchResponse(_Model):
    query: str | None = Field(description="the text query, as given (null for an image search)")
    offset: int
    k: int = Field(description="the page size asked for")
    hits: list[Hit]
    next_offset: int | None = Field(description="offset of the next page; null when this is the last one")


class Photo(_Model):
    id: int
    path: str
    root: str
    width: int | None
    height: int | None
    size: int = Field(description="file size in bytes, as indexed")
    modified: str = Field(description="file modification time, ISO 8601 UTC, as indexed")
    taken_at: str | None
    place: str | None = Field(None, description="where it was taken, \"City, Country\", from its GPS position")
    camera: str | None = Field(None, description="the camera's make and model, from the file's metadata")
    thumb_url: str
    original_url: str | None = Field(description="the file itself; null unless the server serves originals")


class TextScore(_Model):
    text: str
    score: float


class DescribeResponse(_Model):
    id: int
    texts: list[TextScore] = Field(description="the closest texts of the collection, best first")
    total: int = Field(description="how many texts the collection holds (0: add some with POST /api/texts)")


class ConceptInfo(_Model):
    """A personal concept: a name made from example photos, usable as a word in queries."""

    name: str = Field(description="the word to use in queries, e.g. q=bella on a beach")
    examples: int = Field(description="how many example photos it was made from")
    coherence: float | None = Field(description="how alike the examples are once the library's mean is removed "
                                                "(about 0: unrelated; null for one example)")
    weak: bool = Field(description="the examples look like different things: results will be noisy")
    stale: bool = Field(description="made with another model than the library's now: make it again")
    created_at: str = Field(description="ISO 8601 UTC")


class ConceptsResponse(_Model):
    concepts: list[ConceptInfo]


class AddConcept(_Model):
    name: str = Field(min_length=1, max_length=64, description="one word: letters, digits, - or _")
    examples: list[int] = Field(min_length=1, max_length=MAX_CONCEPT_EXAMPLES,
                                description="ids of indexed photos that show it")
    replace: bool = Field(False, description="replace a concept of that name (else 409)")


class TextsResponse(_Model):
    count: int
    offset: int
    texts: list[str]


class AddTexts(_Model):
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS_PER_POST,
                             description=f"labels or captions, each at most {MAX_TEXT_LENGTH} characters")


class AddTextsResponse(_Model):
    added: int = Field(description="how many were new")
    count: int = Field(description="the collection's size after adding")


class Info(_Model):
    api_version: str
    photos: int
    skipped: int
    texts: int
    model: str
    pretrained: str | None
    dim: int
    index_kind: str
    index_count: int
    roots: list[str]
    serve_originals: bool


class Error(_Model):
    error: str = Field(description="a stable, machine-readable code, e.g. not_found, bad_query, not_an_image")
    detail: str = Field(description="what went wrong and what to do, for a person")


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Error, "description": text} for code, text in (
        (401, "no or wrong credentials (with a login or token: `Authorization: Bearer TOKEN`)"),
        (422, "a parameter is out of range or of the wrong type"),
    )
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Error, "description": "no indexed photo with this id"}}
BAD_QUERY: dict[int | str, dict[str, Any]] = {400: {"model": Error, "description": "the query can't be run"}}


class ApiError(Exception):
    """An error answer: HTTP status, a code and a sentence for a person."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type", 422: "bad_request"}


# -- who may call -------------------------------------------------------------------------
@dataclass
class Access:
    """Who may call the API.

    `token`: a secret that apps send as `Authorization: Bearer TOKEN` (compared in constant
    time). `login_required`: the UI has a login, so the API wants one too; `logged_in`
    tells whether a request carries the UI's login cookie (set by the server once it runs).
    With neither a token nor a login, every request that reaches the server may call.
    """

    token: str | None = None
    login_required: bool = False
    logged_in: Callable[[Request], bool] | None = None

    @property
    def open(self) -> bool:
        return not self.token and not self.login_required

    def allows(self, request: Request, *, ui_asset: bool = False) -> bool:
        """Whether `request` may call. `ui_asset`: a thumbnail the web UI shows, which follows the
        UI's own rule (open when the UI has no login) so that its page can show it."""
        if self.open or (ui_asset and not self.login_required):
            return True
        if self.token:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode()):
                return True
        return self.logged_in is not None and bool(self.logged_in(request))


def read_token(path: str | os.PathLike | None = None, *, env: str = TOKEN_ENV) -> str | None:
    """The API token from a file (its first line) or else the environment variable `env`; None when neither is set.

    A token file that other users can read is refused, like ssh's private keys.
    """
    if path is not None:
        try:
            st = os.stat(path)
            text = open(path, encoding="utf-8").read()  # noqa: SIM115
        except OSError as exc:
            raise ClipSearchError(f"cannot read API token file {path}: {exc.strerror or exc}") from exc
        if st.st_mode & 0o077:
            raise ClipSearchError(f"API token file {path} can be read by other users: chmod 600 {path}")
        token = (text.strip().splitlines() or [""])[0].strip()
        if len(token) < 16:
            raise ClipSearchError(f"API token in {path} is too short: use at least 16 characters "
                                  "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return token
    token = os.environ.get(env, "").strip()
    if not token:
        return None
    if len(token) < 16:
        raise ClipSearchError(f"${env} is too short: use at least 16 characters")
    return token


# -- the API ------------------------------------------------------------------------------
def split_root(path: str, roots: Sequence[str]) -> tuple[str, str]:
    """(root, path relative to it) for a catalogued file: the longest photo folder holding it."""
    root = max((r for r in roots if path.startswith(r.rstrip("/") + "/")), key=len, default=None)
    if root is None:
        return os.path.dirname(path), os.path.basename(path)
    return root, os.path.relpath(path, root)


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="seconds")


class PhotoApi:
    """The handlers: each calls `Library` under the shared lock and returns a wire model."""

    def __init__(self, library: "Library", *, lock: threading.RLock | None = None,
                 thumbs: Thumbnails | None = None, serve_originals: bool = False,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, max_upload_pixels: int = MAX_UPLOAD_PIXELS) -> None:
        self.library = library
        self.lock = lock or threading.RLock()
        self._thumbs = thumbs
        self.serve_originals = serve_originals
        self.max_upload_bytes = max_upload_bytes
        self.max_upload_pixels = max_upload_pixels

    @property
    def thumbs(self) -> Thumbnails:
        if self._thumbs is None:
            self._thumbs = Thumbnails(self.library)
        return self._thumbs

    # -- shaping ----------------------------------------------------------------------
    def _row(self, image_id: int) -> "ImageRow":
        row = self.library.get_image(int(image_id))
        if row is None or row.status != "ok":
            raise ApiError(404, "not_found", f"no indexed photo with id {int(image_id)}")
        return row

    @staticmethod
    def thumb_url(image_id: int) -> str:
        return f"{API_PREFIX}/photos/{int(image_id)}/thumb"

    def _hits(self, hits: Sequence["LibraryHit"], roots: Sequence[str]) -> list[Hit]:
        rows = {h.id: self.library.get_image(h.id) for h in hits}
        out = []
        for h in hits:
            row = rows[h.id]
            if row is None:  # removed since the search (another process is writing)
                continue
            root, rel = split_root(h.path, roots)  # a video's hit names the video, not its frame row
            score = None if h.score is None else round(float(h.score), 6)
            video = h.segment is not None
            out.append(Hit(id=h.id, path=rel, root=root, score=score, width=row.width,
                           height=row.height, taken_at=h.taken_at, place=h.place,
                           camera=h.camera, thumb_url=self.thumb_url(h.id),
                           time=h.time if video else None, segment=list(h.segment) if video else None,
                           moments=[list(m) for m in h.moments] if video else [],
                           video_url=f"{API_PREFIX}/photos/{h.id}/video" if video else None))
        return out

    def _page(self, run: Callable[[int], list["LibraryHit"]], query: str | None, k: int,
              offset: int, *, by_score: bool | None = None) -> SearchResponse:
        if offset + k > MAX_DEPTH:
            raise ApiError(422, "bad_request", f"offset + k may be at most {MAX_DEPTH}; narrow the query instead")
        with self.lock:
            # One more than the page, to know whether another page follows; ties ordered by id
            # (stable_top), so that pages fetched one after another never repeat or skip a photo.
            ranked = stable_top(run, offset + k + 1, by_score=by_score)
            page = ranked[offset:offset + k]
            hits = self._hits(page, self.library.roots())
        return SearchResponse(query=query, offset=offset, k=k, hits=hits,
                              next_offset=offset + k if len(ranked) > offset + k else None)

    # -- endpoints --------------------------------------------------------------------
    def search(self, q: str, k: int, offset: int, min_score: float | None) -> SearchResponse:
        q = q.strip()
        if not q:
            raise ApiError(400, "bad_query", "empty query: pass q=words, e.g. q=beach + sunset - people")
        _refuse_paths(q)
        from clipsearch.query import parse

        by_score = parse(q).effective_sort == "score"  # a date order is kept as it is, ties and all
        return self._page(lambda n: self.library.search(q, k=n, min_score=min_score), q, k, offset, by_score=by_score)

    def search_image(self, data: bytes, text: str | None, k: int, offset: int,
                     min_score: float | None) -> SearchResponse:
        image = self._decode_upload(data)
        text = (text or "").strip() or None
        return self._page(lambda n: self.library.search_image(image, k=n, text=text, min_score=min_score),
                          None, k, offset)

    def photo(self, image_id: int) -> Photo:
        with self.lock:
            row = self._row(image_id)
            root, rel = split_root(row.path, self.library.roots())
            facts = self.library.facts(row.id, ["taken_at", "place_city", "place_country", "camera"])
        place = place_label(facts.get("place_city"), facts.get("place_country"))
        return Photo(id=row.id, path=rel, root=root, width=row.width, height=row.height, size=row.size,
                     modified=_iso(row.mtime_ns), taken_at=facts.get("taken_at"), place=place,
                     camera=facts.get("camera"), thumb_url=self.thumb_url(row.id),
                     original_url=f"{API_PREFIX}/photos/{row.id}/original" if self.serve_originals else None)

    def similar(self, image_id: int, text: str | None, k: int, offset: int, min_score: float | None) -> SearchResponse:
        with self.lock:
            self._row(image_id)
        text = (text or "").strip() or None
        return self._page(lambda n: self.library.search_image(int(image_id), k=n, text=text, min_score=min_score),
                          None, k, offset)

    def describe(self, image_id: int, k: int) -> DescribeResponse:
        with self.lock:
            self._row(image_id)
            total = self.library.info().texts
            hits = self.library.describe(int(image_id), k=k) if total else []
        return DescribeResponse(id=int(image_id), texts=[TextScore(text=h.text, score=round(float(h.score), 6))
                                                         for h in hits], total=total)

    def thumbnail(self, image_id: int, size: int | None) -> tuple[str, bool]:
        """(file, cacheable): the thumbnail, or a placeholder (not cacheable) for a photo that can't be read."""
        with self.lock:
            row = self._row(image_id)
        path = self.thumbs.path_for(row, size)
        return str(path), path.parent != self.thumbs.folder or path.stem == str(row.id)

    def original(self, image_id: int) -> tuple[str, str]:
        if not self.serve_originals:
            raise ApiError(404, "originals_not_served",
                           "this server does not serve original files: start it with --serve-originals")
        with self.lock:
            row = self._row(image_id)
            roots = self.library.roots()
        real = os.path.realpath(row.path)
        # The catalog's path, still a supported file inside a photo folder (not a link swapped in since).
        if not (is_supported(real) and os.path.isfile(real)
                and any(real.startswith(os.path.realpath(r).rstrip("/") + "/") for r in roots)):
            raise ApiError(404, "file_gone", f"photo {row.id} is no longer readable where it was indexed; "
                                             "re-index its folder")
        return real, mimetypes.guess_type(real)[0] or "application/octet-stream"

    def video(self, image_id: int) -> str:
        """The video file a video's row (or one of its frames) comes from, checked as `original` checks."""
        with self.lock:
            row = self._row(image_id)
            roots = self.library.roots()
        path, _ = split_frame_path(row.path)
        real = os.path.realpath(path)
        if not is_video(real):
            raise ApiError(404, "not_a_video", f"item {row.id} is a photo, not a video: use /thumb")
        if not (os.path.isfile(real) and any(real.startswith(os.path.realpath(r).rstrip("/") + "/") for r in roots)):
            raise ApiError(404, "file_gone", f"video {row.id} is no longer readable where it was indexed; "
                                             "re-index its folder")
        return real

    @staticmethod
    def _concept_info(c: "Concept") -> ConceptInfo:
        return ConceptInfo(name=c.name, examples=c.examples,
                           coherence=None if c.coherence is None else round(float(c.coherence), 4),
                           weak=bool(c.weak), stale=bool(c.stale),
                           created_at=_iso(int(c.created_at * 1e9)))

    def concepts(self) -> ConceptsResponse:
        with self.lock:
            found = self.library.concepts()
        return ConceptsResponse(concepts=[self._concept_info(c) for c in sorted(found, key=lambda c: c.name)])

    def add_concept(self, body: AddConcept) -> ConceptInfo:
        from clipsearch.concepts import check_name

        name = check_name(body.name)  # a bad name: 400 bad_query, with what a name may hold
        with self.lock:
            for image_id in body.examples:
                self._row(image_id)  # ids only, of indexed photos: else 404
            try:
                made = self.library.add_concept(name, [int(i) for i in body.examples], replace=body.replace)
            except ConceptExistsError:
                raise ApiError(409, "conflict", f"a concept named {name!r} exists; send replace: true to remake it") \
                    from None
        return self._concept_info(made)

    def remove_concept(self, name: str) -> None:
        from clipsearch.concepts import check_name

        key = check_name(name)
        with self.lock:
            if not self.library.remove_concept(key):
                raise ApiError(404, "not_found", f"no concept named {key!r}")

    def texts(self, offset: int, limit: int) -> TextsResponse:
        with self.lock:
            texts = self.library.texts()
        return TextsResponse(count=len(texts), offset=offset, texts=texts[offset:offset + limit])

    def add_texts(self, texts: list[str]) -> AddTextsResponse:
        long = next((t for t in texts if len(t) > MAX_TEXT_LENGTH), None)
        if long is not None:
            raise ApiError(422, "bad_request", f"texts may be at most {MAX_TEXT_LENGTH} characters; "
                                               f"one starts {long[:40]!r}")
        with self.lock:
            added = self.library.add_texts(texts)
            count = self.library.info().texts
        return AddTextsResponse(added=added, count=count)

    def info(self) -> Info:
        with self.lock:
            i = self.library.info()
        return Info(api_version=API_VERSION, photos=i.images, skipped=i.failed, texts=i.texts, model=i.model,
                    pretrained=i.pretrained, dim=i.dim, index_kind=i.index_kind, index_count=i.index_count,
                    roots=list(i.roots), serve_originals=self.serve_originals)

    def _decode_upload(self, data: bytes) -> Any:
        if not data:
            raise ApiError(400, "no_image", "send the image as the form field `image` (multipart/form-data), "
                                            "or as the request body with Content-Type image/...")
        if len(data) > self.max_upload_bytes:
            raise ApiError(413, "too_large", f"uploads may be at most {self.max_upload_bytes // (1024 * 1024)} MB")
        try:
            return load_image(data, max_bytes=self.max_upload_bytes, max_pixels=self.max_upload_pixels,
                              name="upload")
        except ImageLoadError as exc:
            raise ApiError(422, "not_an_image", f"can't use this upload: {exc.reason}") from None


def _refuse_paths(query: str) -> None:
    # The API reads no file a caller names: image terms must be #ID (judged by extension only,
    # so the answer never tells whether such a file exists).
    from clipsearch.errors import QueryError
    from clipsearch.search import names_image_file

    try:
        named = names_image_file(query)
    except QueryError as exc:
        raise ApiError(400, "bad_query", str(exc)) from None
    if named:
        raise ApiError(400, "bad_query", "photos can't be named by file path here: use #ID of an indexed photo, "
                                         "or POST /api/search/image with the image")


class _TooLarge(Exception):
    pass


async def _read_upload(request: Request, max_bytes: int) -> tuple[bytes, str | None]:
    """The uploaded image (and the optional `text` field), reading at most `max_bytes` (+ multipart overhead)."""
    limit = max_bytes + _MULTIPART_SLACK
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, "too_large", f"uploads may be at most {max_bytes // (1024 * 1024)} MB")
    received = 0

    async def receive() -> Any:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise _TooLarge
        return message

    capped = Request(request.scope, receive)
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("multipart/form-data"):
            form = await capped.form(max_files=1, max_fields=8)
            upload, text = form.get("image"), form.get("text")
            data = b"" if upload is None or isinstance(upload, str) else await upload.read(max_bytes + 1)
            await form.close()
            return data, text if isinstance(text, str) else None
        return await capped.body(), None
    except _TooLarge:
        raise ApiError(413, "too_large", f"uploads may be at most {max_bytes // (1024 * 1024)} MB") from None


_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary", "description": "the image (JPEG, PNG, WebP, ...)"},
            "text": {"type": "string", "description": "optional text to add to the image, e.g. at night"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


def build_api(library: "Library", *, access: Access | None = None, lock: threading.RLock | None = None,
              thumbs: Thumbnails | None = None, serve_originals: bool = False,
              max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The API as a FastAPI app, to mount at /api (`clipsearch_ui.serve` does) or to serve alone.

    `access` says who may call (default: anyone who reaches the server); `lock` is shared
    with anything else that uses `library` in this process.
    """
    access = access or Access()
    impl = PhotoApi(library, lock=lock, thumbs=thumbs, serve_originals=serve_originals,
                    max_upload_bytes=max_upload_bytes)

    def authorised(request: Request) -> None:
        asset = request.url.path.endswith(("/thumb", "/video"))  # what the UI's page itself shows
        if not access.allows(request, ui_asset=asset and request.method == "GET"):
            raise ApiError(401, "unauthorized", "send `Authorization: Bearer TOKEN` (the server's API token) "
                                                "or log in to the web UI first")

    api = FastAPI(title="clipsearch API", version=API_VERSION, root_path_in_servers=False, servers=[{"url": API_PREFIX}],
                  summary="Search your photo library by meaning: text, images, arithmetic on meaning.",
                  docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(authorised)], responses=ERRORS)
    api.state.access = access
    api.state.impl = impl

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such API route: {request.url.path} (see {API_PREFIX}/docs)"
        return JSONResponse({"error": _HTTP_CODES.get(exc.status_code, "http_error"), "detail": detail},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return JSONResponse({"error": "bad_request", "detail": "; ".join(parts)}, status_code=422)

    @api.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"error": "bad_query", "detail": str(exc)}, status_code=400)

    @api.exception_handler(LibraryLockedError)
    async def _locked(request: Request, exc: LibraryLockedError) -> JSONResponse:
        return JSONResponse({"error": "busy", "detail": str(exc)}, status_code=409)

    @api.exception_handler(ClipSearchError)
    async def _library_error(request: Request, exc: ClipSearchError) -> JSONResponse:
        log.warning("API %s: %s", request.url.path, exc)
        return JSONResponse({"error": "library_error", "detail": str(exc)}, status_code=500)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("API %s failed", request.url.path)
        return JSONResponse({"error": "internal_error", "detail": "the server failed; its log says why"},
                            status_code=500)

    K = Query(24, ge=1, le=MAX_K, description=f"page size, 1..{MAX_K}")
    OFFSET = Query(0, ge=0, le=MAX_DEPTH, description="how many hits to skip (paging); order: score, then id")
    MIN_SCORE = Query(None, ge=-1.0, le=1.0, description="drop hits scoring below this")
    PHOTO_ID = Path(ge=1, description="a catalog id, from a hit")

    @api.get("/search", response_model=SearchResponse, responses=BAD_QUERY, summary="Search by text")
    def search(q: str = Query(..., max_length=500, description="what to look for; arithmetic on meaning: "
                                                             "`beach + sunset - people`, `2:dog + cat`, `#42 + at night`"),
               k: int = K, offset: int = OFFSET, min_score: float | None = MIN_SCORE) -> SearchResponse:
        """Photos closest in meaning to a text query, best first, one page at a time."""
        return impl.search(q, k, offset, min_score)

    @api.post("/search/image", response_model=SearchResponse, openapi_extra={"requestBody": _UPLOAD_BODY},
              responses={413: {"model": Error, "description": "the upload is too large"},
                         **{422: {"model": Error, "description": "not an image, or too many pixels"}}},
              summary="Search by an uploaded image")
    async def search_image(request: Request, k: int = K, offset: int = OFFSET,
                           min_score: float | None = MIN_SCORE,
                           text: str | None = Query(None, max_length=200, description="text to add, e.g. at night "
                                                    "(or the multipart field `text`)")) -> SearchResponse:
        """Photos like an uploaded image (multipart field `image`, or the raw body), optionally plus text.

        Uploads are capped in bytes and in pixels (judged from the header, before decoding).
        """
        data, form_text = await _read_upload(request, impl.max_upload_bytes)
        return await run_in_threadpool(impl.search_image, data, form_text or text, k, offset, min_score)

    @api.get("/photos/{image_id}", response_model=Photo, responses=NOT_FOUND, summary="A photo's facts")
    def photo(image_id: int = PHOTO_ID) -> Photo:
        return impl.photo(image_id)

    @api.get("/photos/{image_id}/similar", response_model=SearchResponse, responses=NOT_FOUND,
             summary="Photos like this one")
    def similar(image_id: int = PHOTO_ID, k: int = K, offset: int = OFFSET, min_score: float | None = MIN_SCORE,
                text: str | None = Query(None, max_length=200, description="text to add, e.g. at night")
                ) -> SearchResponse:
        """Photos closest to an indexed one (itself left out), optionally plus text."""
        return impl.similar(image_id, text, k, offset, min_score)

    @api.get("/photos/{image_id}/describe", response_model=DescribeResponse, responses=NOT_FOUND,
             summary="The texts that describe a photo best")
    def describe(image_id: int = PHOTO_ID, k: int = Query(8, ge=1, le=100)) -> DescribeResponse:
        """Image → text: the closest entries of the library's text collection (see /texts)."""
        return impl.describe(image_id, k)

    @api.get("/photos/{image_id}/thumb", response_class=FileResponse, summary="A thumbnail (JPEG)",
             responses={200: {"content": {"image/jpeg": {}}}, **NOT_FOUND})
    def thumb(image_id: int = PHOTO_ID, size: int = Query(256, ge=16, le=THUMB_SIZES[-1],
                                                          description=f"longest side; served at the next of "
                                                                      f"{', '.join(map(str, THUMB_SIZES))}")
              ) -> FileResponse:
        path, cacheable = impl.thumbnail(image_id, snap_size(size))
        # Ids are never reused and a changed file gets a new id: a thumbnail never changes.
        cache = "private, max-age=31536000, immutable" if cacheable else "no-store"
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": cache})

    @api.get("/photos/{image_id}/original", response_class=FileResponse, summary="The photo's file",
             responses={200: {"content": {"image/*": {}}}, **NOT_FOUND})
    def original(image_id: int = PHOTO_ID) -> FileResponse:
        """The original file, as indexed. Only when the server runs with `--serve-originals` (else 404)."""
        path, media_type = impl.original(image_id)
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, no-cache"})

    @api.get("/photos/{image_id}/video", response_class=FileResponse, responses=NOT_FOUND,
             summary="A video's file (seekable: HTTP range requests)")
    def video(image_id: int = PHOTO_ID) -> FileResponse:
        path = impl.video(image_id)
        return FileResponse(path, media_type=mimetypes.guess_type(path)[0] or "video/mp4")

    @api.get("/texts", response_model=TextsResponse, summary="The text collection")
    def texts(offset: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10_000)) -> TextsResponse:
        """The labels and captions that /photos/{id}/describe ranks, in the order they were added."""
        return impl.texts(offset, limit)

    @api.post("/texts", response_model=AddTextsResponse, summary="Add labels or captions")
    def add_texts(body: AddTexts) -> AddTextsResponse:
        """Add texts to the collection (duplicates are ignored): zero-shot labels for /describe."""
        return impl.add_texts(body.texts)

    @api.get("/concepts", response_model=ConceptsResponse, summary="Personal concepts")
    def concepts() -> ConceptsResponse:
        """The library's concepts, by name: words made from example photos (`bella on a beach`)."""
        return impl.concepts()

    @api.post("/concepts", response_model=ConceptInfo, summary="Name a few photos: a concept",
              responses={404: {"model": Error}, 409: {"model": Error}})
    def add_concept(body: AddConcept) -> ConceptInfo:
        """Make a concept from the ids of photos that show it (no training run); then use its name in queries."""
        return impl.add_concept(body)

    @api.delete("/concepts/{name}", status_code=204, response_class=Response, summary="Forget a concept",
                responses={404: {"model": Error}})
    def remove_concept(name: str) -> Response:
        impl.remove_concept(name)
        return Response(status_code=204)

    @api.get("/info", response_model=Info, summary="The library")
    def info() -> Info:
        return impl.info()

    @api.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(api.openapi())

    @api.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(render_docs(api.openapi()))

    return api


# -- /api/docs: the schema as a page, drawn on the server (no script, nothing from a CDN) ---------------
def _schema_type(schema: dict, components: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_schema_type(s, components) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_schema_type(schema.get('items', {}), components)}"
    return str(schema.get("format") if schema.get("format") == "binary" else schema.get("type", "any"))


def render_docs(schema: dict) -> str:
    """The OpenAPI schema as a readable HTML page."""
    e = html.escape
    components = schema.get("components", {}).get("schemas", {})
    out = [f"<!doctype html><html><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
           f"<title>{e(schema['info']['title'])}</title><style>"
           "body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
           "code,pre{background:#f4f4f5;border-radius:4px;padding:1px 4px}table{border-collapse:collapse;width:100%}"
           "td,th{border-bottom:1px solid #e4e4e7;padding:4px 8px;text-align:left;vertical-align:top}"
           ".m{font-weight:700;color:#4338ca}h2{margin-top:2em;border-top:1px solid #ddd;padding-top:1em}"
           "</style></head><body>",
           f"<h1>{e(schema['info']['title'])} <small>v{e(schema['info']['version'])}</small></h1>",
           f"<p>{e(schema['info'].get('summary', ''))} Machine-readable: <a href='openapi.json'>openapi.json</a>. "
           "Errors are JSON <code>{\"error\", \"detail\"}</code> with a 4xx/5xx status.</p>"]
    for route, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            out.append(f"<h2><span class=m>{e(method.upper())}</span> <code>{API_PREFIX}{e(route)}</code> "
                       f"— {e(op.get('summary', ''))}</h2>")
            if op.get("description"):
                out.append(f"<p>{e(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                out.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>default</th><th>meaning</th></tr>")
                for p in params:
                    s = p.get("schema", {})
                    rng = " ".join(f"{k} {s[k]}" for k in ("minimum", "maximum", "maxLength") if k in s)
                    out.append(f"<tr><td><code>{e(p['name'])}</code>{' (required)' if p.get('required') else ''}"
                               f"</td><td>{e(p['in'])}</td><td>{e(_schema_type(s, components))} {e(rng)}</td>"
                               f"<td>{e(json.dumps(s['default'])) if 'default' in s else ''}</td>"
                               f"<td>{e(p.get('description', s.get('description', '')))}</td></tr>")
                out.append("</table>")
            body = op.get("requestBody", {}).get("content", {})
            for ctype, spec in body.items():
                out.append(f"<p>Body <code>{e(ctype)}</code>: {e(_schema_type(spec.get('schema', {}), components))}"
                           "</p>")
            codes = ", ".join(f"{e(code)} {e(r.get('description', ''))}" for code, r in op.get("responses", {}).items())
            out.append(f"<p>Answers: {codes}</p>")
    out.append("<h2>Objects</h2>")
    for name, s in components.items():
        if name in ("HTTPValidationError", "ValidationError"):
            continue
        out.append(f"<h3>{e(name)}</h3><table>")
        for field_name, f in s.get("properties", {}).items():
            out.append(f"<tr><td><code>{e(field_name)}</code></td><td>{e(_schema_type(f, components))}</td>"
                       f"<td>{e(f.get('description', ''))}</td></tr>")
        out.append("</table>")
    out.append(f"<p><small>Generated {time.strftime('%Y-%m-%d %H:%M')} from the running server's schema.</small></p>"
               "</body></html>")
    return "".join(out)


def openapi_schema() -> dict:
    """The API's OpenAPI schema (it does not depend on the library)."""
    return build_api(None).openapi()  # type: ignore[arg-type]


if __name__ == "__main__":  # python -m clipsearch_ui.api > docs/api-openapi.json
    print(json.dumps(openapi_schema(), indent=1, ensure_ascii=False))
