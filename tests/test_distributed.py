"""Indexing on Ray (clipsearch.distributed): the same library as one machine builds, faults survived.

Runs on a local Ray instance and on a simulated two-node cluster (ray.cluster_utils), both
on loopback, with usage statistics off; Ray starts once per cluster kind. Skipped
without the `distributed` extra. Ray workers import this module (PYTHONPATH is set to
this folder before Ray starts), so the encoders below are what they build.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

# Before Ray is imported: no usage statistics, and everything on 127.0.0.1.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")

from fakes import COLOURS, DummyReader, FakeEncoder  # noqa: E402
from PIL import Image  # noqa: E402

from clipsearch import Library  # noqa: E402
from clipsearch.distributed import (  # noqa: E402
    INGEST_CHUNK, EncoderSpec, RayOptions, Shard, index_on_ray, is_on_disk, read_shard, shard_folder, write_shard,
)
from clipsearch.index import exact_search, recall_at_k, recall_queries  # noqa: E402

TESTS = Path(__file__).parent
OBJECT_STORE = 80 * 1024 * 1024
POISON = (255, 0, 255)  # the colour of the photo the crashing encoder dies on


# -- encoders the Ray workers build ------------------------------------------------------------
class TestEncoder(FakeEncoder):
    """FakeEncoder that can log where it runs, count what it encodes, go slowly, or die once on the poison photo."""

    __test__ = False  # not a test class

    def __init__(self, node_log: str | None = None, count_log: str | None = None, delay: float = 0.0,
                 crash_marker: str | None = None) -> None:
        super().__init__()
        self.count_log, self.delay, self.crash_marker = count_log, delay, crash_marker
        if node_log:
            with open(node_log, "a") as fh:
                fh.write(ray.get_runtime_context().get_node_id() + "\n")

    def encode_images(self, images, batch_size: int = 64) -> np.ndarray:
        if self.crash_marker and not os.path.exists(self.crash_marker):
            means = [np.asarray(im.convert("RGB"), np.float32).reshape(-1, 3).mean(axis=0) for im in images]
            if any(np.abs(m - POISON).max() < 30 for m in means):
                Path(self.crash_marker).touch()
                os._exit(1)  # a worker dying mid-batch: no exception, no cleanup
        time.sleep(self.delay * len(images))
        if self.count_log:
            with open(self.count_log, "a") as fh:
                fh.write(f"{len(images)}\n")
        return super().encode_images(images, batch_size)


class ProjectionEncoder(FakeEncoder):
    """Spread-out vectors (a fixed random projection of an 8x8 thumbnail) for index-recall tests."""

    def __init__(self) -> None:
        super().__init__()
        self.dim = 32
        self.proj = np.random.default_rng(7).standard_normal((8 * 8 * 3, self.dim)).astype(np.float32)

    def image_vector(self, image: Image.Image) -> np.ndarray:
        x = np.asarray(image.convert("RGB").resize((8, 8)), np.float32).reshape(-1) / 255.0
        v = (x - x.mean()) @ self.proj
        return v / np.linalg.norm(v)

    def text_vector(self, text: str) -> np.ndarray:
        v = np.random.default_rng(abs(hash(text)) % 2**32).standard_normal(self.dim).astype(np.float32)
        return v / np.linalg.norm(v)


def _count(log: Path) -> int:
    return sum(int(line) for line in log.read_text().split()) if log.exists() else 0


# -- clusters and photos ----------------------------------------------------------------------
@pytest.fixture(scope="module", params=["local"])
def ray_cluster(request: pytest.FixtureRequest):
    """A Ray session for this process: 'local' (one node, 2 CPUs) or 'two-node' (1 CPU each); yields its address."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), saved]))
    cluster = None
    if request.param == "two-node":
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "object_store_memory": OBJECT_STORE, "include_dashboard": False})
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
        ray.init(address=cluster.address, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=OBJECT_STORE, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _noisy(path: Path, rgb: tuple[int, int, int], seed: int, size: tuple[int, int] = (40, 30)) -> None:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb, np.float32) + rng.normal(0, 8, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 colour photos in two folders, plus a corrupt JPEG, an empty PNG and a text file named .gif."""
    root = tmp_path_factory.mktemp("photos")
    names = list(COLOURS)
    for i in range(40):
        _noisy(root / ("sub" if i % 3 == 0 else "") / f"p{i:03d}.{'png' if i % 4 == 0 else 'jpg'}",
               COLOURS[names[i % len(names)]], seed=i)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.gif").write_text("hello")
    return root


def _catalog_rows(lib: Library, root: Path) -> dict[int, tuple]:
    return {r.id: (r.path, r.status, r.error, r.size, r.mtime_ns, r.width, r.height)
            for r in lib.catalog.images_under(str(root)).values()}


def _assert_consistent(lib: Library, files: int) -> None:
    """Every file catalogued once; every indexed image in the index once, nothing else there."""
    assert lib.catalog.count(None) == files
    ok = lib.catalog.ok_ids()
    in_index = lib.vector_index.ids()
    assert len(in_index) == len(np.unique(in_index))
    np.testing.assert_array_equal(np.sort(in_index), ok)


# -- no Ray unless asked ----------------------------------------------------------------------
def test_nothing_imports_ray_unless_asked() -> None:
    code = ("import sys, clipsearch, clipsearch.cli, clipsearch.library, clipsearch.distributed; "
            "clipsearch.cli.build_parser(); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shard_round_trip_and_damaged_shard(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    shard = Shard(paths=["/a.jpg", "/b.jpg", "/c.jpg"], sizes=np.array([1, 2, 3]), mtimes=np.array([4, 5, 6]),
                  widths=np.array([10, -1, 30]), heights=np.array([20, -1, 40]),
                  errors=[None, "image data is damaged", None], vectors=vectors)
    path = tmp_path / "s.parquet"
    write_shard(path, shard, model="m/p")
    back = read_shard(path, dim=5, model="m/p")
    assert back is not None and back.paths == shard.paths and back.errors == shard.errors
    np.testing.assert_array_equal(back.vectors, vectors)
    np.testing.assert_array_equal(back.widths, [10, -1, 30])
    assert read_shard(path, dim=5, model="other/model") is None
    assert read_shard(path, dim=6, model="m/p") is None
    path.write_bytes(path.read_bytes()[:50])  # torn
    assert read_shard(path, dim=5) is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_failures_not_the_files_own_are_not_recorded_from_shards(tmp_path: Path) -> None:
    from clipsearch.pipeline import FILE, RUNTIME, plan_sync, store_chunk

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, colour in (("a", "red"), ("b", "green"), ("c", "blue")):  # different bytes: not copies of each other
        Image.new("RGB", (8, 8), COLOURS[colour]).save(photos / f"{name}.jpg")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        plan = plan_sync(lib.catalog, str(photos))
        recs = sorted(plan.todo, key=lambda r: r.path)
        shard = Shard(paths=[r.path for r in recs], sizes=np.array([r.size for r in recs]),
                      mtimes=np.array([r.mtime_ns for r in recs]), widths=np.array([8, -1, -1]),
                      heights=np.array([8, -1, -1]), errors=[None, "not an image file", "could not encode: boom"],
                      vectors=np.eye(3, lib.dim, dtype=np.float32), faults=[FILE, FILE, RUNTIME])
        path = tmp_path / "s.parquet"
        write_shard(path, shard, model="m/p")
        back = read_shard(path, dim=lib.dim, model="m/p")
        assert back is not None and back.faults == [FILE, FILE, RUNTIME]
        # The driver stores shard rows with the single-machine store stage.
        store_chunk(lib.catalog, lib.vector_index, back.results([0, 1, 2]), plan.known, plan.report)
        assert [(os.path.basename(s.path), s.retry) for s in plan.report.skipped] == [("b.jpg", False),
                                                                                      ("c.jpg", True)]
        assert lib.catalog.find_path(recs[1].path).status == "error"  # the file's own fault: remembered
        assert lib.catalog.find_path(recs[2].path) is None  # the encoder's: tried again next run


# -- same library as one machine -------------------------------------------------------------
@pytest.mark.parametrize("ray_cluster", ["local", "two-node"], indirect=True)
def test_same_library_as_one_machine(ray_cluster: str, photos: Path, tmp_path: Path) -> None:
    single = Library.open(tmp_path / "single", encoder=FakeEncoder())
    expected = single.index(photos, index_kind="flat")
    nodes = tmp_path / "nodes.log"
    dist = Library.open(tmp_path / "ray", encoder=FakeEncoder())
    report = index_on_ray(dist, photos, encoder=EncoderSpec(factory=functools.partial(TestEncoder, str(nodes))),
                          options=RayOptions(workers=2, batch_size=8, shard_rows=INGEST_CHUNK), index_kind="flat")

    # The same report: counts, and the corrupt files skipped with the same reasons.
    assert (report.scanned, report.added, report.updated, report.removed) == (
        expected.scanned, expected.added, expected.updated, expected.removed) == (43, 40, 0, 0)
    assert sorted(report.skipped, key=lambda s: s.path) == sorted(expected.skipped, key=lambda s: s.path)
    assert {Path(s.path).name for s in report.skipped} == {"broken.jpg", "empty.png", "notes.gif"}
    # The same ids for the same paths, the same vectors, the same search results.
    assert _catalog_rows(dist, photos) == _catalog_rows(single, photos)
    ids_a, vecs_a = single.vectors()
    ids_b, vecs_b = dist.vectors()
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_allclose(vecs_b, vecs_a, atol=1e-6, rtol=0)
    for query in ("red", "blue", "green yellow", "a purple thing"):
        a, b = single.search(query, k=10), dist.search(query, k=10)
        assert [h.id for h in a] == [h.id for h in b] and [h.path for h in a] == [h.path for h in b]
        np.testing.assert_allclose([h.score for h in b], [h.score for h in a], atol=1e-6)
    _assert_consistent(dist, 43)
    assert not list((tmp_path / "ray" / "shards").rglob("*.parquet"))  # ingested and cleaned up
    if ray_cluster and len(ray.nodes()) == 2:
        assert len(set(nodes.read_text().split())) == 2, "both nodes should have run an embedding worker"

    # Reopened from disk, the library built on Ray answers as the one built here.
    dist.close()
    with Library.open(tmp_path / "ray", encoder=FakeEncoder()) as again:
        assert [h.id for h in again.search("red", k=5)] == [h.id for h in single.search("red", k=5)]
        # A second run finds nothing to do.
        rerun = index_on_ray(again, photos, encoder=EncoderSpec(factory=FakeEncoder), options=RayOptions(workers=1))
        assert (rerun.added, rerun.unchanged, rerun.previously_failed) == (0, 40, 3)
    single.close()


def _all_facts(lib: Library) -> dict[str, dict]:
    ids = lib.image_ids().tolist()
    rows = lib.catalog.get_images(ids)
    return {rows[i].path: f for i, f in lib.catalog.facts(ids, ["stem", "name_len", "red", "head",
                                                               "facts_dummy_version"]).items()}


def test_a_per_file_field_is_read_on_ray_as_on_one_machine(ray_cluster: str, photos: Path, tmp_path: Path) -> None:
    # The reader is passed once, to the library; the Ray workers run it in their read stage.
    single = Library.open(tmp_path / "single", encoder=FakeEncoder(), readers=[DummyReader()])
    single.index(photos, index_kind="flat")
    dist = Library.open(tmp_path / "ray", encoder=FakeEncoder(), readers=[DummyReader()])
    report = index_on_ray(dist, photos, encoder=EncoderSpec(factory=FakeEncoder),
                          options=RayOptions(workers=2, batch_size=8, shard_rows=INGEST_CHUNK), index_kind="flat")
    assert report.added == 40 and report.backfilled == 0
    facts = _all_facts(dist)
    assert len(facts) == 40 and facts == _all_facts(single)
    assert facts[str(photos / "p001.jpg")]["stem"] == "p001" and facts[str(photos / "p001.jpg")]["head"][:2] == b"\xff\xd8"
    assert _catalog_rows(dist, photos) == _catalog_rows(single, photos)
    single.close()
    dist.close()
    # A reader added later is back-filled by the next Ray run without embedding anything.
    with Library.open(tmp_path / "ray", encoder=FakeEncoder(), readers=[DummyReader(version=2)]) as again:
        rerun = index_on_ray(again, photos, encoder=EncoderSpec(factory=FakeEncoder), options=RayOptions(workers=1))
        assert (rerun.added, rerun.backfilled) == (0, 40)
        assert {f["facts_dummy_version"] for f in _all_facts(again).values()} == {2}


def test_videos_on_ray_as_on_one_machine(ray_cluster: str, tmp_path: Path) -> None:
    pytest.importorskip("av")
    from test_video import write_clip

    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    write_clip(folder / "trip.mp4", [COLOURS["red"], COLOURS["blue"], COLOURS["green"]], seconds_each=3.0, keyint=300)
    write_clip(folder / "sub" / "sea.mkv", [COLOURS["blue"], COLOURS["white"]], seconds_each=2.0, keyint=20)
    _noisy(folder / "still.jpg", COLOURS["yellow"], seed=1)
    single = Library.open(tmp_path / "single", encoder=FakeEncoder())
    single.index(folder, index_kind="flat")
    dist = Library.open(tmp_path / "ray", encoder=FakeEncoder())
    report = index_on_ray(dist, folder, encoder=EncoderSpec(factory=FakeEncoder),
                          options=RayOptions(workers=1, batch_size=4), index_kind="flat")
    assert report.added == 3 and not report.skipped
    assert (dist.info().videos, dist.info().video_frames) == (single.info().videos, single.info().video_frames)
    ids_a, vecs_a = single.vectors()
    ids_b, vecs_b = dist.vectors()
    np.testing.assert_array_equal(ids_a, ids_b)  # the same frame rows, in the same order
    np.testing.assert_allclose(vecs_b, vecs_a, atol=1e-6, rtol=0)
    for query in ("blue", "green", "yellow"):
        a, b = single.search(query, k=3), dist.search(query, k=3)
        assert [(h.path, h.time, h.segment) for h in a] == [(h.path, h.time, h.segment) for h in b]
    # A deleted video takes its frame vectors with it, on Ray as on one machine.
    (folder / "trip.mp4").unlink()
    single.index(folder, index_kind="flat")
    report = index_on_ray(dist, folder, encoder=EncoderSpec(factory=FakeEncoder), options=RayOptions(workers=1),
                          index_kind="flat")
    assert report.removed == 1
    assert (dist.info().videos, dist.info().video_frames) == (single.info().videos, single.info().video_frames) \
        == (1, single.info().video_frames) and single.info().video_frames > 0
    assert dist.searcher.index.ntotal == single.searcher.index.ntotal == len(dist.vectors()[0])
    assert all("trip.mp4" not in h.path for h in dist.search("red", k=10))
    single.close()
    dist.close()


# -- IVF-PQ built on Ray, merged on disk -----------------------------------------------------
def test_ivfpq_built_on_ray_is_served_from_disk(ray_cluster: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    root = tmp_path / "many"
    for i in range(600):
        arr = (rng.random((2, 2, 3)) * 255).astype(np.uint8)  # a dozen degrees of freedom, as photos have few
        root.mkdir(exist_ok=True)
        Image.fromarray(arr).resize((24, 24), Image.Resampling.BILINEAR).save(root / f"{i:04d}.png")
    folder = tmp_path / "lib"
    lib = Library.open(folder, encoder=ProjectionEncoder())
    report = index_on_ray(lib, root, encoder=EncoderSpec(factory=ProjectionEncoder),
                          options=RayOptions(workers=2, batch_size=50, part_rows=150), index_kind="ivfpq")
    assert report.added == 600
    index = lib.vector_index
    assert index.kind == "ivfpq" and is_on_disk(index)
    assert index.meta.extra["parts"] == 4 and index.meta.recall_at_10 is not None
    assert len(list(folder.glob("index-*.ivfdata"))) == 1
    _assert_consistent(lib, 600)

    # Recall@10 against brute force on the stored vectors, text-like and image-like queries:
    # modest in absolute terms (4-byte codes), and what the single-machine build reaches.
    ids, vectors = lib.vectors()
    near = vectors[:200] + 0.1 * rng.standard_normal((200, vectors.shape[1])).astype(np.float32)
    queries = np.concatenate([recall_queries(vectors, 200, seed=5), near / np.linalg.norm(near, axis=1, keepdims=True)])
    _, true_ids = exact_search(vectors, ids, queries, 10)
    recall = recall_at_k(index.search(queries, 10)[1], true_ids, 10)
    single = Library.open(tmp_path / "single", encoder=ProjectionEncoder())
    single.index(root, index_kind="ivfpq")
    single_recall = recall_at_k(single.vector_index.search(queries, 10)[1], true_ids, 10)
    print(f"IVF-PQ recall@10 vs exact: built on Ray {recall:.3f} (build-time estimate {index.meta.recall_at_10}), "
          f"built on one machine {single_recall:.3f}")
    assert recall >= 0.4
    assert abs(recall - single_recall) <= 0.05
    single.close()
    hits = lib.search_vector(queries[0], 10)
    lib.close()

    # Moved elsewhere and reopened, the library finds its lists file and answers the same.
    moved = tmp_path / "moved-lib"
    folder.rename(moved)
    with Library.open(moved, encoder=ProjectionEncoder()) as again:
        assert is_on_disk(again.vector_index)
        assert [h.id for h in again.search_vector(queries[0], 10)] == [h.id for h in hits]
        # New photos: the index is rebuilt on Ray into a new lists file, the old one deleted.
        for i in range(600, 620):
            Image.fromarray((rng.random((2, 2, 3)) * 255).astype(np.uint8)).resize((24, 24)).save(root / f"{i:04d}.png")
        (root / "0000.png").unlink()
        rerun = index_on_ray(again, root, encoder=EncoderSpec(factory=ProjectionEncoder),
                             options=RayOptions(workers=2, batch_size=50, part_rows=150))
        assert (rerun.added, rerun.removed, rerun.unchanged) == (20, 1, 599)
        assert is_on_disk(again.vector_index) and len(list(moved.glob("index-*.ivfdata"))) == 1
        _assert_consistent(again, 619)


# -- faults --------------------------------------------------------------------------------------
def test_worker_killed_mid_run_loses_nothing(ray_cluster: str, photos: Path, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i in range(24):
        _noisy(root / f"q{i:02d}.jpg", COLOURS[list(COLOURS)[i % 8]], seed=100 + i)
    _noisy(root / "q99-poison.png", POISON, seed=1)
    marker = tmp_path / "crashed"
    lib = Library.open(tmp_path / "lib", encoder=FakeEncoder())
    crashing = EncoderSpec(factory=functools.partial(TestEncoder, crash_marker=str(marker)))
    report = index_on_ray(lib, root, encoder=crashing,
                          options=RayOptions(workers=2, batch_size=4, shard_rows=8), index_kind="flat")
    assert marker.exists(), "the worker should have died once"
    assert report.added == 25 and not report.skipped
    _assert_consistent(lib, 25)
    lib.close()


def test_driver_killed_mid_run_resumes_from_shards(ray_cluster: str, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i in range(64):
        _noisy(root / f"r{i:02d}.jpg", COLOURS[list(COLOURS)[i % 8]], seed=200 + i)
    folder, counts = tmp_path / "lib", tmp_path / "encoded.log"
    Library.open(folder, encoder=FakeEncoder()).close()
    script = textwrap.dedent(f"""
        import functools, sys
        sys.path.insert(0, {str(TESTS)!r})
        from test_distributed import TestEncoder
        from fakes import FakeEncoder
        from clipsearch import Library
        from clipsearch.distributed import EncoderSpec, RayOptions, index_on_ray
        lib = Library.open({str(folder)!r}, encoder=FakeEncoder())
        spec = EncoderSpec(factory=functools.partial(TestEncoder, count_log={str(counts)!r}, delay=0.08))
        index_on_ray(lib, {str(root)!r}, encoder=spec,
                     options=RayOptions(address={ray_cluster!r}, workers=1, batch_size=4, shard_rows=8))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    shards = shard_folder(folder, str(root))
    try:
        deadline = time.monotonic() + 90
        while len(list(shards.glob("*.parquet"))) < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no shard was written in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = [read_shard(p, dim=FakeEncoder().dim) for p in sorted(shards.glob("*.parquet"))]
    in_shards = {p for s in done if s is not None for p in s.paths}
    assert 16 <= len(in_shards) < 64

    lib = Library.open(folder, encoder=FakeEncoder())
    assert lib.catalog.count(None) == 0  # nothing was ingested: the run died while embedding
    before = -1
    while before != _count(counts):  # until Ray has stopped the dead run's worker
        before = _count(counts)
        time.sleep(1.0)
    report = index_on_ray(lib, root, encoder=EncoderSpec(factory=functools.partial(TestEncoder, count_log=str(counts))),
                          options=RayOptions(workers=2, batch_size=8, shard_rows=16))
    assert report.added == 64
    assert _count(counts) - before == 64 - len(in_shards), "files in completed shards must not be embedded again"
    _assert_consistent(lib, 64)
    assert not shards.exists() or not list(shards.iterdir())
    lib.close()


# -- the command line ---------------------------------------------------------------------------
def test_cli_index_with_ray_matches_one_machine(ray_cluster: str, photos: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The bundled toyworld model, end to end: `clipsearch index --ray` then `clipsearch search`."""
    import json

    from clipsearch.cli import main

    assert main(["-q", "index", str(photos), "--library", str(tmp_path / "one")]) == 0
    assert main(["-q", "index", str(photos), "--library", str(tmp_path / "ray"), "--ray", "--ray-workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "40 added" in out and "3 skipped" in out and "broken.jpg" in out
    results = []
    for lib in ("one", "ray"):
        assert main(["search", "a red car", "--library", str(tmp_path / lib), "--json", "-k", "5"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert [h["path"] for h in results[0]] == [h["path"] for h in results[1]]
    np.testing.assert_allclose([h["score"] for h in results[1]], [h["score"] for h in results[0]], atol=1e-5)
    assert main(["rebuild-index", "--library", str(tmp_path / "ray"), "--index", "ivfsq8", "--ray"]) == 0
    assert "index rebuilt from stored vectors on Ray: 40 images" in capsys.readouterr().out
    with Library.open(tmp_path / "ray", create=False) as lib:
        assert lib.vector_index.kind == "ivfsq8" and is_on_disk(lib.vector_index)


def test_photo_metadata_on_ray_as_on_one_machine(ray_cluster: str, tmp_path: Path) -> None:
    # The default readers carry photo metadata (clipsearch.metadata): a Ray run records the same.
    from clipsearch import toyworld
    from clipsearch.metadata import METADATA_COLUMNS

    root = tmp_path / "toy"
    toyworld.generate(root, 16, split="seen", seed=4, workers=1, progress=False)
    columns = [name for name, _ in METADATA_COLUMNS]

    def by_path(lib: Library) -> dict[str, dict]:
        rows = lib.catalog.images_under(str(root))
        facts = lib.catalog.facts([r.id for r in rows.values()], columns)
        return {path: facts[row.id] for path, row in rows.items()}

    with Library.open(tmp_path / "single", encoder=FakeEncoder()) as single:
        single.index(root, index_kind="flat")
        expected = by_path(single)
    with Library.open(tmp_path / "ray", encoder=FakeEncoder()) as dist:
        index_on_ray(dist, root, encoder=EncoderSpec(factory=FakeEncoder), options=RayOptions(workers=2, batch_size=8),
                     index_kind="flat")
        got = by_path(dist)
        assert got == expected and len(got) == 16
        assert sum(f["place_city"] is not None for f in got.values()) >= 8
        assert all(f["taken_at"] and f["file_type"] == "jpeg" for f in got.values())
        city = next(f["place_city"] for f in got.values() if f["place_city"])
        hits = dist.search(f'place:"{city}"', k=50)
        assert hits and all(h.place and h.place.startswith(city) for h in hits)


# -- moves ------------------------------------------------------------------------------------
def test_a_renamed_folder_on_ray_is_moved_not_embedded(ray_cluster: str, photos: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(photos, root)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        index_on_ray(lib, root, encoder=EncoderSpec(factory=FakeEncoder), options=RayOptions(workers=1))
        before = {r.path: r.id for r in lib.catalog.images_under(str(root)).values() if r.status == "ok"}
        os.rename(root / "sub", root / "sub-2024")
        report = index_on_ray(lib, root, encoder=EncoderSpec(factory=FakeEncoder), options=RayOptions(workers=1))
        assert (report.moved, report.added, report.removed) == (14, 0, 0)
        after = {r.path: r.id for r in lib.catalog.images_under(str(root)).values() if r.status == "ok"}
        assert after == {p.replace("/sub/", "/sub-2024/"): i for p, i in before.items()}
        _assert_consistent(lib, 43)


class _Int8Fake(FakeEncoder):
    """A FakeEncoder that says its image vectors are int8 (as the onnx-int8 backend's are)."""

    image_backend = "onnx-int8"


def test_ray_records_what_encoded_the_library_and_says_when_it_mixes(ray_cluster: str, photos: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    assert EncoderSpec("ViT-B-32", image_backend="onnx-int8").precision == "int8"
    assert EncoderSpec("ViT-B-32", image_backend="onnxruntime").precision == "fp32"
    assert EncoderSpec(factory=FakeEncoder).precision == "fp32" and EncoderSpec(factory=_Int8Fake).precision == "int8"
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(photos / "sub", first)
    shutil.copytree(photos, second, ignore=shutil.ignore_patterns("sub"))
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        index_on_ray(lib, first, encoder=EncoderSpec(factory=_Int8Fake), options=RayOptions(workers=1))
        assert lib.held_precision() == "int8"
        index_on_ray(lib, first, encoder=EncoderSpec(factory=FakeEncoder), options=RayOptions(workers=1))
        assert lib.held_precision() == "int8"  # nothing encoded: nothing changes
        with caplog.at_level("WARNING"):
            index_on_ray(lib, second, encoder=EncoderSpec(factory=FakeEncoder), options=RayOptions(workers=1))
        assert lib.held_precision() == "mixed" and "holds int8 and fp32 image vectors" in caplog.text
