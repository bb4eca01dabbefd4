"""The web UI's handlers, called as plain functions over a library indexed with the FakeEncoder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")

from clipsearch_ui.handlers import EMPTY_TEXTS, Handlers, parse_labels  # noqa: E402


@pytest.fixture
def handlers(library) -> Handlers:
    return Handlers(library)


@pytest.fixture
def ids(library, colour_photos) -> dict[str, int]:
    """Colour name -> catalog id."""
    return {name: library.catalog.find_path(os.path.abspath(path)).id for name, path in colour_photos.items()}


def _first_name(out) -> str:
    return out.shown[0]["path"].rsplit("/", 1)[-1]


def test_text_search_puts_the_red_photo_first_with_its_thumbnail_url(handlers, library, ids):
    out = handlers.search_text("red", k=5)
    first = out.grid["hits"][0]
    assert first["thumb"] == f"/api/photos/{ids['red']}/thumb" and first["id"] == ids["red"]
    assert first["name"] == "red.jpg" and first["score"].startswith("1.00") and not first["selected"]
    assert "red.jpg" in first["title"] and f"#{ids['red']}" in first["title"]
    assert len(out.grid["hits"]) == len(out.shown) == 5 and out.more and out.grid["more"]
    assert "**5** photos" in out.status and "red" in out.status and "more below" in out.status
    # Nothing is decoded for a search: thumbnails are made when the browser asks for them.
    assert not list((Path(library.folder) / "thumbs").glob("*.jpg"))
    thumb = handlers.thumbs.path(ids["red"])
    with Image.open(thumb) as im:  # a real, small JPEG made by the safe loader
        assert im.format == "JPEG" and max(im.size) <= 256
        assert im.convert("RGB").getpixel((5, 5))[0] > 150


def test_load_more_appends_the_next_page_until_the_end(handlers):
    first = handlers.search_text("red", k=3)
    last = {"kind": "text", "query": "red"}
    second = handlers.load_more(last, first.shown, k=3)
    assert second.shown[:3] == first.shown and len(second.shown) == 6 and second.more
    third = handlers.load_more(last, second.shown, k=3)
    assert len(third.shown) == 8 and not third.more and "more below" not in third.status
    assert len({s["id"] for s in third.shown}) == 8
    whole = handlers.search_text("red", k=8)
    assert [s["id"] for s in third.shown] == [s["id"] for s in whole.shown]
    assert handlers.load_more(None, first.shown) is None


def test_more_than_200_results_by_paging(tmp_path, fake_encoder):
    from clipsearch import Library
    from fakes import write_colour_photos

    for n in range(26):
        write_colour_photos(tmp_path / "many" / f"f{n}", ["red", "green", "blue", "yellow", "purple", "orange",
                                                         "white", "black", "red", "green"][:9], size=(8, 8))
    with Library.open(tmp_path / "lib-many", encoder=fake_encoder) as lib:
        lib.index(tmp_path / "many")
        h = Handlers(lib)
        out = h.search_text("red", k=200)
        assert len(out.shown) == 200 and out.more
        out = h.load_more({"kind": "text", "query": "red"}, out.shown, k=200)
        assert len(out.shown) == 26 * 8 and not out.more


def test_min_score_and_folder_filter(handlers, tmp_path):
    strict = handlers.search_text("red", k=8, min_score=0.5)
    assert [s["path"].rsplit("/", 1)[-1] for s in strict.shown] == ["red.jpg"]
    sub = handlers.search_text("red", k=8, folder=str(tmp_path / "photos" / "sub"))
    assert sorted(s["path"].rsplit("/", 1)[-1] for s in sub.shown) == ["black.jpg", "white.jpg"]
    none = handlers.search_text("red", k=8, min_score=0.99, folder=str(tmp_path / "photos" / "sub"))
    assert none.shown == [] and "lower the minimum score" in none.status and "All folders" in none.status


def test_folder_choices_list_every_folder_relative_to_its_root(handlers, tmp_path):
    choices = handlers.folder_choices()
    assert choices[0] == ("All folders", "")
    assert ("photos/sub", str(tmp_path / "photos" / "sub")) in choices
    assert ("photos", str(tmp_path / "photos")) in choices


def test_empty_and_broken_queries_explain_themselves(handlers):
    assert handlers.search_text("   ").grid["hits"] == []
    assert "beach + sunset - people" in handlers.search_text("").status
    out = handlers.search_text("beach +")
    assert out.grid["hits"] == [] and out.status.startswith("⚠️") and "stray" in out.status
    assert "no indexed image with id 99999" in handlers.search_text("#99999").status


def test_a_query_cannot_name_a_file_on_the_server(handlers, colour_photos):
    # A path term would make the server read any image file a visitor names.
    for q in (colour_photos["red"], f"{colour_photos['red']} + night", "/no/such/file.jpg - blue"):
        out = handlers.search_text(q)
        assert out.shown == [] and "file path" in out.status


def test_upload_of_a_blue_image_finds_the_blue_photo(handlers, tmp_path):
    upload = tmp_path / "upload.png"
    Image.new("RGB", (40, 30), (25, 55, 215)).save(upload)
    out = handlers.search_upload(str(upload), k=3)
    assert _first_name(out) == "blue.jpg"
    modified = handlers.search_upload(str(upload), text="red", k=3)
    assert "“red”" in modified.status and len(modified.shown) == 3


def test_bad_uploads_show_the_loaders_reason_not_a_traceback(handlers, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    out = handlers.search_upload(str(junk))
    assert out.shown == [] and out.status.startswith("⚠️ Can't use junk.png: ") and "Traceback" not in out.status
    text = tmp_path / "notes.txt"
    text.write_text("shopping list")
    out = handlers.search_upload(str(text))
    assert out.grid["hits"] == [] and out.status == "⚠️ Can't use notes.txt: not an image file."
    small = Handlers(handlers.library, max_upload_bytes=100)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(big)
    assert "limit" in small.search_upload(str(big)).status
    assert "Upload an image" in handlers.search_upload(None).status


def test_more_like_this_by_id(handlers, ids):
    out = handlers.more_like(ids["red"], k=3)
    assert ids["red"] not in [s["id"] for s in out.shown]  # not itself
    assert "photos like red.jpg" in out.status
    assert handlers.more_like(99999).status.startswith("⚠️ No indexed photo")
    assert handlers.more_like(None).shown == []


def test_rerun_repeats_the_sessions_last_search_with_new_filters(handlers):
    assert handlers.rerun(None) is None
    out = handlers.rerun({"kind": "text", "query": "red"}, k=2)
    assert len(out.shown) == 2 and _first_name(out) == "red.jpg"


def test_selecting_a_result_shows_path_size_pixels_and_date(handlers, colour_photos):
    out = handlers.search_text("green", k=3)
    photo = handlers.select(out.shown, 0)
    assert photo.selected == out.shown[0]["id"] and photo.index == 0
    assert f'src="/api/photos/{photo.selected}/thumb?size=1024"' in photo.image
    size = os.path.getsize(colour_photos["green"])
    assert "green.jpg" in photo.details and "64 × 48 px" in photo.details and f"{size} bytes" in photo.details
    assert f"id **#{photo.selected}**" in photo.details
    assert "`photos`" in photo.details  # the folder, relative to the photo folder's parent
    assert handlers.select(out.shown, 99).index == 2  # clamped to the results
    assert handlers.select([], 0).selected is None
    assert handlers.photo(99999).details.startswith("⚠️")


def test_previous_and_next_walk_the_results_and_move_the_highlight(handlers):
    out = handlers.search_text("red", k=4)
    photo, grid = handlers.step(out.shown, 0, +1)
    assert photo.index == 1 and photo.selected == out.shown[1]["id"]
    assert [h["selected"] for h in grid["hits"]] == [False, True, False, False]
    photo, grid = handlers.step(out.shown, 3, +1)
    assert photo.index == 3  # stays on the last
    photo, _ = handlers.step(out.shown, 0, -1)
    assert photo.index == 0
    photo, _ = handlers.step(out.shown, None, +1)
    assert photo.index == 0  # nothing selected yet: the first


def test_unindexed_files_get_no_thumbnail(handlers, library, tmp_path):
    broken = tmp_path / "photos" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    library.index(tmp_path / "photos")
    row = library.catalog.find_path(str(broken))
    assert row.status == "error"
    assert handlers.thumbs.path(row.id) is None and handlers.thumbs.path(12345) is None
    assert handlers.photo(row.id).selected is None
    assert not (Path(library.folder) / "thumbs" / f"{row.id}.jpg").exists()


def test_describe_with_added_labels_ranks_red_first_for_the_red_photo(handlers, ids):
    empty = handlers.describe({"id": ids["red"]})
    assert empty.rows == [] and empty.status == EMPTY_TEXTS and empty.image is not None
    out, box = handlers.add_labels("blue, red\n green,red", {"id": ids["red"]}, k=3)
    assert out.rows[0][0] == "red" and len(out.rows) == 3
    assert out.status.startswith("Added 3 new labels") and box == ""
    again, _ = handlers.add_labels("red", {"id": ids["red"]})
    assert "1 already there" in again.status


def test_describe_an_upload(handlers, tmp_path):
    handlers.add_labels("red, green, blue", None)
    upload = tmp_path / "up.jpg"
    Image.new("RGB", (30, 30), (30, 170, 45)).save(upload)
    out = handlers.describe({"path": str(upload)})
    assert out.rows[0][0] == "green"
    assert "Upload an image" in handlers.describe(None).status


def test_parse_labels():
    assert parse_labels(" a dog, a cat\n\na dog ,sunset ") == ["a dog", "a cat", "sunset"]
    assert parse_labels(None) == []


def test_map_has_one_point_per_image_and_the_query_marked(handlers, library, ids):
    out = handlers.draw_map("folder", "red")
    view = out.view
    assert len(view.ids) == library.info().images == 8
    table = view.table()
    assert len(table) == 9 and table[-1]["id"] == -1 and table[-1]["group"] == "query"
    assert set(view.groups) == {"photos", "photos/sub"}
    assert out.image.size == (990, 560) and "★" in out.status
    # The query "red" lands next to the red photo.
    red = view.pixels[list(view.ids).index(ids["red"])]
    others = [p for i, p in zip(view.ids, view.pixels) if i != ids["red"]]
    d_red = np.hypot(*(np.array(view.query_pixel) - red))
    assert all(d_red < np.hypot(*(np.array(view.query_pixel) - p)) for p in others)


def test_clicking_a_point_on_the_map_shows_its_photo(handlers, ids):
    view = handlers.draw_map("folder").view
    x, y = view.pixels[list(view.ids).index(ids["blue"])]
    ringed, photo = handlers.click_map(view, x + 2, y - 2)
    assert photo.selected == ids["blue"] and "blue.jpg" in photo.details and ringed is not None
    _, nothing = handlers.click_map(view, 1, 1)
    assert nothing.selected is None


def test_map_coloured_by_nearest_label(handlers, ids):
    fallback = handlers.draw_map("label")
    assert fallback.view.colour_by == "folder" and "text collection is empty" in fallback.status
    handlers.add_labels("red, green, blue, yellow, purple, orange, white, black", None)
    view = handlers.draw_map("label").view
    assert view.groups[list(view.ids).index(ids["purple"])] == "purple"


def test_map_caps_the_points_drawn(handlers, library):
    out = handlers.draw_map("folder", max_points=5)
    assert len(out.view.ids) == 5 and out.view.total == 8 and "5 of 8" in out.status
    again = handlers.draw_map("folder", max_points=5)
    assert list(again.view.ids) == list(out.view.ids)  # a seeded sample: the same map every time


def test_library_tab_shows_counts_and_the_skipped_files(handlers, library, tmp_path):
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    library.index(tmp_path / "photos")
    out = handlers.overview()
    assert "**8** photos indexed" in out.overview and "**1** skipped" in out.overview
    assert "fake" in out.overview and "flat" in out.overview and str(tmp_path / "photos") in out.overview
    assert out.skipped == [[str(tmp_path / "photos" / "broken.jpg"), "not an image file"]]


def test_reindex_picks_up_new_photos_and_reports_progress(handlers, tmp_path):
    from fakes import write_colour_photos

    write_colour_photos(tmp_path / "photos" / "more", ["yellow"])
    calls = []
    out, message = handlers.reindex(lambda *a, **kw: calls.append((a, kw)))
    assert "1 added" in message and "**9** photos indexed" in out.overview
    assert calls and "indexing" in calls[0][1]["desc"]
    assert ("photos/more", str(tmp_path / "photos" / "more")) in handlers.folder_choices()


def test_build_app_wires_the_handlers(library):
    import gradio as gr

    from clipsearch_ui import build_app

    def ours() -> dict[str, str]:  # what clipsearch could set (Gradio's own imports set others, e.g. HF_*)
        return {k: v for k, v in os.environ.items() if k.startswith(("GRADIO_", "OMP_"))}

    before = ours()
    demo = build_app(library)
    assert ours() == before  # building the app writes no environment (serve sets what it needs)
    assert isinstance(demo, gr.Blocks) and isinstance(demo.clipsearch_handlers, Handlers)
    assert demo.analytics_enabled is False
    names = {d.get("api_name") for d in demo.config["dependencies"]}
    assert {"search", "search_image", "describe", "map", "library"} <= names


def test_an_empty_library_says_so(tmp_path, fake_encoder):
    from clipsearch import Library

    with Library.open(tmp_path / "empty", encoder=fake_encoder) as lib:
        h = Handlers(lib)
        assert "library is empty" in h.search_text("red").status
        assert h.draw_map().view is None and "empty" in h.draw_map().status
        assert "No photo folders" in h.reindex()[1]


def test_auth_parsing(tmp_path):
    from clipsearch.errors import ClipSearchError
    from clipsearch_ui.server import is_loopback, parse_auth, read_auth_file

    assert parse_auth("ann:pa:ss") == ("ann", "pa:ss")
    for bad in ("ann", ":pw", "ann:"):
        with pytest.raises(ClipSearchError):
            parse_auth(bad)
    f = tmp_path / "logins"
    f.write_text("# who may look\nann:one\n\nbob:two:three\n")
    assert read_auth_file(f) == [("ann", "one"), ("bob", "two:three")]
    f.write_text("ann:one\nnobody\n")
    with pytest.raises(ClipSearchError, match=":2:"):
        read_auth_file(f)
    assert is_loopback("127.0.0.1") and not is_loopback("0.0.0.0")


def test_serve_command_defaults_are_private():
    from clipsearch.cli import build_parser

    args = build_parser().parse_args(["serve", "--library", "L"])
    assert (args.host, args.port, args.auth, args.auth_file, args.share) == ("127.0.0.1", None, None, None, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--auth", "a:b", "--auth-file", "f"])


def test_pca_axes_match_an_svd_of_the_data():
    from clipsearch_ui import explore

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 32)) * np.linspace(3, 0.1, 32)).astype(np.float32)
    proj = explore.fit_projection(x, "pca")
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    for got, want in zip(proj.components, vt[:2]):
        assert abs(float(got @ want)) > 0.9999


def test_the_maps_projection_is_fitted_once_per_photo_set(handlers, monkeypatch, library, tmp_path):
    from clipsearch_ui import explore

    calls = []
    real = explore.fit_projection
    monkeypatch.setattr(explore, "fit_projection", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = handlers.draw_map("folder", "red")
    handlers.draw_map("folder", "blue")
    handlers.draw_map("label")
    assert len(calls) == 1
    write_more = tmp_path / "photos" / "more"
    from fakes import write_colour_photos

    write_colour_photos(write_more, ["red"])
    library.index(tmp_path / "photos")
    again = handlers.draw_map("folder", "red")
    assert len(calls) == 2 and len(again.view.ids) == len(first.view.ids) + 1


def test_thumbnails_are_made_ahead_and_the_cache_is_bounded(library, ids):
    from clipsearch_ui.thumbs import Thumbnails

    thumbs = Thumbnails(library, max_bytes=5_000)
    assert thumbs.warm(sorted(ids.values())) == 8
    assert thumbs.warm(sorted(ids.values())) == 0  # already there
    made = list(thumbs.folder.glob("*.jpg"))
    total = sum(p.stat().st_size for p in made)
    assert total > 5_000
    removed = thumbs.trim()
    left = sum(p.stat().st_size for p in thumbs.folder.glob("*.jpg"))
    assert removed > 0 and left <= 4_500
    assert thumbs.path(ids["red"]).exists()  # made again on demand


def test_date_order_that_keeps_nothing_says_how_to_see_more(handlers, monkeypatch):
    # A query whose relevance cutoff (min:auto, date order's default) no photo reaches.
    monkeypatch.setattr(handlers.library.searcher, "auto_cutoff", lambda *a, **k: float("inf"))
    out = handlers.search_text("purple sort:date")
    assert out.shown == [] and out.status.startswith("No photos")
    assert "set a minimum score" in out.status and "relevance cutoff" in out.status
    # With a minimum score set, the hint is to lower it instead.
    low = handlers.search_text("zebra sort:date", min_score=0.9)  # a word no photo is near
    assert low.shown == [] and "lower the minimum score (now 0.90)" in low.status
