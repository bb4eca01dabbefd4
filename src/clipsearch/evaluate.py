"""Retrieval and analogy metrics for any encoder on a captions csv.

Retrieval follows open_clip's / CLIP_benchmark's zero-shot retrieval benchmark: a query
is a hit at k when any relevant item is among its k best scores, averaged over queries.
Relevance is either the exact image–caption pairing (a user's own Flickr30k-style data,
several captions per image allowed) or, for the toy world, equality of the canonical
scene description. Analogy accuracy asks whether img(A) − text(a) + text(b) finds an
image of scene B, for scenes A and B that differ in exactly one attribute.
"""
from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from clipsearch.errors import ClipSearchError, DatasetError

if TYPE_CHECKING:
    from clipsearch.encoder import Encoder
    from clipsearch.toyworld import Scene

log = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10)
RELEVANCE_MODES = ("auto", "canonical", "exact")
# How the attribute words of an analogy are written. Of "{}", "a photo of {}", "a photo of
# something {}" and "{} scene", the last measured best (or tied) on two toyworld models, by
# 1 to 2 points; see docs/training.md.
DEFAULT_ANALOGY_TEMPLATE = "{} scene"
DEFAULT_MAX_ANALOGY_QUERIES = 2000


# ---------------------------------------------------------------------------------------
# The captions csv (open_clip's CsvDataset format), shared with training
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaptionRow:
    """One csv row: an image path (absolute), its caption, and the toy world's canonical text if any."""

    path: str
    title: str
    canonical: str | None = None


def read_captions_csv(csv_path: str | os.PathLike[str], *, check_files: bool = True) -> list[CaptionRow]:
    """Rows of a csv with `filepath` (relative to the csv's folder, or absolute) and `title` columns.

    Comma- or tab-separated (open_clip's default is tab). An optional `canonical` column is
    kept. Raises DatasetError naming the file, the missing column or the missing images.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise DatasetError(f"captions csv {path} does not exist; give a csv with filepath and title columns")
    base = path.resolve().parent
    with path.open(newline="", encoding="utf-8") as fh:
        first = fh.readline()
        fh.seek(0)
        delimiter = "\t" if "\t" in first and "," not in first else ","
        reader = csv.DictReader(fh, delimiter=delimiter)
        columns = reader.fieldnames or []
        for needed in ("filepath", "title"):
            if needed not in columns:
                raise DatasetError(f"{path} has no {needed!r} column (columns: {', '.join(columns) or 'none'}); "
                                   "a captions csv needs filepath and title")
        has_canonical = "canonical" in columns
        rows = []
        for line, rec in enumerate(reader, start=2):
            rel = (rec.get("filepath") or "").strip()
            if not rel:
                raise DatasetError(f"{path} line {line}: empty filepath")
            canonical = ((rec.get("canonical") or "").strip() or None) if has_canonical else None
            rows.append(CaptionRow(str(base / rel) if not os.path.isabs(rel) else rel,
                                   rec.get("title") or "", canonical))
    if not rows:
        raise DatasetError(f"{path} has a header but no rows")
    if check_files:
        missing = sorted({r.path for r in rows if not os.path.isfile(r.path)})
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DatasetError(f"{path}: {len(missing)} image files do not exist: {', '.join(missing[:3])}{more} "
                               f"(relative filepaths are read from {base})")
    return rows


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetrievalScores:
    """Recall@1/5/10 and mean reciprocal rank of one retrieval direction."""

    recall_at_1: float
    recall_at_5: float
    recall_at_10: float
    mrr: float
    queries: int


@dataclass(frozen=True)
class AnalogyScores:
    """How often img(A) − text(a) + text(b) ranks an image of scene B first / in the top 5."""

    top1: float
    top5: float
    queries: int
    pairs: int  # ordered pairs that differ in one attribute, before sampling `queries` of them
    template: str
    baseline_top5: float  # top-5 of img(A) alone, no arithmetic: what the text terms add beyond it
    per_attribute: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    """Every metric of one encoder on one csv."""

    csv: str
    relevance: str
    images: int
    texts: int
    text_to_image: RetrievalScores
    image_to_text: RetrievalScores
    analogy: AnalogyScores | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """The headline numbers as a flat dict (for metrics.jsonl and tables)."""
        out: dict[str, float] = {}
        for prefix, s in (("t2i", self.text_to_image), ("i2t", self.image_to_text)):
            out.update({f"{prefix}_R@1": s.recall_at_1, f"{prefix}_R@5": s.recall_at_5,
                        f"{prefix}_R@10": s.recall_at_10, f"{prefix}_MRR": s.mrr})
        if self.analogy is not None:
            out.update({"analogy_top1": self.analogy.top1, "analogy_top5": self.analogy.top5})
        return out


# ---------------------------------------------------------------------------------------
# Relevance
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalData:
    """Deduplicated images, one text per csv row, and integer labels: same label = relevant."""

    image_paths: list[str]
    texts: list[str]
    image_labels: np.ndarray
    text_labels: np.ndarray
    relevance: str
    image_scenes: list["Scene | None"]


def _parse_scene(text: str | None) -> "Scene | None":
    if not text:
        return None
    from clipsearch import toyworld

    try:
        return toyworld.parse_canonical(text)
    except ValueError:
        return None


def _scene_key(scene: "Scene") -> str:
    # "a red car left of a blue boat" and "a blue boat right of a red car" are one picture.
    from clipsearch import toyworld

    return min(toyworld.canonical(scene), toyworld.canonical(scene.swapped()))


def build_eval_data(rows: Sequence[CaptionRow], relevance: str = "auto") -> EvalData:
    """Group csv rows into images and texts and decide what counts as relevant."""
    if relevance not in RELEVANCE_MODES:
        raise ValueError(f"unknown relevance {relevance!r}; expected one of {RELEVANCE_MODES}")
    has_canonical = all(r.canonical for r in rows)
    if relevance == "canonical" and not has_canonical:
        raise DatasetError("relevance 'canonical' needs a canonical value on every csv row; "
                           "use relevance 'exact' for image–caption pairs")
    mode = relevance if relevance != "auto" else ("canonical" if has_canonical else "exact")

    image_index: dict[str, int] = {}
    image_canonical: list[str | None] = []
    for r in rows:
        if r.path not in image_index:
            image_index[r.path] = len(image_index)
            image_canonical.append(r.canonical)
        elif mode == "canonical" and image_canonical[image_index[r.path]] != r.canonical:
            raise DatasetError(f"{r.path} has two different canonical descriptions: "
                               f"{image_canonical[image_index[r.path]]!r} and {r.canonical!r}")
    scenes = [_parse_scene(c) for c in image_canonical]
    if mode == "exact":
        image_labels = np.arange(len(image_index))
        text_labels = np.array([image_index[r.path] for r in rows])
    else:
        def key(text: str) -> str:
            scene = _parse_scene(text)
            return _scene_key(scene) if scene is not None else text

        keys: dict[str, int] = {}
        image_labels = np.array([keys.setdefault(key(c), len(keys)) for c in image_canonical])  # type: ignore[arg-type]
        text_labels = np.array([keys.setdefault(key(r.canonical), len(keys)) for r in rows])  # type: ignore[arg-type]
    return EvalData(list(image_index), [r.title for r in rows], image_labels, text_labels, mode, scenes)


# ---------------------------------------------------------------------------------------
# Metrics over embeddings
# ---------------------------------------------------------------------------------------

def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _ranks(queries: np.ndarray, items: np.ndarray, relevant: Callable[[int, int], np.ndarray],
           exclude: np.ndarray | None = None, block: int = 1024) -> np.ndarray:
    """1-based rank of each query's best relevant item; ties with irrelevant items count against it.

    `relevant(start, stop)` gives the boolean (queries, items) relevance block; `exclude`
    (item index per query, or -1) drops one item from a query's candidates.
    """
    ranks = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), block):
        stop = min(start + block, len(queries))
        sims = queries[start:stop] @ items.T
        rel = relevant(start, stop)
        if exclude is not None:
            rows = np.arange(stop - start)
            cols = exclude[start:stop]
            keep = cols >= 0
            sims[rows[keep], cols[keep]] = -np.inf
            rel[rows[keep], cols[keep]] = False
        best = np.where(rel, sims, -np.inf).max(axis=1, keepdims=True)
        # Pessimistic ties: a constant encoder must not score perfectly.
        ranks[start:stop] = 1 + (sims > best).sum(axis=1) + ((sims == best) & ~rel).sum(axis=1)
        ranks[start:stop][~rel.any(axis=1)] = items.shape[0] + 1
    return ranks


def _retrieval(queries: np.ndarray, items: np.ndarray, q_labels: np.ndarray, i_labels: np.ndarray) -> RetrievalScores:
    ranks = _ranks(queries, items, lambda a, b: q_labels[a:b, None] == i_labels[None, :])
    recall = {k: float(np.mean(ranks <= k)) for k in RECALL_KS}
    return RetrievalScores(recall[1], recall[5], recall[10], float(np.mean(1.0 / ranks)), int(len(ranks)))


def analogy_pairs(scenes: Sequence["Scene | None"]) -> list[tuple[int, int, str, str, str]]:
    """Ordered (i, j, attribute, word in i, word in j) for every two scenes that differ in exactly one attribute."""
    from dataclasses import fields

    from clipsearch import toyworld

    names = [f.name for f in fields(toyworld.Scene)]
    buckets: dict[tuple[Any, ...], set[int]] = {}
    keys = []
    for i, scene in enumerate(scenes):
        if scene is None:
            keys.append(None)
            continue
        keys.append(_scene_key(scene))
        # Index both orientations of a relation scene, so pairs are found however each is written.
        for form in {scene, scene.swapped()}:
            values = [getattr(form, n) for n in names]
            for a, name in enumerate(names):
                buckets.setdefault((name, *values[:a], *values[a + 1:]), set()).add(i)
    candidates: set[tuple[int, int]] = set()
    for members in buckets.values():
        if len(members) > 1:
            ordered = sorted(members)
            candidates.update((i, j) for i in ordered for j in ordered if i != j)
    pairs = []
    for i, j in sorted(candidates):
        if keys[i] == keys[j]:
            continue
        diff = toyworld.scene_diff(scenes[i], scenes[j])  # type: ignore[arg-type]
        if len(diff) == 1:
            pairs.append((i, j, *diff[0]))
    return pairs


def score_embeddings(data: EvalData, image_vectors: np.ndarray, text_vectors: np.ndarray, *,
                     encode_texts: Callable[[list[str]], np.ndarray] | None = None, analogy: bool = True,
                     analogy_template: str = DEFAULT_ANALOGY_TEMPLATE,
                     max_analogy_queries: int = DEFAULT_MAX_ANALOGY_QUERIES, seed: int = 0,
                     csv_path: str = "", started: float | None = None) -> EvalResult:
    """All metrics from already computed embeddings (one row per `data.image_paths` / `data.texts`)."""
    started = time.perf_counter() if started is None else started
    if "{}" not in analogy_template:
        raise ClipSearchError(f"analogy template {analogy_template!r} needs a {{}} where the attribute word goes")
    images, texts = _normalise(image_vectors), _normalise(text_vectors)
    if len(images) != len(data.image_paths) or len(texts) != len(data.texts):
        raise ValueError(f"expected {len(data.image_paths)} image and {len(data.texts)} text vectors, "
                         f"got {len(images)} and {len(texts)}")
    t2i = _retrieval(texts, images, data.text_labels, data.image_labels)
    i2t = _retrieval(images, texts, data.image_labels, data.text_labels)
    scores = None
    if analogy and encode_texts is not None:
        scores = _analogy(data, images, encode_texts, analogy_template, max_analogy_queries, seed)
    return EvalResult(csv_path, data.relevance, len(images), len(texts), t2i, i2t, scores,
                      round(time.perf_counter() - started, 3))


def _analogy(data: EvalData, images: np.ndarray, encode_texts: Callable[[list[str]], np.ndarray],
             template: str, max_queries: int, seed: int) -> AnalogyScores | None:
    pairs = analogy_pairs(data.image_scenes)
    if not pairs:
        return None
    chosen = pairs
    if len(pairs) > max_queries:
        pick = np.random.default_rng(seed).choice(len(pairs), size=max_queries, replace=False)
        chosen = [pairs[p] for p in sorted(pick)]
    words = sorted({w for _, _, _, a, b in chosen for w in (a, b)})
    vectors = dict(zip(words, _normalise(encode_texts([template.format(w) for w in words]))))
    a_idx = np.array([i for i, *_ in chosen])
    b_idx = np.array([j for _, j, *_ in chosen])
    queries = _normalise(images[a_idx] - np.stack([vectors[a] for *_, a, _ in chosen])
                         + np.stack([vectors[b] for *_, b in chosen]))
    # Labels by scene, whatever the retrieval relevance: any image of scene B is a hit.
    ids: dict[str, int] = {}
    labels = np.array([ids.setdefault(_scene_key(s), len(ids)) if s is not None else -1 - i
                       for i, s in enumerate(data.image_scenes)])

    def relevant(start: int, stop: int) -> np.ndarray:
        return labels[b_idx[start:stop], None] == labels[None, :]

    ranks = _ranks(queries, images, relevant, exclude=a_idx)
    baseline = _ranks(images[a_idx], images, relevant, exclude=a_idx)
    per_attribute: dict[str, dict[str, float]] = {}
    attributes = np.array([attr for _, _, attr, _, _ in chosen])
    for attr in sorted(set(attributes)):
        r = ranks[attributes == attr]
        per_attribute[attr] = {"queries": int(len(r)), "top1": float(np.mean(r <= 1)), "top5": float(np.mean(r <= 5))}
    return AnalogyScores(float(np.mean(ranks <= 1)), float(np.mean(ranks <= 5)), len(chosen), len(pairs),
                         template, float(np.mean(baseline <= 5)), per_attribute)


# ---------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------

def _encode_image_files(encoder: "Encoder", paths: Sequence[str], batch_size: int, progress: bool) -> np.ndarray:
    from tqdm import tqdm

    from clipsearch.images import load_image

    from clipsearch.encoder import input_size

    target = input_size(encoder)
    out = [np.zeros((0, encoder.dim), np.float32)]
    with tqdm(total=len(paths), desc="encoding images", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            out.append(np.asarray(encoder.encode_images([load_image(p, target_size=target) for p in chunk],
                                                        batch_size=batch_size), dtype=np.float32))
            bar.update(len(chunk))
    return np.concatenate(out)


def evaluate(encoder: "Encoder", csv_path: str | os.PathLike[str], *, relevance: str = "auto",
             batch_size: int = 256, analogy: bool = True, analogy_template: str = DEFAULT_ANALOGY_TEMPLATE,
             max_analogy_queries: int = DEFAULT_MAX_ANALOGY_QUERIES, seed: int = 0,
             progress: bool = False) -> EvalResult:
    """Text→image and image→text Recall@1/5/10 and MRR, plus analogy accuracy for toy-world csvs.

    `relevance`: "canonical" (same canonical scene = relevant; the default when the csv has
    a canonical column), "exact" (a caption is relevant to its own image only) or "auto".
    Analogy needs parseable toy-world canonicals and is None otherwise.
    """
    started = time.perf_counter()
    data = build_eval_data(read_captions_csv(csv_path), relevance)
    image_vectors = _encode_image_files(encoder, data.image_paths, batch_size, progress)
    text_vectors = np.asarray(encoder.encode_texts(data.texts, batch_size=batch_size), dtype=np.float32)
    return score_embeddings(
        data, image_vectors, text_vectors,
        encode_texts=lambda t: np.asarray(encoder.encode_texts(t), dtype=np.float32),
        analogy=analogy, analogy_template=analogy_template, max_analogy_queries=max_analogy_queries,
        seed=seed, csv_path=str(csv_path), started=started)


# ---------------------------------------------------------------------------------------
# Relevance cutoffs (`min:auto`): toy-world queries whose captions say which photos match

CUTOFF_QUERY_FAMILIES = ("full", "absent", "partial")
PARTIAL_FORMS = ("colour object", "colour object time", "colour object setting", "object setting time")


@dataclass(frozen=True)
class RelevanceQuery:
    """A query and the photos it is about: `relevant[i]` for the i-th of the scenes it was drawn from.

    `family`: "full" (the canonical description of a scene the collection holds), "absent" (of
    a scene it does not hold: nothing is relevant) or "partial" (what a person types: "a red
    car at night"; every photo showing that, whatever else it shows, is relevant).
    """

    family: str
    text: str
    relevant: np.ndarray


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def relevance_queries(scenes: Sequence["Scene"], seed: int, *, n_full: int = 60, n_absent: int = 30,
                      n_partial: int = 60) -> list[RelevanceQuery]:
    """Toy-world queries over a collection of `scenes` (one per photo), with the photos each is about.

    Full descriptions: `n_full` distinct scenes of the collection; a photo is relevant when its
    canonical caption describes that scene (also from its other object: "B right of A" for "A
    left of B"). Absent: `n_absent` scenes drawn like the collection's (two thirds seen
    combinations) that it does not hold. Partial: `n_partial` of the `PARTIAL_FORMS`, in turn, from
    random photos; a photo is relevant when it shows such an object (either object of a relation,
    any count) in that setting / at that time.
    """
    from clipsearch import toyworld as tw

    rng = np.random.default_rng(seed)
    names = [tw.canonical(s) for s in scenes]
    swapped = [tw.canonical(s.swapped()) for s in scenes]
    have = set(names) | set(swapped)
    distinct = sorted(set(names))
    out: list[RelevanceQuery] = []
    for i in rng.choice(len(distinct), min(n_full, len(distinct)), replace=False):
        want = distinct[i]
        out.append(RelevanceQuery("full", want, np.array([a == want or b == want for a, b in zip(names, swapped)])))
    absent: set[str] = set()
    while len(absent) < n_absent:
        text = tw.canonical(tw.sample_scene(rng, "seen" if rng.random() < 0.67 else "test"))
        if text not in have and text not in absent:
            absent.add(text)
            out.append(RelevanceQuery("absent", text, np.zeros(len(scenes), bool)))
    partial: set[str] = set()
    while len(partial) < n_partial:
        scene = scenes[int(rng.integers(len(scenes)))]
        colour, obj = scene.objects[int(rng.integers(len(scene.objects)))]
        form = PARTIAL_FORMS[len(partial) % len(PARTIAL_FORMS)]
        when, where = tw.TIME_PHRASE[scene.time], tw.SETTING_PHRASE[scene.setting]
        text = {"colour object": f"{_article(colour)} {colour} {obj}",
                "colour object time": f"{_article(colour)} {colour} {obj} {when}",
                "colour object setting": f"{_article(colour)} {colour} {obj} {where}",
                "object setting time": f"{_article(obj)} {obj} {where} {when}"}[form]
        if text in partial:
            continue
        partial.add(text)
        relevant = np.array([
            ((colour, obj) in s.objects if "colour" in form else any(o == obj for _, o in s.objects))
            and ("time" not in form or s.time == scene.time) and ("setting" not in form or s.setting == scene.setting)
            for s in scenes])
        out.append(RelevanceQuery("partial", text, relevant))
    return out


@dataclass(frozen=True)
class CutoffScores:
    """What a cutoff kept over a set of queries: precision and recall pooled over the photos and
    averaged per query (a query with nothing relevant that keeps nothing counts as precision 1),
    and the share of queries that kept nothing."""

    precision: float
    recall: float
    mean_precision: float
    mean_recall: float
    kept_nothing: float
    queries: int


def cutoff_scores(rows: Sequence[tuple[int, int, int]]) -> CutoffScores:
    """Score (true positives, kept, relevant) rows, one per query; nan where a ratio has no denominator."""
    if not rows:
        raise ValueError("no queries to score")
    tp, kept, rel = (sum(r[i] for r in rows) for i in range(3))
    return CutoffScores(
        precision=tp / kept if kept else float("nan"), recall=tp / rel if rel else float("nan"),
        mean_precision=float(np.mean([t / k if k else (1.0 if not r else 0.0) for t, k, r in rows])),
        mean_recall=float(np.mean([t / r if r else 1.0 for t, k, r in rows])),
        kept_nothing=float(np.mean([k == 0 for _, k, _ in rows])), queries=len(rows))
