"""Paging through a ranking with a stable order, for the UI's "Load more" and the API's offsets."""
from __future__ import annotations

from typing import Callable, Protocol, Sequence, TypeVar


class Scored(Protocol):
    @property
    def score(self) -> float | None: ...

    @property
    def id(self) -> int: ...


H = TypeVar("H", bound=Scored)


def stable_top(run: Callable[[int], Sequence[H]], n: int, *, limit: int = 100_000,
               by_score: bool | None = None) -> list[H]:
    """The top `n` hits of `run(k)` (a search for the best k) in a stable order: score, then id.

    A ranking that is not by score (a query sorted by date, hits without a score) is kept in
    the order the search gives. Say which it is with `by_score` when the caller knows: else
    it is guessed from the hits, and a date order whose scores happen never to rise (photos
    scoring alike) would be taken for a score order and re-sorted.

    A nearest-neighbour search breaks ties arbitrarily, so the photos cut off at the n-th
    place may differ between two calls with different k (between two pages). Here, while the
    n-th score ties with the last one fetched, more are fetched, so that every hit with that
    score is ordered by id and a page never repeats or skips one.
    """
    if by_score is False:
        return list(run(max(1, n)))[:n]
    fetch = max(1, n)
    while True:
        found = list(run(fetch))
        unscored = any(h.score is None for h in found)
        # Scores that rise somewhere: the search ordered the hits itself (a date order, or a concept
        # sentence re-ranked by its soft AND), which is kept whatever `by_score` says.
        reordered = not unscored and any(a.score < b.score for a, b in zip(found, found[1:]))  # type: ignore[operator]
        if reordered or (by_score is None and unscored):
            return found[:n]  # the search's own order (by date, say): kept as it is
        hits = sorted(found, key=lambda h: (-h.score, h.id))  # type: ignore[operator]
        if len(hits) < fetch or len(hits) < n or hits[-1].score < hits[n - 1].score or fetch >= limit:
            return hits[:n]
        fetch = min(limit, fetch * 2)
