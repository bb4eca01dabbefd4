"""End to end in a real browser: Debian's Chromium, driven headless by Playwright.

Setup: `apt-get install chromium` and `pip install playwright` (never `playwright install`:
the test uses the system Chromium). Skipped, with the reason, when either is missing.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

pytest.importorskip("gradio")

from fakes import FakeEncoder, write_colour_photos  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture
def browser():
    executable = _chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install playwright)")
    expect.set_options(timeout=15_000)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def server(tmp_path: Path):
    from clipsearch import Library
    from clipsearch_ui import serve
    from clipsearch_ui import server as server_mod

    write_colour_photos(tmp_path / "photos", ["red", "green", "blue", "yellow", "purple", "orange"])
    write_colour_photos(tmp_path / "photos" / "sub", ["white", "black"])
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    library = Library.open(tmp_path / "lib", encoder=FakeEncoder())
    library.index(tmp_path / "photos")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved_env = os.environ.get("GRADIO_TEMP_DIR")
    demo = serve(library, port=port, block=False, on_ready=lambda url: None)
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.close()
        library.close()
        server_mod._our_temp_dir = None
        if saved_env is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = saved_env


def test_search_upload_describe_and_map_in_a_browser(browser, server, tmp_path):
    from playwright.sync_api import expect

    url, demo = server
    hosts: set[str] = set()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("request", lambda req: hosts.add(urlparse(req.url).hostname or req.url.split(":", 1)[0]))
    page.set_default_timeout(15_000)
    page.goto(url)

    # Text search: type a query, the red photo comes first.
    query = page.locator("#query textarea")
    query.fill("red")
    query.press("Enter")
    first_caption = page.locator("#results .caption-label").first
    first_caption.wait_for()
    assert first_caption.inner_text().endswith("red.jpg")
    expect(page.locator("#status")).to_contain_text("photos for")
    page.screenshot(path=tmp_path / "search.png", full_page=True)

    # Select it: the detail panel shows its file name, size and pixels.
    page.locator("#results .thumbnail-item").first.click()
    expect(page.locator("#details")).to_contain_text("64 × 48 px")
    assert "red.jpg" in page.locator("#details").inner_text()
    page.screenshot(path=tmp_path / "selected.png", full_page=True)

    # Search by image: upload a blue picture, the blue photo comes first.
    upload = tmp_path / "query-blue.png"
    Image.new("RGB", (60, 40), (28, 58, 218)).save(upload)
    page.get_by_role("tab", name="By image").click()
    page.locator("#upload input[type=file]").set_input_files(str(upload))
    expect(page.locator("#status")).to_contain_text("your image")
    assert page.locator("#results .caption-label").first.inner_text().endswith("blue.jpg")
    page.screenshot(path=tmp_path / "upload.png", full_page=True)

    # Describe the selected photo after adding labels.
    page.get_by_role("tab", name="Search", exact=True).click()
    page.get_by_role("button", name="Describe this photo").click()
    expect(page.locator("#describe-status")).to_contain_text("text collection is empty")
    page.get_by_label("Add labels").fill("blue, red, green")
    page.get_by_role("button", name="Add labels and describe again").click()
    expect(page.locator("#describe-status")).to_contain_text("Added 3 new labels")
    expect(page.locator("#describe-table").get_by_role("row").nth(1)).to_contain_text("red")
    page.screenshot(path=tmp_path / "describe.png", full_page=True)

    # Explore: the map draws itself when its tab opens, and a click on a point shows a photo.
    page.get_by_role("tab", name="Explore").click()
    expect(page.locator("#map-status")).to_contain_text("map of 8 photos")
    # The map is deterministic: the same call tells where the green photo's point is drawn.
    view = demo.clipsearch_handlers.draw_map("folder", "red").view
    green = next(i for i, g in zip(view.ids, view.groups) if "green" in demo.clipsearch_handlers.photo(int(i)).details)
    px, py = (float(v) for v in view.pixels[list(view.ids).index(green)])
    box = page.locator("#map img").bounding_box()
    natural = page.locator("#map img").evaluate("img => [img.naturalWidth, img.naturalHeight]")
    scale = min(box["width"] / natural[0], box["height"] / natural[1], 1)
    page.mouse.click(box["x"] + (box["width"] - natural[0] * scale) / 2 + px * scale,
                     box["y"] + (box["height"] - natural[1] * scale) / 2 + py * scale)
    expect(page.locator("#map-details")).to_contain_text("green.jpg")
    page.screenshot(path=tmp_path / "explore.png", full_page=True)

    page.get_by_role("tab", name="Library").click()
    expect(page.locator("#skipped")).to_contain_text("broken.jpg")
    page.screenshot(path=tmp_path / "library.png", full_page=True)

    # Nothing but the local server was contacted: no fonts, analytics or update checks.
    assert hosts <= {"127.0.0.1", "data", "blob"}, hosts
    for name in ("search", "selected", "upload", "describe", "explore", "library"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
