"""The int8 image tower: close to fp32, chosen by `auto` only for a new library, and a library
that mixes int8 and fp32 vectors says so."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import clipsearch.encoder as encoder_module
from clipsearch.cli import main
from clipsearch.encoder import INT8_MIN_COSINE, load_encoder
from clipsearch.library import Library

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("int8")
    assert main(["-q", "toyworld", "generate", "--n", "24", "--workers", "1", str(root / "tw")]) == 0
    return root / "tw" / "images"


def _new_photo(source: Path, target: Path) -> None:
    """A photo the library has not seen (mirrored), so it is encoded rather than matched as a copy."""
    from PIL import Image, ImageOps

    ImageOps.mirror(Image.open(source).convert("RGB")).save(target, quality=90)


def test_int8_tower_gives_vectors_close_to_torch(photos: Path) -> None:
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.jpg"))[:12]]
    fp32 = load_encoder("toyworld", image_backend="torch")
    int8 = load_encoder("toyworld", image_backend="onnx-int8")
    assert (fp32.image_backend, int8.image_backend) == ("torch", "onnx-int8")
    assert int8.int8_cosine is not None and int8.int8_cosine >= INT8_MIN_COSINE
    cosine = (fp32.encode_images(images) * int8.encode_images(images)).sum(axis=1)
    assert cosine.min() >= INT8_MIN_COSINE
    assert not np.allclose(cosine, 1.0, atol=1e-6)  # really another tower, not fp32 again


def test_a_library_remembers_int8_and_says_when_it_mixes(photos: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    files = sorted(photos.glob("*.jpg"))
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir(), later.mkdir()
    for i, f in enumerate(files):
        (first if i < 16 else later).joinpath(f.name).write_bytes(f.read_bytes())
    with Library.open(tmp_path / "lib", model="toyworld", image_backend="onnx-int8") as lib:
        assert lib.index(first).added == 16
        info = lib.info()
        assert info.image_precision == "int8" and "onnx-int8" in info.image_precision_note
    # auto keeps an int8 library on int8, even for a job too small to move to onnxruntime.
    with Library.open(tmp_path / "lib", image_backend="auto") as lib:
        lib.index(later)
        assert lib.encoder.image_backend == "onnx-int8" and lib.info().image_precision == "int8"
    _new_photo(files[0], later / "extra.jpg")  # not a copy: copies take their twin's stored vector
    with caplog.at_level("WARNING"), Library.open(tmp_path / "lib", image_backend="torch") as lib:
        assert lib.index(later).added == 1
        info = lib.info()
    assert info.image_precision == "mixed" and "mixed" in info.image_precision_note
    assert "holds int8 and fp32 image vectors" in caplog.text


def test_auto_picks_int8_for_a_new_library_only_where_it_measured_faster(photos: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_module, "AUTO_ONNX_MIN_IMAGES", 8)
    monkeypatch.setattr(encoder_module, "AUTO_INT8_MIN_IMAGES", 20)
    for faster, expected in ((True, "int8"), (False, "fp32")):
        monkeypatch.setattr(encoder_module.ClipEncoder, "int8_measured_faster", lambda self, cache_dir=None: faster)
        with Library.open(tmp_path / f"lib-{faster}", model="toyworld", image_backend="auto") as lib:
            lib.index(photos)
            assert lib.info().image_precision == expected
        # An fp32 library stays fp32 under auto, whatever int8 measures.
    monkeypatch.setattr(encoder_module.ClipEncoder, "int8_measured_faster", lambda self, cache_dir=None: True)
    (tmp_path / "more").mkdir()
    for f in sorted(photos.glob("*.jpg"))[:9]:
        _new_photo(f, tmp_path / "more" / f.name)
    with Library.open(tmp_path / "lib-False", image_backend="auto") as lib:
        lib.index(tmp_path / "more")
        assert lib.encoder.image_backend == "onnxruntime" and lib.info().image_precision == "fp32"


def test_int8_measurement_is_cached_per_cpu(tmp_path: Path) -> None:
    enc = load_encoder("toyworld", image_backend="torch")
    if not encoder_module._cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        assert enc.int8_measured_faster(tmp_path) is False
        return
    answer = enc.int8_measured_faster(tmp_path)
    notes = list(tmp_path.glob("*-int8-choice.json"))
    assert len(notes) == 1 and str(answer).lower() in notes[0].read_text()
