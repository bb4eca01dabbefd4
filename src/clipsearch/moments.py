"""Video moments in search results: each video once, at its best moment, with the matching stretch.

A video is catalogued as one row per sampled frame (`Catalog.add_images` with `times`), so
the index ranks moments like photos. `group_moments` turns a ranked list of such hits
into one hit per video: the best-scoring frame stands for it (its id, so "more like this"
starts from that moment), the path is the video's file, `time` is that frame's second
and `segment` the stretch around it whose frames score within a small margin of it
(`clipsearch.video.segment_around`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from clipsearch.video import segment_around, split_frame_path

if TYPE_CHECKING:
    from clipsearch.catalog import Catalog
    from clipsearch.search import Hit

# Frames scoring within this much of the best one extend its segment. Toy-world clips:
# 0.03 gives segments that overlap the true scene in 0.97 of caption queries
# (bench/bench_video.py).
SEGMENT_DROP = 0.03
# Another stretch whose best frame scores within this much of the video's best is listed too.
OTHER_DROP = 0.05


def group_moments(catalog: "Catalog", hits: Sequence["Hit"], query: np.ndarray | None, dim: int, *,
                  exclude: Iterable[int] = ()) -> list["Hit"]:
    """`hits` (best first) with every video reduced to its first (best) hit, given `time` and `segment`.

    `query`: the unit query vector the hits were ranked by (None: a hit's segment is its
    own moment). Hits of a video one of whose frames is in `exclude` are dropped (a
    "more like this" from a moment does not return its own video).
    """
    found = catalog.moments([h.id for h in hits])
    excluded = {int(i) for i in exclude}
    if not found and not excluded:
        return list(hits)
    skip_videos = {v for v, _ in catalog.moments(excluded).values()} if excluded else set()
    out: list[Hit] = []
    seen: set[int] = set()
    for hit in hits:
        moment = found.get(hit.id)
        if moment is None:
            out.append(hit)
            continue
        video_id, seconds = moment
        if video_id in seen or video_id in skip_videos:
            continue
        seen.add(video_id)
        out.append(_moment_hit(catalog, hit, video_id, seconds, query, dim))
    return out


def _moment_hit(catalog: "Catalog", hit: "Hit", video_id: int, seconds: float, query: np.ndarray | None,
                dim: int) -> "Hit":
    ids, times = catalog.frames_of(video_id)
    video = catalog.get_image(video_id)
    path = video.path if video is not None else split_frame_path(hit.path)[0]
    segment = (seconds, seconds)
    others: list[tuple[float, float]] = []
    if query is not None and len(ids):
        stored = catalog.vectors_for(ids, dim)
        if all(int(i) in stored for i in ids):
            scores = np.stack([stored[int(i)] for i in ids]) @ np.asarray(query, np.float32)
            best = int(np.flatnonzero(ids == hit.id)[0]) if hit.id in ids else int(np.argmax(scores))
            segment = segment_around(times, scores, best, drop=SEGMENT_DROP, duration=_duration(times))
            others = _other_moments(times, scores, segment, float(scores[best]))
    return replace(hit, path=path, time=seconds, segment=segment, moments=tuple(others))


def _other_moments(times: np.ndarray, scores: np.ndarray, best_segment: tuple[float, float], best: float,
                   *, most: int = 3) -> list[tuple[float, float]]:
    """Other stretches of the video that match almost as well (peaks within OTHER_DROP of the best), best first."""
    taken = [best_segment]
    out: list[tuple[float, float]] = []
    for i in np.argsort(-scores, kind="stable"):
        if len(out) >= most or scores[i] < best - OTHER_DROP:
            break
        if any(a <= times[i] <= b for a, b in taken):
            continue
        segment = segment_around(times, scores, int(i), drop=SEGMENT_DROP, duration=_duration(times))
        taken.append(segment)
        out.append(segment)
    return out


def _duration(times: np.ndarray) -> float:
    # The last sampled frame stands for at most one more sampling step.
    return float(times[-1] + (np.median(np.diff(times)) if len(times) > 1 else 1.0))


__all__ = ["SEGMENT_DROP", "group_moments"]
