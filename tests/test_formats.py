"""Every photo format a library holds is indexed or reported, and pixels look like the photo.

Samples are written by the libraries themselves (Pillow for AVIF, MPO, JPEG 2000, TGA,
WebP, TIFF, ...; pillow-heif for HEIC), PSD by hand (Pillow reads PSD but cannot write
it), and camera RAW as DNG by tests/rawgen.py (LibRaw reads it like any camera's RAW).
"""
from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from fakes import COLOURS, NAMES, FakeEncoder
from PIL import Image
from rawgen import write_dng

import clipsearch.images
from clipsearch import ImageLoadError, Library
from clipsearch.images import RAW_EXTENSIONS, SUPPORTED_EXTENSIONS, formats, load_image

RED, BLUE = COLOURS["red"], COLOURS["blue"]


def _two_halves(w: int = 96, h: int = 64) -> np.ndarray:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = RED
    arr[:, w // 2:] = BLUE
    return arr


def _psd(path: Path, rgb: np.ndarray) -> None:
    """A flat RGB PSD: header, empty sections, raw planar composite."""
    h, w, _ = rgb.shape
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    body = struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0)
    path.write_bytes(header + body + b"".join(rgb[..., c].tobytes() for c in range(3)))


def _png16_rgb(path: Path, arr: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow writes none)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _samples(folder: Path) -> dict[str, Path]:
    """One red-left/blue-right photo per format this installation writes."""
    folder.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(_two_halves())
    out: dict[str, Path] = {}
    for name, fmt, kwargs in [("photo.avif", "AVIF", {"quality": 90}), ("photo.jp2", "JPEG2000", {}),
                              ("photo.tga", "TGA", {}), ("photo.webp", "WEBP", {"quality": 95}),
                              ("photo.tif", "TIFF", {}), ("photo.png", "PNG", {}), ("photo.bmp", "BMP", {}),
                              ("photo.gif", "GIF", {}), ("icon.ico", "ICO", {"sizes": [(96, 64)]}),
                              ("texture.dds", "DDS", {})]:
        im.save(folder / name, fmt, **kwargs)
        out[name] = folder / name
    # MPO: a stereo camera's two pictures in one file; the first is the photo.
    im.save(folder / "stereo.mpo", "MPO", save_all=True, append_images=[Image.new("RGB", im.size, (0, 255, 0))])
    out["stereo.mpo"] = folder / "stereo.mpo"
    _psd(folder / "layers.psd", _two_halves())
    out["layers.psd"] = folder / "layers.psd"
    write_dng(folder / "sensor.dng", _two_halves(400, 300))  # no preview: demosaiced
    out["sensor.dng"] = folder / "sensor.dng"
    big = _two_halves(1200, 800)
    write_dng(folder / "camera.dng", big, preview=Image.fromarray(big).resize((600, 400)))
    out["camera.dng"] = folder / "camera.dng"
    try:
        import pillow_heif
    except ImportError:
        pass
    else:
        pillow_heif.from_pillow(im).save(folder / "phone.heic", quality=90)
        out["phone.heic"] = folder / "phone.heic"
    return out


def _is_red(rgb: tuple) -> bool:
    r, g, b = rgb[:3]
    return r > 150 and g < 100 and b < 160 and r > b + 60


def _is_blue(rgb: tuple) -> bool:
    r, g, b = rgb[:3]
    return b > 150 and r < 100


def test_every_photo_format_is_decoded_with_its_colours(tmp_path: Path) -> None:
    for name, path in _samples(tmp_path).items():
        image = load_image(path, target_size=32)
        w, h = image.size
        left, right = image.getpixel((w // 6, h // 2)), image.getpixel((w - w // 6, h // 2))
        assert _is_red(left) and _is_blue(right), (name, left, right)


def test_a_folder_of_every_format_is_indexed(tmp_path: Path) -> None:
    samples = _samples(tmp_path / "photos")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        report = lib.index(tmp_path / "photos")
        assert (report.added, report.skipped) == (len(samples), [])
        row = lib.catalog.find_path(str(samples["camera.dng"]))
        assert (row.width, row.height) == (1200, 800)  # the sensor's size, not the preview's


def test_raw_uses_a_large_enough_preview_and_demosaics_otherwise(tmp_path: Path) -> None:
    big = _two_halves(1200, 800)
    # The preview is green: which path ran shows in the pixels.
    write_dng(tmp_path / "big-preview.dng", big, preview=Image.new("RGB", (600, 400), (0, 200, 0)))
    write_dng(tmp_path / "small-preview.dng", big, preview=Image.new("RGB", (120, 80), (0, 200, 0)))
    with_preview = load_image(tmp_path / "big-preview.dng", target_size=224)
    assert with_preview.getpixel((10, 10))[1] > 150
    demosaiced = load_image(tmp_path / "small-preview.dng", target_size=224)
    assert _is_red(demosaiced.getpixel((10, 10)))
    assert min(demosaiced.size) >= 224


def test_files_of_known_formats_that_cannot_be_read_are_listed_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "noise.nef").write_bytes(b"\0not a raw file" * 64)
    (photos / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 40)
    (photos / "scan.avif").write_bytes(b"\0\0\0\x1cftypavif" + b"\0" * 40)
    Image.new("RGB", (8, 8)).save(photos / "ok.png")
    monkeypatch.setattr(clipsearch.images, "_RAW_AVAILABLE", False)
    monkeypatch.setattr(clipsearch.images, "_HEIF_AVAILABLE", False)
    monkeypatch.setattr(clipsearch.images, "_register_heif", lambda: False)
    monkeypatch.setattr(clipsearch.images, "_readable", lambda fmt: fmt not in ("RAW", "HEIF", "AVIF"))
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        report = lib.index(photos)
    reasons = {Path(s.path).name: s.reason for s in report.skipped}
    assert reasons == {"noise.nef": "camera RAW photos need rawpy: pip install rawpy",
                       "phone.heic": "HEIC/HEIF photos need pillow-heif: pip install 'clipsearch[heic]'",
                       "scan.avif": "AVIF photos need a Pillow built with AVIF (the PyPI wheels of Pillow >= 11.3): "
                                    "pip install -U pillow"}
    assert report.added == 1


def test_a_file_that_is_not_raw_data_is_refused_by_libraw(tmp_path: Path) -> None:
    (tmp_path / "noise.cr2").write_bytes(b"\0not a raw file" * 64)
    with pytest.raises(ImageLoadError, match="not a camera RAW file LibRaw can read") as caught:
        load_image(tmp_path / "noise.cr2")
    assert not caught.value.transient  # the file's own fault: remembered


def test_info_formats_lists_what_this_installation_reads(capsys) -> None:
    from clipsearch.cli import main

    assert main(["info", "--formats"]) == 0
    out = capsys.readouterr().out
    for f in formats():
        assert f.name in out
    assert "camera RAW" in out and ".cr3" in out and ".avif" in out and ".mpo" in out
    assert {e for f in formats() for e in f.extensions} == SUPPORTED_EXTENSIONS
    assert RAW_EXTENSIONS <= SUPPORTED_EXTENSIONS


def test_info_into_a_pipe_closed_early_exits_quietly(tmp_path: Path) -> None:
    # `clipsearch info --formats | head -1`: the reader leaves after one line.
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch", "info", "--formats"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


# -- pixels that look like the photo --------------------------------------------------------------
def test_a_12_bit_greyscale_png_is_not_drawn_black(tmp_path: Path) -> None:
    sensor = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (48, 1))  # 12 bits in a 16-bit file
    Image.fromarray(sensor).save(tmp_path / "grey12.png")
    out = np.asarray(load_image(tmp_path / "grey12.png"))
    assert out[..., 0].max() == 255 and out[..., 0].min() == 0
    Image.new("RGB", (64, 48)).save(tmp_path / "black.png")
    encoder = FakeEncoder()
    vectors = encoder.encode_images([load_image(tmp_path / "grey12.png"), load_image(tmp_path / "black.png")])
    assert float(vectors[0] @ vectors[1]) < 0.9  # not the black image's vector


def test_a_12_bit_rgb_png_keeps_its_colours(tmp_path: Path) -> None:
    arr = (_two_halves(64, 48).astype(np.uint32) * 4095 // 255).astype(np.uint16)
    _png16_rgb(tmp_path / "rgb12.png", arr)
    image = load_image(tmp_path / "rgb12.png")
    assert _is_red(image.getpixel((5, 20))) and _is_blue(image.getpixel((60, 20)))
    encoder = FakeEncoder()
    vec = encoder.encode_images([image])[0]
    assert NAMES[int(np.argmax(vec[: len(NAMES)]))] != "black"


def test_transparency_is_composited_on_white_in_every_mode(tmp_path: Path) -> None:
    grey16 = Image.fromarray(np.full((8, 8), 1000, np.uint16))
    grey16.save(tmp_path / "grey16.png", transparency=1000)
    rgba = Image.new("RGBA", (8, 8), (200, 0, 0, 0))
    for fmt, ext in [("PNG", "png"), ("WEBP", "webp"), ("AVIF", "avif"), ("TIFF", "tif")]:
        rgba.save(tmp_path / f"clear.{ext}", fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    la = Image.new("LA", (8, 8), (0, 0))
    la.save(tmp_path / "la.png")
    for name in ["grey16.png", "clear.png", "clear.webp", "clear.avif", "clear.tif", "la.png"]:
        pixel = load_image(tmp_path / name).getpixel((4, 4))
        assert all(c >= 250 for c in pixel), (name, pixel)  # the neutral background every mode shares


def test_psd_and_raw_headers_claiming_huge_images_are_refused_before_decoding(tmp_path: Path) -> None:
    import time

    size = 20000  # 400 MP claimed by a file of a few hundred bytes
    (tmp_path / "bomb.psd").write_bytes(b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, size, size, 8, 3)
                                        + struct.pack(">IIIH", 0, 0, 0, 0) + b"\0" * 100)
    write_dng(tmp_path / "bomb.dng", np.zeros((8, 8, 3), np.uint8))
    data = bytearray((tmp_path / "bomb.dng").read_bytes())
    for i in range(struct.unpack_from("<H", data, 8)[0]):  # IFD0's width and height, now 20000
        if struct.unpack_from("<H", data, 10 + 12 * i)[0] in (256, 257):
            struct.pack_into("<I", data, 10 + 12 * i + 8, size)
    (tmp_path / "bomb.dng").write_bytes(bytes(data))
    for name in ("bomb.psd", "bomb.dng"):
        started = time.monotonic()
        with pytest.raises(ImageLoadError, match="400 MP, over the 150 MP limit"):
            load_image(tmp_path / name, target_size=224)
        assert time.monotonic() - started < 2
