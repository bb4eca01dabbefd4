"""Video sampling: which frames, decoded cheaply, and hostile files skipped with a reason."""
from __future__ import annotations

import struct
import time
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from clipsearch.errors import ImageLoadError  # noqa: E402
from clipsearch.video import VideoLimits, format_time, is_video, plan_times, sample_frames, segment_around  # noqa: E402


def write_clip(path: Path, colours: list[tuple[int, int, int]], *, seconds_each: float = 2.0, fps: int = 10,
               size: tuple[int, int] = (64, 48), keyint: int | None = None, codec: str = "libx264") -> Path:
    """A clip of solid-colour shots (with a moving bar), `seconds_each` per colour."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast", **({"g": str(keyint)} if keyint else {})}
        n = int(seconds_each * fps)
        for c, colour in enumerate(colours):
            for f in range(n):
                img = np.zeros((size[1], size[0], 3), np.uint8)
                img[:] = colour
                x = (f * 3) % (size[0] - 8)
                img[:, x:x + 8] = 255 - np.array(colour, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_is_video_by_extension() -> None:
    assert is_video("a/b/Trip.MP4") and is_video("x.mkv") and is_video("y.3gp")
    assert not is_video("photo.jpg") and not is_video("notes.txt")


def test_plan_keeps_keyframes_and_fills_gaps() -> None:
    limits = VideoLimits(every_s=2.0, min_gap_s=0.5)
    plan = plan_times([0.0, 0.2, 7.0], 10.0, limits)
    times = [t for t, _ in plan]
    assert (0.0, True) in plan and (7.0, True) in plan
    assert 0.2 not in times  # thinned: closer than min_gap to a kept keyframe
    gaps = np.diff([0.0, *times, 10.0])
    assert gaps.max() <= 2.0 + 1e-9
    # No keyframes at all (a broken index): still one frame every 2 s, from 0.
    plan = plan_times([], 9.0, limits)
    assert plan[0] == (0.0, False) and np.diff([t for t, _ in plan] + [9.0]).max() <= 2.0 + 1e-9


def test_plan_is_capped_evenly() -> None:
    plan = plan_times([float(t) for t in range(0, 3600)], 3600.0, VideoLimits(max_frames=50))
    times = [t for t, _ in plan]
    assert len(times) == 50 and times[0] == 0.0 and times[-1] == 3599.0


def test_samples_each_shot_and_at_least_every_two_seconds(tmp_path: Path) -> None:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]
    clip = write_clip(tmp_path / "shots.mp4", colours, seconds_each=3.0, keyint=100)
    info, frames = sample_frames(clip)
    assert info.duration == pytest.approx(12.0, abs=0.2)
    assert (info.width, info.height) == (64, 48)
    times = [f.time for f in frames]
    assert times == sorted(times)
    assert np.diff([0.0, *times, info.duration]).max() <= 2.0 + 0.11
    # Every shot is represented by a frame of its own colour.
    palette = np.array(colours, np.float64)
    seen = set()
    for frame in frames:
        mean = np.asarray(frame.image)[:, -4:].reshape(-1, 3).mean(axis=0)  # away from the moving bar
        seen.add(int(np.argmin(((palette - mean) ** 2).sum(axis=1))))
    assert seen == {0, 1, 2, 3}


def test_long_gops_decode_only_up_to_wanted_frames(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "long.mp4", [(100, 100, 100)] * 3, seconds_each=4.0, keyint=1000)
    info, frames = sample_frames(clip, VideoLimits(every_s=5.0))
    assert info.keyframes == 1
    assert [round(f.time, 1) for f in frames] == [0.0, 4.0, 8.0]
    assert frames[0].keyframe and not frames[1].keyframe


def test_frames_are_reduced_for_large_video(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "big.mp4", [(10, 20, 30)], seconds_each=1.0, size=(640, 480))
    _, frames = sample_frames(clip, target_size=64)
    assert min(frames[0].image.size) < 480 and min(frames[0].image.size) >= 64


@pytest.mark.parametrize("name,content,reason", [
    ("empty.mp4", b"", "empty"),
    ("photo.mp4", None, "not a video"),
    ("noise.mkv", bytes(range(256)) * 40, "not a video"),
])
def test_hostile_files_are_refused_with_a_reason(tmp_path: Path, name: str, content: bytes | None, reason: str) -> None:
    path = tmp_path / name
    if content is None:
        from PIL import Image
        Image.new("RGB", (32, 32), "red").save(path, format="JPEG")
    else:
        path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=reason) as err:
        sample_frames(path)
    assert err.value.path == str(path)


def test_audio_only_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "voice.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for _ in range(8):
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with pytest.raises(ImageLoadError, match="no video stream"):
        sample_frames(path)


def test_truncated_and_corrupt_streams(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "whole.mkv", [(200, 0, 0), (0, 200, 0)], seconds_each=3.0, keyint=10)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    info, frames = sample_frames(cut)  # Matroska streams: the first half is still a video
    assert frames and info.duration < 4.0
    corrupt = tmp_path / "corrupt.mkv"
    noisy = bytearray(data)
    rng = np.random.default_rng(0)
    for at in rng.integers(len(data) // 3, len(data), 40):
        noisy[at] ^= 0xFF
    corrupt.write_bytes(bytes(noisy))
    try:
        _, frames = sample_frames(corrupt)
    except ImageLoadError as exc:  # refused is fine; crashing or hanging is not
        assert exc.path == str(corrupt)
    mp4_cut = tmp_path / "cut.mp4"
    mp4 = write_clip(tmp_path / "whole.mp4", [(200, 0, 0)], seconds_each=2.0).read_bytes()
    mp4_cut.write_bytes(mp4[: len(mp4) // 3])
    with pytest.raises(ImageLoadError):
        sample_frames(mp4_cut)


def test_header_that_lies_about_duration(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "lies.mp4", [(0, 0, 200)], seconds_each=4.0)
    data = bytearray(clip.read_bytes())
    at = data.find(b"mvhd")
    assert at > 0
    # version 0 mvhd: 4 flags, creation, modification, timescale, then the duration.
    struct.pack_into(">I", data, at + 4 + 4 + 4 + 4 + 4, 0x7FFFFFFF)
    clip.write_bytes(bytes(data))
    started = time.monotonic()
    info, frames = sample_frames(clip)
    assert time.monotonic() - started < 10
    assert info.duration == pytest.approx(4.0, abs=0.2)  # measured from the packets
    assert len(frames) <= 4


def test_huge_declared_resolution_is_refused_before_decoding(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "wide.mp4", [(0, 0, 0)], seconds_each=1.0, size=(320, 240))
    with pytest.raises(ImageLoadError, match="over the"):
        sample_frames(clip, VideoLimits(max_pixels=320 * 200))


def test_decode_time_cap_keeps_what_was_decoded(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "slow.mp4", [(0, 90, 0)] * 4, seconds_each=2.0, keyint=5)
    info, frames = sample_frames(clip, VideoLimits(max_decode_s=1e-9))
    # The cap cuts the packet table and the decoding; the first frame is kept, and it says so.
    assert info.truncated and "cap" in info.truncated
    assert len(frames) == 1 and frames[0].time == 0.0


def test_segment_around_the_best_frame() -> None:
    times = np.array([0.0, 2.0, 4.0, 6.0, 8.0])
    scores = np.array([0.1, 0.5, 0.52, 0.2, 0.1])
    assert segment_around(times, scores, 2, duration=10.0) == (1.0, 5.0)
    assert segment_around(times, np.array([0.9, 0.5, 0.5, 0.5, 0.5]), 0, duration=10.0) == (0.0, 1.0)
    assert segment_around(times, np.array([0.1, 0.1, 0.1, 0.1, 0.9]), 4, duration=10.0) == (7.0, 10.0)
    assert format_time(41.4) == "00:00:41" and format_time(3725) == "01:02:05"


def test_toyworld_clips_have_segments_at_known_times(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from clipsearch.cli import toyworld as toyworld_cli
    from clipsearch.toyworld_video import read_segments

    parser = argparse.ArgumentParser(prog="clipsearch")
    toyworld_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["toyworld", "generate", str(tmp_path), "--videos", "2", "--seed", "3"])
    assert args.func(args) == 0
    assert "2 clips" in capsys.readouterr().out
    rows = read_segments(tmp_path / "videos.csv")
    for clip in {r["filepath"] for r in rows}:
        segments = [r for r in rows if r["filepath"] == clip]
        assert 2 <= len(segments) <= 4 and float(segments[0]["start"]) == 0.0
        assert all(a["end"] == b["start"] and a["canonical"] != b["canonical"] for a, b in zip(segments, segments[1:]))
        info, _ = sample_frames(tmp_path / clip)
        assert info.duration == pytest.approx(float(segments[-1]["end"]), abs=0.2)
    args = parser.parse_args(["toyworld", "generate", str(tmp_path)])
    assert args.func(args) == 2  # neither images nor clips asked for


def test_frame_at_shows_the_moment(tmp_path: Path) -> None:
    from clipsearch.video import frame_at

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    clip = write_clip(tmp_path / "three.mp4", colours, seconds_each=2.0, keyint=100)
    for t, want in ((0.5, 0), (3.1, 1), (5.5, 2)):
        mean = np.asarray(frame_at(clip, t))[:, -4:].reshape(-1, 3).mean(axis=0)
        assert int(np.argmin(((np.array(colours) - mean) ** 2).sum(axis=1))) == want


def test_load_picture_shows_a_frame_row_its_moment(tmp_path: Path) -> None:
    from PIL import Image

    from clipsearch.video import frame_path, load_picture, split_frame_path

    clip = write_clip(tmp_path / "two.mp4", [(200, 30, 30), (30, 30, 200)], seconds_each=2.0)
    row = frame_path(str(clip), 3.0)
    assert split_frame_path(row) == (str(clip), 3.0) and split_frame_path(str(clip)) == (str(clip), None)
    assert split_frame_path("/a/b#t=x.jpg") == ("/a/b#t=x.jpg", None)
    r, g, b = np.asarray(load_picture(row))[:, -4:].reshape(-1, 3).mean(axis=0)
    assert b > 150 > r
    r, g, b = np.asarray(load_picture(str(clip)))[:, -4:].reshape(-1, 3).mean(axis=0)
    assert r > 150 > b  # a video's own row: its first frame
    Image.new("RGB", (8, 8), "green").save(tmp_path / "g.png")
    assert load_picture(str(tmp_path / "g.png")).getpixel((1, 1))[1] > 100


def test_a_long_video_is_sampled_within_its_caps(tmp_path: Path) -> None:
    # Three minutes at 10 fps with 30 s GOPs: frames capped and spread over the whole video,
    # each a small image whatever the count (the 4K and 10-minute figures: bench/bench_video.py).
    clip = write_clip(tmp_path / "long.mp4", [(90, 90, 90), (200, 200, 0), (0, 120, 200)], seconds_each=60.0,
                      size=(32, 32), keyint=300)
    info, frames = sample_frames(clip, VideoLimits(max_frames=40))
    assert info.duration == pytest.approx(180.0, abs=0.5)
    assert len(frames) == 40 and frames[0].time == 0.0 and frames[-1].time > 170.0
    assert all(f.image.size == (32, 32) for f in frames)
