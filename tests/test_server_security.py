"""The running web UI against hostile requests, beyond tests/test_ui_http.py: other host names
(DNS rebinding), cross-origin pages, more path tricks, planted symlinks, forged session
state, uploads that try to escape or overflow, and every API route without a login.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

# The Search tab's photo metadata filters (taken from, before, place, camera, types, newest first): none.
NO_META_FILTERS = ["", "", "", "", [], False]

pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")

from hostile import png, png_deflate_bomb  # noqa: E402
from test_ui_http import NO_META_FILTERS, PASSWORD, USER, _serve, call, file_data, refused  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from _serve(tmp_path_factory.mktemp("security"), auth=None)


@pytest.fixture(scope="module")
def served_with_login(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from _serve(tmp_path_factory.mktemp("security-login"), auth=(USER, PASSWORD))


def _thumbnails(served: Any) -> Path:
    """Make sure some thumbnails exist (the page asks the API for them); returns their folder."""
    with served.client() as c:
        event, out = call(c, "search", ["red", 3, 0, "", *NO_META_FILTERS])
        assert event == "complete"
        for hit in out[0]["hits"]:
            assert c.get(hit["thumb"]).status_code == 200
    return served.lib / "thumbs"


def test_requests_for_another_host_name_are_refused(served: Any) -> None:
    # DNS rebinding: a web page at evil.example re-resolved to 127.0.0.1 would otherwise be
    # "same origin" with the UI and could read the library through the user's browser.
    port = served.demo.server_port
    with served.client() as c:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil.example"):
            assert c.get("/config", headers={"Host": host}).status_code == 400, host
            r = c.post("/gradio_api/call/search", json={"data": ["red", 3, 0, ""]}, headers={"Host": host})
            assert r.status_code == 400 and b"event_id" not in r.content, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1"):
            assert c.get("/config", headers={"Host": host}).status_code == 200, host


def test_cross_origin_pages_get_no_cors_grant(served: Any) -> None:
    evil = {"Origin": "http://evil.example"}
    with served.client() as c:
        r = c.get("/config", headers=evil)
        assert "access-control-allow-origin" not in r.headers
        r = c.options("/gradio_api/call/search", headers={**evil, "Access-Control-Request-Method": "POST"})
        assert r.headers.get("access-control-allow-origin") not in ("*", "http://evil.example")


def test_more_path_tricks_are_refused(served: Any) -> None:
    lib, thumbs = served.lib, _thumbnails(served)
    tricks = [
        f"/gradio_api/file={thumbs}/..%5c..%5ccatalog.sqlite",            # backslashes
        f"/gradio_api/file={thumbs}/%252e%252e/catalog.sqlite",           # double-encoded dots
        f"/gradio_api/file={thumbs}/%c0%ae%c0%ae/catalog.sqlite",         # overlong UTF-8 dots
        f"/gradio_api/file={thumbs}/1.jpg%00/../../catalog.sqlite",       # a NUL byte
        f"/gradio_api/file=/{lib}/catalog.sqlite",                        # a doubled slash
        f"/gradio_api/file={lib}/./catalog.sqlite",
        f"/gradio_api/file={lib}/catalog.sqlite-shm",
        f"/gradio_api/file={lib}/index.faiss.json",
        f"/gradio_api/file={lib}/lock",
        f"/gradio_api/file={lib}",                                         # folders
        f"/gradio_api/file={thumbs}",
        "/gradio_api/file=/proc/self/environ",
        "/gradio_api/file=http://127.0.0.1:1/x",                            # a URL instead of a path
        "/gradio_api/proxy=http://127.0.0.1:1/x",                           # server-side fetches
        "/static/..%2f..%2f..%2f..%2fetc/passwd",
        "/assets/..%2f..%2f..%2fetc/passwd",
        "/svelte/..%2f..%2f..%2fetc/passwd",
        "/custom_component/x/client/..%2f..%2f/etc/passwd",
    ]
    with served.client() as c:
        for path in tricks:
            for method in ("GET", "HEAD"):
                r = c.request(method, path)
                assert r.status_code in (400, 403, 404, 405), (method, path, r.status_code)
                assert b"SQLite format" not in r.content and b"root:" not in r.content


def test_symlinks_planted_in_the_served_folders_lead_nowhere(served: Any) -> None:
    lib, thumbs = served.lib, _thumbnails(served)
    planted = [thumbs / "planted.jpg", lib / "cache" / "gradio" / "planted.jpg"]
    for link in planted:
        os.symlink(lib / "catalog.sqlite", link)
    try:
        with served.client() as c:
            for link in planted:
                assert refused(c.get(f"/gradio_api/file={link}")), link
    finally:
        for link in planted:
            link.unlink()


def test_monitoring_and_dev_tools_are_off(served: Any) -> None:
    with served.client() as c:
        for path in ("/monitoring", "/monitoring/summary", "/monitoring/guess", "/gradio_api/vibe-code",
                     "/gradio_api/run-history/buckets", "/gradio_api/runs", "/gradio_api/mcp/schema"):
            r = c.get(path)
            assert r.status_code in (403, 404), (path, r.status_code)
        assert c.post("/gradio_api/vibe-edit", json={"prompt": "x"}).status_code in (403, 404, 422)


def test_private_events_ignore_forged_session_state(served: Any) -> None:
    # "More like this" reads the selected photo from server-side session state: a client
    # that sends its own value (an unindexed id, here 1) for that state is not believed.
    with served.client() as c:
        deps = {d.get("api_name"): d for d in c.get("/config").json()["dependencies"]}
        like = deps["on_like"]
        broken = served.library.catalog.find_path(str(served.root / "photos" / "broken.jpg")).id
        r = c.post("/gradio_api/queue/join", json={
            "data": [broken, "", 3, 0, "", *NO_META_FILTERS], "fn_index": like["id"], "session_hash": "forged",
            "event_data": None, "trigger_id": like["targets"][0][0]})
        assert r.status_code == 200
        output = None
        with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": "forged"}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        output = message["output"]["data"]
                        break
        assert output is not None and output[0]["hits"] == [] and "Select a photo first" in output[1]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_uploads_cannot_escape_the_cache_or_touch_the_library(served: Any) -> None:
    catalog = served.lib / "catalog.sqlite"
    before = _sha(catalog)
    cache = (served.lib / "cache" / "gradio").resolve()
    with served.client() as c:
        for name in ("../../catalog.sqlite", "../../../../../tmp/escaped.png", "/etc/cron.d/evil",
                     "..\\..\\catalog.sqlite", "thumbs/../../catalog.sqlite"):
            r = c.post("/gradio_api/upload", files={"files": (name, b"GIF89a" + b"\0" * 32, "image/gif")})
            if r.status_code != 200:
                continue  # refused outright is fine too
            (stored,) = r.json()
            assert Path(stored).resolve().is_relative_to(cache), (name, stored)
    assert _sha(catalog) == before
    assert not Path("/tmp/escaped.png").exists() and not Path("/etc/cron.d/evil").exists()


def test_an_upload_without_a_length_is_still_capped(served: Any) -> None:
    def body() -> Iterator[bytes]:
        boundary = b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n" \
                   b"Content-Type: image/png\r\n\r\n"
        yield boundary
        for _ in range(30):
            yield b"\0" * (1024 * 1024)
        yield b"\r\n--x--\r\n"

    with served.client() as c:
        r = c.post("/gradio_api/upload", content=body(),
                   headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code in (400, 413), r.status_code
    stored = [p for p in (served.lib / "cache" / "gradio").rglob("*") if p.is_file()]
    assert all(p.stat().st_size <= 25 * 1024 * 1024 for p in stored)


def test_uploaded_bombs_are_refused_and_the_server_keeps_serving(served: Any) -> None:
    # Refused from the header by our loader: Gradio must not decode uploads itself first
    # (its default RGB conversion took ~12 s and hundreds of MB on the 169 MP deflate bomb).
    started = time.monotonic()
    with served.client() as c:
        for name, data in (("header.png", png(100_000, 100_000)), ("deflate.png", png_deflate_bomb(13_000)),
                           ("strip.png", png(1, 1_000_000))):
            r = c.post("/gradio_api/upload", files={"files": (name, data, "image/png")})
            assert r.status_code == 200
            event, out = call(c, "search_image", [file_data(r.json()[0]), "", 3, 0, "", *NO_META_FILTERS])
            if event == "complete":
                assert out[0]["hits"] == [] and out[1].startswith(f"⚠️ Can't use {name}: "), out[1]
            else:  # Gradio's own image check refused it first
                assert event == "error"
        event, out = call(c, "search", ["red", 1, 0, "", *NO_META_FILTERS])
        assert event == "complete" and out[0]["hits"][0]["name"] == "red.jpg"
    assert time.monotonic() - started < 5


def test_without_a_login_no_route_answers_with_data(served_with_login: Any) -> None:
    s = served_with_login
    thumb = s.lib / "thumbs" / "2.jpg"
    gets = ["/config", "/gradio_api/info", "/gradio_api/openapi.json", f"/gradio_api/file={thumb}",
            f"/gradio_api/file/{thumb}", "/gradio_api/queue/data?session_hash=x", "/gradio_api/upload_progress",
            "/gradio_api/deep_link", "/gradio_api/proxy=http://127.0.0.1:1/x", "/monitoring/summary",
            "/gradio_api/call/search/someevent"]
    posts = [("/gradio_api/upload", {"files": ("a.png", png(4, 4), "image/png")}),
             ("/gradio_api/queue/join", None), ("/gradio_api/call/search", None),
             ("/gradio_api/call/v2/search", None), ("/gradio_api/run/search", None),
             ("/gradio_api/api/search", None), ("/gradio_api/call/describe", None)]
    forged = {"access-token": "forged", "access-token-unsecure": "forged"}
    with s.client() as anon:
        for cookies in (None, forged):
            anon.cookies.clear()
            if cookies:
                anon.cookies.update(cookies)
            for path in gets:
                r = anon.get(path)
                assert r.status_code in (401, 403), (path, r.status_code)
            for path, files in posts:
                if files:
                    r = anon.post(path, files=files)
                else:
                    r = anon.post(path, json={"data": ["red", 3, 0, "", *NO_META_FILTERS], "fn_index": 0, "session_hash": "x"})
                assert r.status_code in (401, 403), (path, r.status_code)
                assert b"event_id" not in r.content
        # HTTP basic auth with the right password is not a way in either (Gradio logs in by form only).
        anon.cookies.clear()
        r = anon.get("/config", auth=(USER, PASSWORD))
        assert r.status_code == 401
    assert not any(p.name == "a.png" for p in (s.lib / "cache" / "gradio").rglob("*"))
