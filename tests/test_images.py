"""images.load_image: allow-list, caps, EXIF rotation, mode normalisation, draft decoding."""
from __future__ import annotations

import io
import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.errors import ImageLoadError
from clipsearch.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_EXTENSIONS,
    is_supported,
    load_image,
)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width×height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- extensions ---------------------------------------------------------------------


def test_supported_extensions_are_lower_case_with_a_dot() -> None:
    assert {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"} <= (
        SUPPORTED_EXTENSIONS
    )
    assert all(ext.startswith(".") and ext == ext.lower() for ext in SUPPORTED_EXTENSIONS)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.jpg", True), ("A.JPG", True), ("b.Tiff", True), ("c.png", True), ("d.txt", False),
     ("noext", False), (Path("x/y.WEBP"), True), (".jpg", False)],
)
def test_is_supported_by_extension_case_insensitively(name: str | Path, expected: bool) -> None:
    assert is_supported(name) is expected


# --- EXIF orientation ------------------------------------------------------------------


def test_exif_orientation_6_rotates_and_keeps_the_marked_corner(tmp_path: Path) -> None:
    # Stored 40 wide × 20 high with a red top-left corner. Orientation 6 means "rotate
    # 90° clockwise to display", so the red corner must end up top-right of a 20×40 image.
    im = Image.new("RGB", (40, 20), WHITE)
    im.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    im.save(path, quality=95, exif=exif)

    out = load_image(path)

    assert out.size == (20, 40)
    assert close_to(out.getpixel((17, 2)), RED, tol=40)
    assert close_to(out.getpixel((2, 2)), WHITE, tol=40)
    assert close_to(out.getpixel((17, 37)), WHITE, tol=40)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_still_returns_the_image_unrotated(tmp_path: Path) -> None:
    path = tmp_path / "badexif.jpg"
    Image.new("RGB", (40, 20), BLUE).save(path, exif=b"Exif\x00\x00MM\x00*garbage\xff\xff")
    out = load_image(path)
    assert out.size == (40, 20)
    assert out.mode == "RGB"


def test_tiff_orientation_tag_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (30, 10), WHITE)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to display
    path = tmp_path / "rot.tif"
    im.save(path, exif=exif)
    assert load_image(path).size == (10, 30)


# --- mode normalisation -----------------------------------------------------------------


def test_rgba_transparency_is_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 5, 10))
    path = tmp_path / "alpha.png"
    im.save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((8, 5)) == WHITE  # transparent black must not come out black
    assert out.getpixel((1, 5)) == RED


def test_half_transparent_pixel_is_blended_with_white(tmp_path: Path) -> None:
    path = tmp_path / "half.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(path)
    assert close_to(load_image(path).getpixel((1, 1)), (127, 127, 127), tol=2)


def test_la_transparency_is_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.new("LA", (4, 4), (0, 0)).save(path)
    assert load_image(path).getpixel((1, 1)) == WHITE


def test_palette_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (10, 10), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (0, 0, 5, 10))
    path = tmp_path / "ptrans.png"
    im.save(path, transparency=0)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((8, 5)) == WHITE
    assert out.getpixel((1, 5)) == GREEN


def test_palette_without_transparency_keeps_its_colours(tmp_path: Path) -> None:
    path = tmp_path / "pal.gif"
    Image.new("RGB", (8, 8), BLUE).convert("P").save(path)
    assert load_image(path).getpixel((3, 3)) == BLUE


@pytest.mark.parametrize("ext", ["jpg", "tif"])
def test_cmyk_cyan_comes_out_cyan(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"cmyk.{ext}"
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert close_to(out.getpixel((4, 4)), (0, 255, 255))


def test_cmyk_black_comes_out_black(tmp_path: Path) -> None:
    path = tmp_path / "black.jpg"
    Image.new("CMYK", (8, 8), (0, 0, 0, 255)).save(path)
    assert close_to(load_image(path).getpixel((4, 4)), (0, 0, 0))


def gradient16() -> np.ndarray:
    return np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))


@pytest.mark.parametrize(("mode", "ext"), [("I;16", "png"), ("I;16", "tif"), ("I;16B", "tif")])
def test_16_bit_greyscale_is_scaled_not_saturated(tmp_path: Path, mode: str, ext: str) -> None:
    data = gradient16()
    dtype = ">u2" if mode == "I;16B" else "<u2"
    im = Image.frombytes(mode, (256, 4), data.astype(dtype).tobytes())
    path = tmp_path / f"grey16.{ext}"
    im.save(path)

    out = np.asarray(load_image(path))

    assert out.shape == (4, 256, 3)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 255].tolist() == [255, 255, 255]
    assert abs(int(out[0, 128, 0]) - 128) <= 2
    assert len(np.unique(out[..., 0])) > 200  # a gradient, not all white


def test_32_bit_integer_greyscale_is_scaled(tmp_path: Path) -> None:
    im = Image.fromarray(gradient16().astype(np.int32))
    assert im.mode == "I"
    path = tmp_path / "grey32.tif"
    im.save(path)
    out = np.asarray(load_image(path))
    assert out[0, 0, 0] == 0 and out[0, 255, 0] == 255
    assert abs(int(out[0, 128, 0]) - 128) <= 2


def test_float_greyscale_is_scaled(tmp_path: Path) -> None:
    im = Image.fromarray(np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (4, 1)))
    assert im.mode == "F"
    path = tmp_path / "float.tif"
    im.save(path)
    out = np.asarray(load_image(path))
    assert out[0, 0, 0] == 0 and out[0, 255, 0] == 255
    assert abs(int(out[0, 128, 0]) - 128) <= 2


def test_float_outside_unit_range_is_stretched(tmp_path: Path) -> None:
    im = Image.fromarray(np.tile(np.linspace(-1000.0, 3000.0, 256, dtype=np.float32), (4, 1)))
    path = tmp_path / "float_wide.tif"
    im.save(path)
    out = np.asarray(load_image(path))
    assert out[0, 0, 0] == 0 and out[0, 255, 0] == 255


@pytest.mark.parametrize(("mode", "colour", "expected"), [
    ("1", 1, WHITE), ("1", 0, (0, 0, 0)), ("L", 77, (77, 77, 77)),
])
def test_bilevel_and_grey_become_rgb(
    tmp_path: Path, mode: str, colour: int, expected: tuple[int, int, int]
) -> None:
    path = tmp_path / f"{mode}.png"
    Image.new(mode, (6, 6), colour).save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((2, 2)) == expected


def test_animated_gif_gives_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, GREEN, BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((8, 8)) == RED


def test_animated_webp_gives_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (BLUE, RED)]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, lossless=True)
    assert close_to(load_image(path).getpixel((8, 8)), BLUE)


def test_apng_gives_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (GREEN, BLUE)]
    path = tmp_path / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert load_image(path).getpixel((8, 8)) == GREEN


# --- bad files --------------------------------------------------------------------------


def test_text_file_with_photo_extension_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "holiday.jpg"
    path.write_text("this is not a photo\n")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert info.value.reason == "not an image file"
    assert "holiday.jpg" in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.reason == "file is empty"
    assert info.value.path == str(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError) as info:
        load_image(tmp_path / "gone.jpg")
    assert info.value.reason == "file does not exist"


def test_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(folder)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(fifo)


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(full, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.reason.startswith("truncated or corrupt image data")
    assert info.value.path == str(path)


def test_corrupt_png_body(tmp_path: Path) -> None:
    good = io.BytesIO()
    Image.new("RGB", (50, 50), RED).save(good, "PNG")
    data = bytearray(good.getvalue())
    data[60:80] = b"\xff" * 20  # inside IDAT
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(path)


def test_format_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sneaky.jpg"
    Image.new("RGB", (8, 8), RED).save(path, format="PCX")  # Pillow reads PCX; we do not
    with pytest.raises(ImageLoadError, match="not an image file"):
        load_image(path)


def test_wrong_extension_but_allowed_format_loads(tmp_path: Path) -> None:
    path = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (8, 8), GREEN).save(path, format="PNG")
    assert load_image(path).getpixel((1, 1)) == GREEN


# --- size caps ---------------------------------------------------------------------------


def test_png_bomb_header_is_refused_quickly() -> None:
    data = png_with_header(100_000, 100_000)
    assert len(data) < 200
    start = time.perf_counter()
    with pytest.raises(ImageLoadError) as info:
        load_image(data)
    assert time.perf_counter() - start < 1.0
    assert info.value.path == "<upload>"
    assert "10000 MP" in info.value.reason and "150 MP limit" in info.value.reason


def test_pixel_cap_is_checked_before_decoding() -> None:
    # 12000×12000 = 144 MP passes Pillow's own bomb check and our default cap, so a lower
    # cap must refuse it from the header alone (the body is garbage and is never read).
    with pytest.raises(ImageLoadError) as info:
        load_image(png_with_header(12_000, 12_000), max_pixels=100_000_000)
    assert info.value.reason == "image is 12000×12000 = 144 MP, over the 100 MP limit"


def test_between_pillow_warning_and_our_cap_is_not_a_bomb() -> None:
    # 100 MP is over Pillow's warning threshold (~89 MP) but under our 150 MP cap: no
    # warning may escape, and the (garbage) body is what gets reported.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageLoadError) as info:
            load_image(png_with_header(10_000, 10_000))
    assert info.value.reason.startswith("truncated or corrupt image data")


def test_pixel_cap_on_a_real_bilevel_image(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("1", (4000, 3000), 1).save(path)
    with pytest.raises(ImageLoadError, match="over the 10 MP limit"):
        load_image(path, max_pixels=10_000_000)
    assert load_image(path, max_pixels=12_000_000).size == (4000, 3000)


def test_default_cap_is_150_megapixels() -> None:
    assert DEFAULT_MAX_PIXELS == 150_000_000


def test_byte_cap_refuses_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64), RED).save(path)
    opened: list[object] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    with pytest.raises(ImageLoadError, match="over the"):
        load_image(path, max_bytes=100)
    assert opened == []


def test_byte_cap_applies_to_bytes_and_streams() -> None:
    data = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(data, "PNG")
    with pytest.raises(ImageLoadError, match="over the"):
        load_image(data.getvalue(), max_bytes=50)
    data.seek(0)
    with pytest.raises(ImageLoadError, match="over the"):
        load_image(data, max_bytes=50)


# --- draft and reduction -----------------------------------------------------------------


def test_jpeg_draft_decodes_at_a_reduced_scale(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (30, 120, 200)).save(path, quality=85)
    out = load_image(path, target_size=224)
    assert 224 <= min(out.size) < 3000
    assert out.size[0] > out.size[1]  # aspect kept
    assert close_to(out.getpixel((10, 10)), (30, 120, 200))
    assert load_image(path).size == (4000, 3000)  # full resolution without target_size


@pytest.mark.parametrize("target", [1, 100, 224, 375, 376, 1499, 1500, 2999, 3000, 5000])
def test_short_side_never_drops_below_target(tmp_path: Path, target: int) -> None:
    path = tmp_path / "big.jpg"
    if not path.exists():
        Image.new("RGB", (4000, 3000), RED).save(path)
    out = load_image(path, target_size=target)
    assert min(out.size) >= min(target, 3000)


def test_draft_with_exif_rotation_keeps_short_side(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    Image.new("RGB", (4000, 3000), RED).save(path, exif=exif)
    out = load_image(path, target_size=224)
    assert out.size[1] > out.size[0]
    assert min(out.size) >= 224


def test_large_png_is_reduced_when_target_given(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000), GREEN).save(path)
    out = load_image(path, target_size=224)
    assert 224 <= min(out.size) < 448
    assert out.getpixel((5, 5)) == GREEN


def test_target_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_image(b"x", target_size=0)


# --- sources and resources ---------------------------------------------------------------


def test_bytes_input(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (12, 8), BLUE).save(buf, "PNG")
    out = load_image(buf.getvalue())
    assert out.size == (12, 8) and out.getpixel((3, 3)) == BLUE


def test_bytes_errors_use_upload_or_given_name() -> None:
    with pytest.raises(ImageLoadError) as info:
        load_image(b"not an image")
    assert info.value.path == "<upload>"
    with pytest.raises(ImageLoadError) as info:
        load_image(b"not an image", name="cat.jpg")
    assert info.value.path == "cat.jpg"
    with pytest.raises(ImageLoadError) as info:
        load_image(b"")
    assert info.value.reason == "file is empty"


def test_stream_input_is_left_open_for_the_caller(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (12, 8), RED).save(buf, "JPEG")
    buf.seek(0)
    out = load_image(buf)
    assert out.size == (12, 8)
    assert not buf.closed


def test_stream_read_from_current_position() -> None:
    buf = io.BytesIO()
    buf.write(b"HEADER")
    Image.new("RGB", (5, 7), GREEN).save(buf, "PNG")
    buf.seek(6)
    assert load_image(buf).size == (5, 7)


def test_path_like_input(tmp_path: Path) -> None:
    path = tmp_path / "p.webp"
    Image.new("RGB", (9, 9), RED).save(path, lossless=True)
    assert load_image(str(path)).getpixel((4, 4)) == RED
    assert load_image(path).getpixel((4, 4)) == RED


def test_result_is_fully_loaded_and_detached_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (32, 32), RED).save(path)
    out = load_image(path)
    os.remove(path)
    # Usable after the file is gone: nothing is read lazily.
    assert close_to(out.resize((4, 4)).getpixel((1, 1)), RED)
    assert getattr(out, "fp", None) is None


def test_no_file_handles_leak(tmp_path: Path) -> None:
    paths = []
    for i, (fmt, mode) in enumerate([("jpg", "RGB"), ("png", "RGBA"), ("gif", "P"),
                                     ("tif", "CMYK"), ("webp", "RGB"), ("bmp", "L")]):
        path = tmp_path / f"img{i}.{fmt}"
        Image.new(mode, (20, 20)).save(path)
        paths.append(path)
    anim = tmp_path / "anim.gif"
    Image.new("P", (8, 8)).save(anim, save_all=True, append_images=[Image.new("P", (8, 8), 3)])
    paths.append(anim)
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    paths.append(bad)

    before = open_fd_count()
    for _ in range(60):
        for path in paths:
            try:
                load_image(path, target_size=8)
            except ImageLoadError:
                pass
    assert open_fd_count() == before
