"""Retrieval and analogy metrics: known vectors give known scores, and the fast path matches brute force."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
from PIL import Image

from clipsearch import toyworld as tw
from clipsearch.errors import ClipSearchError
from clipsearch.evaluate import analogy_pairs, build_eval_data, evaluate, read_captions_csv, score_embeddings


def _index_image(path: Path, i: int) -> None:
    # The pixel colour carries the row index, so a fake encoder knows which image it got.
    Image.new("RGB", (4, 4), (i % 256, i // 256, 7)).save(path)


def _image_index(image: Image.Image) -> int:
    r, g, _ = image.getpixel((0, 0))
    return int(r) + 256 * int(g)


class TableEncoder:
    """Image i -> image_vectors[i]; a text -> text_vector(text)."""

    name, pretrained = "table", "test"

    def __init__(self, image_vectors: np.ndarray, text_vector: Callable[[str], np.ndarray]) -> None:
        self.image_vectors = np.asarray(image_vectors, np.float32)
        self.text_vector = text_vector
        self.dim = self.image_vectors.shape[1]

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        return self.image_vectors[[_image_index(im) for im in images]].reshape(-1, self.dim)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return np.stack([self.text_vector(t) for t in texts]).astype(np.float32).reshape(-1, self.dim)


def _write_csv(folder: Path, rows: list[dict[str, str | int]], columns: Sequence[str]) -> Path:
    """Rows with an `image` index; writes one image per distinct index and the csv."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in sorted({int(r["image"]) for r in rows}):
        _index_image(folder / "images" / f"{i:04d}.png", i)
    path = folder / "captions.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow([f"images/{int(r['image']):04d}.png" if c == "filepath" else r[c] for c in columns])
    return path


def _one_hot(n: int, i: int) -> np.ndarray:
    v = np.zeros(n, np.float32)
    v[i] = 1.0
    return v


# --- retrieval --------------------------------------------------------------------------

CANONICALS = [tw.canonical(tw.Scene(obj=o, colour=c, setting="sea", time="day"))
              for o in ("car", "boat", "tree") for c in ("red", "blue", "green", "white")]


def test_an_encoder_that_knows_each_canonical_scores_perfectly(tmp_path: Path) -> None:
    # 12 scenes, 16 images: scenes 0-3 have a second image; each caption is a paraphrase.
    scene_of = list(range(12)) + [0, 1, 2, 3]
    rows = [{"image": i, "title": f"caption {i}", "canonical": CANONICALS[s]} for i, s in enumerate(scene_of)]
    path = _write_csv(tmp_path, rows, ("filepath", "title", "canonical"))
    encoder = TableEncoder(np.stack([_one_hot(12, s) for s in scene_of]),
                           lambda t: _one_hot(12, scene_of[int(t.split()[1])]))
    result = evaluate(encoder, path, analogy=False)
    assert result.relevance == "canonical"
    assert (result.images, result.texts) == (16, 16)
    for scores in (result.text_to_image, result.image_to_text):
        assert scores.recall_at_1 == scores.recall_at_10 == scores.mrr == 1.0
        assert scores.queries == 16
    assert result.analogy is None
    assert result.to_dict()["text_to_image"]["recall_at_1"] == 1.0


def test_random_vectors_give_chance_level_recall(tmp_path: Path) -> None:
    n = 200
    rows = [{"image": i, "title": f"caption {i}"} for i in range(n)]
    path = _write_csv(tmp_path, rows, ("filepath", "title"))
    rng = np.random.default_rng(0)
    table = rng.standard_normal((n, 64)).astype(np.float32)
    texts = rng.standard_normal((n, 64)).astype(np.float32)
    result = evaluate(TableEncoder(table, lambda t: texts[int(t.split()[1])]), path)
    assert result.relevance == "exact"
    for scores in (result.text_to_image, result.image_to_text):
        assert scores.recall_at_1 < 0.05  # chance: 1/200
        assert scores.recall_at_10 < 0.15  # chance: 10/200
        assert scores.mrr < 0.1


def test_a_constant_encoder_does_not_score_through_ties(tmp_path: Path) -> None:
    rows = [{"image": i, "title": f"caption {i}"} for i in range(20)]
    path = _write_csv(tmp_path, rows, ("filepath", "title"))
    result = evaluate(TableEncoder(np.ones((20, 4)), lambda t: np.ones(4)), path)
    assert result.text_to_image.recall_at_10 == 0.0
    assert result.image_to_text.recall_at_1 == 0.0


def test_exact_pairs_with_two_captions_per_image(tmp_path: Path) -> None:
    # Six images, two captions each; caption "1b" is closer to image 2 than to its own image.
    rows = [{"image": i, "title": f"{i}{s}"} for i in range(6) for s in "ab"]
    path = _write_csv(tmp_path, rows, ("filepath", "title"))

    def text(t: str) -> np.ndarray:
        i = int(t[0])
        return _one_hot(6, 2) + 0.1 * _one_hot(6, 1) if t == "1b" else _one_hot(6, i)

    result = evaluate(TableEncoder(np.eye(6), text), path)
    assert result.relevance == "exact"
    assert (result.images, result.texts) == (6, 12)
    t2i = result.text_to_image
    assert t2i.queries == 12
    assert t2i.recall_at_1 == pytest.approx(11 / 12)
    assert t2i.recall_at_5 == 1.0
    assert t2i.mrr == pytest.approx((11 + 1 / 2) / 12)
    # Image 2's best caption is its own (score 1) and image 1 still has "1a": all hits at 1.
    assert result.image_to_text.queries == 6
    assert result.image_to_text.recall_at_1 == 1.0


def test_recall_matches_a_brute_force_ranking() -> None:
    """The vectorised ranks agree with sorting every query's scores (the oracle)."""
    rng = np.random.default_rng(1)
    n_images, n_texts = 60, 150
    image_labels = rng.integers(0, 40, n_images)
    text_labels = image_labels[rng.integers(0, n_images, n_texts)]
    images = rng.standard_normal((n_images, 8)).astype(np.float32)
    texts = rng.standard_normal((n_texts, 8)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    from clipsearch.evaluate import EvalData

    data = EvalData([f"{i}.png" for i in range(n_images)], [str(i) for i in range(n_texts)],
                    image_labels, text_labels, "canonical", [None] * n_images)
    result = score_embeddings(data, images, texts, analogy=False)

    def oracle(queries: np.ndarray, items: np.ndarray, ql: np.ndarray, il: np.ndarray, k: int) -> float:
        order = np.argsort(-(queries @ items.T), axis=1)
        return float(np.mean([(il[order[q, :k]] == ql[q]).any() for q in range(len(queries))]))

    for k, attr in ((1, "recall_at_1"), (5, "recall_at_5"), (10, "recall_at_10")):
        assert getattr(result.text_to_image, attr) == pytest.approx(oracle(texts, images, text_labels, image_labels, k))
        assert getattr(result.image_to_text, attr) == pytest.approx(oracle(images, texts, image_labels, text_labels, k))


# --- analogy ----------------------------------------------------------------------------

def _count_scenes() -> list[tw.Scene]:
    return [tw.Scene(obj=o, colour=c, setting=s, time=t, count=n)
            for o in ("car", "tree") for c in ("red", "blue", "green")
            for s, t, n in (("sea", "day", 1), ("sea", "night", 1), ("snow", "day", 2))]


def test_analogy_with_an_additive_encoder_is_exact(tmp_path: Path) -> None:
    scenes = _count_scenes()
    rng = np.random.default_rng(0)
    words: dict[str, np.ndarray] = {}

    def word(w: str) -> np.ndarray:
        return words.setdefault(w, rng.standard_normal(64).astype(np.float32))

    def scene_vector(s: tw.Scene) -> np.ndarray:
        return word(s.obj) + word(s.colour) + word(s.setting) + word(s.time) + word(tw.COUNT_WORDS[s.count - 1])

    rows = [{"image": i, "title": tw.canonical(s), "canonical": tw.canonical(s)} for i, s in enumerate(scenes)]
    path = _write_csv(tmp_path, rows, ("filepath", "title", "canonical"))
    table = np.stack([scene_vector(s) for s in scenes])
    encoder = TableEncoder(table, lambda t: word(t[len("the word "):]) if t.startswith("the word ")
                           else scene_vector(tw.parse_canonical(t)))
    result = evaluate(encoder, path, analogy_template="the word {}")
    assert result.analogy is not None
    # Pairs differing in exactly one of obj (2 values), colour (3) or time/setting/count moves.
    assert result.analogy.pairs == len(analogy_pairs([tw.parse_canonical(r["title"]) for r in rows]))
    assert result.analogy.queries == result.analogy.pairs > 20
    assert result.analogy.top1 == 1.0
    assert result.analogy.top5 == 1.0
    assert set(result.analogy.per_attribute) == {"obj", "colour", "time"}
    assert result.analogy.template == "the word {}"


def test_analogy_queries_are_capped_with_a_seeded_sample(tmp_path: Path) -> None:
    scenes = _count_scenes()
    rows = [{"image": i, "title": tw.canonical(s), "canonical": tw.canonical(s)} for i, s in enumerate(scenes)]
    path = _write_csv(tmp_path, rows, ("filepath", "title", "canonical"))
    rng = np.random.default_rng(0)
    encoder = TableEncoder(rng.standard_normal((len(scenes), 16)), lambda t: np.ones(16))
    a = evaluate(encoder, path, max_analogy_queries=10)
    b = evaluate(encoder, path, max_analogy_queries=10)
    assert a.analogy is not None and a.analogy.queries == 10 < a.analogy.pairs
    assert a.analogy == b.analogy


def test_analogy_pairs_see_through_the_relation_orientation() -> None:
    a = tw.parse_canonical("a red car left of a blue boat at sea by day")
    same = tw.parse_canonical("a blue boat right of a red car at sea by day")
    colour2 = tw.parse_canonical("a yellow boat right of a red car at sea by day")
    relation = tw.parse_canonical("a red car right of a blue boat at sea by day")
    two_changes = tw.parse_canonical("a yellow boat right of a red car at sea at night")
    pairs = {(i, j): (attr, x, y) for i, j, attr, x, y in analogy_pairs([a, same, colour2, relation, two_changes])}
    assert (0, 1) not in pairs  # the same picture
    assert pairs[(0, 2)] == ("colour2", "blue", "yellow")
    assert pairs[(2, 0)] == ("colour", "yellow", "blue")  # from B's side the boat is the subject
    assert pairs[(0, 3)] == ("relation", "left of", "right of")
    assert (0, 4) not in pairs
    assert pairs[(2, 4)] == ("time", "day", "night")


def test_one_scene_in_two_orientations_is_one_relevance_class(tmp_path: Path) -> None:
    rows = read_captions_csv(_write_csv(tmp_path, [
        {"image": 0, "title": "x", "canonical": "a red car left of a blue boat at sea by day"},
        {"image": 1, "title": "y", "canonical": "a blue boat right of a red car at sea by day"},
        {"image": 2, "title": "z", "canonical": "a blue car left of a red boat at sea by day"},
    ], ("filepath", "title", "canonical")))
    data = build_eval_data(rows)
    assert data.image_labels[0] == data.image_labels[1] != data.image_labels[2]


def test_no_analogy_without_toyworld_canonicals(tmp_path: Path) -> None:
    rows = [{"image": i, "title": f"t{i}", "canonical": f"scene {i % 3}"} for i in range(6)]
    path = _write_csv(tmp_path, rows, ("filepath", "title", "canonical"))
    result = evaluate(TableEncoder(np.eye(6), lambda t: _one_hot(6, int(t[1]))), path)
    assert result.relevance == "canonical"
    assert result.analogy is None


# --- the csv ------------------------------------------------------------------------------

def test_bad_csvs_are_errors_that_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ClipSearchError, match="does not exist"):
        read_captions_csv(tmp_path / "nope.csv")
    (tmp_path / "a.csv").write_text("filepath,caption\nx.png,hello\n")
    with pytest.raises(ClipSearchError, match="'title'"):
        read_captions_csv(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("filepath,title\nmissing.png,hello\n")
    with pytest.raises(ClipSearchError, match="missing.png"):
        read_captions_csv(tmp_path / "b.csv")


def test_tab_separated_csv_with_absolute_paths(tmp_path: Path) -> None:
    _index_image(tmp_path / "a.png", 0)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.tsv").write_text(f"filepath\ttitle\n{tmp_path / 'a.png'}\ta red, round thing\n")
    rows = read_captions_csv(tmp_path / "sub" / "c.tsv")
    assert rows[0].path == str(tmp_path / "a.png")
    assert rows[0].title == "a red, round thing"
    assert rows[0].canonical is None


# --- the command --------------------------------------------------------------------------

def test_eval_command_prints_a_side_by_side_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import clipsearch.encoder
    from clipsearch.cli import main

    scenes = _count_scenes()
    rows = [{"image": i, "title": tw.canonical(s), "canonical": tw.canonical(s)} for i, s in enumerate(scenes)]
    path = _write_csv(tmp_path, rows, ("filepath", "title", "canonical"))
    good = TableEncoder(np.eye(len(scenes)), lambda t: _one_hot(len(scenes), [r["title"] for r in rows].index(t))
                        if t in [r["title"] for r in rows] else np.zeros(len(scenes)))
    constant = TableEncoder(np.ones((len(scenes), 4)), lambda t: np.ones(4))
    loaded = []

    def fake_load(model: str, pretrained: str | None, *, device: str | None = None, **options: object) -> TableEncoder:
        loaded.append((model, pretrained))
        return good if model == "good" else constant

    monkeypatch.setattr(clipsearch.encoder, "load_encoder", fake_load)
    assert main(["-q", "eval", str(path), "--model", "good", "--pretrained", "p.bin",
                 "--compare", "const", "none"]) == 0
    out = capsys.readouterr().out
    assert loaded == [("good", "p.bin"), ("const", None)]
    assert "relevance: canonical" in out
    header = next(line for line in out.splitlines() if "table/p.bin" in line)
    assert "table/random" in header
    r1 = next(line for line in out.splitlines() if line.startswith("text→image") and "R@1" in line)
    assert r1.split()[-2:] == ["1.000", "0.000"]
    assert any(line.startswith("analogy") and "top-5" in line for line in out.splitlines())


def test_relevance_queries_say_which_photos_each_query_is_about() -> None:
    from clipsearch.evaluate import cutoff_scores, relevance_queries

    scenes = [tw.parse_canonical(t) for t in (
        "a red car left of a blue boat on a road at night",
        "a blue boat right of a red car on a road at night",   # the same picture, described from the boat
        "a red car left of a blue boat on a road by day",
        "two red cars on a road at night",
        "one green tree in a field by day",
    )]
    queries = relevance_queries(scenes, seed=0, n_full=5, n_absent=3, n_partial=8)
    assert [q.family for q in queries] == ["full"] * 5 + ["absent"] * 3 + ["partial"] * 8
    by_text = {q.text: q.relevant.astype(int).tolist() for q in queries}
    assert by_text["a red car left of a blue boat on a road at night"] == [1, 1, 0, 0, 0]
    assert by_text["a blue boat right of a red car on a road at night"] == [1, 1, 0, 0, 0]
    assert by_text["two red cars on a road at night"] == [0, 0, 0, 1, 0]
    assert by_text["a red car at night"] == [1, 1, 0, 1, 0]  # either object of a relation, any count
    assert by_text["a car on a road by day"] == [0, 0, 1, 0, 0]
    assert by_text["a blue boat"] == [1, 1, 1, 0, 0]
    for q in queries[5:8]:  # scenes the collection does not hold: nothing is relevant
        assert q.text not in {tw.canonical(s) for s in scenes} and not q.relevant.any()
    # Scores: pooled and per query; a query with nothing relevant that keeps nothing is right.
    s = cutoff_scores([(1, 2, 1), (0, 0, 0), (2, 2, 4)])
    assert (s.precision, s.recall, s.kept_nothing, s.queries) == (0.75, 0.6, 1 / 3, 3)
    assert s.mean_precision == pytest.approx((0.5 + 1.0 + 1.0) / 3) and s.mean_recall == pytest.approx((1 + 1 + .5) / 3)
    with pytest.raises(ValueError):
        cutoff_scores([])
