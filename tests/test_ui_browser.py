"""End to end in a real browser: Debian's Chromium, driven headless by Playwright, at a phone's
width (400 px) and a desktop's (1400 px).

Setup: `apt-get install chromium` and `pip install playwright` (never `playwright install`:
the tests use the system Chromium). Skipped, with the reason, when either is missing.
When a test fails, a screenshot of its page is saved under `test-artifacts/` (or
`$CLIPSEARCH_TEST_ARTIFACTS`), named after the test.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import pytest
from PIL import Image

pytest.importorskip("gradio")

from fakes import FakeEncoder, write_colour_photos  # noqa: E402
from ui_serving import serving  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
ARTIFACTS = Path(os.environ.get("CLIPSEARCH_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))
WIDTHS = [400, 1400]
LONG_NAME = "holiday-2019-lisbon-tram-28-at-dusk-IMG_20190612_183455.jpg"
HOSTILE_NAME = "<img src=x onerror=window.pwned=1>{{value}}.jpg"  # a legal file name on Linux


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Path]]:
    from clipsearch import Library

    root = tmp_path_factory.mktemp("browser")
    photos = write_colour_photos(root / "photos", ["red", "green", "blue", "yellow", "purple", "orange"])
    write_colour_photos(root / "photos" / "sub", ["white", "black"])
    shutil.copy(photos["orange"], root / "photos" / LONG_NAME)
    shutil.copy(photos["purple"], root / "photos" / "sub" / HOSTILE_NAME)
    (root / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    library = Library.open(root / "lib", encoder=FakeEncoder())
    library.index(root / "photos")
    with serving(library) as (url, demo, _):
        yield url, demo, root


@pytest.fixture
def page(browser: Any, server: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page on the app at the test's width (its `width` parameter, else 1400)."""
    width = request.node.callspec.params.get("width", 1400) if hasattr(request.node, "callspec") else 1400
    context = browser.new_context(viewport={"width": width, "height": 900})
    p = context.new_page()
    p.set_default_timeout(15_000)
    p.goto(server[0])
    p.locator("#query textarea").wait_for()
    yield p
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::")[-1])
        p.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
    context.close()


def search(page: Any, text: str) -> None:
    """Search and wait until it has settled: typing (change) and Enter (submit) each send one, and a
    late answer clears a selection made in between (as it should: it is a new search)."""
    box = page.locator("#query textarea")
    box.fill(text)
    box.press("Enter")
    page.wait_for_function("q => document.querySelector('#status').innerText.includes(q)", arg=text)
    page.locator("#results .cs-tile").first.wait_for()
    page.wait_for_timeout(700)


def tiles(page: Any) -> Any:
    return page.locator("#results .cs-tile")


def selected_index(page: Any) -> int:
    return page.evaluate("[...document.querySelectorAll('#results .cs-tile')]"
                         ".findIndex(t => t.classList.contains('selected'))")


def in_viewport(page: Any, selector: str) -> bool:
    return page.evaluate("""sel => { const r = document.querySelector(sel).getBoundingClientRect();
                                     return r.top < window.innerHeight && r.bottom > 0; }""", selector)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_grid_fits_the_width_and_shows_whole_file_names(page, width):
    from playwright.sync_api import expect

    search(page, "orange")
    expect(tiles(page)).to_have_count(10)
    columns = page.evaluate("""() => { const t = [...document.querySelectorAll('#results .cs-tile')];
                                       return t.filter(x => x.offsetTop === t[0].offsetTop).length; }""")
    assert (2 <= columns <= 3) if width == 400 else columns >= 4, columns
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
    long = page.locator("#results .cs-tile", has_text="IMG_20190612").first
    assert LONG_NAME in long.locator("figcaption").inner_text()  # wrapped, never cut short
    assert long.evaluate("t => t.querySelector('figcaption').scrollWidth <= t.querySelector('figcaption').clientWidth")
    assert LONG_NAME in long.get_attribute("title")  # and on hover


@pytest.mark.parametrize("width", WIDTHS)
def test_select_then_arrow_keys_and_buttons_walk_the_results(page, width):
    from playwright.sync_api import expect

    search(page, "red")
    names = [n.split(" ", 1)[1] for n in tiles(page).locator("figcaption").all_inner_texts()]
    tiles(page).nth(1).click()
    expect(page.locator("#details")).to_contain_text(names[1])
    expect(page.locator("#details")).to_contain_text(re.compile(r"id #\d+"))
    assert selected_index(page) == 1
    if width == 400:  # on a phone the selected photo's panel comes into view
        page.wait_for_timeout(600)
        assert in_viewport(page, "#photo-panel")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#details")).to_contain_text(names[2])
    assert selected_index(page) == 2
    page.locator("#next").click()
    expect(page.locator("#details")).to_contain_text(names[3])
    expect(page.locator("#results .cs-tile").nth(3)).to_have_class(re.compile("selected"))
    page.locator("#prev").click()
    expect(page.locator("#details")).to_contain_text(names[2])
    expect(page.locator("#results .cs-tile").nth(2)).to_have_class(re.compile("selected"))
    assert page.locator("#photo img").get_attribute("src").endswith("/thumb?size=1024")
    # The photo shown is the one the details name.
    shown_id = page.locator("#photo img").get_attribute("data-id")
    assert f"#{shown_id}" in page.locator("#details").inner_text()


def test_file_names_are_shown_as_text_never_run_as_html(page):
    from playwright.sync_api import expect

    search(page, "purple")
    tile = tiles(page).filter(has_text="onerror").first
    expect(tile).to_contain_text(HOSTILE_NAME)
    assert page.locator("#results img[src=x]").count() == 0
    tile.click()
    expect(page.locator("#details")).to_contain_text("onerror")
    page.wait_for_timeout(500)
    assert page.evaluate("window.pwned") is None


@pytest.mark.parametrize("width", WIDTHS)
def test_a_new_search_clears_a_stale_selection(page, width):
    from playwright.sync_api import expect

    search(page, "red")
    tiles(page).first.click()
    expect(page.locator("#details")).to_contain_text("red.jpg")
    search(page, "blue")
    expect(tiles(page).first).to_contain_text("blue.jpg")
    expect(page.locator("#details")).to_have_text("")
    expect(page.locator("#photo")).to_contain_text("Click a result")
    assert selected_index(page) == -1
    page.get_by_role("button", name="More like this").click()
    expect(page.locator("#status")).to_contain_text("Select a photo first")


@pytest.mark.parametrize("width", WIDTHS)
def test_number_inputs_rerun_the_search_on_enter_and_load_more_pages(page, width):
    from playwright.sync_api import expect

    search(page, "red")
    expect(tiles(page)).to_have_count(10)
    k = page.locator("#k input[type=number]")
    k.fill("4")
    k.press("Enter")
    expect(tiles(page)).to_have_count(4)
    more = page.locator("#load-more")
    expect(more).to_be_visible()
    more.click()
    expect(tiles(page)).to_have_count(8)
    more.click()
    expect(tiles(page)).to_have_count(10)
    expect(more).to_be_hidden()
    minimum = page.locator("#min-score input[type=number]")
    minimum.fill("0.5")
    minimum.press("Enter")
    expect(tiles(page)).to_have_count(1)
    expect(page.locator("#status")).to_contain_text("1 photo for")


@pytest.mark.parametrize("width", WIDTHS)
def test_uploads_reach_our_loader_which_says_why_a_file_is_refused(page, width, tmp_path):
    from playwright.sync_api import expect

    search(page, "red")
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list: milk, eggs")
    page.get_by_role("tab", name="By image").click()
    page.locator("#upload input[type=file]").set_input_files(str(notes))
    expect(page.locator("#status")).to_contain_text("Can't use notes.txt: not an image file")
    expect(tiles(page)).to_have_count(0)  # the old results are gone
    # A real image works, from the same input.
    blue = tmp_path / "query-blue.png"
    Image.new("RGB", (60, 40), (28, 58, 218)).save(blue)
    page.locator("#upload input[type=file]").set_input_files(str(blue))
    expect(page.locator("#status")).to_contain_text("your image query-blue.png")
    expect(tiles(page).first).to_contain_text("blue.jpg")
    # Text added afterwards searches with the same uploaded image (the file input is already empty).
    plus = page.get_by_label("Plus text (optional)")
    plus.fill("red")
    plus.press("Enter")
    expect(page.locator("#status")).to_contain_text("your image query-blue.png + “red”")
    # Describe takes the same path.
    page.get_by_role("tab", name="Describe").click()
    page.locator("#describe-upload input[type=file]").set_input_files(str(notes))
    expect(page.locator("#describe-status")).to_contain_text("not an image file")


def test_each_folder_is_listed_once(page):
    page.locator("#folder input").click()
    options = page.get_by_role("option").all_inner_texts()
    assert [o.replace("✓", "").strip() for o in options] == ["All folders", "photos", "photos/sub"]


@pytest.mark.parametrize("width", WIDTHS)
def test_the_map_fills_a_phone_and_a_tap_shows_the_photo(page, server, width):
    from playwright.sync_api import expect

    _, demo, _ = server
    page.get_by_role("tab", name="Explore").click()
    expect(page.locator("#map-status")).to_contain_text("map of 10 photos")
    img = page.locator("#map img")
    box = img.bounding_box()
    if width == 400:
        assert box["width"] >= 0.9 * (width - 40), box
    h = demo.clipsearch_handlers
    view = h.draw_map("folder", "").view
    # The point farthest from any other (a tap on a phone is coarse): where it is drawn and its photo's name.
    import numpy as np

    pts = np.asarray(view.pixels, np.float64)
    gaps = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.eye(len(pts)) * 1e9
    lone = int(np.argmax(gaps.min(axis=1)))
    name = h.photo(int(view.ids[lone])).details.split("**")[1].replace("\\", "")
    px, py = pts[lone]
    natural = img.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    scale = min(box["width"] / natural[0], box["height"] / natural[1], 1)
    page.mouse.click(box["x"] + (box["width"] - natural[0] * scale) / 2 + px * scale,
                     box["y"] + (box["height"] - natural[1] * scale) / 2 + py * scale)
    expect(page.locator("#map-details")).to_contain_text(name)


def test_describe_labels_library_and_nothing_but_the_local_server(browser, server, tmp_path):
    from playwright.sync_api import expect

    url, demo, _ = server
    hosts: set[str] = set()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.on("request", lambda req: hosts.add(urlparse(req.url).hostname or req.url.split(":", 1)[0]))
    page.set_default_timeout(15_000)
    try:
        page.goto(url)
        search(page, "red")
        tiles(page).first.click()
        expect(page.locator("#details")).to_contain_text("64 × 48 px")
        page.get_by_role("button", name="Describe this photo").click()
        expect(page.locator("#describe-status")).to_contain_text("text collection")
        page.get_by_label("Add labels").fill("blue, red, green")
        page.get_by_role("button", name="Add labels and describe again").click()
        expect(page.locator("#describe-status")).to_contain_text("Added 3 new labels")
        expect(page.locator("#describe-table").get_by_role("row").nth(1)).to_contain_text("red")
        page.get_by_role("tab", name="Library").click()
        expect(page.locator("#skipped")).to_contain_text("broken.jpg")
        assert hosts <= {"127.0.0.1", "data", "blob"}, hosts  # no fonts, analytics or update checks
    except BaseException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / "test_describe_labels_library.png", full_page=True)
        raise
    finally:
        context.close()


# -- the filter widgets: when, where, with what, newest first ------------------------------------
# name: (colour, city, camera model, local time, extension). The FakeEncoder ranks by colour: the
# red photos tie for "red", so only the filters and the date order tell them apart.
META_PHOTOS = {
    "red_lisbon_2019_07": ("red", "Lisbon", "Pixel 7", (2019, 7, 4, 18, 30), ".jpg"),
    "red_lisbon_2019_10": ("red", "Lisbon", "Pixel 7", (2019, 10, 10, 9, 0), ".jpg"),
    "red_lisbon_2020_png": ("red", "Lisbon", "Pixel 7", (2020, 1, 2, 12, 0), ".png"),
    "red_lisbon_2020_xt3": ("red", "Lisbon", "X-T3", (2020, 6, 1, 12, 0), ".jpg"),
    "red_lisbon_2021": ("red", "Lisbon", "Pixel 7", (2021, 3, 1, 12, 0), ".jpg"),
    "red_lisbon_2018": ("red", "Lisbon", "Pixel 7", (2018, 3, 1, 12, 0), ".jpg"),
    "red_paris_2019": ("red", "Paris", "Pixel 7", (2019, 8, 1, 9, 0), ".jpg"),
    "red_tokyo_2020": ("red", "Tokyo", "iPhone 12", (2020, 5, 5, 21, 0), ".webp"),
    "orange_lisbon_2019_12": ("orange", "Lisbon", "Pixel 7", (2019, 12, 12, 16, 0), ".jpg"),
    "blue_lisbon_2020": ("blue", "Lisbon", "Pixel 7", (2020, 2, 2, 10, 0), ".jpg"),
}


@pytest.fixture(scope="module")
def meta_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import datetime as dt

    from fakes import COLOURS

    from clipsearch import Library
    from clipsearch.toyworld import CAMERAS, CITIES, ToyPhotoMeta, exif_bytes

    root = tmp_path_factory.mktemp("browser-meta")
    cities, cameras = {c.name: c for c in CITIES}, {c.model: c for c in CAMERAS}
    (root / "photos").mkdir()
    for name, (colour, city, model, when, ext) in META_PHOTOS.items():
        c = cities[city]
        taken = dt.datetime(*when, tzinfo=dt.timezone(dt.timedelta(minutes=c.utc_offset)))
        meta = ToyPhotoMeta(taken, c, cameras[model], True, c.lat + 0.001, c.lon + 0.001, 100, 0.01)
        Image.new("RGB", (48, 32), COLOURS[colour]).save(root / "photos" / f"{name}{ext}", exif=exif_bytes(meta))
    library = Library.open(root / "lib", encoder=FakeEncoder())
    library.index(root / "photos")
    with serving(library) as (url, _, _):
        yield url


def shown_names(page: Any) -> list[str]:
    """The file names of the results, in the order shown, without their extension."""
    return [Path(n).stem for n in page.locator("#results .cs-tile .cs-name").all_inner_texts()]


@pytest.mark.parametrize("width", WIDTHS)
def test_date_place_camera_type_filters_and_newest_first(browser, meta_server, request, width):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto(meta_server)
        search(page, "red")
        assert set(shown_names(page)[:8]) == {n for n in META_PHOTOS if n.startswith("red")}
        status = page.locator("#status")

        def set_text(elem_id: str, value: str, expect_in_status: str) -> None:
            box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
            box.fill(value)
            box.press("Enter")
            expect(status).to_contain_text(expect_in_status)

        page.get_by_text("When, where, with what").click()
        set_text("place", "Lisbon", "in Lisbon")
        expect(tiles(page)).to_have_count(8)
        names = shown_names(page)
        assert set(names[:6]) == {n for n in META_PHOTOS if n.startswith("red_lisbon")}, names
        assert names[6:] == ["orange_lisbon_2019_12", "blue_lisbon_2020"], names  # by score: red first
        set_text("after", "2019-06", "after 2019-06")
        set_text("before", "2021", "before 2021")
        expect(tiles(page)).to_have_count(6)
        assert "red_lisbon_2018" not in shown_names(page) and "red_lisbon_2021" not in shown_names(page)
        set_text("camera", "Pixel 7", "camera Pixel 7")
        expect(tiles(page)).to_have_count(5)
        assert "red_lisbon_2020_xt3" not in shown_names(page)
        page.locator("#types").get_by_label("jpeg").check()
        expect(status).to_contain_text("type jpeg")
        expect(tiles(page)).to_have_count(4)
        names = shown_names(page)
        assert set(names[:2]) == {"red_lisbon_2019_07", "red_lisbon_2019_10"}, names  # the reds tie
        assert names[2:] == ["orange_lisbon_2019_12", "blue_lisbon_2020"], names
        # Newest first: the photos relevant to "red" (the model's calibrated cutoff), by date.
        page.locator("#newest").get_by_label("Newest first").check()
        expect(status).to_contain_text("newest first")
        expect(tiles(page)).to_have_count(2)
        assert shown_names(page) == ["red_lisbon_2019_10", "red_lisbon_2019_07"]
        assert "“red” · after 2019-06, before 2021, in Lisbon, camera Pixel 7, type jpeg; newest first" \
            in status.inner_text()
        # The photo panel says when and where.
        tiles(page).first.click()
        expect(page.locator("#details")).to_contain_text("2019-10-10")
        expect(page.locator("#details")).to_contain_text("Lisbon, Portugal")
        expect(page.locator("#details")).to_contain_text("Google Pixel 7")
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
        # Filters alone (no words): every Lisbon jpeg of the period from Pixel 7, newest first, without scores.
        box = page.locator("#query textarea")
        box.fill("")
        box.press("Enter")
        expect(status).to_contain_text("the filters")
        expect(tiles(page)).to_have_count(4)
        assert shown_names(page) == ["blue_lisbon_2020", "orange_lisbon_2019_12", "red_lisbon_2019_10",
                                     "red_lisbon_2019_07"]
    except BaseException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / f"test_filters_{width}.png", full_page=True)
        raise
    finally:
        context.close()


def open_tab(page: Any, name: str, shows: str) -> None:
    """Open a top-level tab, until `shows` (a selector in it) is visible. At a phone's width Gradio folds the
    later tabs into its "More tabs" menu, and it lays the tab bar out again after a switch: a tab seen a moment
    ago may be folded away by the time it is clicked, so each try looks again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(5):
        try:
            tab = page.get_by_role("tab", name=name, exact=True)
            if tab.is_visible():
                tab.click(timeout=2_000)
            else:
                page.locator('button[aria-label="More tabs"]').first.click(timeout=2_000)
                page.locator("button:visible", has_text=name).last.click(timeout=2_000)
            page.locator(shows).wait_for(state="visible", timeout=3_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")  # close a menu left open
    raise AssertionError(f"the {name} tab did not open")


@pytest.mark.parametrize("width", WIDTHS)
def test_a_concept_is_named_from_picked_photos_and_searched_by_its_name(page, width):
    """Pick photos in Search, add each in the Concepts tab (folded away at 400 px), name them, search by the name."""
    from playwright.sync_api import expect

    name = f"warmcolour{width}"
    picked = []
    for colour in ("red", "yellow"):
        search(page, colour)
        tiles(page).first.click()
        picked.append(shown_names(page)[0])
        open_tab(page, "Concepts", "#concept-add-selected")
        page.locator("#concept-add-selected").click()
        expect(page.locator("#concept-examples textarea")).to_have_value(re.compile(r"^(#\d+ ?){%d}$" % len(picked)))
        open_tab(page, "Search", "#query textarea")
    assert picked == ["red", "yellow"]
    open_tab(page, "Concepts", "#concept-add-selected")
    page.locator("#concept-name input, #concept-name textarea").first.fill(name)
    page.locator("#concept-name-these").click()
    expect(page.locator("#concept-status")).to_contain_text(f"Made {name} from 2 photos")
    expect(page.locator("#concept-table")).to_contain_text(name)
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scrolling
    try:
        open_tab(page, "Search", "#query textarea")
        search(page, name)
        assert set(shown_names(page)[:2]) == {"red", "yellow"}, shown_names(page)
    finally:  # the server is shared by the module's tests: leave no concept behind
        open_tab(page, "Concepts", "#concept-add-selected")
        page.get_by_placeholder("name to remove").fill(name)
        page.locator("#concept-remove").click()
        expect(page.locator("#concept-table")).not_to_contain_text(name)
