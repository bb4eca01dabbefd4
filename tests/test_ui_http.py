"""The running web UI over HTTP: what Gradio's routes will and won't serve, uploads, login.

Every request goes to 127.0.0.1 on a free port; the servers are closed after the module.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest

# The Search tab's photo metadata filters (taken from, before, place, camera, types, newest first): none.
NO_META_FILTERS = ["", "", "", "", [], False]

pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")

from fakes import FakeEncoder, write_colour_photos  # noqa: E402
from ui_serving import serving  # noqa: E402

USER, PASSWORD = "ann", "correct horse"


class Served:
    def __init__(self, demo: Any, port: int, root: Path, library: Any, photos: dict[str, str]) -> None:
        self.demo, self.root, self.library, self.photos = demo, root, library, photos
        self.url = f"http://127.0.0.1:{port}"
        self.lib = Path(library.folder)

    def client(self) -> "httpx.Client":
        return httpx.Client(base_url=self.url, timeout=20)


def _serve(root: Path, auth: Any, **serve_kwargs: Any) -> Iterator[Served]:
    from clipsearch import Library
    photos = write_colour_photos(root / "photos", ["red", "green", "blue"])
    (root / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    library = Library.open(root / "lib", encoder=FakeEncoder())
    library.index(root / "photos")
    # A photo added after indexing: on disk, in the photo folder, but not in the catalog.
    photos.update(write_colour_photos(root / "photos", ["yellow"]))
    with serving(library, auth=auth, **serve_kwargs) as (_, demo, port):
        yield Served(demo, port, root, library, photos)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("open"), auth=None)


@pytest.fixture(scope="module")
def served_with_login(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("login"), auth=(USER, PASSWORD))


def call(client: "httpx.Client", api_name: str, data: list) -> tuple[str, Any]:
    """Run an API endpoint; returns ("complete", outputs) or ("error", detail)."""
    r = client.post(f"/gradio_api/call/{api_name}", json={"data": data})
    if r.status_code != 200:
        return f"http {r.status_code}", r.text
    r = client.get(f"/gradio_api/call/{api_name}/{r.json()['event_id']}")
    event, payload = None, None
    for line in r.text.splitlines():
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: ") and event in ("complete", "error"):
            payload = json.loads(line[6:])
    return event or "none", payload


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def refused(r: "httpx.Response") -> bool:
    return r.status_code in (400, 403, 404) and b"SQLite format" not in r.content and b"\xff\xd8\xff" not in r.content


def test_binds_to_loopback_with_no_share_link_and_no_analytics(served):
    assert served.demo.server_name == "127.0.0.1"
    assert served.demo.share_url is None
    with served.client() as c:
        config = c.get("/config").json()
    assert config["analytics_enabled"] is False
    # Reaching the port through another address of this machine fails.
    other = own_non_loopback_address()
    if other is not None:
        with pytest.raises(OSError), socket.create_connection((other, served.demo.server_port), timeout=2):
            pass


def own_non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends no packet), if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def test_file_routes_refuse_private_and_arbitrary_paths(served):
    lib, photos = served.lib, served.photos
    private = [
        "/etc/passwd",
        str(lib / "catalog.sqlite"),
        str(lib / "catalog.sqlite-wal"),
        str(lib / "index.faiss"),
        photos["red"],       # an indexed photo, by its path
        photos["yellow"],    # a photo the catalog doesn't know
        str(lib / "thumbs" / ".." / "catalog.sqlite"),
        str(lib / "cache" / "gradio" / ".." / ".." / "catalog.sqlite"),
        str(lib / "thumbs" / "99999.jpg"),  # the thumbnail of an id that isn't indexed
    ]
    tricks = ["..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
              quote(str(lib / "catalog.sqlite"), safe=""),
              quote(quote(str(lib / "catalog.sqlite"), safe=""), safe=""),
              str(lib / "thumbs") + "/%2e%2e/catalog.sqlite",
              str(lib / "cache" / "gradio") + "/..%2f..%2fcatalog.sqlite"]
    with served.client() as c:
        for path in private:
            for route in ("/gradio_api/file=", "/gradio_api/file/"):
                r = c.get(route + path)
                assert refused(r), (route + path, r.status_code)
        for trick in tricks:
            r = c.get("/gradio_api/file=" + trick)
            assert refused(r), (trick, r.status_code)
        for raw in ("/gradio_api/file=../../etc/passwd", "/file=" + str(lib / "catalog.sqlite"),
                    "/static/../../catalog.sqlite"):
            r = c.send(c.build_request("GET", served.url + raw))
            assert refused(r), (raw, r.status_code)


def test_results_are_ids_and_names_with_thumbnails_from_the_api(served):
    with served.client() as c:
        event, out = call(c, "search", ["red", 2, 0, "", *NO_META_FILTERS])
        assert event == "complete"
        grid, status = out[0], out[1]
        first = grid["hits"][0]
        assert first["name"] == "red.jpg" and "2" in status
        assert set(first) == {"id", "name", "score", "title", "thumb", "selected"}  # no server path goes out
        r = c.get(first["thumb"])
        assert r.status_code == 200 and r.content[:3] == b"\xff\xd8\xff"
        assert "immutable" in r.headers["cache-control"]
    # Gradio copies nothing for a search: its cache (in the library, private) holds no thumbnails.
    cache = served.lib / "cache" / "gradio"
    assert cache.stat().st_mode & 0o077 == 0
    assert not [p for p in cache.rglob("*.jpg") if p.is_file()]


def test_the_api_takes_no_path_that_was_not_uploaded(served):
    with served.client() as c:
        for path in (str(served.lib / "catalog.sqlite"), served.photos["red"], "/etc/passwd"):
            event, out = call(c, "search_image", [file_data(path), "", 3, 0, "", *NO_META_FILTERS])
            assert event == "error" and not out.get("error"), path  # refused, no detail leaked


def test_queries_cannot_reach_unindexed_ids_or_files(served):
    with served.client() as c:
        broken = served.library.catalog.find_path(str(served.root / "photos" / "broken.jpg"))
        for query in ("#99999", f"#{broken.id}"):
            event, out = call(c, "search", [query, 3, 0, "", *NO_META_FILTERS])
            assert event == "complete" and out[0]["hits"] == [] and "no indexed image" in out[1]
        for query in (served.photos["yellow"], served.photos["red"] + " + night"):
            event, out = call(c, "search", [query, 3, 0, "", *NO_META_FILTERS])
            assert event == "complete" and out[0]["hits"] == [] and "file path" in out[1]


def test_uploads_are_size_limited_and_decoded_safely(served):
    with served.client() as c:
        r = c.post("/gradio_api/upload", files={"files": ("big.png", b"\0" * (26 * 1024 * 1024), "image/png")})
        assert r.status_code == 413
        r = c.post("/gradio_api/upload", files={"files": ("blue.jpg", Path(served.photos["blue"]).read_bytes(),
                                                          "image/jpeg")})
        assert r.status_code == 200
        event, out = call(c, "search_image", [file_data(r.json()[0]), "", 2, 0, "", *NO_META_FILTERS])
        assert event == "complete" and out[0]["hits"][0]["name"] == "blue.jpg"
        r = c.post("/gradio_api/upload", files={"files": ("fake.png", b"GIF89a" + b"\0" * 64, "image/png")})
        event, out = call(c, "search_image", [file_data(r.json()[0]), "", 2, 0, "", *NO_META_FILTERS])
        if event == "complete":  # Gradio read the header and passed it on: our loader refuses it
            assert out[0]["hits"] == [] and out[1].startswith("⚠️ Can't use fake.png: ")
        else:  # Gradio's own header check refused it first
            assert event == "error"


def test_login_required_for_everything_but_the_login_page(served_with_login):
    s = served_with_login
    thumb = s.lib / "thumbs" / "1.jpg"
    with s.client() as anon:
        for path in ("/config", "/gradio_api/info", f"/gradio_api/file={thumb}", "/gradio_api/queue/status"):
            r = anon.get(path)
            assert r.status_code == 401, path
        event, detail = call(anon, "search", ["red", 3, 0, "", *NO_META_FILTERS])
        assert event == "http 401" and "photos" not in detail
        r = anon.post("/login", data={"username": USER, "password": "wrong"})
        assert r.status_code in (400, 401)
        assert call(anon, "search", ["red", 3, 0, "", *NO_META_FILTERS])[0] == "http 401"
    with s.client() as user:
        assert user.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
        event, out = call(user, "search", ["red", 3, 0, "", *NO_META_FILTERS])
        assert event == "complete" and out[0]["hits"][0]["name"] == "red.jpg"
        # The login does not widen the file routes.
        assert refused(user.get(f"/gradio_api/file={s.lib / 'catalog.sqlite'}"))
        assert refused(user.get(f"/gradio_api/file={s.photos['red']}"))
