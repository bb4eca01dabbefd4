"""Index choice: every kind against the exact oracle, removal, save/load, the chooser, recall in info, CLI flags."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder

import clipsearch.index as index_module
import clipsearch.library
from clipsearch.catalog import NewImage
from clipsearch.cli import build_parser, main
from clipsearch.index import (
    FLAT_MAX_VECTORS, INDEX_KINDS, IndexConfigError, IndexSpec, VectorIndex, build_index, choose_index,
    exact_search, needs_rebuild, parse_size, predict_bytes, recall_at_k, recall_queries,
)
from clipsearch.library import Library

DIM = 64
N = 20_000
KINDS = list(INDEX_KINDS)
# recall@10 on the clustered data at the tuned parameter; product codes of 8 bytes a
# vector (64-d / 8) and PCA to 32 of 64 dimensions cap the last ones.
RECALL_FLOOR = {"flat": 1.0, "hnsw": 0.9, "ivf": 0.9, "ivfsq8": 0.9, "ivfsq6": 0.85, "ivfsq4": 0.6,
                "ivfpq": 0.25, "pca-ivfpq": 0.1}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, vectors, text-like queries): 100 clusters in a cone, queries shifted by a common offset."""
    rng = np.random.default_rng(seed)
    mean = _unit(rng.standard_normal(dim))
    centres = _unit(1.2 * mean + rng.standard_normal((100, dim)) / np.sqrt(dim) * 1.5)
    vectors = _unit(centres[rng.integers(0, 100, n)] + 0.5 * rng.standard_normal((n, dim)) / np.sqrt(dim))
    offset = _unit(rng.standard_normal(dim))
    queries = _unit(_unit(centres[rng.integers(0, 100, 300)] + 0.5 * rng.standard_normal((300, dim)) / np.sqrt(dim))
                    + 0.8 * offset)
    return np.arange(n, dtype=np.int64) * 7 + 3, vectors, queries  # ids are catalog-like, not positions


def _blocks(ids: np.ndarray, vectors: np.ndarray, size: int = 5000):
    for s in range(0, len(ids), size):
        yield ids[s:s + size], vectors[s:s + size]


def _build(kind: str, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
    spec = choose_index(len(ids), vectors.shape[1], kind)
    rng = np.random.default_rng(1)
    sample = vectors[rng.choice(len(vectors), min(len(vectors), 5000), replace=False)]
    return build_index(spec, vectors.shape[1], _blocks(ids, vectors), train=sample if spec.needs_training else None,
                       queries=recall_queries(sample, 200, seed=2))


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """Single-threaded faiss: on a busy machine, OpenMP threads that wait for each other make these tests 10x slower."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _clustered(N, DIM)


@pytest.fixture(scope="module")
def built(clustered, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every kind built once over the clustered data and saved; tests load their own copy."""
    ids, vectors, _ = clustered
    folder = tmp_path_factory.mktemp("indexes")
    paths = {}
    for kind in KINDS:
        path = folder / f"{kind}.faiss"
        _build(kind, ids, vectors).save(path, generation=7)
        paths[kind] = path
    return paths


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_finds_the_exact_top1_on_easy_data(kind: str) -> None:
    # Easy: 2000 points spread over a 32-d subspace (PCA to 32 dimensions loses nothing;
    # neighbours are far apart next to product-code error), queried by slightly moved
    # copies of 100 of them.
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.standard_normal((DIM, 32)))[0].T
    vectors = _unit(rng.standard_normal((2000, 32)) @ basis)
    ids = np.arange(2000, dtype=np.int64) * 3 + 1
    queries = _unit(vectors[:100] + 0.05 * rng.standard_normal((100, DIM)) / np.sqrt(DIM))
    index = _build(kind, ids, vectors)
    _, expected = exact_search(vectors, ids, queries, 1)
    np.testing.assert_array_equal(index.search(queries, 1)[1][:, 0], expected[:, 0])


@pytest.mark.parametrize("kind", KINDS)
def test_recall_on_clustered_data_against_the_oracle(kind: str, clustered, built) -> None:
    ids, vectors, queries = clustered
    index = VectorIndex.load(built[kind])
    _, expected = exact_search(vectors, ids, queries, 10)
    recall = recall_at_k(index.search(queries, 10)[1], expected, 10)
    assert recall >= RECALL_FLOOR[kind]
    # The recall stored at build time is an estimate of this one, from other queries.
    assert index.meta.recall_at_10 is not None
    assert abs(index.meta.recall_at_10 - recall) < 0.15
    if kind == "flat":
        assert index.meta.recall_at_10 == recall == 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_removed_ids_never_come_back(kind: str, clustered, built) -> None:
    ids, vectors, queries = clustered
    index = VectorIndex.load(built[kind])
    # The true neighbours of the queries are the ones worth removing.
    gone = np.unique(exact_search(vectors, ids, queries[:100], 10)[1])
    assert index.remove(gone) == len(gone)
    assert index.remove(gone[:5]) == 0  # already gone
    assert index.ntotal == N - len(gone)
    assert not np.isin(index.ids(), gone).any() and len(index.ids()) == N - len(gone)
    keep = ~np.isin(ids, gone)
    _, expected = exact_search(vectors[keep], ids[keep], queries, 10)
    found = index.search(queries, 10)[1]
    assert not np.isin(found, gone).any()
    assert recall_at_k(found, expected, 10) >= RECALL_FLOOR[kind] - 0.05
    # Filtered search too.
    allowed = ids[:3000]
    found = index.search(queries[:20], 10, allowed_ids=allowed)[1]
    assert np.isin(found[found >= 0], np.setdiff1d(allowed, gone)).all()


def test_hnsw_removal_is_tombstones_then_a_rebuilt_graph(clustered, built, tmp_path: Path) -> None:
    ids, vectors, queries = clustered
    index = VectorIndex.load(built["hnsw"])
    index.remove(ids[:1000])
    assert index.stored == N and index.ntotal == N - 1000 and len(index.meta.deleted) == 1000
    index.save(tmp_path / "h.faiss", generation=8)
    again = VectorIndex.load(tmp_path / "h.faiss")  # tombstones survive a save
    assert again.ntotal == N - 1000 and not np.isin(again.search(queries, 10)[1], ids[:1000]).any()
    again.remove(ids[1000:5000])  # past HNSW_MAX_DELETED: the graph is rebuilt without them
    assert again.stored == again.ntotal == N - 5000 and again.meta.deleted == []
    _, expected = exact_search(vectors[5000:], ids[5000:], queries, 10)
    assert recall_at_k(again.search(queries, 10)[1], expected, 10) >= RECALL_FLOOR["hnsw"]
    # A filter so small that the graph walk would starve is answered exactly.
    allowed = ids[5000:5050]
    _, expected = exact_search(vectors[5000:5050], allowed, queries[:5], 10)
    np.testing.assert_array_equal(again.search(queries[:5], 10, allowed_ids=allowed)[1], expected)


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind: str, clustered, built, tmp_path: Path) -> None:
    _, _, queries = clustered
    index = VectorIndex.load(built[kind])
    assert (index.kind, index.meta.generation, index.ntotal) == (kind, 7, N)
    index.save(tmp_path / "again.faiss", generation=9)
    loaded = VectorIndex.load(tmp_path / "again.faiss")
    for field in ("kind", "factory", "nprobe", "ef_search", "recall_at_10", "recall_queries", "spec"):
        assert getattr(loaded.meta, field) == getattr(index.meta, field)
    assert loaded.meta.generation == 9
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
    # Without its sidecar the kind and search parameter are read from the file itself.
    (tmp_path / "again.faiss.json").unlink()
    bare = VectorIndex.load(tmp_path / "again.faiss")
    assert bare.kind == kind and bare.meta.generation == -1
    if kind != "hnsw":  # efSearch is a search-time parameter faiss keeps; nprobe too
        np.testing.assert_array_equal(bare.search(queries, 10)[1], index.search(queries, 10)[1])


@pytest.mark.parametrize("kind", KINDS)
def test_predicted_size_matches_the_serialized_one(kind: str, built) -> None:
    import faiss

    index = VectorIndex.load(built[kind])
    actual = faiss.serialize_index(index.faiss_index).size
    assert abs(predict_bytes(index.spec, N, DIM) - actual) <= 0.05 * actual


# -- the chooser ----------------------------------------------------------------------------
def test_auto_is_flat_below_the_threshold_and_ann_above() -> None:
    assert choose_index(FLAT_MAX_VECTORS - 1, 512).kind == "flat"
    above = choose_index(FLAT_MAX_VECTORS, 512)
    assert above.kind == "ivfsq8" and above.needs_training and above.nlist >= 256
    assert choose_index(1_000_000, 512).nlist > choose_index(100_000, 512).nlist
    # Hysteresis: an ANN library that shrinks a little keeps its kind; one that halves goes flat.
    assert choose_index(int(FLAT_MAX_VECTORS * 0.75), 512, current=above).kind == "ivfsq8"
    assert choose_index(FLAT_MAX_VECTORS // 2 - 1, 512, current=above).kind == "flat"


@pytest.mark.parametrize("n, budget, kind", [
    (1_000_000, "600MB", "ivfsq8"), (1_000_000, "450MB", "ivfsq4"), (1_000_000, "300MB", "ivfsq4"),
    (1_000_000, "120MB", "pca-ivfpq"), (1_000_000, "40MB", "pca-ivfpq"), (10_000, "100MB", "flat"),
    (10_000, "6MB", "ivfsq8"),
])
def test_a_budget_is_respected(n: int, budget: str, kind: str) -> None:
    spec = choose_index(n, 512, max_memory=parse_size(budget))
    assert spec.kind == kind
    assert predict_bytes(spec, n, 512) <= parse_size(budget)


def test_a_budget_too_small_is_an_error_naming_it() -> None:
    with pytest.raises(IndexConfigError, match="--max-memory"):
        choose_index(1_000_000, 512, max_memory=parse_size("5MB"))
    with pytest.raises(IndexConfigError, match="ivf index .* needs about"):
        choose_index(1_000_000, 512, "ivf", max_memory=parse_size("600MB"))
    # A named PQ kind shrinks its codes to fit.
    small = choose_index(1_000_000, 512, "ivfpq", max_memory=parse_size("60MB"))
    assert small.pq_m < 64 and predict_bytes(small, 1_000_000, 512) <= 60e6


def test_needs_rebuild() -> None:
    ivf = choose_index(100_000, 512, "ivfsq8")
    assert not needs_rebuild(ivf, choose_index(120_000, 512, "ivfsq8"))
    assert needs_rebuild(ivf, choose_index(400_000, 512, "ivfsq8"))  # 4x bigger: lists retrained
    assert needs_rebuild(IndexSpec("flat"), ivf) and needs_rebuild(ivf, choose_index(100_000, 512, "ivf"))
    assert not needs_rebuild(IndexSpec("flat"), IndexSpec("flat"))


@pytest.mark.parametrize("text, value", [("600MB", 600_000_000), ("2GB", 2_000_000_000), ("512MiB", 512 * 2 ** 20),
                                         ("1.5g", 1_500_000_000), ("123456", 123456), ("64kB", 64_000)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["600XB", "", "MB", "-5MB", "0", "1.2.3GB", "5 iB"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


# -- the library --------------------------------------------------------------------------------
def _synthetic_library(tmp_path: Path, n: int, *, texts: int = 0) -> Library:
    """A library over the fake encoder's 16-d space with `n` clustered vectors inserted straight into the catalog."""
    lib = Library.open(tmp_path / "lib", encoder=FakeEncoder())
    _, vectors, _ = _clustered(n, lib.dim, seed=5)
    lib.catalog.add_images([NewImage(f"/photos/{i:06d}.jpg", 1000 + i, i, v) for i, v in enumerate(vectors)])
    if texts:
        lib.add_texts([f"label number {i} red" for i in range(texts)])
    return lib


def test_a_small_library_is_exact_and_says_so(library: Library) -> None:
    info = library.info()
    assert (info.index_kind, info.index_recall, info.index_recall_note) == ("flat", 1.0, "exact search")
    assert info.index_setting == "auto" and info.index_max_memory is None and info.index_bytes > 0


def test_rebuild_with_a_kind_stores_the_choice_and_the_recall(tmp_path: Path) -> None:
    lib = _synthetic_library(tmp_path, 3000, texts=30)
    assert lib.rebuild_index(index_kind="ivf", max_memory="50MB") == 3000
    info = lib.info()
    assert info.index_kind == "ivf" and info.index_factory.startswith("IVF")
    assert info.index_params["nprobe"] >= 1 and info.index_params["nlist"] >= 1
    assert 0.5 <= info.index_recall <= 1.0 and "held-out queries" in info.index_recall_note
    assert (info.index_setting, info.index_max_memory) == ("ivf", 50_000_000)
    stored = json.loads(lib.catalog.get_meta("index"))
    assert stored["kind"] == "ivf" and stored["recall_at_10"] == info.index_recall and stored["nprobe"]
    # The search path gives what the exact oracle gives, most of the time.
    ids, vectors = lib.vectors()
    queries = _clustered(100, lib.dim, seed=6)[2]
    _, expected = exact_search(vectors, ids, queries, 10)
    found = np.array([[h.id for h in lib.search_vector(q, 10)] for q in queries])
    assert recall_at_k(found, expected, 10) >= 0.8
    lib.close()
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as again:
        assert again.info() == info  # the sidecar and the catalog keep it all
        again.rebuild_index(max_memory="none")
        assert again.index_choice() == ("ivf", None)


def test_a_lost_or_lagging_ivf_index_is_repaired_with_the_stored_choice(tmp_path: Path) -> None:
    lib = _synthetic_library(tmp_path, 3000)
    lib.rebuild_index(index_kind="ivf")
    # A crash after the catalog took 10 more images but before the index was saved.
    _, more, _ = _clustered(10, lib.dim, seed=9)
    lib.catalog.add_images([NewImage(f"/photos/more{i}.jpg", 1, i, v) for i, v in enumerate(more)])
    lib.catalog.remove_images([1, 2])
    lib.close()
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as again:
        assert again.vector_index.kind == "ivf" and again.vector_index.ntotal == 3008
        assert sorted(again.vector_index.ids().tolist()) == again.catalog.ok_ids().tolist()
    (tmp_path / "lib" / "index.faiss").unlink()
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as again:
        assert again.vector_index.kind == "ivf" and again.vector_index.ntotal == 3008
        assert again.info().index_recall is not None


def test_auto_switches_to_an_ann_index_when_the_library_grows(tmp_path: Path, colour_photos, monkeypatch) -> None:
    monkeypatch.setattr(index_module.choose, "FLAT_MAX_VECTORS", 2000)
    lib = _synthetic_library(tmp_path, 2500)
    lib.index(tmp_path / "photos")  # 8 real photos more; the index is fitted after the sync
    assert lib.vector_index.kind == "ivfsq8" and lib.vector_index.ntotal == 2508
    assert lib.search("red", k=1)[0].path == colour_photos["red"]
    # Removal goes through the inverted lists: the photo never comes back.
    Path(colour_photos["red"]).unlink()
    lib.index(tmp_path / "photos")
    assert lib.vector_index.ntotal == 2507
    assert all(h.path != colour_photos["red"] for h in lib.search("red", k=50))
    lib.close()


def test_an_hnsw_library_removes_through_tombstones(tmp_path: Path, colour_photos) -> None:
    lib = Library.open(tmp_path / "lib", encoder=FakeEncoder())
    lib.index(tmp_path / "photos", index_kind="hnsw")
    assert lib.vector_index.kind == "hnsw" and lib.info().index_recall is not None
    Path(colour_photos["blue"]).unlink()
    lib.index(tmp_path / "photos")
    assert lib.vector_index.ntotal == 7
    assert all(h.path != colour_photos["blue"] for h in lib.search("blue", k=8))
    lib.close()


def test_a_budget_the_library_outgrows_keeps_the_index_and_warns(tmp_path: Path, colour_photos, caplog) -> None:
    lib = Library.open(tmp_path / "lib", encoder=FakeEncoder())
    lib.index(tmp_path / "photos", max_memory=10)  # 10 bytes: nothing fits
    assert lib.vector_index.kind == "flat" and "max-memory" in caplog.text
    with pytest.raises(IndexConfigError, match="max-memory"):
        lib.rebuild_index()
    with pytest.raises(IndexConfigError, match="max_memory"):
        lib.rebuild_index(max_memory="lots")
    lib.close()


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["index", "photos"], ["rebuild-index"]])
def test_index_flags_parse(command: list[str]) -> None:
    args = build_parser().parse_args([*command, "--index", "ivfpq", "--max-memory", "600MB"])
    assert (args.index, args.max_memory) == ("ivfpq", 600_000_000)
    assert build_parser().parse_args([*command, "--max-memory", "2GB"]).max_memory == 2_000_000_000
    assert build_parser().parse_args([*command, "--max-memory", "none"]).max_memory == 0
    assert build_parser().parse_args(command).index is None
    assert (build_parser().parse_args(command).wait, build_parser().parse_args([*command, "--wait", "90"]).wait) == (0, 90)


@pytest.mark.parametrize("flag, value, message", [("--max-memory", "600XB", "600XB"), ("--max-memory", "lots", "lots"),
                                                  ("--index", "annoy", "hnsw"),
                                                  ("--wait", "-1", "invalid number of seconds"),
                                                  ("--wait", "soon", "'soon'")])
def test_bad_index_flags_are_usage_errors_naming_the_argument(flag: str, value: str, message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["index", "photos", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and message in err


def test_cli_rebuild_and_info_show_the_index_and_its_recall(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(clipsearch.library, "_load_encoder", lambda *a, **kw: FakeEncoder())
    _synthetic_library(tmp_path, 3000).close()
    assert main(["rebuild-index", "--library", str(tmp_path / "lib"), "--index", "ivfsq8"]) == 0
    out = capsys.readouterr().out
    assert "3000 images" in out and "ivfsq8 (IVF" in out and "recall@10 0." in out
    assert main(["info", "--library", str(tmp_path / "lib")]) == 0
    out = capsys.readouterr().out
    assert "recall:    0." in out and "held-out queries" in out and "--index ivfsq8" in out
    assert main(["info", "--library", str(tmp_path / "lib"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["index_kind"] == "ivfsq8" and 0 < info["index_recall"] <= 1


def test_the_cli_asks_openmp_to_sleep_not_spin_unless_told_otherwise_and_imports_write_no_environment() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    # Importing the library changes nothing in the environment.
    code = "import os, clipsearch.library, clipsearch.index, clipsearch.cli; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None"]
    # The command sets it where the process starts, before torch or faiss load their OpenMP runtime.
    code = ("import os, sys, clipsearch.cli as c, clipsearch.runtime as r; seen = []; "
            "real = r.configure_process; r.configure_process = lambda: seen.append('torch' in sys.modules) or real(); "
            "c.main(['info', '--library', sys.argv[1]]); print(os.environ['OMP_WAIT_POLICY'], seen)")
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run_env = env if given is None else {**env, "OMP_WAIT_POLICY": given}
        out = subprocess.run([sys.executable, "-c", code, "/nonexistent/library"], env=run_env, capture_output=True,
                             text=True, check=True).stdout
        assert out.split() == [expected, "[False]"]


def _memory_source(ids: np.ndarray, vectors: np.ndarray, missing: frozenset[int] = frozenset()):
    """An exact-vector source over arrays (the library's is its catalog); `missing` ids are not found."""
    position = {int(i): p for p, i in enumerate(ids)}

    def fetch(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        got = np.array([int(i) for i in wanted if int(i) in position and int(i) not in missing], np.int64)
        return got[::-1], vectors[[position[int(i)] for i in got[::-1]]]  # any order will do
    return fetch


@pytest.mark.parametrize("kind", ["ivfpq", "pca-ivfpq", "ivfsq4"])
def test_lossy_codes_are_reranked_with_exact_vectors(kind: str, clustered, built) -> None:
    ids, vectors, queries = clustered
    index = VectorIndex.load(built[kind])
    _, expected = exact_search(vectors, ids, queries, 10)
    alone = recall_at_k(index.search(queries, 10)[1], expected, 10)
    assert index.rerank_depth(10) == 0  # no source, no re-ranking
    index.exact_vectors = _memory_source(ids, vectors)
    assert index.rerank_depth(10) == index_module.RERANK_DEPTH[kind] and index.rerank_depth(25) == 3 * index.rerank_depth(10)
    scores, found = index.search(queries, 10)
    reranked = recall_at_k(found, expected, 10)
    assert reranked >= max(0.85, alone + 0.05), (alone, reranked)
    # Scores are exact inner products, best first, and every id is a real one.
    by_id = dict(zip(ids.tolist(), vectors))
    q = 7
    np.testing.assert_allclose(scores[q], [by_id[int(i)] @ queries[q] for i in found[q]], rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()
    # Filters still hold, and a candidate the source lacks (a stale entry) is dropped.
    allowed = ids[:5000]
    assert np.isin(index.search(queries[:20], 10, allowed_ids=allowed)[1], allowed).all()
    stale = frozenset(found[:, 0].tolist())
    index.exact_vectors = _memory_source(ids, vectors, missing=stale)
    again = index.search(queries, 10)[1]
    assert not np.isin(again, list(stale)).any()
    assert "re-ranked exactly" in index.describe()


def test_a_library_reranks_its_pq_index_with_the_catalog_and_stores_that_recall(tmp_path: Path) -> None:
    lib = _synthetic_library(tmp_path, 3000)
    lib.rebuild_index(index_kind="ivfpq")
    index = lib.vector_index
    assert index.rerank_depth(10) == index_module.RERANK_DEPTH["ivfpq"]
    ids, vectors = lib.vectors()
    queries = _clustered(100, lib.dim, seed=6)[2]
    _, expected = exact_search(vectors, ids, queries, 10)
    found = np.array([[h.id for h in lib.search_vector(q, 10)] for q in queries])
    with_catalog = recall_at_k(found, expected, 10)
    info = lib.info()
    source, index.exact_vectors = index.exact_vectors, None
    alone = recall_at_k(index.search(queries, 10)[1], expected, 10)
    index.exact_vectors = source
    assert with_catalog >= max(0.85, alone + 0.05), (alone, with_catalog)
    # The recall measured at build was of the re-ranked search, and info says so.
    assert abs(info.index_recall - with_catalog) < 0.12
    assert info.index_params["rerank"] == 200 and "re-ranked with the stored vectors" in info.index_recall_note
    lib.close()
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as again:  # reopened: the catalog is the source again
        assert again.vector_index.rerank_depth(10) == index_module.RERANK_DEPTH["ivfpq"]
        hits = again.search_vector(queries[0], 10)
        assert [h.id for h in hits][:3] == found[0][:3].tolist()
