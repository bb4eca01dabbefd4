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
import time
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
    seconds: dict[str, float] = field(default_factory=dict)   # wall time of each stage, in order

    cpu_seconds: dict[str, float] = field(default_factory=dict)   # and its CPU time (this process, all threads)
    peak_rss_gb: dict[str, float] = field(default_factory=dict)   # the process's peak RSS at each stage's end

    def lap(self, stage: str, since: tuple[float, float]) -> tuple[float, float]:
        """Add the wall and CPU time from `since` (a previous lap's return, or `clock()`) to `stage`."""
        now = clock()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now[0] - since[0]
        self.cpu_seconds[stage] = self.cpu_seconds.get(stage, 0.0) + now[1] - since[1]
        try:
            import resource

            self.peak_rss_gb[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        except ImportError:   # not on Unix
            pass
        return now


def clock() -> tuple[float, float]:
    """(wall, process CPU) seconds, for `DuplicateReport.lap`."""
    return time.perf_counter(), time.process_time()


class _Rows(dict):
    """Catalog rows by id, fetched when first asked for (`need` fetches many in one go)."""

    def __init__(self, catalog: "Catalog") -> None:
        super().__init__()
        self.catalog = catalog

    def need(self, ids: Iterable[int]) -> None:
        missing = [int(i) for i in ids if int(i) not in self]
        if missing:
            self.update(self.catalog.get_images(missing))

    def __missing__(self, image_id: int) -> "ImageRow":
        self.need([image_id])
        return dict.__getitem__(self, image_id)


class _SignatureSource:
    """Signatures and facts of catalogued photos: facts cached on disk, signatures for this run."""

    def __init__(self, rows: "_Rows", cache: FactsCache, keep: int = 1024) -> None:
        self.rows = rows
        self.cache = cache
        self.facts: dict[int, PhotoFacts] = {}
        self._sigs: OrderedDict[int, Signature | None] = OrderedDict()
        self._keep = keep
        self.unreadable: list[str] = []

    def load_facts(self, ids: Iterable[int], progress: bool = False) -> None:
        ids = [i for i in ids if i not in self.facts]
        self.rows.need(ids)
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


# Per-pair levels as small integers: millions of candidate pairs hold no Python object each.
NO_LEVEL, COPY, MOMENT = 0, 1, 2
_LEVEL_NAMES = np.array(["", "copy", "moment"], dtype=object)


def level_codes(levels: Sequence[str | None] | np.ndarray) -> np.ndarray:
    """int8 codes (0 none, 1 copy, 2 moment) of per-pair levels given as names (or already as codes)."""
    arr = np.asarray(levels)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int8)
    arr = np.asarray(levels, dtype=object)
    return ((arr == "copy") * COPY + (arr == "moment") * MOMENT).astype(np.int8)


def fast_codes(clip: np.ndarray, hash_distance: np.ndarray, rotation: np.ndarray, taken_a: np.ndarray,
               taken_b: np.ndarray, options: DuplicateOptions) -> np.ndarray:
    """`decide` with verify="fast", for many pairs at once, as `level_codes` (int8 per pair).

    `taken_a`, `taken_b`: capture times (NaN when unknown).
    """
    copy = (hash_distance <= options.fast_copy_hash) & ((clip >= options.fast_copy_clip) | (rotation != 0))
    moment = ~copy & (hash_distance <= options.fast_moment_hash) & (clip >= options.fast_moment_clip)
    out = np.where(copy, COPY, np.where(moment, MOMENT, NO_LEVEL)).astype(np.int8)
    if options.use_capture_time:
        seconds = np.abs(taken_a - taken_b)
        known = ~np.isnan(seconds)
        shots = known & copy & (seconds >= 1.0)
        out[shots & (seconds <= options.moment_seconds)] = MOMENT
        out[shots & (seconds > options.moment_seconds)] = NO_LEVEL
        out[known & moment & (seconds > options.moment_seconds)] = NO_LEVEL
        # Taken at the same instant and alike: one shot (the fast rule cannot see a crop or
        # a caption; the capture time can). A burst within one second without sub-second
        # times in its EXIF would be taken for copies here: verify="pixels" tells them apart.
        out[known & moment & (seconds < 0.5)] = COPY
    return out


def fast_levels(clip: np.ndarray, hash_distance: np.ndarray, rotation: np.ndarray, taken_a: np.ndarray,
                taken_b: np.ndarray, options: DuplicateOptions) -> np.ndarray:
    """`fast_codes` as names: "copy", "moment" or "" per pair (an object array)."""
    return _LEVEL_NAMES[fast_codes(clip, hash_distance, rotation, taken_a, taken_b, options)]


def components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected component label of each of n nodes joined by `edges` ((E, 2) positions)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.asarray(edges).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def inherit_capture_times(pairs: np.ndarray, pair_levels: Sequence[str | None] | np.ndarray, taken: np.ndarray,
                          options: DuplicateOptions) -> list[str | None] | np.ndarray:
    """Drop moment edges whose photos were taken further apart than `moment_seconds`, where a photo
    without a capture time (a PNG export) has the capture time of the copies it was grouped with.

    Levels given as `level_codes` come back as codes; names (a list) come back as names.
    """
    as_codes = isinstance(pair_levels, np.ndarray) and pair_levels.dtype.kind in "iu"
    codes = level_codes(pair_levels).copy()
    moments = np.flatnonzero(codes == MOMENT)
    if options.use_capture_time and len(moments):
        n = len(taken)
        when = np.asarray(taken, np.float64).copy()
        missing = np.isnan(when)
        ends = np.unique(pairs[moments])
        if missing[ends].any() and not missing.all():
            # A photo without a time takes the median time of its copies (its copy component).
            label = components(n, pairs[codes == COPY])
            dated = np.flatnonzero(~missing)
            order = dated[np.lexsort((when[dated], label[dated]))]
            lab = label[order]
            start = np.r_[0, np.flatnonzero(lab[1:] != lab[:-1]) + 1]
            stop = np.r_[start[1:], len(order)]
            median = 0.5 * (when[order[(start + stop - 1) // 2]] + when[order[(start + stop) // 2]])
            family = np.full(n, np.nan)
            family[lab[start]] = median
            when[missing] = family[label[missing]]
        a, b = when[pairs[moments, 0]], when[pairs[moments, 1]]
        far = ~np.isnan(a) & ~np.isnan(b) & (np.abs(a - b) > options.moment_seconds)
        codes[moments[far]] = NO_LEVEL
    if as_codes:
        return codes
    return [lv or None for lv in _LEVEL_NAMES[codes].tolist()]


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
    if "phash" not in catalog.fact_columns or not len(ids):
        return out
    found = catalog.facts(ids.tolist(), ["phash"])
    got = np.fromiter((k for k, v in found.items() if v["phash"] is not None), np.int64)
    val = np.fromiter((v["phash"] for v in found.values() if v["phash"] is not None), np.int64, len(got))
    order = np.argsort(got)
    got, val = got[order], val[order]
    at = np.clip(np.searchsorted(got, ids), 0, max(0, len(got) - 1))
    hit = (at < len(got)) & (got[at] == ids) if len(got) else np.zeros(len(ids), bool)
    out[hit] = val[at[hit]]
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


def group_pairs(n: int, pairs: np.ndarray, levels: Sequence[str | None] | np.ndarray, level: str) -> list[list[int]]:
    """Groups (sorted lists of positions, 2 or more) of one level from per-pair levels (names or `level_codes`).

    "copies": components of copy edges. "moments": components of copy and moment edges that
    hold at least one moment edge (a burst, with any copies of its shots).
    """
    codes = level_codes(levels)
    pairs = np.asarray(pairs).reshape(-1, 2)
    edges = pairs[codes == COPY] if level == "copies" else pairs[codes != NO_LEVEL]
    if not len(edges):
        return []
    label = components(n, edges)
    touched = np.unique(edges)
    if level == "moments":
        keep = np.zeros(label.max() + 1, bool)
        keep[label[pairs[codes == MOMENT, 0]]] = True
        touched = touched[keep[label[touched]]]
    order = touched[np.argsort(label[touched], kind="stable")]
    lab = label[order]
    cuts = np.flatnonzero(lab[1:] != lab[:-1]) + 1
    out = [g.tolist() for g in np.split(order, cuts) if len(g) > 1]
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
    t0 = clock()
    ids, vectors = read_vectors(catalog, dim, ids)
    n = len(ids)
    report.photos = n
    if n < 2:
        return empty
    t0 = report.lap("read vectors", t0)
    rows = _Rows(catalog)
    source = _SignatureSource(rows, cache)
    cpairs, csims = clip_pairs(vectors, options.k, options.min_similarity)
    report.clip_pairs = len(cpairs)
    t0 = report.lap("CLIP neighbours", t0)
    hashes = np.full(n, -1, np.int64)
    if options.use_hashes:
        stored = stored_hashes(catalog, ids)
        hashes[:] = stored
        missing = ids[stored < 0].tolist()
        if missing:
            log.info("duplicates: %d photos have no stored hash; reading them (run `clipsearch index` to "
                     "store them)", len(missing))
            source.load_facts(missing, progress=progress)
            for pos in np.flatnonzero(stored < 0).tolist():
                f = source.facts.get(int(ids[pos]))
                if f is not None:
                    hashes[pos] = f.phash
        t0 = report.lap("read hashes", t0)
        hpairs, _ = hash_pairs(hashes, options.max_hash_distance)
        t0 = report.lap("hash buckets", t0)
    else:
        hpairs = np.zeros((0, 2), np.int32)
    report.hash_pairs = len(hpairs)
    pairs, clip = _merge_pairs(cpairs, csims, hpairs, n)
    del cpairs, csims, hpairs
    if not len(pairs):
        return empty
    todo = np.flatnonzero(np.isnan(clip))       # hash pairs the neighbour search did not meet
    clip[todo] = _pair_similarity(vectors, pairs[todo])
    if options.verify == "pixels":
        # Format, metadata and capture time of the candidates' members (pixels read them anyway).
        source.load_facts(ids[np.unique(pairs)].tolist(), progress=progress)
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
        codes = fast_codes(clip, hd, hrot, taken[pairs[:, 0]], taken[pairs[:, 1]], options)
        codes = inherit_capture_times(pairs, codes, taken, options)
        report.compared = len(pairs)
        t0 = report.lap("decisions", t0)
        # Only the pairs with a level become objects (decisions, groups): a few per grouped photo.
        edges = np.flatnonzero(codes != NO_LEVEL)
        pairs, clip, hd, codes = pairs[edges], clip[edges], hd[edges], codes[edges]
        decisions = {}
        for (p, q), code, sim, dist in zip(pairs.tolist(), codes.tolist(), clip.tolist(), hd.tolist()):
            d = PairDecision(int(ids[p]), int(ids[q]), str(_LEVEL_NAMES[code]), float(sim), int(dist))
            decisions[(d.a, d.b)] = decisions[(d.b, d.a)] = d
            report.decisions.append(d)
        grouped = {level: group_pairs(n, pairs, codes, level) for level in levels}
        # The keeper's evidence, for the grouped photos only.
        members = sorted({int(ids[p]) for gs in grouped.values() for g in gs for p in g})
        source.load_facts(members, progress=progress)
        report.unreadable = sorted(set(source.unreadable))
        out = {level: _build_groups(level, grouped[level], ids, vectors, rows, source.facts, decisions)
               for level in levels}
        report.lap("groups and keepers", t0)
        return out
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
    codes = inherit_capture_times(pairs, level_codes(pair_levels), taken, options)
    return {level: _build_groups(level, group_pairs(n, pairs, codes, level), ids, vectors, rows, source.facts,
                                 decisions) for level in levels}


def read_vectors(catalog: "Catalog", dim: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 vectors) stored for `ids` (all when None), read in blocks into one array:
    the peak is the vectors once (2 GB for a million 512-d photos), not twice."""
    cap = len(ids) if ids is not None else catalog.count(None)
    out_ids = np.empty(cap, np.int64)
    out = np.empty((cap, dim), np.float32)
    filled = 0
    for block_ids, block in catalog.iter_vectors(dim, ids=None if ids is None else ids.tolist()):
        if filled + len(block) > len(out):   # more vectors than rows (never expected): grow
            out = np.concatenate([out, np.empty((len(block) + len(out), dim), np.float32)])
            out_ids = np.concatenate([out_ids, np.empty(len(block) + len(out_ids), np.int64)])
        out_ids[filled:filled + len(block)] = block_ids
        out[filled:filled + len(block)] = block
        filled += len(block)
    if filled < len(out) // 2:
        return out_ids[:filled].copy(), out[:filled].copy()
    return out_ids[:filled], out[:filled]


def _merge_pairs(clip_found: np.ndarray, sims: np.ndarray, hash_found: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted union of CLIP and hash (i < j) position pairs as int32, each one's CLIP
    similarity where the neighbour search found it, NaN for the hash pairs it did not)."""
    both = np.concatenate([np.asarray(clip_found, np.int64).reshape(-1, 2), np.asarray(hash_found, np.int64).reshape(-1, 2)])
    key, first = np.unique(both[:, 0] * n + both[:, 1], return_index=True)
    sim = np.full(len(key), np.nan, np.float32)
    from_clip = first < len(clip_found)
    sim[from_clip] = sims[first[from_clip]]
    return np.stack([key // n, key % n], 1).astype(np.int32), sim


def _pair_similarity(vectors: np.ndarray, pairs: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Cosine of each pair's two (unit) vectors, in batches (float32)."""
    out = np.empty(len(pairs), np.float32)
    for start in range(0, len(pairs), batch):
        p = pairs[start:start + batch]
        out[start:start + len(p)] = (np.asarray(vectors[p[:, 0]], np.float32)
                                     * np.asarray(vectors[p[:, 1]], np.float32)).sum(axis=1)
    return out


def _build_groups(level: str, grouped: list[list[int]], ids: np.ndarray, vectors: np.ndarray, rows: "_Rows",
                  facts: dict[int, PhotoFacts], decisions: dict[tuple[int, int], PairDecision]) -> list[DuplicateGroup]:
    groups = []
    level_word = level
    rows.need(int(ids[p]) for members in grouped for p in members)
    for members in grouped:
        member_ids = [int(ids[p]) for p in members]
        keeper, reason = choose_keeper(facts, member_ids, level_word)
        kvec = np.asarray(vectors[members[member_ids.index(keeper)]], np.float32)
        out = []
        for pos, mid in zip(members, member_ids):
            row = rows[mid]
            f = facts.get(mid)
            why = f"keep: {reason}" if mid == keeper else _why(mid, keeper, level_word, facts,
                                                               decisions.get((keeper, mid)) or _any_edge(decisions, mid, member_ids))
            out.append(DuplicateMember(row.path, mid, float(np.asarray(vectors[pos], np.float32) @ kvec), why,
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
