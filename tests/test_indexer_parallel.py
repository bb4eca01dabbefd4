"""The indexer's decode pipeline: worker processes give what the in-process path gives.

A tiny random open_clip model (a config JSON in tmp_path, no weights) drives the pixel
path (workers resize and crop to model pixels); the colour fake drives the PIL path.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder, write_colour_photos
from PIL import Image

import clipsearch.indexer
from clipsearch import ImageLoadError, Library, ModelError
from clipsearch.encoder import ClipEncoder, load_encoder
from clipsearch.images import load_image
from clipsearch.indexer import DECODER_CRASHED, Indexer, IndexReport, _DecodeStream
from clipsearch.pipeline import read_file
from clipsearch.scan import scan

TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_config_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cfg") / "clipsearch-parallel-tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tiny_config_path: str) -> ClipEncoder:
    return load_encoder(tiny_config_path, None, device="cpu")


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, str]:
    """Photos of several sizes, formats and orientations, and three broken files."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(7)
    out = {}
    for i, (w, h) in enumerate([(640, 480), (480, 640), (300, 200), (33, 90), (1000, 250), (32, 32)]):
        path = folder / f"photo{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
        out[path.stem] = str(path)
    rotated = Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    rotated.save(folder / "rotated.jpg", exif=exif)
    out["rotated"] = str(folder / "rotated.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    out["alpha"] = str(folder / "alpha.png")
    good = Path(out["photo0"]).read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "text.jpg").write_text("not a photo at all")
    (folder / "empty.png").write_bytes(b"")
    for name in ("truncated", "text", "empty"):
        out[name] = str(next(folder.glob(f"{name}.*")))
    return out


def _index(tmp_path: Path, name: str, encoder, photos_dir: Path, monkeypatch: pytest.MonkeyPatch,
           **indexer_args) -> tuple[IndexReport, dict[str, np.ndarray]]:
    monkeypatch.setattr(clipsearch.indexer, "Indexer", functools.partial(Indexer, **indexer_args))
    with Library.open(tmp_path / name, encoder=encoder) as lib:
        report = lib.index(photos_dir)
        ids, vectors = lib.vectors()
        rows = lib.catalog.get_images(ids.tolist())
        return report, {rows[int(i)].path: v for i, v in zip(ids, vectors)}


def _comparable(report: IndexReport) -> tuple:
    return (report.scanned, report.added, report.updated, report.removed, report.unchanged,
            sorted((s.path, s.reason) for s in report.skipped))


def test_worker_processes_give_the_in_process_vectors_and_report(
        tiny: ClipEncoder, tmp_path: Path, photos: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "photos"
    threads, by_thread = _index(tmp_path, "lib-threads", tiny, folder, monkeypatch, processes=False)
    procs, by_process = _index(tmp_path, "lib-procs", tiny, folder, monkeypatch, processes=True,
                               decode_workers=2, batch_size=3, chunk_size=4)
    assert _comparable(procs) == _comparable(threads)
    assert procs.added == 8 and len(procs.skipped) == 3
    assert by_process.keys() == by_thread.keys()
    for path, vector in by_process.items():
        np.testing.assert_allclose(vector, by_thread[path], atol=1e-6)

    # Both equal the model's own preprocessing of the decoded image (PIL → open_clip transform).
    paths = sorted(by_process)
    expected = tiny.encode_images([load_image(p, target_size=tiny.image_size) for p in paths])
    np.testing.assert_allclose(np.stack([by_process[p] for p in paths]), expected, atol=1e-6)


def test_broken_files_are_skipped_with_the_loaders_reasons(
        tiny: ClipEncoder, tmp_path: Path, photos: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    report, _ = _index(tmp_path, "lib", tiny, tmp_path / "photos", monkeypatch, processes=True)
    reasons = {s.path: s.reason for s in report.skipped}
    assert set(reasons) == {photos["truncated"], photos["text"], photos["empty"]}
    for path, reason in reasons.items():
        with pytest.raises(ImageLoadError) as err:
            load_image(path, target_size=tiny.image_size)
        assert reason == err.value.reason
    assert reasons[photos["empty"]] == "file is empty"


def test_the_catalog_keeps_the_photos_own_size(
        tiny: ClipEncoder, tmp_path: Path, photos: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clipsearch.indexer, "Indexer", functools.partial(Indexer, processes=True))
    with Library.open(tmp_path / "lib", encoder=tiny) as lib:
        lib.index(tmp_path / "photos")
        sizes = {name: (row.width, row.height) for name in ("photo0", "rotated", "alpha")
                 for row in [lib.catalog.find_path(photos[name])]}
    assert sizes == {"photo0": (640, 480), "rotated": (120, 160), "alpha": (70, 50)}


def test_the_fake_encoder_gets_pil_images_from_worker_processes(
        tmp_path: Path, photos: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    write_colour_photos(tmp_path / "photos" / "colours")
    in_threads, expected = _index(tmp_path, "lib-threads", FakeEncoder(), tmp_path / "photos", monkeypatch,
                                  processes=False)
    fake = FakeEncoder()
    in_procs, got = _index(tmp_path, "lib-procs", fake, tmp_path / "photos", monkeypatch, processes=True,
                           decode_workers=2, batch_size=4)
    assert _comparable(in_procs) == _comparable(in_threads)
    assert fake.images_encoded == in_procs.added == 16
    for path, vector in got.items():
        np.testing.assert_allclose(vector, expected[path], atol=1e-6)


def test_an_encoder_failure_in_the_pixel_path_costs_one_file(
        tiny: ClipEncoder, tmp_path: Path, photos: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    real = tiny.encode_pixels

    def picky(pixels: np.ndarray) -> np.ndarray:
        if ((pixels[..., 0] > 190) & (pixels[..., 1] < 20)).all(axis=(1, 2)).any():  # the solid red strip
            raise RuntimeError("odd pixels")
        return real(pixels)

    Image.new("RGB", (40, 8), (200, 10, 10)).save(tmp_path / "photos" / "strip.png")
    monkeypatch.setattr(tiny, "encode_pixels", picky)
    report, _ = _index(tmp_path, "lib", tiny, tmp_path / "photos", monkeypatch, processes=True)
    odd = [s for s in report.skipped if "odd pixels" in s.reason]
    assert [s.path for s in odd] == [str(tmp_path / "photos" / "strip.png")]
    assert odd[0].reason == "could not encode: odd pixels"
    assert odd[0].retry  # the encoder's fault, not the file's: nothing recorded, tried again next run
    assert report.added == 8


def crash_on_marked_files(record, target_size, spec, readers=()):
    """A decode function for the workers that crashes its process (SIGSEGV) on files named *crash*."""
    if "crash" in os.path.basename(record.path):
        os.kill(os.getpid(), signal.SIGSEGV)
    return read_file(record, target_size, spec, readers)


def test_a_decoder_crash_costs_only_the_file_it_was_on(tmp_path: Path) -> None:
    paths = write_colour_photos(tmp_path / "photos", ["red", "green", "blue", "yellow", "purple", "orange"])
    os.rename(paths["blue"], tmp_path / "photos" / "crash.jpg")
    records = sorted(scan(tmp_path / "photos").files, key=lambda r: r.path)
    stream = _DecodeStream(records, 32, None, workers=2, processes=True, window=4, decode=crash_on_marked_files)
    with stream:
        results = list(stream)
    assert [r.record.path for r in results] == [r.path for r in records]
    errors = {os.path.basename(r.record.path): (r.error, r.retry) for r in results if r.error}
    # Crashed twice, in two fresh processes: the file's own fault, remembered (until the decoders change).
    assert errors == {"crash.jpg": (DECODER_CRASHED.format(how="crashed (SIGSEGV)"), False)}
    assert all(r.image is not None for r in results if r.error is None)


def test_small_syncs_decode_in_threads_and_large_ones_in_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clipsearch.indexer

    used = []
    real_init = _DecodeStream.__init__

    def spy(self, *args, **kwargs):
        used.append(kwargs["processes"])
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(_DecodeStream, "__init__", spy)
    write_colour_photos(tmp_path / "few", ["red", "green"])
    many = tmp_path / "many"
    for i in range(clipsearch.indexer.PROCESS_MIN_FILES):
        write_colour_photos(many / str(i), ["red"], seed=i + 1)  # all different (and from few): copies are not decoded
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        assert lib.index(tmp_path / "few").added == 2
        assert lib.index(many).added == clipsearch.indexer.PROCESS_MIN_FILES
    assert used == [False, True]


def test_the_onnxruntime_backend_matches_torch_and_is_cached(tiny_config_path: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch_encoder = load_encoder(tiny_config_path, None, device="cpu")
    onnx_encoder = load_encoder(tiny_config_path, None, device="cpu")
    path = onnx_encoder.use_onnxruntime(tmp_path / "onnx")
    assert onnx_encoder.image_backend == "onnxruntime" and path.is_file()
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    got, expected = onnx_encoder.encode_pixels(pixels), torch_encoder.encode_pixels(pixels)
    assert (got * expected).sum(axis=1).min() >= 0.999
    # Texts stay on torch, and a second encoder reuses the exported file.
    np.testing.assert_array_equal(onnx_encoder.encode_texts(["a dog"]), torch_encoder.encode_texts(["a dog"]))
    mtime = path.stat().st_mtime_ns
    assert load_encoder(tiny_config_path, None, device="cpu").use_onnxruntime(tmp_path / "onnx") == path
    assert path.stat().st_mtime_ns == mtime


def test_an_unavailable_onnxruntime_falls_back_to_torch_with_a_warning(
        tiny_config_path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    monkeypatch.setenv("CLIPSEARCH_IMAGE_BACKEND", "onnxruntime")
    encoder = load_encoder(tiny_config_path, None, device="cpu")
    assert encoder.image_backend == "torch"
    assert "pip install 'clipsearch[onnx]'" in caplog.text
    with pytest.raises(ModelError, match="unknown image backend 'tpu'"):
        load_encoder(tiny_config_path, None, device="cpu", image_backend="tpu")


def test_the_auto_backend_moves_a_big_cpu_job_to_onnxruntime(
        tiny_config_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import clipsearch.encoder

    monkeypatch.setattr(clipsearch.encoder, "AUTO_ONNX_MIN_IMAGES", 6)
    monkeypatch.setenv("CLIPSEARCH_ONNX_CACHE", str(tmp_path / "onnx"))
    monkeypatch.delenv("CLIPSEARCH_IMAGE_BACKEND")
    names = ["red", "green", "blue", "yellow", "purple", "orange", "white"]
    write_colour_photos(tmp_path / "small", names[:5])
    write_colour_photos(tmp_path / "big", names)
    reference = load_encoder(tiny_config_path, None, device="cpu", image_backend="torch")

    # Under the threshold: torch, nothing exported.
    encoder = load_encoder(tiny_config_path, None, device="cpu")
    assert encoder.image_backend_choice == "auto" and encoder.image_backend == "torch"
    with Library.open(tmp_path / "lib-small", encoder=encoder) as lib:
        assert lib.index(tmp_path / "small").added == 5
    assert encoder.image_backend == "torch" and not (tmp_path / "onnx").exists()

    # At the threshold: onnxruntime, with the vectors torch gives.
    with Library.open(tmp_path / "lib-big", encoder=encoder) as lib:
        assert lib.index(tmp_path / "big").added == 7
        assert encoder.image_backend == "onnxruntime"
        assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
        for path in (tmp_path / "big").iterdir():
            row = lib.catalog.find_path(str(path))
            stored = lib.catalog.vectors_for([row.id], lib.dim)[row.id]
            expected = reference.encode_images([load_image(path)])[0]
            assert float(stored @ expected) >= 0.999, path.name


def test_the_auto_backend_stays_on_torch_quietly_without_onnxruntime(
        tiny_config_path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    encoder = load_encoder(tiny_config_path, None, device="cpu", image_backend="auto")
    encoder.prepare_bulk_encoding(100_000)
    assert encoder.image_backend == "torch"
    assert "onnxruntime" not in caplog.text
    # Asked for by name, torch is never left.
    pinned = load_encoder(tiny_config_path, None, device="cpu", image_backend="torch")
    pinned.prepare_bulk_encoding(100_000)
    assert pinned.image_backend == "torch"


def test_ray_workers_get_the_named_image_backend_with_their_own_threads(
        tiny_config_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from clipsearch.distributed import EncoderSpec

    monkeypatch.setenv("CLIPSEARCH_ONNX_CACHE", str(tmp_path / "onnx"))
    monkeypatch.setenv("CLIPSEARCH_IMAGE_BACKEND", "auto")
    named = EncoderSpec(tiny_config_path, None, "cpu", image_backend="onnxruntime").build(threads=1)
    assert named.image_backend == "onnxruntime"
    assert named._onnx_session.get_session_options().intra_op_num_threads == 1
    # "auto" (or nothing) in a worker is torch: one actor per slot, no pool per core in each.
    assert EncoderSpec(tiny_config_path, None, "cpu", image_backend="auto").build(threads=1).image_backend == "torch"
    assert EncoderSpec(tiny_config_path, None, "cpu").build().image_backend == "torch"


def test_an_unwritable_onnx_cache_leaves_the_auto_backend_on_torch(
        tiny_config_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("CLIPSEARCH_ONNX_CACHE", str(blocker / "onnx"))
    encoder = load_encoder(tiny_config_path, None, device="cpu", image_backend="auto")
    encoder.prepare_bulk_encoding(100_000)  # no crash: a warning, and torch encodes
    assert encoder.image_backend == "torch"
    assert "CLIPSEARCH_ONNX_CACHE" in caplog.text
    assert encoder.encode_pixels(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 16)
