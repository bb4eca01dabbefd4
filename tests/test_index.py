"""The FAISS index checked against the numpy brute-force oracle `exact_search`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch import IndexFileError
from clipsearch.index import VectorIndex, exact_search

DIM = 24


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _assert_matches_oracle(index: VectorIndex, vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray,
                           k: int, allowed: np.ndarray | None = None) -> None:
    if allowed is not None:
        keep = np.isin(ids, allowed)
        vectors, ids = vectors[keep], ids[keep]
    want_scores, want_ids = exact_search(vectors, ids, queries, k)
    scores, got_ids = index.search(queries, k, allowed_ids=allowed)
    n = want_ids.shape[1]
    np.testing.assert_array_equal(got_ids[:, :n], want_ids)
    np.testing.assert_allclose(scores[:, :n], want_scores, atol=1e-5)
    assert (got_ids[:, n:] == -1).all()  # asked for more than there are: padding, never made-up ids


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    ids = rng.choice(10_000, size=300, replace=False).astype(np.int64)  # sparse, unordered, like catalog ids
    return ids, _unit(rng, 300), _unit(rng, 10)


def test_search_matches_brute_force(data) -> None:
    ids, vecs, queries = data
    index = VectorIndex.create(DIM)
    index.add(ids, vecs)
    assert index.ntotal == 300 and index.dim == DIM
    np.testing.assert_array_equal(index.ids(), ids)
    for k in (1, 10, 300):
        _assert_matches_oracle(index, vecs, ids, queries, k)
    # A single query as a 1-d vector.
    scores, got = index.search(queries[0], 5)
    assert got.shape == (1, 5) and got[0, 0] == exact_search(vecs, ids, queries[0], 1)[1][0, 0]


def test_k_beyond_the_count_returns_everything_once(data) -> None:
    ids, vecs, queries = data
    index = VectorIndex.create(DIM)
    index.add(ids[:5], vecs[:5])
    scores, got = index.search(queries, 50)
    assert sorted(got[0][got[0] >= 0].tolist()) == sorted(ids[:5].tolist())


def test_remove_then_search_matches_brute_force_on_what_is_left(data) -> None:
    ids, vecs, queries = data
    index = VectorIndex.create(DIM)
    index.add(ids, vecs)
    gone = ids[::3]
    assert index.remove(gone) == len(gone)
    assert index.remove(np.array([123_456], np.int64)) == 0
    assert index.remove(np.array([], np.int64)) == 0
    keep = ~np.isin(ids, gone)
    assert index.ntotal == keep.sum()
    assert sorted(index.ids().tolist()) == sorted(ids[keep].tolist())
    _assert_matches_oracle(index, vecs[keep], ids[keep], queries, 20)
    # Re-adding after removal works and is found again.
    index.add(gone[:2], vecs[::3][:2])
    _assert_matches_oracle(index, np.concatenate([vecs[keep], vecs[::3][:2]]),
                           np.concatenate([ids[keep], gone[:2]]), queries, 20)


def test_allowed_ids_filter_matches_brute_force_on_the_subset(data) -> None:
    ids, vecs, queries = data
    index = VectorIndex.create(DIM)
    index.add(ids, vecs)
    rng = np.random.default_rng(3)
    for size in (1, 7, 150):
        allowed = rng.choice(ids, size=size, replace=False)
        _assert_matches_oracle(index, vecs, ids, queries, 10, allowed=allowed)
    # Ids that aren't in the index are harmless.
    _assert_matches_oracle(index, vecs, ids, queries, 10, allowed=np.array([ids[4], 99_999], np.int64))


def test_empty_allowed_set_and_empty_index_give_no_results(data) -> None:
    ids, vecs, queries = data
    index = VectorIndex.create(DIM)
    scores, got = index.search(queries, 5)
    assert (got == -1).all()
    index.add(ids, vecs)
    scores, got = index.search(queries, 5, allowed_ids=np.array([], np.int64))
    assert (got == -1).all() and got.shape[0] == len(queries)


def test_wrong_dimension_is_refused() -> None:
    index = VectorIndex.create(DIM)
    with pytest.raises(ValueError, match="dimension 24"):
        index.add(np.array([1]), np.zeros((1, DIM + 1), np.float32))


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(IndexFileError, match="flat"):
        VectorIndex.create(DIM, "no-such-kind")


def test_save_load_round_trip_is_atomic(tmp_path: Path, data) -> None:
    ids, vecs, queries = data
    index = VectorIndex.create(DIM)
    index.add(ids, vecs)
    path = tmp_path / "index.faiss"
    index.save(path, generation=42)
    index.save(path, generation=43)  # overwriting goes through a temp file too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss", "index.faiss.json"]

    loaded = VectorIndex.load(path)
    assert (loaded.meta.kind, loaded.meta.dim, loaded.meta.count, loaded.meta.generation) == ("flat", DIM, 300, 43)
    np.testing.assert_array_equal(loaded.ids(), ids)
    _assert_matches_oracle(loaded, vecs, ids, queries, 15)
    np.testing.assert_array_equal(loaded.search(queries, 15)[1], index.search(queries, 15)[1])


def test_lost_sidecar_still_loads_with_an_unknown_generation(tmp_path: Path, data) -> None:
    ids, vecs, _ = data
    index = VectorIndex.create(DIM)
    index.add(ids, vecs)
    index.save(tmp_path / "index.faiss", generation=5)
    (tmp_path / "index.faiss.json").unlink()
    loaded = VectorIndex.load(tmp_path / "index.faiss")
    assert loaded.ntotal == 300 and loaded.meta.generation == -1


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"garbage" * 100)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "missing"])
def test_damaged_file_is_an_index_file_error_naming_it(tmp_path: Path, data, how: str) -> None:
    ids, vecs, _ = data
    index = VectorIndex.create(DIM)
    index.add(ids, vecs)
    path = tmp_path / "index.faiss"
    index.save(path, generation=1)
    _damage(path, how)
    with pytest.raises(IndexFileError, match=str(path)):
        VectorIndex.load(path)


def test_an_index_without_id_map_is_refused(tmp_path: Path) -> None:
    import faiss

    path = tmp_path / "index.faiss"
    faiss.write_index(faiss.IndexFlatIP(DIM), str(path))
    with pytest.raises(IndexFileError, match="not a clipsearch index"):
        VectorIndex.load(path)


def test_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipsearch import atomic

    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_exact_search_oracle_is_itself_right() -> None:
    vecs = np.eye(4, dtype=np.float32)
    ids = np.array([10, 20, 30, 40])
    q = np.array([[0.1, 0.9, 0.3, 0.0]], np.float32)
    scores, got = exact_search(vecs, ids, q, 3)
    assert got.tolist() == [[20, 30, 10]]
    np.testing.assert_allclose(scores, [[0.9, 0.3, 0.1]], atol=1e-6)
    assert exact_search(vecs, ids, q, 10)[1].shape == (1, 4)


def test_streamed_exact_top_k_merged_in_a_faiss_heap_matches_the_oracle() -> None:
    from clipsearch.index import ExactTopK

    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((1000, 16)).astype(np.float32)
    ids = rng.permutation(10_000)[:1000].astype(np.int64)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    exact = ExactTopK(queries, 10)
    for start in (0, 300, 301, 650):  # uneven blocks, one of a single vector
        end = {0: 300, 300: 301, 301: 650, 650: 1000}[start]
        exact.add(ids[start:end], vectors[start:end], chunk=128)
    scores, found = exact.result()
    want_scores, want_ids = exact_search(vectors, ids, queries, 10)
    np.testing.assert_array_equal(found, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    few = ExactTopK(queries, 10)
    few.add(ids[:3], vectors[:3])
    assert (few.result()[1][:, 3:] == -1).all() and set(few.result()[1][0, :3]) == set(ids[:3])
