"""Videos as sampled frames: which frames to decode, decoding only those, and hostile files.

This module knows about video files and frames, never about models or the catalog. A
video becomes a short list of `VideoFrame`s (a timestamp and an RGB image) that the
indexer encodes like photos.

Which frames: every keyframe (encoders put one at each shot change: x264/x265's scenecut,
and phone encoders every 1-2 s), thinned to one per `min_gap_s`, plus a frame wherever
the keyframes leave more than `every_s` seconds uncovered. How: one demux pass reads the
packet table (no decoding: 17 ms for a 60 s 1080p clip), then a second pass decodes only
the groups of pictures that hold a wanted frame, and within each only up to its last
wanted frame; every other packet is skipped undecoded. On a 60 s 1080p H.264 clip with
one keyframe every 8 s that is a third of a full decode; with phone-like 1-2 s GOPs only
keyframes are decoded at all (docs/video.md has the measurements).

Bounded whatever the file claims: the declared resolution is checked before decoding, the
number of frames kept is capped (thinned evenly), and decoding stops at a wall-clock cap,
keeping what it has. A stream whose header lies about its duration is measured by its
packets, not its header.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from clipsearch.errors import ImageLoadError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".3gp"})


def frame_path(video_path: str, seconds: float) -> str:
    """The catalog path of a video's frame row ("VIDEO#t=SECONDS"): never a file, never listed by a scan."""
    return f"{video_path}#t={seconds:.3f}"


def split_frame_path(path: str) -> tuple[str, float | None]:
    """(video path, seconds) of a frame row's path; (path, None) for anything else."""
    head, sep, tail = path.rpartition("#t=")
    if sep and is_video(head):
        try:
            return head, float(tail)
        except ValueError:
            pass
    return path, None


def load_picture(path: str, *, target_size: int | None = None) -> "Image.Image":
    """What a catalog row shows, as an RGB image: a photo decoded by `images.load_image`, a video's
    frame row its frame, a video's own row its first frame. Raises ImageLoadError."""
    from clipsearch.images import load_image

    video, seconds = split_frame_path(path)
    if seconds is not None or is_video(path):
        return frame_at(video, seconds or 0.0, target_size=target_size)
    return load_image(path, target_size=target_size)


def video_tags(path: str | os.PathLike[str]) -> tuple[dict[str, str], tuple[int | None, int | None]]:
    """The container's metadata tags (creation_time, location, ...) and the frame size, without decoding."""
    limits = VideoLimits()
    container = _open(os.fspath(path), limits)
    try:
        tags = {str(k): str(v) for k, v in (container.metadata or {}).items()}
        ctx = container.streams.video[0].codec_context
        return tags, (int(ctx.width) or None, int(ctx.height) or None)
    finally:
        container.close()


def is_video(path: str | os.PathLike[str]) -> bool:
    """True when the file's extension is a video container clipsearch indexes."""
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def video_support() -> str | None:
    """None when videos can be decoded here, else why not (PyAV missing or broken)."""
    try:
        import av  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken optional wheel must not break photos
        return f"videos need PyAV (pip install av): {exc}"
    return None


@dataclass(frozen=True)
class VideoLimits:
    """How a video is sampled and what it may cost."""

    every_s: float = 2.0          # at least one frame every this many seconds
    min_gap_s: float = 0.5        # keyframes closer than this to a kept one are dropped
    max_frames: int = 240         # frames kept per video (thinned evenly beyond)
    max_decode_s: float = 60.0    # wall-clock cap on decoding one video; what was decoded is kept
    max_pixels: int = 8192 * 4320  # declared frame size (8K); larger is refused before decoding
    max_bytes: int = 64 * 1024 ** 3
    max_packets: int = 5_000_000  # packet-table cap (about 23 h at 60 fps)

    def __post_init__(self) -> None:
        if not (self.every_s > 0 and self.min_gap_s >= 0 and self.max_frames >= 1 and self.max_decode_s > 0):
            raise ValueError(f"invalid video limits: {self}")


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself (and what its packets showed)."""

    duration: float               # seconds, from the packets (not the header)
    width: int
    height: int
    fps: float | None
    codec: str
    keyframes: int
    taken_at: str | None = None   # the container's creation_time tag (ISO 8601), when present
    location: str | None = None   # ISO 6709 tag ("+38.7223-009.1393/") from phones, when present
    truncated: str | None = None  # why decoding stopped early, when it did


@dataclass(frozen=True)
class VideoFrame:
    """One sampled frame: its time in seconds from the start and its RGB image."""

    time: float
    image: "Image.Image"
    keyframe: bool


@dataclass
class _Packet:
    time: float
    keyframe: bool


def plan_times(keyframe_times: Sequence[float], duration: float, limits: VideoLimits) -> list[tuple[float, bool]]:
    """The times to sample, with whether each is a keyframe: keyframes thinned to
    `min_gap_s`, plus fill times wherever keyframes leave more than `every_s` uncovered,
    evenly thinned to `max_frames`. Pure: tested on its own."""
    kept: list[float] = []
    for t in sorted(keyframe_times):
        if not kept or t - kept[-1] >= limits.min_gap_s:
            kept.append(t)
    chosen: list[tuple[float, bool]] = [(t, True) for t in kept]
    # Fill each uncovered stretch (including before the first and after the last keyframe).
    marks = [0.0 - 1e-9] + kept + [duration]
    fills: list[float] = []
    for a, b in zip(marks, marks[1:]):
        start = max(a, 0.0)
        gap = b - start
        if gap > limits.every_s:
            n = math.ceil(gap / limits.every_s) - 1
            step = gap / (n + 1)
            fills.extend(start + step * (i + 1) for i in range(n))
    if not kept and duration >= 0:
        fills.insert(0, 0.0)
    chosen.extend((t, False) for t in fills)
    chosen.sort()
    if len(chosen) > limits.max_frames:
        picks = [round(i * (len(chosen) - 1) / (limits.max_frames - 1)) for i in range(limits.max_frames)] \
            if limits.max_frames > 1 else [0]
        chosen = [chosen[i] for i in sorted(set(picks))]
    return chosen


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _open(path: str, limits: VideoLimits):  # -> av.container.InputContainer
    import av

    try:
        st = os.stat(path)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if st.st_size == 0:
        raise ImageLoadError(path, "file is empty")
    if st.st_size > limits.max_bytes:
        raise ImageLoadError(path, f"video is {st.st_size / 1024 ** 3:.1f} GB, over the limit")
    try:
        container = av.open(path, mode="r", timeout=(10.0, 10.0))
    except av.error.InvalidDataError as exc:
        raise ImageLoadError(path, "not a video file (no container format recognised)") from exc
    except Exception as exc:  # noqa: BLE001 - FFmpeg raises many kinds on bad headers
        raise ImageLoadError(path, f"unreadable video: {_reason(exc)}") from exc
    fmt = container.format.name or ""
    if fmt == "image2" or fmt.endswith("_pipe"):
        container.close()
        raise ImageLoadError(path, f"not a video: a still image ({fmt.removesuffix('_pipe')}) with a video "
                                   "extension; give it its image extension to index it as a photo")
    if not container.streams.video:
        container.close()
        raise ImageLoadError(path, "no video stream (audio only?)")
    return container


def _stream_facts(path: str, container, limits: VideoLimits) -> tuple[object, int, int, float | None, str]:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width <= 0 or height <= 0:
        raise ImageLoadError(path, "video stream declares no frame size")
    if width * height > limits.max_pixels:
        raise ImageLoadError(path, f"video frames are {width}×{height}, over the "
                                   f"{limits.max_pixels / 1e6:.0f} MP limit")
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    return stream, width, height, fps, ctx.name or "?"


def _packet_table(path: str, container, stream, limits: VideoLimits, deadline: float
                  ) -> tuple[list[_Packet], str | None]:
    base = stream.time_base
    start = stream.start_time or 0
    packets: list[_Packet] = []
    cut: str | None = None
    try:
        for pkt in container.demux(stream):
            if pkt.size == 0 or pkt.pts is None:
                continue
            packets.append(_Packet(float((pkt.pts - start) * base), bool(pkt.is_keyframe)))
            if len(packets) >= limits.max_packets or time.monotonic() > deadline:
                cut = f"only the first {packets[-1].time:.1f} s were read (the time or packet cap)"
                log.warning("%s: %s", path, cut)
                break
    except Exception as exc:  # noqa: BLE001 - a damaged tail: keep what was read
        if not packets:
            raise ImageLoadError(path, f"corrupt video stream: {_reason(exc)}") from exc
        cut = f"video stream damaged after {packets[-1].time:.1f} s: {_reason(exc)}"
        log.warning("%s: %s", path, cut)
    if not packets:
        raise ImageLoadError(path, "video stream has no frames")
    return packets, cut


def sample_frames(path: str | os.PathLike[str], limits: VideoLimits = VideoLimits(), *,
                  target_size: int | None = None) -> tuple[VideoInfo, list[VideoFrame]]:
    """Decode the frames `plan_times` picks from the video at `path`.

    `target_size`: frames are reduced so their short side is at least this (never
    enlarged), which keeps memory small for 4K video. Raises ImageLoadError (with the
    reason) for files that are not usable videos; a stream damaged part-way, or one that
    hits the decode-time cap, keeps the frames decoded before that point and says so in
    `VideoInfo.truncated`.
    """
    path = os.fspath(path)
    deadline = time.monotonic() + limits.max_decode_s
    container = _open(path, limits)
    try:
        stream, width, height, fps, codec = _stream_facts(path, container, limits)
        packets, cut = _packet_table(path, container, stream, limits, deadline)
        tags = dict(container.metadata or {})
    finally:
        container.close()
    times = sorted(p.time for p in packets)
    duration = max(times[-1] + (1.0 / fps if fps else 0.0), 0.0)
    keys = sorted(p.time for p in packets if p.keyframe)
    plan = plan_times(keys, duration, limits)
    container = _open(path, limits)  # a fresh demuxer: seeking back is not reliable in every container
    try:
        frames, truncated = _decode_planned(path, container, plan, packets, target_size, deadline)
    finally:
        container.close()
    if not frames:
        raise ImageLoadError(path, f"no frame could be decoded{': ' + truncated if truncated else ''}")
    info = VideoInfo(duration=duration, width=width, height=height, fps=fps, codec=codec, keyframes=len(keys),
                     taken_at=tags.get("creation_time") or None,
                     location=tags.get("location") or tags.get("com.apple.quicktime.location.ISO6709") or None,
                     truncated=truncated or cut)
    return info, frames


def _decode_planned(path: str, container, plan: list[tuple[float, bool]], packets: list[_Packet],
                    target_size: int | None, deadline: float) -> tuple[list[VideoFrame], str | None]:
    """Second pass: decode only the GOPs holding wanted times, each up to its last wanted time."""
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    # In decode order a group of pictures (GOP) starts at each keyframe; note for each GOP
    # the latest wanted time inside it. GOPs with none are skipped without decoding.
    gop_of: list[int] = []
    gop_start: list[float] = []
    for pkt in packets:
        if pkt.keyframe or not gop_start:
            gop_start.append(pkt.time)
        gop_of.append(len(gop_start) - 1)
    order = sorted(range(len(gop_start)), key=gop_start.__getitem__)
    last_wanted: dict[int, float] = {}
    j = 0
    for t, _ in plan:  # plan and GOP starts both ascending in time
        while j + 1 < len(order) and gop_start[order[j + 1]] <= t + 1e-6:
            j += 1
        g = order[j]
        last_wanted[g] = max(last_wanted.get(g, -math.inf), t)
    wanted = [t for t, _ in plan]
    is_key = [k for _, k in plan]
    frames: list[VideoFrame] = []
    next_want = 0
    truncated: str | None = None
    base, start = stream.time_base, stream.start_time or 0
    index = 0

    def decode(pkt: object) -> list:
        try:
            return stream.decode(pkt)
        except av.error.FFmpegError as exc:
            log.debug("%s: undecodable packet: %s", path, exc)
            return []

    def take(decoded: list, next_want: int) -> int:
        for frame in decoded:
            if frame.pts is None or next_want >= len(wanted):
                continue
            t = float((frame.pts - start) * base)
            if t + 1e-6 < wanted[next_want]:
                continue  # the first decoded frame at or after a wanted time stands for it
            frames.append(VideoFrame(t, _frame_image(frame, target_size), is_key[next_want]))
            while next_want < len(wanted) and wanted[next_want] <= t + 1e-6:
                next_want += 1
        return next_want

    try:
        for pkt in container.demux(stream):
            if pkt.size == 0 or pkt.pts is None:
                continue
            if index >= len(gop_of) or next_want >= len(wanted):
                break
            limit = last_wanted.get(gop_of[index])
            index += 1
            if limit is None or wanted[next_want] > limit + 1e-6:
                continue  # nothing (more) wanted in this GOP: the packet is never decoded
            if frames and time.monotonic() > deadline:  # the first frame is always decoded
                truncated = f"decode-time cap reached after {len(frames)} frames"
                break
            next_want = take(decode(pkt), next_want)
        if next_want < len(wanted):
            next_want = take(decode(None), next_want)  # the decoder's delayed (threaded, reordered) frames
    except av.error.FFmpegError as exc:
        truncated = f"video stream damaged after {len(frames)} frames: {_reason(exc)}"
    return frames, truncated


def _frame_image(frame, target_size: int | None) -> "Image.Image":
    width, height = frame.width, frame.height
    if target_size and min(width, height) > 2 * target_size:
        # Scale in libswscale while converting: a 4K frame never exists as RGB at full size.
        factor = min(width, height) / target_size
        width, height = max(1, int(width / factor)), max(1, int(height / factor))
        return frame.to_image(width=width, height=height)
    return frame.to_image()


def segment_around(times: "np.ndarray", scores: "np.ndarray", best: int, *, drop: float = 0.03,
                   duration: float | None = None) -> tuple[float, float]:
    """The stretch of video around frame `best` that matches: neighbouring sampled frames
    whose score is within `drop` of the best, widened by half the gap to the next frame.

    `times` are ascending frame times and `scores` their similarity to the query.
    """
    lo = hi = best
    floor = float(scores[best]) - drop
    while lo > 0 and scores[lo - 1] >= floor:
        lo -= 1
    while hi + 1 < len(times) and scores[hi + 1] >= floor:
        hi += 1
    start = float(times[lo]) if lo == 0 else (float(times[lo - 1]) + float(times[lo])) / 2
    if lo == 0:
        start = 0.0
    end_next = float(times[hi + 1]) if hi + 1 < len(times) else (duration if duration is not None else float(times[hi]))
    end = (float(times[hi]) + end_next) / 2 if hi + 1 < len(times) else end_next
    return start, max(end, float(times[hi]))


def format_time(seconds: float) -> str:
    """00:00:41 style."""
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def frame_at(path: str | os.PathLike[str], seconds: float, *, target_size: int | None = None,
             limits: VideoLimits = VideoLimits()) -> "Image.Image":
    """The frame shown at `seconds` into the video (for thumbnails and the detail view).

    Seeks to the keyframe before it and decodes forward; raises ImageLoadError when the
    file is not a usable video.
    """
    import av

    path = os.fspath(path)
    container = _open(path, limits)
    try:
        stream, *_ = _stream_facts(path, container, limits)
        stream.thread_type = "AUTO"
        base, start = stream.time_base, stream.start_time or 0
        target = int(seconds / base) + start
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            container.seek(0)
        last = None
        deadline = time.monotonic() + limits.max_decode_s
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            last = frame
            if frame.pts >= target or time.monotonic() > deadline:
                break
        if last is None:
            raise ImageLoadError(path, f"no frame could be decoded at {format_time(seconds)}")
        return _frame_image(last, target_size)
    except av.error.FFmpegError as exc:
        raise ImageLoadError(path, f"corrupt video stream: {_reason(exc)}") from exc
    finally:
        container.close()
