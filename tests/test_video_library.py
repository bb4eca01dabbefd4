"""Videos in a library: indexed as moments beside photos, found once at the right moment, kept in step."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from fakes import COLOURS, FakeEncoder, write_colour_photos  # noqa: E402
from test_video import write_clip  # noqa: E402

from clipsearch import Library  # noqa: E402


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    write_colour_photos(photos, ["red", "yellow", "purple"])
    # red 0-3 s, blue 3-6 s, green 6-9 s
    write_clip(photos / "trip.mp4", [COLOURS["red"], COLOURS["blue"], COLOURS["green"]], seconds_each=3.0, keyint=300)
    (photos / "fake.mp4").write_bytes(b"\xff\xd8 not a video at all")
    return photos


def test_video_is_indexed_as_moments_and_found_once_at_its_moment(tmp_path: Path, folder: Path) -> None:
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        report = lib.index(folder)
        assert report.added == 4  # three photos and the video
        assert [s.path for s in report.skipped] == [str(folder / "fake.mp4")]
        info = lib.info()
        assert (info.images, info.videos) == (4, 1) and info.video_frames >= 3
        assert lib.vector_index.ntotal == 3 + 1 + info.video_frames

        hits = lib.search("blue", k=3)
        assert hits[0].path == str(folder / "trip.mp4")
        assert 3.0 <= hits[0].time < 6.0
        start, end = hits[0].segment
        assert start < 6.0 and end > 3.0 and end - start < 6.0  # the blue stretch, not the whole clip
        assert [h.path for h in hits].count(str(folder / "trip.mp4")) == 1
        red = lib.search("red", k=5)
        assert {h.path for h in red[:2]} == {str(folder / "red.jpg"), str(folder / "trip.mp4")}
        assert all(h.time is None and h.segment is None for h in red if h.path.endswith(".jpg"))
        trip = next(h for h in red if h.path.endswith("trip.mp4"))
        assert trip.segment[0] < 3.0

        # More like this from a moment: other files, never its own video.
        similar = lib.search_image(hits[0].id, k=5)
        assert all(h.path != str(folder / "trip.mp4") for h in similar)


def test_video_changes_and_removal_keep_index_and_catalog_in_step(tmp_path: Path, folder: Path) -> None:
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        lib.index(folder)
        before = lib.info().video_frames
        clip = folder / "trip.mp4"
        write_clip(clip, [COLOURS["yellow"]] * 2, seconds_each=2.0, keyint=300)  # different bytes, shorter
        os.utime(clip, ns=(1, 1))
        report = lib.index(folder)
        assert report.updated == 1
        info = lib.info()
        assert info.videos == 1 and info.video_frames < before
        assert lib.vector_index.ntotal == 3 + 1 + info.video_frames
        assert lib.search("blue", k=1)[0].path != str(clip)  # no stale frame of the old content

        clip.unlink()
        report = lib.index(folder)
        assert report.removed == 1
        info = lib.info()
        assert (info.images, info.videos, info.video_frames) == (3, 0, 0)
        assert lib.vector_index.ntotal == 3
        assert lib.catalog.count("ok") == 3


def test_cli_prints_the_moment(capsys: pytest.CaptureFixture[str]) -> None:
    from clipsearch.cli.core import _print_hits
    from clipsearch.search import Hit

    _print_hits([Hit("/p/trip.mp4", 0.5, 7, time=42.0, segment=(41.0, 47.4)), Hit("/p/a.jpg", 0.4, 1)], False)
    out = capsys.readouterr().out.splitlines()
    assert out == ["0.5000  /p/trip.mp4 @ 00:00:41–00:00:47", "0.4000  /p/a.jpg"]
    _print_hits([Hit("/p/trip.mp4", 0.5, 7, time=42.0, segment=(41.0, 47.4))], True)
    import json

    assert json.loads(capsys.readouterr().out)[0].items() >= {"path": "/p/trip.mp4", "score": 0.5, "id": 7,
                                                              "time": 42.0, "segment": [41.0, 47.4]}.items()


def test_frames_never_look_like_files_to_a_sync(tmp_path: Path, folder: Path) -> None:
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        lib.index(folder)
        again = lib.index(folder)
        assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 4)
        frames = np.array(sorted(lib.catalog.moments(lib.catalog.ok_ids())))
        assert len(frames) == 1 + lib.info().video_frames


def test_api_serves_the_moment_and_the_video_by_id(tmp_path: Path, folder: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from clipsearch_ui.api import build_api

    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        lib.index(folder)
        with TestClient(build_api(lib), base_url="http://127.0.0.1") as api:
            hit = api.get("/search", params={"q": "blue", "k": 2}).json()["hits"][0]
            assert hit["path"] == "trip.mp4" and 3.0 <= hit["time"] < 6.0
            assert hit["segment"][0] < 6.0 < hit["segment"][1] + 3.0 and hit["video_url"].endswith("/video")
            data = (folder / "trip.mp4").read_bytes()
            part = api.get(f"/photos/{hit['id']}/video", headers={"Range": "bytes=10-29"})
            assert part.status_code == 206 and part.content == data[10:30]
            assert part.headers["content-range"] == f"bytes 10-29/{len(data)}"
            thumb = api.get(f"/photos/{hit['id']}/thumb")
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            photo = lib.catalog.find_path(str(folder / "red.jpg")).id
            refused = api.get(f"/photos/{photo}/video")
            assert refused.status_code == 404 and refused.json()["error"] == "not_a_video"


def test_a_moved_video_keeps_its_moments_and_a_copied_one_is_encoded(tmp_path: Path, folder: Path) -> None:
    import shutil

    encoder = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=encoder) as lib:
        lib.index(folder)
        video = lib.catalog.find_path(str(folder / "trip.mp4")).id
        frames = lib.catalog.frames_of(video)[0].tolist()
        encoded = encoder.images_encoded
        os.makedirs(folder / "2024")
        os.rename(folder / "trip.mp4", folder / "2024" / "trip.mp4")
        report = lib.index(folder)
        assert (report.moved, report.added, report.removed) == (1, 0, 0) and encoder.images_encoded == encoded
        assert lib.catalog.find_path(str(folder / "2024" / "trip.mp4")).id == video
        assert lib.catalog.frames_of(video)[0].tolist() == frames  # its moments came along
        hit = lib.search("blue", k=1)[0]
        assert hit.path == str(folder / "2024" / "trip.mp4") and 3.0 <= hit.time < 6.0
        shutil.copy(folder / "2024" / "trip.mp4", folder / "copy.mp4")
        report = lib.index(folder)
        assert (report.added, report.copied) == (1, 0)  # encoded, frames and all
        copy = lib.catalog.find_path(str(folder / "copy.mp4")).id
        assert len(lib.catalog.frames_of(copy)[0]) == len(frames)


def test_a_videos_capture_time_and_place_are_its_metadata_and_filters_keep_its_moments(tmp_path: Path) -> None:
    import av

    folder = tmp_path / "photos"
    folder.mkdir()
    clip = folder / "lisbon.mp4"
    with av.open(str(clip), "w") as out:
        out.metadata["creation_time"] = "2019-07-14T18:30:00.000000Z"
        out.metadata["location"] = "+38.7223-009.1393/"
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "300"}
        for colour in ("red", "blue", "green"):
            for _ in range(30):
                img = np.zeros((48, 64, 3), np.uint8)
                img[:] = COLOURS[colour]
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    write_colour_photos(folder, ["blue", "red"])
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        lib.index(folder)
        row = lib.catalog.find_path(str(clip))
        facts = lib.catalog.facts([row.id], ["taken_at", "taken_source", "file_type", "place_city", "gps_lat"])[row.id]
        assert facts["taken_at"].startswith("2019-07-14T18:30:00") and facts["taken_source"] == "video"
        assert facts["file_type"] == "video" and facts["place_city"] == "Lisbon" and abs(facts["gps_lat"] - 38.72) < 0.01
        # Filters keep a video's later moments: blue is its second shot, not its first frame.
        hits = lib.search("blue after:2019-06 type:video", k=3)
        assert [h.path for h in hits] == [str(clip)] and 3.0 <= hits[0].time < 6.0
        assert [h.path for h in lib.search("blue place:lisbon", k=1)] == [str(clip)]
        assert hits[0].taken_at.startswith("2019-07-14") and hits[0].place.startswith("Lisbon")  # the video's facts
        dated = lib.search("blue sort:oldest min:0.5", k=3)  # the 2019 video before today's photo
        assert dated and dated[0].path == str(clip) and dated[0].taken_at.startswith("2019-07-14")
        assert str(clip) not in [h.path for h in lib.search("blue type:jpeg", k=3)]
