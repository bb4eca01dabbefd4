"""Turn a path or bytes into a safe, fully loaded RGB image.

This module knows about files and pixels only, never about models: it enforces a format
allow-list and size caps, applies EXIF orientation, normalises every colour mode to RGB
and, when asked, decodes JPEGs at a reduced scale. Camera RAW files go through rawpy
(LibRaw): the embedded preview JPEG when it is large enough, else a half-size demosaic.
`formats()` says which formats this installation reads; a file whose format needs a
decoder that is not installed is refused with a reason naming the package. `to_pixels` resizes and crops an image
to a `PixelSpec` (a model's input geometry, described without torch) so that worker
processes can prepare model input without importing torch.

Longer than most modules on purpose: one allow-list and one set of caps for every format
(RAW, HEIC, AVIF, JPEG 2000, PSD, 16-bit...), so that no decoder path escapes them; each
format's branch is short.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import logging
import os
import re
import stat
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from PIL import ExifTags, Image, UnidentifiedImageError

from clipsearch.errors import ImageLoadError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "MAX_ASPECT_RATIO",
    "SUPPORTED_EXTENSIONS",
    "PixelSpec",
    "decoder_stack",
    "is_supported",
    "load_image",
    "to_pixels",
]

logger = logging.getLogger(__name__)

# find_spec only looks for the package; importing pillow_heif / rawpy is deferred to the first load.
_HEIF_AVAILABLE = importlib.util.find_spec("pillow_heif") is not None
_RAW_AVAILABLE = importlib.util.find_spec("rawpy") is not None

# Photo formats by extension: (Pillow format, what to install when this Pillow cannot read it).
_PILLOW_EXTENSIONS: dict[str, str] = {
    **dict.fromkeys((".jpg", ".jpeg", ".jpe", ".jfif"), "JPEG"), ".mpo": "MPO",
    ".png": "PNG", ".gif": "GIF", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
    ".avif": "AVIF", **dict.fromkeys((".jp2", ".j2k", ".jpx", ".jpf", ".j2c"), "JPEG2000"),
    ".psd": "PSD", ".tga": "TGA", ".ico": "ICO", ".dds": "DDS", **dict.fromkeys((".heic", ".heif", ".hif"), "HEIF"),
}
# Camera RAW, read with rawpy (LibRaw).
RAW_EXTENSIONS: frozenset[str] = frozenset(
    {".cr2", ".cr3", ".nef", ".nrw", ".arw", ".dng", ".orf", ".rw2", ".raf", ".pef", ".srw"})
# Every extension clipsearch knows as a photo: a file with one is indexed, or listed with the
# reason it was not (e.g. "HEIC files need pillow-heif"), never silently left out.
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_PILLOW_EXTENSIONS) | RAW_EXTENSIONS
# The embedded preview of a RAW file is used when its short side is at least this (or the
# model's input size, when larger); otherwise the sensor data is demosaiced at half size.
RAW_PREVIEW_MIN = 256
DEFAULT_MAX_PIXELS: int = 150_000_000
DEFAULT_MAX_BYTES: int = 256 * 1024 * 1024
# Long side over short side; the longest panoramas and page-long screenshots stay well under.
MAX_ASPECT_RATIO: int = 100

# Tried on every file whatever its name (each has a magic number); MPO (camera multi-picture
# JPEG) comes through the JPEG factory. TGA, ICO and DDS have no (or a weak) magic number:
# tried only for files named so, never guessed for a file of another name.
_BASE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "JPEG2000", "PSD")
_BY_NAME_ONLY = frozenset({"TGA", "ICO", "DDS"})
_INSTALL_HINT: dict[str, str] = {
    "HEIF": "HEIC/HEIF photos need pillow-heif: pip install 'clipsearch[heic]'",
    "AVIF": "AVIF photos need a Pillow built with AVIF (the PyPI wheels of Pillow >= 11.3): pip install -U pillow",
    "JPEG2000": "JPEG 2000 photos need a Pillow built with OpenJPEG (the PyPI wheels): pip install -U pillow",
    "RAW": "camera RAW photos need rawpy: pip install rawpy",
}
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_UPLOAD_NAME = "<upload>"
_WHITE = (255, 255, 255)

# Same table as PIL.ImageOps.exif_transpose; applied by hand so that the (cheap) transpose
# runs on the final, possibly reduced RGB image instead of the full-resolution original.
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_heif_registered = False


@functools.lru_cache(maxsize=1)
def decoder_stack() -> str:
    """The versions of everything that decides whether a file decodes, as one string.

    Stored with each remembered failure: a failure judged by another stack (Pillow,
    pillow-heif, rawpy or clipsearch upgraded since) is tried again.
    """
    from importlib import metadata

    import PIL

    from clipsearch import __version__

    parts = [f"clipsearch {__version__}", f"Pillow {PIL.__version__}"]
    for dist in ("pillow-heif", "rawpy"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} none")
    return "; ".join(parts)


def is_supported(path: str | os.PathLike[str]) -> bool:
    """True when the file's extension is one clipsearch decodes (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in SUPPORTED_EXTENSIONS


def load_image(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    target_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> Image.Image:
    """Decode `source` into a fully loaded RGB image, or raise ImageLoadError.

    `source` is a path, the encoded bytes, or a binary stream (read from its current
    position; the caller keeps ownership and closes it). `target_size`, when given, lets
    the decoder work at a reduced scale whose short side is still >= target_size.
    `name` is the label used in errors for bytes and streams (default "<upload>").
    Images over `max_pixels` (judged from the header, before decoding) or files over
    `max_bytes` are refused. Pillow refuses anything over 2 * Image.MAX_IMAGE_PIXELS
    regardless, so a `max_pixels` above that has no effect.
    """
    if target_size is not None and target_size < 1:
        raise ValueError(f"target_size must be a positive number of pixels, got {target_size}")

    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or _UPLOAD_NAME
        data = bytes(source)
        _check_byte_size(label, len(data), max_bytes)
        return _decode(io.BytesIO(data), label, target_size, max_pixels, _extension(name))

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = name or path
        _check_file(path, label, max_bytes)
        try:
            # O_NONBLOCK: a file swapped for a FIFO since the check above can't block the open.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise ImageLoadError(label, _os_reason(e), transient=True) from e
        with open(fd, "rb") as fh:
            # Checked again on what was opened, which may not be what `path` named a moment ago.
            before = os.fstat(fh.fileno())
            _check_stat(before, label, max_bytes)
            image = _decode(fh, label, target_size, max_pixels, _extension(path))
            after = os.fstat(fh.fileno())
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise ImageLoadError(label, "file changed while it was being read; index again to pick up "
                                        "the new version", transient=True)
        # The (size, mtime) of the version decoded: a catalog must not claim a newer one.
        image.info["file_stat"] = (before.st_size, before.st_mtime_ns)
        return image

    # A binary stream.
    stream_name = getattr(source, "name", None)
    label = name or (stream_name if isinstance(stream_name, str) else _UPLOAD_NAME)
    return _decode(_bounded_stream(source, label, max_bytes), label, target_size, max_pixels, _extension(label))


@dataclass(frozen=True)
class PixelSpec:
    """A model's input geometry: torchvision's `Resize(resize)` then `CenterCrop(crop)`, on PIL images.

    `resize` is the short side (an int) or an exact (height, width); `crop` is (height,
    width) or None; `resample` is a PIL resampling filter.
    """

    resize: int | tuple[int, int]
    crop: tuple[int, int] | None
    resample: int = Image.Resampling.BICUBIC


def to_pixels(image: Image.Image, spec: PixelSpec) -> np.ndarray:
    """The (height, width, 3) uint8 array a model sees for an RGB `image`.

    Pixel for pixel what torchvision's Resize + CenterCrop give on a PIL image (same
    sizes, rounding and zero padding), so vectors match the model's own preprocessing.
    """
    import numpy as np

    width, height = image.size
    if isinstance(spec.resize, int):
        # torchvision: the short side becomes `resize`, the long side is truncated, not rounded.
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = spec.resize, int(spec.resize * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
    else:
        size = (spec.resize[1], spec.resize[0])
    if size != image.size:
        image = image.resize(size, spec.resample)
    if spec.crop is not None:
        crop_h, crop_w = spec.crop
        width, height = image.size
        if crop_w > width or crop_h > height:
            padded = Image.new(image.mode, (max(width, crop_w), max(height, crop_h)))
            padded.paste(image, ((crop_w - width) // 2 if crop_w > width else 0,
                                 (crop_h - height) // 2 if crop_h > height else 0))
            image, (width, height) = padded, padded.size
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
        if (left, top, crop_w, crop_h) != (0, 0, width, height):
            image = image.crop((left, top, left + crop_w, top + crop_h))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def _check_file(path: str, label: str, max_bytes: int) -> None:
    """Refuse missing, special, empty and oversized files before opening them."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ImageLoadError(label, _os_reason(e), transient=True) from e
    _check_stat(st, label, max_bytes)


def _check_stat(st: os.stat_result, label: str, max_bytes: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(label, "is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO or a device could block forever or never end.
        raise ImageLoadError(label, "not a regular file")
    _check_byte_size(label, st.st_size, max_bytes)


def _check_byte_size(label: str, size: int, max_bytes: int) -> None:
    if size == 0:
        raise ImageLoadError(label, "file is empty")
    if size > max_bytes:
        raise ImageLoadError(
            label, f"file is {_byte_size(size)}, over the {_byte_size(max_bytes)} limit"
        )


def _bounded_stream(stream: BinaryIO, label: str, max_bytes: int) -> BinaryIO:
    """Return a seekable stream positioned at the image, refusing oversized input."""
    try:
        if getattr(stream, "seekable", lambda: False)():
            start = stream.tell()
            end = stream.seek(0, io.SEEK_END)
            stream.seek(start)
            _check_byte_size(label, end - start, max_bytes)
            if start == 0:
                return stream
            # Pillow assumes the image starts at offset 0 of the stream.
            return io.BytesIO(stream.read())
        data = stream.read(max_bytes + 1)
    except OSError as e:
        raise ImageLoadError(label, _os_reason(e), transient=True) from e
    _check_byte_size(label, len(data), max_bytes)
    return io.BytesIO(data)


def _extension(name: str | None) -> str:
    return os.path.splitext(name)[1].lower() if name else ""


def _decode(fp: BinaryIO, label: str, target_size: int | None, max_pixels: int, ext: str = "") -> Image.Image:
    """Open with the allow-list, check the size, decode, orient and normalise to RGB."""
    if ext in RAW_EXTENSIONS:
        return _decode_raw(fp, label, target_size, max_pixels)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel cap below, before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=_allowed_formats(ext))
    except UnidentifiedImageError as e:
        wanted = _PILLOW_EXTENSIONS.get(ext)
        if wanted is not None and not _readable(wanted):
            raise ImageLoadError(label, _INSTALL_HINT.get(wanted, f"this installation cannot read {wanted}")) from e
        raise ImageLoadError(label, "not an image file") from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError(label, _bomb_reason(e, max_pixels)) from e
    except MemoryError as e:
        raise ImageLoadError(label, "not enough memory to read the image header", transient=True) from e
    except OSError as e:
        if e.errno is not None:  # the disk's fault (EIO, a network share gone), not the bytes'
            raise ImageLoadError(label, _os_reason(e), transient=True) from e
        raise ImageLoadError(label, f"truncated or corrupt image data: {_describe(e)}") from e
    except Exception as e:  # noqa: BLE001 - Pillow plugins raise many types on bad headers
        raise ImageLoadError(label, f"truncated or corrupt image data: {_describe(e)}") from e

    try:
        return _finish(im, label, target_size, max_pixels)
    except ImageLoadError:
        raise
    except MemoryError as e:
        raise ImageLoadError(label, "not enough memory to decode the image", transient=True) from e
    except OSError as e:
        if e.errno is not None:
            raise ImageLoadError(label, _os_reason(e), transient=True) from e
        raise ImageLoadError(label, f"truncated or corrupt image data: {_describe(e)}") from e
    except Exception as e:  # noqa: BLE001 - never let a raw PIL/OSError escape
        raise ImageLoadError(label, f"truncated or corrupt image data: {_describe(e)}") from e
    finally:
        # Drop every reference to the file (multi-frame formats keep a second one).
        im.fp = None
        if hasattr(im, "_fp"):
            im._fp = None


# LibRaw's `flip` (0, 3, 5, 6) as the transpose that shows the photo upright.
_RAW_FLIP: dict[int, Image.Transpose] = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90,
                                         6: Image.Transpose.ROTATE_270}


def _decode_raw(fp: BinaryIO, label: str, target_size: int | None, max_pixels: int) -> Image.Image:
    """A camera RAW file: its embedded preview JPEG when large enough, else its sensor data demosaiced at half size."""
    if not _RAW_AVAILABLE:
        raise ImageLoadError(label, _INSTALL_HINT["RAW"])
    import rawpy

    raw = rawpy.RawPy()
    try:
        try:
            raw.open_buffer(fp)  # reads it all: the file is under max_bytes
        except rawpy.LibRawFileUnsupportedError as e:
            raise ImageLoadError(label, "not a camera RAW file LibRaw can read") from e
        sizes = raw.sizes
        width, height = sizes.width, sizes.height
        if sizes.raw_width * sizes.raw_height > max_pixels:
            raise ImageLoadError(label, f"RAW sensor data is {sizes.raw_width}×{sizes.raw_height} = "
                                        f"{_megapixels(sizes.raw_width * sizes.raw_height)} MP, over the "
                                        f"{_megapixels(max_pixels)} MP limit")
        if min(width, height) < 1:
            raise ImageLoadError(label, f"image has no pixels ({width}×{height})")
        flip = _RAW_FLIP.get(sizes.flip)
        rgb = _raw_preview(raw, label, max(RAW_PREVIEW_MIN, target_size or 0), target_size, max_pixels, flip)
        if rgb is None:
            # half_size: each 2×2 Bayer cell becomes one pixel, no interpolation: 4x less work than a full demosaic.
            rgb = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))  # flipped
            if target_size is not None and min(rgb.size) // target_size >= 2:
                rgb = rgb.reduce(min(rgb.size) // target_size)
    except ImageLoadError:
        raise
    except OSError as e:
        raise ImageLoadError(label, _os_reason(e), transient=True) from e
    except (MemoryError, rawpy.LibRawUnsufficientMemoryError, rawpy.LibRawMemPoolOverflowError) as e:
        raise ImageLoadError(label, "not enough memory to decode the RAW data", transient=True) from e
    except rawpy.LibRawError as e:
        raise ImageLoadError(label, f"truncated or corrupt RAW data: {_describe(e)}") from e
    finally:
        raw.close()
    swapped = sizes.flip in (5, 6)
    rgb.info["original_size"] = (height, width) if swapped else (width, height)
    return rgb


def _raw_preview(raw: object, label: str, want: int, target_size: int | None, max_pixels: int,
                 flip: Image.Transpose | None) -> Image.Image | None:
    """The embedded preview as an upright RGB image if it has a short side >= `want`, else None."""
    import rawpy

    try:
        thumb = raw.extract_thumb()  # type: ignore[attr-defined]
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    except rawpy.LibRawError as e:
        logger.debug("%s: unreadable RAW preview (%s); demosaicing", label, e)
        return None
    if thumb.format == rawpy.ThumbFormat.BITMAP:
        image = Image.fromarray(thumb.data)
        if min(image.size) < want:
            return None
        return image.transpose(flip) if flip is not None else image
    try:
        with Image.open(io.BytesIO(thumb.data), formats=("JPEG",)) as head:
            if min(head.size) < want:
                return None
            own_orientation = head.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None)
        image = _decode(io.BytesIO(thumb.data), label, target_size, max_pixels, ".jpg")
    except (ImageLoadError, OSError, UnidentifiedImageError) as e:
        logger.debug("%s: unreadable RAW preview (%s); demosaicing", label, e)
        return None
    if flip is not None and not own_orientation:
        image = image.transpose(flip)
    return image


def _finish(im: Image.Image, label: str, target_size: int | None, max_pixels: int) -> Image.Image:
    width, height = im.size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageLoadError(
            label,
            f"image is {width}×{height} = {_megapixels(pixels)} MP, "
            f"over the {_megapixels(max_pixels)} MP limit",
        )
    if width < 1 or height < 1:
        raise ImageLoadError(label, f"image has no pixels ({width}×{height})")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        # A model resizes the short side up to its input size: a 1×100000 strip of a few
        # hundred bytes would become gigabytes of pixels there.
        raise ImageLoadError(
            label, f"image is {width}×{height}, longer than {MAX_ASPECT_RATIO}:1; not a photo"
        )

    if target_size is not None and im.format in _JPEG_FORMATS:
        # libjpeg scales by 1/2, 1/4 or 1/8 and keeps both sides >= the requested size.
        im.draft("RGB", (target_size, target_size))

    # 16 bits per channel in an RGB(A) file: Pillow keeps the high byte of each sample.
    deep_colour = im.mode in ("RGB", "RGBA") and any(";16" in str(tile.args) for tile in im.tile)

    im.load()  # GIF, WebP and APNG load their first frame

    orientation = _orientation(im, label)
    try:
        rgb = _to_rgb(im)
    except ValueError as e:  # Pillow has no conversion for this mode
        raise ImageLoadError(label, f"unsupported colour mode {im.mode}") from e
    if deep_colour:
        rgb = _stretch_narrow_high_bytes(rgb)

    if target_size is not None:
        factor = min(rgb.size) // target_size
        if factor >= 2:
            # reduce() rounds sizes up, so the short side stays >= target_size.
            rgb = rgb.reduce(factor)

    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is not None:
        rgb = rgb.transpose(method)
    # The photo's displayed size before any draft or reduce, for the catalog.
    swapped = method in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270,
                         Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE)
    rgb.info["original_size"] = (height, width) if swapped else (width, height)
    return rgb


def _orientation(im: Image.Image, label: str) -> int:
    """The EXIF (or XMP) orientation, 1 when absent or unreadable."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception as e:  # noqa: BLE001 - broken EXIF must not cost us the image
        logger.debug("%s: ignoring unreadable EXIF data: %s", label, e)
        return 1
    if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE:
        return value
    if value not in (1, None):
        logger.debug("%s: ignoring invalid EXIF orientation %r", label, value)
    return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """Normalise any Pillow mode to 8-bit RGB; transparency is composited on white, in every mode."""
    mode = im.mode
    if mode == "RGB" and not im.has_transparency_data:
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np  # only these rare modes need it; keeps `import` cheap

        arr = np.asarray(im)
        grey = _scale_to_uint8(arr, mode)
        key = im.info.get("transparency")
        if isinstance(key, (int, float)) and not isinstance(key, bool):
            grey[arr == key] = _WHITE[0]  # a PNG tRNS grey value: transparent, as in every other mode
        return Image.fromarray(grey).convert("RGB")
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    # 1, L, P, CMYK, YCbCr, LAB, HSV and the like.
    return im.convert("RGB")


def _sensor_white(hi: int) -> int:
    """The white level of integer data whose largest value is `hi`: 2**bits - 1 for the fewest
    of 8, 10, 12, 14 or 16 bits that hold it (a 12-bit sensor's 0..4095 in a 16-bit file)."""
    for bits in (8, 10, 12, 14, 16):
        if hi <= (1 << bits) - 1:
            return (1 << bits) - 1
    return hi


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit integer and float greyscale data onto 0..255, by the data's real range.

    Integers: unsigned data is scaled by its sensor's white level (`_sensor_white`), so a
    12-bit image in a 16-bit container is not drawn nearly black. Floats: 0..1 as is when
    the data spans a good part of it, else stretched over its own range.
    """
    import numpy as np

    if mode.startswith("I;16"):
        white = _sensor_white(int(arr.max()) if arr.size else 0)
        return ((arr.astype(np.uint32) * 255 + white // 2) // white).astype(np.uint8)
    values = arr.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    values = np.where(finite, values, 0.0)
    lo, hi = float(values[finite].min()), float(values[finite].max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0 and hi - lo >= 0.25:
        scaled = values * 255.0  # the usual float convention: 0..1
    elif mode == "I" and lo >= 0 and hi <= 65535:
        scaled = values * (255.0 / _sensor_white(int(hi)))  # 8- to 16-bit data held in a 32-bit mode
    elif hi > lo:
        scaled = (values - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _stretch_narrow_high_bytes(rgb: Image.Image) -> Image.Image:
    """A 16-bit-per-channel photo of a 10- to 14-bit sensor keeps only its top bits in Pillow's
    8-bit RGB (a 12-bit one: 0..15): scale those back up over the range they use."""
    hi = max(band_hi for _, band_hi in rgb.getextrema())
    if hi == 0 or hi > 63:
        return rgb
    factor = 255 / ((1 << hi.bit_length()) - 1)
    return rgb.point(lambda v: min(255, round(v * factor)))


def _allowed_formats(ext: str = "") -> tuple[str, ...]:
    allowed = tuple(f for f in _BASE_FORMATS if _readable(f))
    if _PILLOW_EXTENSIONS.get(ext) in _BY_NAME_ONLY:
        allowed += (_PILLOW_EXTENSIONS[ext],)
    if _register_heif():
        allowed += ("HEIF",)
    return allowed


@functools.lru_cache(maxsize=None)
def _readable(fmt: str) -> bool:
    """True when this installation decodes `fmt` (a Pillow format name, or "RAW")."""
    if fmt == "RAW":
        return _RAW_AVAILABLE
    if fmt == "HEIF":
        return _HEIF_AVAILABLE
    from PIL import features

    if fmt == "AVIF":
        return bool(features.check("avif"))
    if fmt == "JPEG2000":
        return bool(features.check("jpg_2000"))
    if fmt == "WEBP":
        return bool(features.check("webp"))
    return True


@dataclass(frozen=True)
class FormatSupport:
    """One photo format: its extensions, whether this installation reads it, and how (or what to install)."""

    name: str
    extensions: tuple[str, ...]
    readable: bool
    note: str


def formats() -> list[FormatSupport]:
    """Every photo format clipsearch knows, and whether this installation reads it (`clipsearch info --formats`)."""
    names = {"JPEG": "JPEG", "MPO": "MPO (camera multi-picture JPEG)", "PNG": "PNG", "GIF": "GIF (first frame)",
             "WEBP": "WebP", "BMP": "BMP", "TIFF": "TIFF", "AVIF": "AVIF", "JPEG2000": "JPEG 2000",
             "PSD": "Photoshop PSD (the composite image)", "TGA": "Targa TGA", "HEIF": "HEIC/HEIF",
             "ICO": "Windows icon (the largest size)", "DDS": "DirectDraw Surface texture"}
    by_format: dict[str, list[str]] = {}
    for ext, fmt in _PILLOW_EXTENSIONS.items():
        by_format.setdefault(fmt, []).append(ext)
    out = []
    for fmt, exts in by_format.items():
        ok = _readable(fmt)
        how = "pillow-heif" if fmt == "HEIF" else "Pillow"
        out.append(FormatSupport(names.get(fmt, fmt), tuple(exts), ok, how if ok else _INSTALL_HINT[fmt]))
    out.append(FormatSupport("camera RAW", tuple(sorted(RAW_EXTENSIONS)), _RAW_AVAILABLE,
                             "rawpy (LibRaw): embedded preview, else half-size demosaic" if _RAW_AVAILABLE
                             else _INSTALL_HINT["RAW"]))
    return out


def _register_heif() -> bool:
    """Register pillow_heif's opener on first use; False when it is not installed."""
    global _heif_registered
    if _heif_registered:
        return True
    if not _HEIF_AVAILABLE:
        return False
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except Exception as e:  # noqa: BLE001 - a broken optional plugin must not break JPEGs
        logger.warning("pillow_heif is installed but could not be registered: %s", e)
        return False
    _heif_registered = True
    return True


def _bomb_reason(error: Exception, max_pixels: int) -> str:
    match = re.search(r"\((\d+) pixels\)", str(error))
    if match:
        return (
            f"image is {_megapixels(int(match.group(1)))} MP, "
            f"over the {_megapixels(max_pixels)} MP limit"
        )
    return f"image is too large to decode safely ({error})"


def _os_reason(error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return "file does not exist"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, IsADirectoryError):
        return "is a folder, not an image file"
    return f"cannot read file: {error.strerror or error}"


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__


def _megapixels(pixels: int) -> str:
    value = pixels / 1e6
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _byte_size(size: int) -> str:
    from clipsearch.sizes import format_size

    return format_size(size, binary=True)
