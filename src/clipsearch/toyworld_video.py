"""Toy-world video clips whose scenes change at known times: the benchmark for moment search.

Each clip is two to four segments of three to six seconds. Consecutive segments differ in
one way a person would search for: the time of day changes (a car drives from day into
night), a second object appears, or the setting changes. The camera pans slowly across
each segment, so frames are never identical. Clips are H.264 (libx264, which PyAV's wheels
carry) at 10 fps; `videos.csv` lists every segment with its start, end, caption and
canonical description, which define the truth for "moment recall".
"""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from clipsearch import toyworld

log = logging.getLogger(__name__)

VIDEO_CSV_COLUMNS = ("filepath", "start", "end", "title", "canonical")
TRANSITIONS = ("time", "appear", "setting")
_VIDEO_STREAM = 7  # a random stream of its own, apart from the photo generator's


@dataclass(frozen=True)
class Segment:
    """One stretch of a clip showing one scene."""

    scene: toyworld.Scene
    start: float
    end: float


def _next_scene(scene: toyworld.Scene, kind: str, rng: np.random.Generator) -> toyworld.Scene:
    if kind == "time":
        later = {"day": "sunset", "sunset": "night", "night": "day"}
        return replace(scene, time=later[scene.time])
    if kind == "setting":
        options = [s for s in toyworld.SETTINGS if s != scene.setting]
        return replace(scene, setting=options[int(rng.integers(len(options)))])
    # "appear": a second, different object joins the first.
    others = [o for o in toyworld.OBJECTS if o != scene.obj]
    colours = tuple(toyworld.COLOURS)
    return replace(scene, count=1, relation=toyworld.RELATIONS[int(rng.integers(len(toyworld.RELATIONS)))],
                   obj2=others[int(rng.integers(len(others)))], colour2=colours[int(rng.integers(len(colours)))])


def plan_clip(rng: np.random.Generator, split: str = "seen") -> list[Segment]:
    """Two to four segments; each after the first changes time, adds an object or changes setting."""
    scene = toyworld.sample_scene(rng, split)
    while scene.is_relation:  # start from one kind of object so that "appear" can add one
        scene = toyworld.sample_scene(rng, split)
    segments: list[Segment] = []
    t = 0.0
    for i in range(int(rng.integers(2, 5))):
        if i:
            kinds = [k for k in TRANSITIONS if not (k == "appear" and scene.is_relation)]
            for _ in range(20):
                candidate = _next_scene(scene, kinds[int(rng.integers(len(kinds)))], rng)
                if toyworld.is_held_out(candidate) == (split == "test"):
                    break
            scene = candidate
        length = float(rng.integers(3, 7))
        segments.append(Segment(scene, t, t + length))
        t += length
    return segments


def render_clip(path: str | os.PathLike[str], segments: list[Segment], rng: np.random.Generator, *,
                size: int = 128, fps: int = 10, codec: str = "libx264") -> None:
    """Write `segments` as a video file: each scene drawn once, the camera panning across it."""
    import av

    margin = max(4, size // 8)
    with av.open(os.fspath(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "23"}
        for segment in segments:
            big = toyworld.render(segment.scene, rng, size + margin)
            frames = int(round((segment.end - segment.start) * fps))
            dx, dy = int(rng.integers(0, 2)), int(rng.integers(0, 2))
            for f in range(frames):
                shift = int(round(margin * f / max(1, frames - 1)))
                x = shift if dx else margin - shift
                y = shift // 2 if dy else (margin - shift) // 2
                image = big.crop((x, y, x + size, y + size))
                for packet in stream.encode(av.VideoFrame.from_image(image)):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def generate_videos(out_dir: str | os.PathLike[str], n: int, *, split: str = "seen", seed: int = 0,
                    size: int = 128, fps: int = 10) -> Path:
    """Write `n` clips under `out_dir/videos/` and `out_dir/videos.csv` (one row per segment)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str, str]] = []
    for index in range(n):
        rng = np.random.default_rng([seed, _VIDEO_STREAM, index])
        segments = plan_clip(rng, split)
        rel = f"videos/clip{index:04d}.mp4"
        render_clip(out / rel, segments, rng, size=size, fps=fps)
        for segment in segments:
            rows.append((rel, f"{segment.start:.1f}", f"{segment.end:.1f}",
                         toyworld.caption(segment.scene, rng), toyworld.canonical(segment.scene)))
    csv_path = out / "videos.csv"
    from clipsearch.atomic import atomic_writer

    with atomic_writer(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(VIDEO_CSV_COLUMNS)
        writer.writerows(rows)
    return csv_path


def read_segments(csv_path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a videos.csv written by `generate_videos`."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
