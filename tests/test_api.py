"""The JSON HTTP API (`clipsearch_ui.api`): handlers over a library indexed with the FakeEncoder,
called through Starlette's test client (no server), then mounted in the running UI server.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

pytest.importorskip("gradio")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from clipsearch_ui.api import (  # noqa: E402
    MAX_DEPTH, Access, DescribeResponse, Error, Info, Photo, SearchResponse, TextsResponse, build_api, read_token,
)
from hostile import png, png_deflate_bomb  # noqa: E402

SCHEMA = Path(__file__).parent.parent / "docs" / "api-openapi.json"
TOKEN = "s3cret-token-for-tests-0123456789"


def client(library: Any, **kwargs: Any) -> TestClient:
    # base_url with /api: the app is mounted there by the server; the test client calls it bare.
    return TestClient(build_api(library, **kwargs), base_url="http://127.0.0.1")


@pytest.fixture
def api(library) -> Iterator[TestClient]:
    with client(library) as c:
        yield c


@pytest.fixture
def ids(library, colour_photos) -> dict[str, int]:
    return {name: library.catalog.find_path(os.path.abspath(p)).id for name, p in colour_photos.items()}


def names(response: Any) -> list[str]:
    return [h["path"].rsplit("/", 1)[-1] for h in response.json()["hits"]]


def assert_error(r: Any, status: int, code: str, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = Error.model_validate(r.json())  # exactly {error, detail}
    assert body.error == code, body
    for w in words:
        assert w in body.detail, body.detail


def test_text_search_returns_hits_with_ids_relative_paths_and_thumbnails(api, tmp_path, ids):
    r = api.get("/search", params={"q": "red", "k": 3})
    assert r.status_code == 200
    page = SearchResponse.model_validate(r.json())
    first = page.hits[0]
    assert (first.id, first.path, first.root) == (ids["red"], "red.jpg", str(tmp_path / "photos"))
    assert first.score > 0.99 and (first.width, first.height) == (64, 48)
    assert first.thumb_url == f"/api/photos/{ids['red']}/thumb"
    assert len(page.hits) == 3 and page.next_offset == 3
    # A photo in a sub-folder: its path is relative to the photo folder, not just a name.
    sub = api.get("/search", params={"q": "white", "k": 1}).json()["hits"][0]
    assert sub["path"] == "sub/white.jpg"


def test_paging_by_offset_walks_the_whole_ranking_once_in_a_stable_order(api, library):
    whole = api.get("/search", params={"q": "red", "k": 8}).json()
    assert whole["next_offset"] is None and len(whole["hits"]) == 8
    walked, offset = [], 0
    while offset is not None:
        page = api.get("/search", params={"q": "red", "k": 3, "offset": offset}).json()
        walked += page["hits"]
        offset = page["next_offset"]
    assert [h["id"] for h in walked] == [h["id"] for h in whole["hits"]]
    scores = [h["score"] for h in walked]
    assert scores == sorted(scores, reverse=True) and len({h["id"] for h in walked}) == 8
    assert api.get("/search", params={"q": "red", "k": 3, "offset": 30}).json()["hits"] == []


def test_min_score_and_arithmetic(api, ids):
    assert names(api.get("/search", params={"q": "red", "k": 8, "min_score": 0.5})) == ["red.jpg"]
    r = api.get("/search", params={"q": f"#{ids['blue']} + red", "k": 2})
    assert sorted(names(r)) == ["blue.jpg", "red.jpg"]


def test_errors_are_json_with_a_code_and_never_a_200(api):
    assert_error(api.get("/search", params={"q": "  "}), 400, "bad_query", "empty query")
    assert_error(api.get("/search"), 422, "bad_request", "q")
    assert_error(api.get("/search", params={"q": "red", "k": 0}), 422, "bad_request", "k")
    assert_error(api.get("/search", params={"q": "red", "k": 201}), 422, "bad_request", "k")
    assert_error(api.get("/search", params={"q": "red", "k": 200, "offset": MAX_DEPTH}), 422, "bad_request",
                 "offset + k")
    assert_error(api.get("/search", params={"q": "red + + blue"}), 400, "bad_query", "stray")
    assert_error(api.get("/search", params={"q": "#99999"}), 400, "bad_query", "99999")
    assert_error(api.get("/photos/99999"), 404, "not_found", "99999")
    assert_error(api.get("/photos/abc"), 422, "bad_request", "image_id")
    assert_error(api.get("/nowhere"), 404, "not_found", "/docs")
    assert_error(api.post("/search", params={"q": "red"}), 405, "method_not_allowed")


def test_no_path_goes_in(api, colour_photos, library, tmp_path):
    (tmp_path / "photos" / "bad.jpg").write_bytes(b"not a jpeg")
    library.index(tmp_path / "photos")
    bad = library.catalog.find_path(str(tmp_path / "photos" / "bad.jpg")).id
    for q in (colour_photos["red"], colour_photos["red"] + " + night", "/nonexistent/x.jpg"):
        assert_error(api.get("/search", params={"q": q}), 400, "bad_query", "#ID")
    # An id the catalog holds but could not index is not a photo either.
    assert_error(api.get(f"/photos/{bad}"), 404, "not_found")
    assert_error(api.get(f"/photos/{bad}/thumb"), 404, "not_found")


def test_photo_facts_similar_and_describe(api, ids, tmp_path):
    photo = Photo.model_validate(api.get(f"/photos/{ids['red']}").json())
    assert (photo.path, photo.root, photo.width, photo.height) == ("red.jpg", str(tmp_path / "photos"), 64, 48)
    assert photo.size == (tmp_path / "photos" / "red.jpg").stat().st_size and photo.original_url is None
    assert photo.taken_at is not None and photo.taken_at[:10] == photo.modified[:10]  # no EXIF: the file's date
    similar = api.get(f"/photos/{ids['red']}/similar", params={"k": 7}).json()
    assert ids["red"] not in [h["id"] for h in similar["hits"]] and len(similar["hits"]) == 7
    plus = api.get(f"/photos/{ids['red']}/similar", params={"k": 1, "text": "blue"}).json()
    assert plus["hits"][0]["id"] == ids["blue"]
    empty = DescribeResponse.model_validate(api.get(f"/photos/{ids['red']}/describe").json())
    assert empty.texts == [] and empty.total == 0
    r = api.post("/texts", json={"texts": ["green", "red", "blue", "red"]})
    assert r.status_code == 200 and r.json() == {"added": 3, "count": 3}
    assert api.post("/texts", json={"texts": ["red"]}).json() == {"added": 0, "count": 3}
    described = DescribeResponse.model_validate(api.get(f"/photos/{ids['red']}/describe", params={"k": 2}).json())
    assert described.texts[0].text == "red" and len(described.texts) == 2 and described.total == 3
    texts = TextsResponse.model_validate(api.get("/texts", params={"offset": 1, "limit": 1}).json())
    assert texts.count == 3 and texts.texts == ["red"]
    assert_error(api.post("/texts", json={"texts": []}), 422, "bad_request")
    assert_error(api.post("/texts", json={"texts": ["x" * 501]}), 422, "bad_request", "500")
    assert_error(api.post("/texts", json={"labels": ["x"]}), 422, "bad_request")


def test_thumbnails_by_size_are_cached_jpegs(api, library, ids):
    r = api.get(f"/photos/{ids['red']}/thumb")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert "immutable" in r.headers["cache-control"]
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.size == (64, 48) and im.convert("RGB").getpixel((5, 5))[0] > 150
    assert (Path(library.folder) / "thumbs" / f"{ids['red']}.jpg").exists()
    assert api.get(f"/photos/{ids['red']}/thumb", params={"size": 100}).status_code == 200
    assert (Path(library.folder) / "thumbs" / "128" / f"{ids['red']}.jpg").exists()
    assert_error(api.get(f"/photos/{ids['red']}/thumb", params={"size": 5000}), 422, "bad_request", "size")


def test_a_photo_that_cannot_be_read_gets_an_uncached_placeholder(api, ids, colour_photos):
    Path(colour_photos["green"]).write_bytes(b"gone bad")
    r = api.get(f"/photos/{ids['green']}/thumb")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"


def test_image_upload_search_multipart_and_raw(api, colour_photos, ids):
    blue = Path(colour_photos["blue"]).read_bytes()
    r = api.post("/search/image", params={"k": 2}, files={"image": ("q.jpg", blue, "image/jpeg")})
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == ids["blue"] and r.json()["query"] is None
    r = api.post("/search/image", params={"k": 1}, content=blue, headers={"content-type": "image/jpeg"})
    assert r.json()["hits"][0]["id"] == ids["blue"]
    r = api.post("/search/image", params={"k": 1}, files={"image": ("q.jpg", blue, "image/jpeg")},
                 data={"text": "red"})
    assert r.status_code == 200


def test_uploads_that_are_not_images_or_too_big_are_refused_with_the_reason(api):
    assert_error(api.post("/search/image", files={"image": ("notes.txt", b"hello", "text/plain")}), 422,
                 "not_an_image", "not an image")
    assert_error(api.post("/search/image", files={"other": ("x.png", png(4, 4), "image/png")}), 400, "no_image")
    assert_error(api.post("/search/image", content=png(100_000, 100_000), headers={"content-type": "image/png"}),
                 422, "not_an_image", "60 MP")
    assert_error(api.post("/search/image", content=png_deflate_bomb(13_000), headers={"content-type": "image/png"}),
                 422, "not_an_image")
    big = b"\0" * (26 * 1024 * 1024)
    assert_error(api.post("/search/image", content=big, headers={"content-type": "image/png"}), 413, "too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(27):
            yield b"\0" * (1024 * 1024)
    assert_error(api.post("/search/image", content=chunks(), headers={"content-type": "image/png"}), 413,
                 "too_large")


def test_originals_only_when_asked_and_only_indexed_files(library, ids, colour_photos, tmp_path):
    with client(library) as api:
        assert_error(api.get(f"/photos/{ids['red']}/original"), 404, "originals_not_served", "--serve-originals")
    with client(library, serve_originals=True) as api:
        assert api.get(f"/photos/{ids['red']}").json()["original_url"] == f"/api/photos/{ids['red']}/original"
        r = api.get(f"/photos/{ids['red']}/original")
        assert r.status_code == 200 and r.content == Path(colour_photos["red"]).read_bytes()
        assert r.headers["content-type"] == "image/jpeg"
        # A file swapped for a link to something outside the photo folders is not followed.
        secret = tmp_path / "secret.jpg"
        secret.write_bytes(b"private")
        os.replace(colour_photos["blue"], tmp_path / "moved.jpg")
        os.symlink(secret, colour_photos["blue"])
        assert_error(api.get(f"/photos/{ids['blue']}/original"), 404, "file_gone")


def test_info(api):
    info = Info.model_validate(api.get("/info").json())
    assert (info.photos, info.skipped, info.texts, info.model, info.api_version) == (8, 0, 0, "fake", "1")


def test_a_token_or_a_login_is_needed_when_configured(library, ids):
    logged_in_cookie = {"ui-login": "yes"}
    access = Access(token=TOKEN, login_required=True,
                    logged_in=lambda request: request.cookies.get("ui-login") == "yes")
    with client(library, access=access) as api:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN}):
            for path in ("/search?q=red", f"/photos/{ids['red']}", f"/photos/{ids['red']}/thumb", "/info",
                         "/openapi.json", "/docs", "/texts"):
                assert_error(api.get(path, headers=headers), 401, "unauthorized", "Bearer")
            assert_error(api.post("/texts", json={"texts": ["x"]}, headers=headers), 401, "unauthorized")
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert api.get("/search", params={"q": "red"}, headers=ok).status_code == 200
        api.cookies.update(logged_in_cookie)
        assert api.get("/search", params={"q": "red"}).status_code == 200
    # A token without a UI login: the UI's own thumbnails stay reachable to its page, the rest needs the token.
    with client(library, access=Access(token=TOKEN)) as api:
        assert api.get(f"/photos/{ids['red']}/thumb").status_code == 200
        assert_error(api.get(f"/photos/{ids['red']}"), 401, "unauthorized")


def test_read_token_from_a_private_file_or_the_environment(tmp_path, monkeypatch):
    from clipsearch.errors import ClipSearchError

    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o600)
    assert read_token(f) == TOKEN
    f.chmod(0o644)
    with pytest.raises(ClipSearchError, match="chmod 600"):
        read_token(f)
    short = tmp_path / "short"
    short.write_text("abc")
    short.chmod(0o600)
    with pytest.raises(ClipSearchError, match="too short"):
        read_token(short)
    with pytest.raises(ClipSearchError, match="cannot read"):
        read_token(tmp_path / "missing")
    monkeypatch.delenv("CLIPSEARCH_API_TOKEN", raising=False)
    assert read_token(None) is None
    monkeypatch.setenv("CLIPSEARCH_API_TOKEN", TOKEN)
    assert read_token(None) == TOKEN


def test_the_schema_matches_the_contract_in_docs(api):
    """docs/api-openapi.json is the published contract: the server's schema must equal it.

    After a deliberate change: python -m clipsearch_ui.api > docs/api-openapi.json
    """
    served = api.get("/openapi.json").json()
    assert served == json.loads(SCHEMA.read_text()), "the API changed: update docs/api-openapi.json (see docstring)"
    paths = {(route, method) for route, ops in served["paths"].items() for method in ops}
    assert paths == {("/search", "get"), ("/search/image", "post"), ("/photos/{image_id}", "get"),
                     ("/photos/{image_id}/similar", "get"), ("/photos/{image_id}/describe", "get"),
                     ("/photos/{image_id}/thumb", "get"), ("/photos/{image_id}/original", "get"),
                     ("/photos/{image_id}/video", "get"), ("/texts", "get"), ("/texts", "post"), ("/info", "get"),
                     ("/concepts", "get"), ("/concepts", "post"), ("/concepts/{name}", "delete")}
    assert served["servers"] == [{"url": "/api"}]
    hit = served["components"]["schemas"]["Hit"]
    assert set(hit["properties"]) == {"id", "path", "root", "score", "width", "height", "taken_at", "place", "camera",
                                      "thumb_url", "time", "segment", "moments", "video_url"}
    # Every operation documents the error shape.
    for route, ops in served["paths"].items():
        for method, op in ops.items():
            assert op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error"), route


def test_docs_page_lists_every_route(api):
    page = api.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for route in ("/api/search", "/api/search/image", "/api/photos/{image_id}/thumb", "/api/texts", "/api/info"):
        assert f"<code>{route}</code>" in page.text
    assert "<script" not in page.text and "src=" not in page.text  # nothing loaded from anywhere


# -- mounted in the running server ----------------------------------------------------------
@pytest.fixture(scope="module")
def served_with_login_and_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from test_ui_http import PASSWORD, USER, _serve

    yield from _serve(tmp_path_factory.mktemp("api"), auth=(USER, PASSWORD), api_token=TOKEN)


def test_the_server_mounts_the_api_behind_its_login_host_check_and_token(served_with_login_and_token):
    from test_ui_http import PASSWORD, USER

    s = served_with_login_and_token
    with s.client() as anon:
        for path in ("/api/search?q=red", "/api/info", "/api/photos/1/thumb", "/api/docs", "/api/openapi.json"):
            assert_error(anon.get(path), 401, "unauthorized")
        r = anon.get("/api/search?q=red", headers={"Authorization": f"Bearer {TOKEN}", "Host": "evil.example"})
        assert r.status_code == 400  # DNS rebinding: another host name is refused before the token is read
        r = anon.get("/api/search", params={"q": "red", "k": 1}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and names(r) == ["red.jpg"]
        r = anon.options("/api/search", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
        assert r.headers.get("access-control-allow-origin") not in ("*", "http://evil.example")
    with s.client() as browser:  # the UI's login cookie opens the API too (the page shows its thumbnails)
        assert browser.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
        hit = browser.get("/api/search", params={"q": "red", "k": 1}).json()["hits"][0]
        assert browser.get(hit["thumb_url"]).content[:3] == b"\xff\xd8\xff"
        assert "clipsearch API" in browser.get("/api/docs").text
        assert browser.get("/config").status_code == 200  # Gradio's routes are still there


def test_the_httpx_example_in_docs_runs(served_with_login_and_token, tmp_path):
    import re
    import subprocess
    import sys

    doc = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    code = re.search(r"## From Python \(httpx\).*?```python\n(.*?)```", doc, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    env = {**os.environ, "CLIPSEARCH_URL": served_with_login_and_token.url, "CLIPSEARCH_API_TOKEN": TOKEN}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "like it:" in out.stdout and len(out.stdout.splitlines()) == 3
    (thumb,) = tmp_path.glob("thumb-*.jpg")
    assert thumb.read_bytes()[:3] == b"\xff\xd8\xff"


def test_stable_top_orders_ties_by_id_whatever_the_search_returns():
    from dataclasses import dataclass

    from clipsearch_ui.paging import stable_top

    @dataclass
    class H:
        score: float
        id: int

    pool = [H(0.9, 1)] + [H(0.5, i) for i in range(50, 10, -1)] + [H(0.1, 99)]

    def run(k: int) -> list[H]:  # like an index: the best k, ties cut in an arbitrary (here: reversed id) order
        ranked = sorted(pool, key=lambda h: (-h.score, -h.id))
        return ranked[:k]

    pages = [stable_top(run, n) for n in (3, 6, 20, 42)]
    for a, b in zip(pages, pages[1:]):
        assert b[:len(a)] == a  # a longer page starts with the shorter one
    assert [h.id for h in pages[1]] == [1, 11, 12, 13, 14, 15]


def test_stable_top_keeps_an_order_that_is_not_by_score():
    from dataclasses import dataclass

    from clipsearch_ui.paging import stable_top

    @dataclass
    class H:
        score: float | None
        id: int

    by_date = [H(0.1, 5), H(0.9, 2), H(0.5, 7)]
    assert [h.id for h in stable_top(lambda k: by_date[:k], 2)] == [5, 2]
    unscored = [H(None, 3), H(None, 1)]
    assert [h.id for h in stable_top(lambda k: unscored[:k], 5)] == [3, 1]
    # Newest first among photos that score alike: nothing tells it from a score order but the caller.
    tied = [H(0.9, 8), H(0.9, 4), H(0.5, 6)]
    assert [h.id for h in stable_top(lambda k: tied[:k], 3)] == [4, 8, 6]  # guessed: a score order
    assert [h.id for h in stable_top(lambda k: tied[:k], 3, by_score=False)] == [8, 4, 6]


def test_serve_refuses_a_token_file_others_can_read_before_starting(library, tmp_path, capsys):
    from clipsearch.cli import main

    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o644)
    assert main(["serve", "--library", str(library.folder), "--api-token-file", str(token), "--no-browser"]) != 0
    err = capsys.readouterr().err
    assert "chmod 600" in err and str(token) in err


def test_hits_and_photos_carry_place_and_camera_from_the_photos_metadata(tmp_path, fake_encoder):
    from clipsearch import Library, toyworld

    toyworld.generate(tmp_path / "tw", 8, size=64, workers=1, progress=False)  # real EXIF: cities, cameras
    with Library.open(tmp_path / "twlib", encoder=fake_encoder) as lib, client(lib) as api:
        lib.index(tmp_path / "tw" / "images")
        hits = api.get("/search", params={"q": "a photo", "k": 8}).json()["hits"]
        assert len(hits) == 8
        with_gps = 0
        for hit in hits:
            facts = lib.facts(hit["id"])
            place = ", ".join(p for p in (facts.get("place_city"), facts.get("place_country")) if p) or None
            assert (hit["place"], hit["camera"], hit["taken_at"]) == (place, facts.get("camera"), facts.get("taken_at"))
            photo = Photo.model_validate(api.get(f"/photos/{hit['id']}").json())
            assert (photo.place, photo.camera) == (place, facts.get("camera"))
            with_gps += place is not None
        assert with_gps >= 5 and all(h["camera"] for h in hits if h["place"])


def test_concepts_are_made_from_photo_ids_used_as_words_and_forgotten(api, ids):
    from clipsearch_ui.api import ConceptInfo, ConceptsResponse

    assert ConceptsResponse.model_validate(api.get("/concepts").json()).concepts == []
    r = api.post("/concepts", json={"name": "Bella", "examples": [ids["red"], ids["orange"]]})
    assert r.status_code == 200, r.text
    made = ConceptInfo.model_validate(r.json())
    assert (made.name, made.examples, made.stale) == ("bella", 2, False)
    listed = ConceptsResponse.model_validate(api.get("/concepts").json()).concepts
    assert [c.name for c in listed] == ["bella"]
    # The name is a word in queries: its example photos rank first.
    top = api.get("/search", params={"q": "bella", "k": 2}).json()["hits"]
    assert {h["id"] for h in top} == {ids["red"], ids["orange"]}
    # A second concept of that name needs replace; ids only, of indexed photos; a name must be one word.
    assert_error(api.post("/concepts", json={"name": "bella", "examples": [ids["blue"]]}), 409, "conflict", "replace")
    assert api.post("/concepts", json={"name": "bella", "examples": [ids["blue"]], "replace": True}).status_code == 200
    assert api.get("/search", params={"q": "bella", "k": 1}).json()["hits"][0]["id"] == ids["blue"]
    assert_error(api.post("/concepts", json={"name": "x", "examples": [99999]}), 404, "not_found", "99999")
    assert_error(api.post("/concepts", json={"name": "two words", "examples": [ids["red"]]}), 400, "bad_query",
                 "one word")
    assert_error(api.post("/concepts", json={"name": "x", "examples": []}), 422, "bad_request", "examples")
    assert api.delete("/concepts/bella").status_code == 204
    assert_error(api.delete("/concepts/bella"), 404, "not_found", "bella")
    assert ConceptsResponse.model_validate(api.get("/concepts").json()).concepts == []
