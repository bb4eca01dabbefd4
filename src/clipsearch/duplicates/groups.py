"""Duplicate groups of a library: candidates from stored vectors and hashes, a decision per pair, groups, keepers.

`find_duplicates` is the whole pipeline:

1. **Candidates, never all pairs**: each photo's nearest neighbours by CLIP similarity of
   the stored vectors (`candidates.clip_pairs`), plus photos whose DCT hashes agree under
   a rotation (`candidates.hash_pairs`; a photo turned by 90 degrees is far from its
   original in CLIP space).
2. **A decision per pair** (`decide`): with `verify="pixels"` (the default) both photos'
   pixels are compared (`pixels.compare`: alignment up to a 20 % crop and any rotation,
   exposure, then what is unchanged, what moved and what changed); with `verify="fast"`
   only stored evidence is used (hash distance and CLIP similarity; no file is decoded
   for pairs). Capture times from EXIF, when both photos have one, then overrule: two
   photos taken at different seconds are not copies of one picture (a copy keeps its
   original's capture time), and two views taken further apart than `moment_seconds`
   are not one moment.
3. **Groups**: connected components of the copy edges ("copies"), or of the copy and
   moment edges with at least one moment edge in them ("moments").
4. **A keeper** per group (`choose_keeper`), with the reason.

Longer than most modules on purpose: the decision per pair, the grouping and the keeper are
one rule (docs/duplicates.md) that reads top to bottom; the evidence it uses lives in
`candidates` and `pixels`.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from clipsearch.duplicates.candidates import clip_pairs, hash_distances, hash_pairs
from clipsearch.duplicates.facts import CAMERA_FORMATS, FactsCache, PhotoFacts, read_photo
from clipsearch.duplicates.pixels import PairEvidence, Signature, compare
from clipsearch.errors import ClipSearchError, ImageLoadError

if TYPE_CHECKING:
    from clipsearch.catalog import Catalog, ImageRow

log = logging.getLogger(__name__)

LEVELS = ("copies", "moments")
VERIFY = ("pixels", "fast")


class DuplicatesError(ClipSearchError):
    """Duplicate detection was asked for something it cannot do (an unknown level, a bad option)."""


@dataclass(frozen=True)
class DuplicateOptions:
    """Knobs of `find_duplicates`; the defaults are the measured ones (docs/duplicates.md)."""

    k: int = 16                      # CLIP neighbours per photo
    min_similarity: float = 0.8      # CLIP cosine under which two photos are never compared
    max_hash_distance: int = 4       # hash pairs (any rotation) up to this distance are compared
    max_pixel_hash: int = 28         # pairs whose hashes differ more are not decoded (unrelated: ~31 of 63)
    verify: str = "pixels"           # "pixels" or "fast" (stored evidence only)
    moment_seconds: float = 120.0    # shots further apart are not one moment
    fast_copy_hash: int = 3          # verify="fast": a copy's hash is within this distance ...
    fast_copy_clip: float = 0.95     # ... and its CLIP similarity above this (unless rotated)
    fast_moment_hash: int = 20       # verify="fast": a moment's hash within this ...
    fast_moment_clip: float = 0.9    # ... and CLIP above this
    use_hashes: bool = True          # read every photo's hash (cached) to find rotated copies
    use_capture_time: bool = True    # EXIF capture times overrule the pixels (see decide)

    def __post_init__(self) -> None:
        if self.verify not in VERIFY:
            raise DuplicatesError(f"unknown verify mode {self.verify!r}; choose one of: {', '.join(VERIFY)}")
        if not -1.0 <= self.min_similarity <= 1.0:
            raise DuplicatesError(f"min_similarity must be a cosine in [-1, 1], got {self.min_similarity}")
        if self.k < 1:
            raise DuplicatesError(f"k must be at least 1, got {self.k}")


@dataclass(frozen=True)
class DuplicateMember:
    """One photo of a group: `score` is its CLIP similarity to the keeper, `why` what it is."""

    path: str
    id: int
    score: float
    why: str
    width: int | None = None
    height: int | None = None
    file_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "id": self.id, "score": round(self.score, 4), "why": self.why,
                "width": self.width, "height": self.height, "file_size": self.file_size}


@dataclass(frozen=True)
class DuplicateGroup:
    """Photos of one picture ("copies") or one moment ("moments"); `keep` is the suggested keeper's path."""

    level: str
    keep: str
    keep_id: int
    reason: str
    members: tuple[DuplicateMember, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "keep": self.keep, "keep_id": self.keep_id, "reason": self.reason,
                "members": [m.to_dict() for m in self.members]}

    @property
    def others(self) -> tuple[DuplicateMember, ...]:
        """The members that are not the keeper."""
        return tuple(m for m in self.members if m.id != self.keep_id)


@dataclass(frozen=True)
class PairDecision:
    """What was decided for one candidate pair, and from what."""

    a: int                      # catalog ids
    b: int
    level: str | None           # "copy", "moment" or None
    clip: float
    hash_distance: int
    evidence: PairEvidence | None = None
    seconds_apart: float | None = None
    note: str = ""


@dataclass
class DuplicateReport:
    """Counts of one run, for logging and benchmarks."""

    photos: int = 0
    clip_pairs: int = 0
    hash_pairs: int = 0
    compared: int = 0
    unreadable: list[str] = field(default_factory=list)
    decisions: list[PairDecision] = field(default_factory=list)


class _SignatureSource:
    """Signatures and facts of catalogued photos: facts cached on disk, signatures for this run."""

    def __init__(self, rows: dict[int, "ImageRow"], cache: FactsCache, keep: int = 1024) -> None:
        self.rows = rows
        self.cache = cache
        self.facts: dict[int, PhotoFacts] = {}
        self._sigs: OrderedDict[int, Signature | None] = OrderedDict()
        self._keep = keep
        self.unreadable: list[str] = []

    def load_facts(self, ids: Iterable[int], progress: bool = False) -> None:
        ids = [i for i in ids if i not in self.facts]
        self.facts.update(self.cache.get(self.rows[i] for i in ids))
        missing = [i for i in ids if i not in self.facts]
        if not missing:
            return
        from tqdm import tqdm

        new: list[tuple[Any, PhotoFacts]] = []
        for i in tqdm(missing, desc="reading photos", unit="photo", disable=not progress):
            self.signature(i)
            if i in self.facts:
                new.append((self.rows[i], self.facts[i]))
            if len(new) >= 256:
                self.cache.put(new)
                new = []
        self.cache.put(new)

    def signature(self, image_id: int) -> Signature | None:
        if image_id in self._sigs:
            self._sigs.move_to_end(image_id)
            return self._sigs[image_id]
        row = self.rows[image_id]
        try:
            sig, facts = read_photo(row.path)
        except (ImageLoadError, OSError) as exc:
            log.warning("duplicates: skipping %s (%s)", row.path, exc)
            self.unreadable.append(row.path)
            sig = None
        else:
            self.facts.setdefault(image_id, facts)
        self._sigs[image_id] = sig
        if len(self._sigs) > self._keep:
            self._sigs.popitem(last=False)
        return sig


def decide(sig_a: Signature | None, sig_b: Signature | None, facts_a: PhotoFacts | None, facts_b: PhotoFacts | None,
           clip: float, hash_distance: int, options: DuplicateOptions, a: int = 0, b: int = 0, *,
           rotation: int = 0) -> PairDecision:
    """The level of one candidate pair from the evidence that fits it (see the module docstring)."""
    evidence = None
    if options.verify == "pixels":
        if hash_distance > options.max_pixel_hash:
            return PairDecision(a, b, None, clip, hash_distance, note="hashes unrelated")
        if sig_a is None or sig_b is None:
            return PairDecision(a, b, None, clip, hash_distance, note="unreadable")
        evidence = compare(sig_a, sig_b)
        level = evidence.level
    else:
        rotated = rotation != 0   # the hashes agree best with one of them turned
        if hash_distance <= options.fast_copy_hash and (clip >= options.fast_copy_clip or rotated):
            level = "copy"
        elif hash_distance <= options.fast_moment_hash and clip >= options.fast_moment_clip:
            level = "moment"
        else:
            level = None
    seconds = None
    note = evidence.reason if evidence else ""
    if (options.use_capture_time and facts_a is not None and facts_b is not None and facts_a.taken_ts is not None
            and facts_b.taken_ts is not None):
        seconds = abs(facts_a.taken_ts - facts_b.taken_ts)
        if level == "copy" and seconds >= 1.0:
            level = "moment" if seconds <= options.moment_seconds else None
            note = f"taken {seconds:.0f} s apart: different shots"
        elif level == "moment" and seconds > options.moment_seconds:
            level, note = None, f"taken {seconds:.0f} s apart: not one moment"
        elif (level is None and seconds <= options.moment_seconds and clip >= options.fast_moment_clip
              and hash_distance <= options.fast_moment_hash):
            # The pixels could not line the two up (much moved), but they show the same scene
            # by CLIP and hash and were taken seconds apart: one moment.
            level, note = "moment", f"same scene, taken {seconds:.0f} s apart"
    return PairDecision(a, b, level, clip, hash_distance, evidence, seconds, note)


def fast_levels(clip: np.ndarray, hash_distance: np.ndarray, rotation: np.ndarray, taken_a: np.ndarray,
                taken_b: np.ndarray, options: DuplicateOptions) -> np.ndarray:
    """`decide` with verify="fast", for many pairs at once: "copy", "moment" or "" per pair.

    `taken_a`, `taken_b`: capture times (NaN when unknown).
    """
    copy = (hash_distance <= options.fast_copy_hash) & ((clip >= options.fast_copy_clip) | (rotation != 0))
    moment = ~copy & (hash_distance <= options.fast_moment_hash) & (clip >= options.fast_moment_clip)
    out = np.where(copy, "copy", np.where(moment, "moment", "")).astype(object)
    if options.use_capture_time:
        seconds = np.abs(taken_a - taken_b)
        known = ~np.isnan(seconds)
        shots = known & copy & (seconds >= 1.0)
        out[shots & (seconds <= options.moment_seconds)] = "moment"
        out[shots & (seconds > options.moment_seconds)] = ""
        out[known & moment & (seconds > options.moment_seconds)] = ""
        # Taken at the same instant and alike: one shot (the fast rule cannot see a crop or
        # a caption; the capture time can). A burst within one second without sub-second
        # times in its EXIF would be taken for copies here: verify="pixels" tells them apart.
        out[known & moment & (seconds < 0.5)] = "copy"
        near = known & (out == "") & (seconds <= options.moment_seconds) & (clip >= options.fast_moment_clip) \
            & (hash_distance <= options.fast_moment_hash)
        out[near] = "moment"
    return out


def inherit_capture_times(pairs: np.ndarray, pair_levels: Sequence[str | None], taken: np.ndarray,
                          options: DuplicateOptions) -> list[str | None]:
    """Drop moment edges whose photos were taken further apart than `moment_seconds`, where a photo
    without a capture time (a PNG export) has the capture time of the copies it was grouped with."""
    if not options.use_capture_time:
        return list(pair_levels)
    n = len(taken)
    joined = _UnionFind(n)
    for (p, q), lv in zip(pairs.tolist(), pair_levels):
        if lv == "copy":
            joined.union(p, q)
    family: dict[int, list[float]] = {}
    for pos in np.flatnonzero(~np.isnan(taken)).tolist():
        family.setdefault(joined.find(pos), []).append(float(taken[pos]))

    def when(pos: int) -> float | None:
        if not np.isnan(taken[pos]):
            return float(taken[pos])
        times = family.get(joined.find(pos))
        return float(np.median(times)) if times else None

    out = list(pair_levels)
    for k, ((p, q), lv) in enumerate(zip(pairs.tolist(), pair_levels)):
        if lv == "moment":
            a, b = when(p), when(q)
            if a is not None and b is not None and abs(a - b) > options.moment_seconds:
                out[k] = None
    return out


def stored_capture_times(catalog: "Catalog", ids: np.ndarray) -> np.ndarray:
    """Capture times from EXIF in the catalog's metadata columns (NaN where unknown or not stored)."""
    from clipsearch.duplicates.facts import CAPTURE_SOURCES

    out = np.full(len(ids), np.nan)
    if not {"taken_ts", "taken_source"} <= catalog.fact_columns:
        return out
    found = catalog.facts(ids.tolist(), ["taken_ts", "taken_source"])
    for pos, i in enumerate(ids.tolist()):
        row = found.get(i, {})
        if row.get("taken_ts") is not None and row.get("taken_source") in CAPTURE_SOURCES:
            out[pos] = float(row["taken_ts"])
    return out


def stored_hashes(catalog: "Catalog", ids: np.ndarray) -> np.ndarray:
    """The catalog's `phash` column for `ids` (-1 where missing, or when the catalog has no such column)."""
    out = np.full(len(ids), -1, np.int64)
    if "phash" not in catalog.fact_columns:
        return out
    found = catalog.facts(ids.tolist(), ["phash"])
    for pos, i in enumerate(ids.tolist()):
        value = found.get(i, {}).get("phash")
        if value is not None:
            out[pos] = int(value)
    return out


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def same(self, a: int, b: int) -> bool:
        return self.find(a) == self.find(b)


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in edges:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def group_pairs(n: int, pairs: np.ndarray, levels: Sequence[str | None], level: str) -> list[list[int]]:
    """Groups (lists of positions, 2 or more) of one level from per-pair levels.

    "copies": components of copy edges. "moments": components of copy and moment edges that
    hold at least one moment edge (a burst, with any copies of its shots).
    """
    levels = np.array([lv or "" for lv in levels])
    if level == "copies":
        edges = pairs[levels == "copy"]
    else:
        edges = pairs[(levels == "copy") | (levels == "moment")]
    if not len(edges):
        return []
    touched = np.unique(edges)
    local = {int(p): i for i, p in enumerate(touched)}
    comp = _components(len(touched), np.vectorize(local.get)(edges))
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(comp):
        groups.setdefault(int(c), []).append(int(touched[i]))
    out = [sorted(g) for g in groups.values() if len(g) > 1]
    if level == "moments":
        moment_nodes = set(np.unique(pairs[levels == "moment"]).tolist())
        out = [g for g in out if moment_nodes.intersection(g)]
    return sorted(out, key=lambda g: g[0])


def choose_keeper(facts: dict[int, PhotoFacts], ids: Sequence[int], level: str) -> tuple[int, str]:
    """The member to keep and why: copies prefer the largest, then the original format, metadata,
    the least compressed and the sharpest; moments the sharpest, then the largest."""
    ids = [i for i in ids if i in facts] or list(ids)
    if len(ids) == 1 or not all(i in facts for i in ids):
        return ids[0], "first found"
    f = facts
    steps: list[tuple[str, Callable[[int], float], Callable[[int], str]]] = [
        ("largest", lambda i: f[i].pixels, lambda i: f"largest ({f[i].width}×{f[i].height})"),
        ("format", lambda i: float((f[i].file_type or "") in CAMERA_FORMATS),
         lambda i: f"original format ({(f[i].file_type or '?').upper()})"),
        ("metadata", lambda i: float(f[i].has_metadata), lambda i: "has camera metadata"),
        ("compression", lambda i: f[i].bytes_per_pixel,
         lambda i: f"least compressed ({f[i].bytes_per_pixel:.2f} bytes/pixel)"),
        ("sharpness", lambda i: f[i].sharpness, lambda i: f"sharpest (Laplacian variance {f[i].sharpness:.0f})"),
    ]
    if level == "moments":
        steps = [steps[4], steps[0], *steps[1:4]]
    tolerance = {"largest": 0.02, "compression": 0.05, "sharpness": 0.05}
    left = list(ids)
    for name, key, say in steps:
        best = max(key(i) for i in left)
        slack = abs(best) * tolerance.get(name, 0.0)
        top = [i for i in left if key(i) >= best - slack - 1e-12]
        if len(top) < len(left):
            # Of equals, the one catalogued first (usually the camera's file).
            return min(top), say(min(top))
        left = top
    return min(left), "all alike; the first catalogued"


def _why(member: int, keeper: int, level: str, facts: dict[int, PhotoFacts], decision: PairDecision | None) -> str:
    f, k = facts.get(member), facts.get(keeper)
    if level == "moments":
        if decision is not None and decision.level == "copy":
            return "a copy of another shot of this moment"
        if decision is not None and decision.seconds_apart is not None:
            return f"another shot, {decision.seconds_apart:.0f} s apart"
        return "another shot of this moment"
    parts = []
    ev = decision.evidence if decision else None
    if f is not None and k is not None:
        if f.pixels < 0.98 * k.pixels:
            parts.append(f"smaller ({f.width}×{f.height})")
        if (f.file_type or "") != (k.file_type or ""):
            parts.append(f"{(f.file_type or '?').upper()}")
        if k.has_metadata and not f.has_metadata:
            parts.append("no metadata")
    if ev is not None:
        if ev.rotation:
            parts.append(f"rotated {ev.rotation}°")
        if ev.crop < 0.97:
            parts.append(f"cropped ({ev.crop:.0%} of the area)")
        if ev.changed > 0.03:
            parts.append("retouched or overlaid")
    return "copy" + (": " + ", ".join(parts) if parts else "")


def find_duplicates(catalog: "Catalog", dim: int, *, level: str = "copies", folder: str | None = None,
                    options: DuplicateOptions | None = None, cache: FactsCache | None = None,
                    progress: bool = False, report: DuplicateReport | None = None) -> list[DuplicateGroup]:
    """Groups of copies or of moments among the catalog's indexed photos (under `folder` when given)."""
    if level not in LEVELS:
        raise DuplicatesError(f"unknown level {level!r}; choose one of: {', '.join(LEVELS)}")
    return find_all_duplicates(catalog, dim, levels=(level,), folder=folder, options=options, cache=cache,
                               progress=progress, report=report)[level]


def find_all_duplicates(catalog: "Catalog", dim: int, *, levels: Sequence[str] = LEVELS, folder: str | None = None,
                        options: DuplicateOptions | None = None, cache: FactsCache | None = None,
                        progress: bool = False, report: DuplicateReport | None = None
                        ) -> dict[str, list[DuplicateGroup]]:
    """The groups of each of `levels` from one pass over the candidate pairs: {level: groups}."""
    for level in levels:
        if level not in LEVELS:
            raise DuplicatesError(f"unknown level {level!r}; choose one of: {', '.join(LEVELS)}")
    empty: dict[str, list[DuplicateGroup]] = {level: [] for level in levels}
    options = options or DuplicateOptions()
    report = report if report is not None else DuplicateReport()
    cache = cache or FactsCache(None)
    if folder is not None:
        folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
        ids = catalog.ids_under(folder)
        if not len(ids):
            return empty
    else:
        ids = None
    ids, vectors = catalog.vectors_of(None if ids is None else ids.tolist(), dim)
    n = len(ids)
    report.photos = n
    if n < 2:
        return empty
    rows = catalog.get_images(ids.tolist())
    source = _SignatureSource(rows, cache)
    cpairs, csims = clip_pairs(vectors, options.k, options.min_similarity)
    report.clip_pairs = len(cpairs)
    hashes = np.full(n, -1, np.int64)
    if options.use_hashes:
        stored = stored_hashes(catalog, ids)
        hashes[:] = stored
        missing = ids[stored < 0].tolist()
        if missing:
            log.info("duplicates: %d photos have no stored hash; reading them (run `clipsearch index` to "
                     "store them)", len(missing))
            source.load_facts(missing, progress=progress)
            for pos, i in enumerate(ids.tolist()):
                if hashes[pos] < 0 and i in source.facts:
                    hashes[pos] = source.facts[i].phash
        hpairs, _ = hash_pairs(hashes, options.max_hash_distance)
    else:
        hpairs = np.zeros((0, 2), np.int64)
    report.hash_pairs = len(hpairs)
    pairs = np.unique(np.concatenate([cpairs, hpairs]), axis=0) if len(hpairs) else cpairs
    if not len(pairs):
        return empty
    clip = np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]])
    if options.verify == "pixels":
        # Format, metadata and capture time of the candidates' members (pixels read them anyway).
        source.load_facts(np.unique(ids[pairs]).tolist(), progress=progress)
        for pos in np.unique(pairs):
            f = source.facts.get(int(ids[pos]))
            if f is not None and hashes[pos] < 0:
                hashes[pos] = f.phash
    known = (hashes[pairs[:, 0]] >= 0) & (hashes[pairs[:, 1]] >= 0)
    hd = np.full(len(pairs), 64, np.int64)
    hrot = np.zeros(len(pairs), np.int64)
    if known.any():
        hd[known], hrot[known] = hash_distances(hashes, pairs[known], with_rotation=True)
    if options.verify == "fast":
        taken = stored_capture_times(catalog, ids)
        levels_arr = fast_levels(clip, hd, hrot, taken[pairs[:, 0]], taken[pairs[:, 1]], options)
        pair_levels = inherit_capture_times(pairs, [lv or None for lv in levels_arr.tolist()], taken, options)
        decisions = {}
        for (p, q), lv, sim, dist in zip(pairs.tolist(), pair_levels, clip.tolist(), hd.tolist()):
            if lv is not None:
                d = PairDecision(int(ids[p]), int(ids[q]), lv, float(sim), int(dist))
                decisions[(d.a, d.b)] = decisions[(d.b, d.a)] = d
                report.decisions.append(d)
        report.compared = len(pairs)
        # The keeper's evidence, for the grouped photos only.
        grouped = {p for level in levels for g in group_pairs(n, pairs, pair_levels, level) for p in g}
        source.load_facts(sorted(int(ids[p]) for p in grouped), progress=progress)
        report.unreadable = sorted(set(source.unreadable))
        return {level: _build_groups(level, n, pairs, pair_levels, ids, vectors, rows, source.facts, decisions)
                for level in levels}
    from tqdm import tqdm

    pair_levels: list[str | None] = []
    decisions: dict[tuple[int, int], PairDecision] = {}
    # Most alike first; a pair already joined by copies needs no comparison of its own
    # (copies of copies are copies): a family of m copies costs about m comparisons, not m²/2.
    order = np.lexsort((-clip, hd))
    pairs, clip, hd, hrot = pairs[order], clip[order], hd[order], hrot[order]
    joined = _UnionFind(n)
    for (p, q), sim, dist, turn in tqdm(zip(pairs.tolist(), clip.tolist(), hd.tolist(), hrot.tolist()), total=len(pairs),
                                  desc="comparing", unit="pair", disable=not progress):
        a, b = int(ids[p]), int(ids[q])
        if joined.same(p, q):
            pair_levels.append("copy")
            continue
        pixels = options.verify == "pixels" and dist <= options.max_pixel_hash
        d = decide(source.signature(a) if pixels else None, source.signature(b) if pixels else None,
                   source.facts.get(a), source.facts.get(b), float(sim), int(dist), options, a, b, rotation=int(turn))
        pair_levels.append(d.level)
        if d.level == "copy":
            joined.union(p, q)
        decisions[(a, b)] = decisions[(b, a)] = d
        report.decisions.append(d)
    report.compared = len(report.decisions)
    report.unreadable = sorted(set(source.unreadable))
    taken = np.array([(source.facts[int(i)].taken_ts if int(i) in source.facts
                       and source.facts[int(i)].taken_ts is not None else np.nan) for i in ids.tolist()])
    pair_levels = inherit_capture_times(pairs, pair_levels, taken, options)
    return {level: _build_groups(level, n, pairs, pair_levels, ids, vectors, rows, source.facts, decisions)
            for level in levels}


def _build_groups(level: str, n: int, pairs: np.ndarray, pair_levels: list[str | None], ids: np.ndarray,
                  vectors: np.ndarray, rows: dict, facts: dict[int, PhotoFacts],
                  decisions: dict[tuple[int, int], PairDecision]) -> list[DuplicateGroup]:
    groups = []
    level_word = level
    for members in group_pairs(n, pairs, pair_levels, level):
        member_ids = [int(ids[p]) for p in members]
        keeper, reason = choose_keeper(facts, member_ids, level_word)
        kvec = vectors[members[member_ids.index(keeper)]]
        out = []
        for pos, mid in zip(members, member_ids):
            row = rows[mid]
            f = facts.get(mid)
            why = f"keep: {reason}" if mid == keeper else _why(mid, keeper, level_word, facts,
                                                               decisions.get((keeper, mid)) or _any_edge(decisions, mid, member_ids))
            out.append(DuplicateMember(row.path, mid, float(vectors[pos] @ kvec), why,
                                       f.width if f else row.width, f.height if f else row.height,
                                       f.file_size if f else row.size))
        out.sort(key=lambda m: (m.id != keeper, -m.score, m.path))
        groups.append(DuplicateGroup(level_word, rows[keeper].path, keeper, reason, tuple(out)))
    return groups


def _any_edge(decisions: dict[tuple[int, int], PairDecision], member: int, group: Sequence[int]) -> PairDecision | None:
    for other in group:
        d = decisions.get((member, other))
        if d is not None and d.level is not None:
            return d
    return None
