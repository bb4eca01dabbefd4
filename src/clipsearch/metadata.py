"""Photo metadata: when, where and with what a photo was taken, read from the file.

`read_metadata(path)` returns a `PhotoMetadata`: capture time (with the source it came
from), GPS position, camera, lens and exposure, pixel size, orientation, file type and
size. It reads EXIF (JPEG, HEIC/HEIF, PNG eXIf, WebP, TIFF and the TIFF-based RAW formats:
DNG, CR2, NEF, ARW, ORF, RW2, PEF, SRW) and XMP packets (PNG iTXt, WebP, JPEG APP1).

Capture time, first found wins (`taken_source` says which):

1. ``exif``: EXIF DateTimeOriginal, with OffsetTimeOriginal and SubSecTimeOriginal
   (or XMP exif:DateTimeOriginal / photoshop:DateCreated);
2. ``exif-create``: EXIF CreateDate (DateTimeDigitized) with its offset and sub-seconds
   (or XMP xmp:CreateDate);
3. ``gps``: the GPS date and time stamp (UTC);
4. ``filename``: a date in the file name (IMG_20190704_123456.jpg, 2019-07-04 12.34.56.png,
   PXL_20190704_..., IMG-20190704-WA0001.jpg);
5. ``mtime``: the file's modification time, in this machine's time zone.

A time without an offset is a wall-clock time: when the file also has a GPS time stamp
the offset is derived from the two (rounded to 15 minutes), else it stays unknown.
`taken_ts` is the wall-clock time as seconds since 1970-01-01 00:00 of the same clock, so
that "after 2019-06" and date order mean the photo's own calendar, wherever it was taken.

Nothing a file contains makes this raise: broken or hostile EXIF (wrong types, offsets
past the end, huge counts, dates like 0000:00:00, NaN rationals) gives missing fields.

Longer than most modules on purpose: a tolerant EXIF/XMP parser of its own (Pillow drops a
whole block on one bad offset) next to the fallback chain and the reader's columns, so the
parser and the column set change together.
"""
from __future__ import annotations

import datetime as _dt
import io
import logging
import math
import os
import re
import struct
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterable, Mapping

from PIL import Image

log = logging.getLogger(__name__)

__all__ = [
    "PhotoMetadata", "RAW_EXTENSIONS", "TAKEN_SOURCES", "file_type_of", "iso_taken_at", "parse_exif_datetime",
    "parse_exif", "read_metadata", "date_from_filename", "wall_seconds",
]

# Sources of the capture time, most trusted first.
TAKEN_SOURCES: tuple[str, ...] = ("exif", "exif-create", "gps", "video", "filename", "mtime")

RAW_EXTENSIONS: frozenset[str] = frozenset({
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".pef",
    ".srw", ".x3f", ".3fr", ".erf", ".kdc", ".mef", ".mos", ".mrw", ".raw", ".rwl", ".iiq",
})
_TYPES: dict[str, str] = {
    ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".png": "png", ".webp": "webp", ".gif": "gif",
    ".bmp": "bmp", ".tif": "tiff", ".tiff": "tiff", ".heic": "heic", ".heif": "heic", ".avif": "avif",
}
# RAW formats whose container is TIFF: EXIF is read from the file's head.
_TIFF_RAW = frozenset({".dng", ".cr2", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".pef", ".srw",
                       ".3fr", ".erf", ".kdc", ".mef", ".mos", ".iiq", ".rwl"})
# How much of a RAW file's head is read for its EXIF (IFDs sit near the start).
_RAW_HEAD_BYTES = 4 * 1024 * 1024
_MAX_TEXT = 128

# EXIF tags (numbers, so the module doesn't depend on the names of PIL.ExifTags' enums).
_MAKE, _MODEL, _ORIENTATION, _DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_EXPOSURE, _FNUMBER, _ISO, _DTO, _DTD = 0x829A, 0x829D, 0x8827, 0x9003, 0x9004
_OFFSET_DTO, _OFFSET_DTD, _APERTURE_VALUE, _FOCAL = 0x9011, 0x9012, 0x9202, 0x920A
_SUBSEC_DTO, _SUBSEC_DTD, _FOCAL_35, _LENS_MAKE, _LENS_MODEL = 0x9291, 0x9292, 0xA405, 0xA433, 0xA434
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON, _GPS_ALT_REF, _GPS_ALT = 1, 2, 3, 4, 5, 6
_GPS_TIME, _GPS_DATE = 7, 29


@dataclass(frozen=True)
class PhotoMetadata:
    """What a photo file says about itself; any field may be None (unknown)."""

    taken_at: str | None = None           # ISO 8601, with the UTC offset when known
    taken_ts: float | None = None         # wall-clock seconds since 1970-01-01 (see module doc)
    taken_offset: int | None = None       # minutes east of UTC, when known
    taken_source: str | None = None       # one of TAKEN_SOURCES
    gps_lat: float | None = None
    gps_lon: float | None = None
    gps_alt: float | None = None          # metres above sea level
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    focal_length: float | None = None     # mm
    focal_length_35mm: float | None = None
    aperture: float | None = None         # f-number
    exposure: float | None = None         # seconds
    iso: int | None = None
    pixel_width: int | None = None
    pixel_height: int | None = None
    orientation: int | None = None        # EXIF orientation 1-8
    file_type: str | None = None          # jpeg, heic, png, webp, tiff, raw, ...
    file_size: int | None = None          # bytes

    @property
    def camera(self) -> str | None:
        """Make and model as people say it: "Google Pixel 7", "Canon EOS R5" (no make repeated)."""
        return camera_name(self.camera_make, self.camera_model)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def camera_name(make: str | None, model: str | None) -> str | None:
    """"Canon" + "Canon EOS R5" -> "Canon EOS R5"; "Google" + "Pixel 7" -> "Google Pixel 7".

    Makers often write a company name ("NIKON CORPORATION", "OLYMPUS IMAGING CORP.") whose
    first word is the brand; the brand is said once.
    """
    if not model:
        return make or None
    if not make:
        return model
    brand = make.split()[0]
    if model.lower().startswith(brand.lower()):
        return model
    return f"{brand} {model}"


def file_type_of(path: str) -> str | None:
    """jpeg, png, webp, gif, bmp, tiff, heic, avif or raw, from the extension; None for others."""
    ext = os.path.splitext(path)[1].lower()
    if ext in RAW_EXTENSIONS:
        return "raw"
    return _TYPES.get(ext)


# -- values ------------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    """A clean, short string from an EXIF value (bytes, str), or None."""
    if isinstance(value, bytes):
        value = value.split(b"\0", 1)[0].decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.split("\0", 1)[0]
    value = "".join(ch for ch in value if ch.isprintable()).strip()
    return value[:_MAX_TEXT] or None


def _number(value: Any) -> float | None:
    """A finite float from an int, float or rational; the first of several values; else None."""
    if isinstance(value, tuple):
        value = value[0] if value else None
    if isinstance(value, (bool, str, bytes)) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def _in_range(value: float | None, lo: float, hi: float) -> float | None:
    return value if value is not None and lo <= value <= hi else None


# -- dates -------------------------------------------------------------------------------
_EXIF_DT = re.compile(
    r"^\s*(\d{4})[:\-/.](\d{1,2})[:\-/.](\d{1,2})(?:[ T]+(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?\s*$")
_OFFSET = re.compile(r"^\s*(Z|([+-])(\d{2}):?(\d{2}))\s*$")
_MIN_YEAR, _MAX_YEAR = 1826, 2200  # the oldest surviving photograph; beyond, a broken clock


def _parse_offset(value: Any) -> int | None:
    """Minutes east of UTC from "+01:00", "-0530" or "Z"; None if absent or invalid."""
    text = _text(value)
    if not text:
        return None
    m = _OFFSET.match(text)
    if not m:
        return None
    if m.group(1) == "Z":
        return 0
    minutes = int(m.group(3)) * 60 + int(m.group(4))
    if minutes > 14 * 60 or int(m.group(4)) >= 60:
        return None
    return -minutes if m.group(2) == "-" else minutes


def parse_exif_datetime(value: Any, subsec: Any = None, offset: Any = None) -> _dt.datetime | None:
    """A datetime from an EXIF ("2019:07:04 12:34:56") or ISO 8601 string; aware when an offset is known.

    None for empty, zeroed ("0000:00:00 00:00:00"), out-of-range or malformed values.
    """
    text = _text(value)
    if not text:
        return None
    m = _EXIF_DT.match(text)
    if not m:
        return None
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    hour, minute, second = (int(m.group(i)) if m.group(i) else 0 for i in (4, 5, 6))
    if not _MIN_YEAR <= year <= _MAX_YEAR:
        return None
    if second == 60:
        second = 59  # a leap second some cameras write
    frac = m.group(7) or _digits(subsec)
    micro = int((frac + "000000")[:6]) if frac else 0
    try:
        out = _dt.datetime(year, month, day, hour, minute, second, micro)
    except ValueError:
        return None
    minutes = _parse_offset(m.group(8)) if m.group(8) else _parse_offset(offset)
    if minutes is not None:
        out = out.replace(tzinfo=_dt.timezone(_dt.timedelta(minutes=minutes)))
    return out


def _digits(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = text.strip()
    return text if text.isdigit() else None


_FILENAME_DATE = re.compile(
    r"(?<!\d)((?:19[7-9]|20\d)\d)[-_.]?(0[1-9]|1[0-2])[-_.]?(0[1-9]|[12]\d|3[01])"
    r"(?:[-_. T]?([01]\d|2[0-3])[-_.:h]?([0-5]\d)[-_.:m]?([0-5]\d)\d{0,3})?(?!\d)")


def date_from_filename(path: str) -> _dt.datetime | None:
    """The date (and time, when there) in a file name like IMG_20190704_123456.jpg; None if none."""
    stem = os.path.splitext(os.path.basename(path))[0]
    for m in _FILENAME_DATE.finditer(stem):
        parts = [int(g) if g else 0 for g in m.groups()]
        try:
            return _dt.datetime(*parts)
        except ValueError:
            continue
    return None


def _gps_datetime(gps: Mapping[int, Any]) -> _dt.datetime | None:
    date = _text(gps.get(_GPS_DATE))
    stamp = gps.get(_GPS_TIME)
    if not date:
        return None
    day = parse_exif_datetime(date)
    if day is None:
        return None
    if isinstance(stamp, tuple) and len(stamp) == 3:
        h, m, s = (_number(v) for v in stamp)
        if h is None or m is None or s is None or not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 61):
            return None
        day = day + _dt.timedelta(hours=int(h), minutes=int(m), seconds=min(59.999999, s))
    return day.replace(tzinfo=_dt.timezone.utc)


def wall_seconds(moment: _dt.datetime) -> float:
    """Seconds since 1970-01-01 00:00 on the clock `moment` was read from (its offset ignored)."""
    naive = moment.replace(tzinfo=None)
    return (naive - _dt.datetime(1970, 1, 1)).total_seconds()


def iso_taken_at(moment: _dt.datetime) -> str:
    """ISO 8601: "2019-07-04T12:34:56+01:00", milliseconds only when the photo has them."""
    return moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")


def _with_derived_offset(moment: _dt.datetime, gps_utc: _dt.datetime | None) -> _dt.datetime:
    """A naive wall-clock time with the offset to the GPS (UTC) time stamp, when they agree on one."""
    if moment.tzinfo is not None or gps_utc is None:
        return moment
    diff = (moment - gps_utc.replace(tzinfo=None)).total_seconds() / 60
    quarter = round(diff / 15) * 15
    if abs(quarter) <= 14 * 60 and abs(diff - quarter) <= 5:  # GPS fixes lag the shutter by seconds to minutes
        return moment.replace(tzinfo=_dt.timezone(_dt.timedelta(minutes=quarter)))
    return moment


# -- XMP ---------------------------------------------------------------------------------
def _xmp_value(xmp: str, name: str) -> str | None:
    """An XMP property as attribute (name="v") or element (<name>v</name>); None if absent."""
    m = re.search(rf'{re.escape(name)}\s*=\s*"([^"]{{1,200}})"', xmp) or re.search(
        rf"<{re.escape(name)}>\s*([^<]{{1,200}}?)\s*</{re.escape(name)}>", xmp)
    return m.group(1) if m else None


def _xmp_coordinate(text: str | None, positive: str) -> float | None:
    """XMP GPS coordinate "38,43.2N" or "38,43,12N" or "38.72" to signed degrees."""
    if not text:
        return None
    m = re.match(r"^\s*(\d{1,3})(?:,(\d{1,2}(?:\.\d+)?))?(?:,(\d{1,2}(?:\.\d+)?))?\s*([NSEW])\s*$", text)
    if m:
        value = int(m.group(1)) + float(m.group(2) or 0) / 60 + float(m.group(3) or 0) / 3600
        return value if m.group(4) == positive else -value
    return _number_text(text)


def _number_text(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        m = re.match(r"^\s*(-?\d+)/(\d+)\s*$", text)
        value = int(m.group(1)) / int(m.group(2)) if m and int(m.group(2)) else float("nan")
    return value if math.isfinite(value) else None


def _xmp_text(image: Image.Image) -> str | None:
    info = getattr(image, "info", {}) or {}
    for key in ("xmp", "XML:com.adobe.xmp"):
        raw = info.get(key)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        if isinstance(raw, str) and raw:
            return raw[:1_000_000]
    return None


# -- reading -----------------------------------------------------------------------------
@dataclass
class _Raw:
    """The EXIF IFDs and XMP of a file, as found (possibly empty)."""

    ifd0: dict[int, Any]
    exif: dict[int, Any]
    gps: dict[int, Any]
    xmp: str | None = None
    size: tuple[int, int] | None = None
    size_upright: bool = False  # `size` is after EXIF rotation (clipsearch.images' "original_size")


def _safe(fn: Callable[[], Any], default: Any = None) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except Exception as exc:  # noqa: BLE001 - any parser failure is a missing field, by contract
        log.debug("metadata: %s", exc)
        return default


# -- a tolerant EXIF parser ----------------------------------------------------------------
# Pillow drops a whole IFD when one entry points past the end; this parser reads each entry
# on its own, so one bad value costs that value only.
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_MAX_ENTRIES = 512          # per IFD; real ones hold a few dozen
_MAX_VALUE_BYTES = 1 << 16  # larger values (maker notes, thumbnails) are never needed here
_TIFF_MAGIC = (b"II*\0", b"MM\0*")


def _tiff_start(blob: bytes) -> int:
    """Where the TIFF header starts in an EXIF payload ("Exif\\0\\0", HEIF's offset prefix...); -1 if nowhere."""
    for magic in _TIFF_MAGIC:
        at = blob.find(magic, 0, 16)
        if at >= 0:
            return at
    return -1


def parse_exif(blob: bytes) -> tuple[dict[int, Any], dict[int, Any], dict[int, Any]]:
    """(IFD0, Exif IFD, GPS IFD) as {tag: value} from an EXIF payload; entries that don't parse are left out.

    Values: text for ASCII, bytes for UNDEFINED, int or float for one number (a rational
    is a float, NaN when its denominator is 0), a tuple for several.
    """
    start = _tiff_start(blob)
    if start < 0:
        return {}, {}, {}
    data = memoryview(blob)[start:]
    e = "<" if bytes(data[:2]) == b"II" else ">"
    seen: set[int] = set()

    def ifd(offset: int) -> dict[int, Any]:
        out: dict[int, Any] = {}
        if offset in seen or not 8 <= offset <= len(data) - 2:
            return out
        seen.add(offset)
        (count,) = struct.unpack_from(e + "H", data, offset)
        for i in range(min(count, _MAX_ENTRIES)):
            at = offset + 2 + 12 * i
            if at + 12 > len(data):
                break
            tag, typ, n = struct.unpack_from(e + "HHL", data, at)
            size = _TYPE_SIZES.get(typ)
            if size is None or n == 0 or n * size > _MAX_VALUE_BYTES:
                continue
            where = at + 8 if n * size <= 4 else struct.unpack_from(e + "L", data, at + 8)[0]
            if where + n * size > len(data):
                continue
            value = _value(bytes(data[where:where + n * size]), typ, n, e)
            if value is not None:
                out[tag] = value
        return out

    try:
        (first,) = struct.unpack_from(e + "L", data, 4)
        ifd0 = ifd(first)
        sub = ifd(ifd0[_EXIF_IFD]) if isinstance(ifd0.get(_EXIF_IFD), int) else {}
        gps = ifd(ifd0[_GPS_IFD]) if isinstance(ifd0.get(_GPS_IFD), int) else {}
    except struct.error:
        return {}, {}, {}
    return ifd0, sub, gps


def _value(raw: bytes, typ: int, n: int, e: str) -> Any:
    if typ == 2:
        return _text(raw)
    if typ in (6, 7):
        return raw
    if typ in (5, 10):
        pairs = struct.unpack(f"{e}{2 * n}{'L' if typ == 5 else 'l'}", raw)
        values: tuple[Any, ...] = tuple(a / b if b else float("nan") for a, b in zip(pairs[::2], pairs[1::2]))
    else:
        code = {1: "B", 3: "H", 4: "L", 8: "h", 9: "l", 11: "f", 12: "d"}[typ]
        values = struct.unpack(f"{e}{n}{code}", raw)
    return values[0] if n == 1 else values


def _exif_blob(image: Image.Image) -> bytes | None:
    info = getattr(image, "info", {}) or {}
    blob = info.get("exif")
    if not blob and image.format == "PNG":
        _safe(image.getexif)  # a PNG's eXIf chunk after the pixels is read only then
        blob = info.get("exif")
    return blob if isinstance(blob, (bytes, bytearray)) and blob else None


def _from_image(image: Image.Image) -> _Raw:
    blob = _safe(lambda: _exif_blob(image))
    ifd0, sub, gps = _safe(lambda: parse_exif(blob), ({}, {}, {})) if blob else ({}, {}, {})
    original = (getattr(image, "info", None) or {}).get("original_size")
    if original is not None:  # an image clipsearch decoded, maybe reduced: its file's size, upright
        size = _safe(lambda: tuple(int(v) for v in original))
    else:
        size = _safe(lambda: tuple(int(v) for v in image.size))
    return _Raw(ifd0, sub, gps, _safe(lambda: _xmp_text(image)), size, size_upright=original is not None)


def _from_tiff_head(path: str) -> _Raw:
    with open(path, "rb") as fh:
        head = fh.read(_RAW_HEAD_BYTES)
    if head[:4] in (b"IIRO", b"IIU\0"):  # Olympus ORF and Panasonic RW2: TIFF with another magic number
        head = b"II*\0" + head[4:]
    if head[:4] not in _TIFF_MAGIC:
        return _Raw({}, {}, {})
    ifd0, sub, gps = parse_exif(head)
    width, height = ifd0.get(0x0100), ifd0.get(0x0101)
    size = (width, height) if isinstance(width, int) and isinstance(height, int) else None
    return _Raw(ifd0, sub, gps, size=size)


def _open_raw(path: str, image: Image.Image | None) -> _Raw:
    ext = os.path.splitext(path)[1].lower()
    if ext in _TIFF_RAW or ext in (".tif", ".tiff"):
        raw = _safe(lambda: _from_tiff_head(path), None) or _Raw({}, {}, {})
        if image is not None and ext in (".tif", ".tiff"):
            raw.size, raw.size_upright = _from_image(image).size, True
        return raw
    if ext in (".heic", ".heif", ".avif"):
        _safe(_register_heif)
    if image is not None and _safe(lambda: _exif_blob(image)):
        return _from_image(image)

    def from_file() -> _Raw:
        with Image.open(path) as im:  # reads headers only: no pixels are decoded here
            return _from_image(im)

    out = _safe(from_file)
    if out is None:
        return _from_image(image) if image is not None else _Raw({}, {}, {})
    return out


def _register_heif() -> None:
    from pillow_heif import register_heif_opener

    register_heif_opener()


def _gps_coordinate(value: Any, ref: Any, positive: str, limit: float) -> float | None:
    if isinstance(value, tuple) and len(value) == 3:
        parts = [_number(v) for v in value]
        if any(p is None or p < 0 for p in parts):
            return None
        deg = parts[0] + parts[1] / 60 + parts[2] / 3600  # type: ignore[operator]
    else:
        deg = _number(value)
        if deg is None:
            return None
    ref_text = (_text(ref) or positive).upper()[:1]
    if ref_text not in ("N", "S", "E", "W"):
        return None
    if ref_text != positive:
        deg = -abs(deg)
    return _in_range(deg, -limit, limit)


def read_metadata(path: str | os.PathLike[str], image: Image.Image | None = None, *,
                  stat: os.stat_result | None = None) -> PhotoMetadata:
    """Everything the file at `path` says about when, where and how it was taken.

    `image`, when the caller already opened the file, saves reading its headers again
    (its EXIF is used when it has any). Never raises for what the file contains; a file
    that cannot be read at all gives the facts of its name and stat alone.
    """
    path = os.fspath(path)
    if stat is None:
        stat = _safe(lambda: os.stat(path))
    from clipsearch.video import is_video

    if is_video(path):
        return _video_facts(path, stat)
    raw = _safe(lambda: _open_raw(path, image), None) or _Raw({}, {}, {})
    return _facts(path, raw, stat)


def _video_facts(path: str, stat: os.stat_result | None) -> PhotoMetadata:
    """A video's capture time (the container's creation_time: "video"), GPS (ISO 6709 location tag), size."""
    from clipsearch.video import video_tags

    tags, (width, height) = _safe(lambda: video_tags(path), ({}, (None, None)))
    taken, source = None, None
    created = tags.get("creation_time") or tags.get("com.apple.quicktime.creationdate")
    parsed = _safe(lambda: _dt.datetime.fromisoformat(created.replace("Z", "+00:00"))) if created else None
    if parsed is not None and parsed.year > 1970:
        taken, source = parsed, "video"
    else:
        for name, find in (("filename", lambda: date_from_filename(path)),
                           ("mtime", lambda: _dt.datetime.fromtimestamp(stat.st_mtime).astimezone()
                            if stat is not None else None)):
            taken = _safe(find)
            if taken is not None:
                source = name
                break
    lat = lon = alt = None
    location = tags.get("location") or tags.get("com.apple.quicktime.location.ISO6709") or ""
    found = re.match(r"^([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)?", location.strip())
    if found:
        lat = _in_range(float(found.group(1)), -90.0, 90.0)
        lon = _in_range(float(found.group(2)), -180.0, 180.0)
        alt = _in_range(float(found.group(3)), -100_000.0, 100_000.0) if found.group(3) and lat is not None else None
        if lat is None or lon is None or (lat == 0.0 and lon == 0.0):
            lat = lon = alt = None
    offset = int(taken.utcoffset().total_seconds() // 60) if taken is not None and taken.utcoffset() is not None \
        else None
    return PhotoMetadata(
        taken_at=iso_taken_at(taken) if taken is not None else None,
        taken_ts=wall_seconds(taken) if taken is not None else None, taken_offset=offset, taken_source=source,
        gps_lat=round(lat, 7) if lat is not None else None, gps_lon=round(lon, 7) if lon is not None else None,
        gps_alt=round(alt, 2) if alt is not None else None,
        camera_make=_text(tags.get("com.apple.quicktime.make") or tags.get("make")),
        camera_model=_text(tags.get("com.apple.quicktime.model") or tags.get("model")),
        pixel_width=width if width and width > 0 else None, pixel_height=height if height and height > 0 else None,
        file_type="video",
        file_size=int(stat.st_size) if stat is not None else None)


def _facts(path: str, raw: _Raw, stat: os.stat_result | None) -> PhotoMetadata:
    ifd0, sub, gps, xmp = raw.ifd0, raw.exif, raw.gps, raw.xmp or ""
    # Some writers put Exif-IFD tags straight into IFD0.
    pick = lambda tag: sub.get(tag, ifd0.get(tag))  # noqa: E731

    gps_utc = _safe(lambda: _gps_datetime(gps))
    taken, source = None, None
    candidates: list[tuple[str, Callable[[], _dt.datetime | None]]] = [
        ("exif", lambda: parse_exif_datetime(pick(_DTO), pick(_SUBSEC_DTO), pick(_OFFSET_DTO))),
        ("exif", lambda: parse_exif_datetime(_xmp_value(xmp, "exif:DateTimeOriginal")
                                             or _xmp_value(xmp, "photoshop:DateCreated"))),
        ("exif-create", lambda: parse_exif_datetime(pick(_DTD), pick(_SUBSEC_DTD), pick(_OFFSET_DTD))),
        ("exif-create", lambda: parse_exif_datetime(_xmp_value(xmp, "xmp:CreateDate"))),
        ("gps", lambda: gps_utc),
        ("filename", lambda: date_from_filename(path)),
        ("mtime", lambda: _dt.datetime.fromtimestamp(stat.st_mtime).astimezone() if stat is not None else None),
    ]
    for name, find in candidates:
        taken = _safe(find)
        if taken is not None:
            source = name
            break
    if taken is not None and source in ("exif", "exif-create"):
        taken = _with_derived_offset(taken, gps_utc)
    offset = None
    if taken is not None and taken.utcoffset() is not None:
        offset = int(taken.utcoffset().total_seconds() // 60)  # type: ignore[union-attr]

    lat = _safe(lambda: _gps_coordinate(gps.get(_GPS_LAT), gps.get(_GPS_LAT_REF), "N", 90.0))
    lon = _safe(lambda: _gps_coordinate(gps.get(_GPS_LON), gps.get(_GPS_LON_REF), "E", 180.0))
    if lat is None and lon is None and xmp:
        lat = _safe(lambda: _in_range(_xmp_coordinate(_xmp_value(xmp, "exif:GPSLatitude"), "N"), -90, 90))
        lon = _safe(lambda: _in_range(_xmp_coordinate(_xmp_value(xmp, "exif:GPSLongitude"), "E"), -180, 180))
    if lat is None or lon is None or (lat == 0.0 and lon == 0.0):  # 0,0: a receiver without a fix
        lat = lon = None
    alt = None
    if lat is not None:
        alt = _safe(lambda: _in_range(_number(gps.get(_GPS_ALT)), 0.0, 100_000.0))
        if alt is not None and _safe(lambda: _gps_alt_below(gps.get(_GPS_ALT_REF))):
            alt = -alt

    make = _text(ifd0.get(_MAKE)) or _text(_xmp_value(xmp, "tiff:Make"))
    model = _text(ifd0.get(_MODEL)) or _text(_xmp_value(xmp, "tiff:Model"))
    lens = _text(pick(_LENS_MODEL)) or _text(_xmp_value(xmp, "aux:Lens")) or _text(_xmp_value(xmp, "exifEX:LensModel"))
    aperture = _in_range(_number(pick(_FNUMBER)), 0.5, 256.0)
    if aperture is None:
        apex = _in_range(_number(pick(_APERTURE_VALUE)), 0.0, 20.0)
        aperture = round(2 ** (apex / 2), 1) if apex is not None else None
    iso_value = _number(pick(_ISO))
    iso = int(iso_value) if iso_value is not None and 1 <= iso_value <= 10_000_000 else None
    orientation = _number(ifd0.get(_ORIENTATION))
    width, height = raw.size if raw.size else (None, None)
    if raw.size_upright and orientation in (5, 6, 7, 8):
        width, height = height, width  # the stored size, as the EXIF orientation refers to it
    return PhotoMetadata(
        taken_at=iso_taken_at(taken) if taken is not None else None,
        taken_ts=wall_seconds(taken) if taken is not None else None,
        taken_offset=offset,
        taken_source=source,
        gps_lat=round(lat, 7) if lat is not None else None,
        gps_lon=round(lon, 7) if lon is not None else None,
        gps_alt=round(alt, 2) if alt is not None else None,
        camera_make=make,
        camera_model=model,
        lens=lens,
        focal_length=_in_range(_number(pick(_FOCAL)), 0.1, 10_000.0),
        focal_length_35mm=_in_range(_number(pick(_FOCAL_35)), 1.0, 10_000.0),
        aperture=aperture,
        exposure=_in_range(_number(pick(_EXPOSURE)), 1e-7, 1e5),
        iso=iso,
        pixel_width=width if width and width > 0 else None,
        pixel_height=height if height and height > 0 else None,
        orientation=int(orientation) if orientation is not None and orientation in range(1, 9) else None,
        file_type=file_type_of(path),
        file_size=int(stat.st_size) if stat is not None else None,
    )


def _gps_alt_below(ref: Any) -> bool:
    if isinstance(ref, bytes):
        return ref[:1] == b"\x01"
    return _number(ref) == 1


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PhotoMetadata))


def iter_present(meta: PhotoMetadata) -> Iterable[tuple[str, Any]]:
    """(field, value) for every known field."""
    for name in FIELDS:
        value = getattr(meta, name)
        if value is not None:
            yield name, value


# -- the facts reader (clipsearch.facts' FactReader contract) -------------------------------
def _model_key(make: str | None, model: str | None) -> str | None:
    """The model without a leading brand, folded: "Canon EOS 5D" -> "eos 5d" (for camera:"EOS 5D")."""
    from clipsearch.places import fold

    key = fold(model)
    brand = fold(make.split()[0]) if make and make.split() else None
    if key and brand and key.startswith(brand + " "):
        key = key[len(brand) + 1:]
    return key


@dataclass(frozen=True)
class MetadataReader:
    """Photo metadata and the place its GPS position names, as catalog columns.

    The place (city, region, country) is looked up offline at index time
    (`clipsearch.places`), with folded copies (`*_key`: no accents, case-folded) that the
    query filters compare against.
    """

    name: str = "metadata"
    version: int = 1
    geocode: bool = True

    @property
    def columns(self) -> dict[str, str]:
        return dict(METADATA_COLUMNS)

    @property
    def indexed(self) -> tuple[str, ...]:
        return METADATA_INDEXED

    def read(self, path: str, image: Image.Image | None) -> dict[str, Any]:
        meta = read_metadata(path, image)
        return metadata_facts(meta, geocode=self.geocode)


def metadata_facts(meta: PhotoMetadata, *, geocode: bool = True) -> dict[str, Any]:
    """The catalog columns of one photo's metadata (place names looked up when `geocode`)."""
    from clipsearch.places import fold, reverse_geocode

    out = meta.to_dict()
    out["camera"] = meta.camera
    out["camera_key"] = fold(meta.camera)
    out["model_key"] = _model_key(meta.camera_make, meta.camera_model)
    out["lens_key"] = fold(meta.lens)
    place = None
    if geocode and meta.gps_lat is not None and meta.gps_lon is not None:
        place = _safe(lambda: reverse_geocode(meta.gps_lat, meta.gps_lon))
    out["place_city"] = place.city if place else None
    out["place_region"] = place.region if place else None
    out["place_country"] = place.country if place else None
    out["country_code"] = place.country_code if place else None
    out["city_key"] = fold(out["place_city"])
    out["region_key"] = fold(out["place_region"])
    out["country_key"] = fold(out["place_country"])
    return out


METADATA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("taken_at", "TEXT"), ("taken_ts", "REAL"), ("taken_offset", "INTEGER"), ("taken_source", "TEXT"),
    ("gps_lat", "REAL"), ("gps_lon", "REAL"), ("gps_alt", "REAL"),
    ("camera_make", "TEXT"), ("camera_model", "TEXT"), ("camera", "TEXT"), ("camera_key", "TEXT"),
    ("model_key", "TEXT"), ("lens", "TEXT"), ("lens_key", "TEXT"),
    ("focal_length", "REAL"), ("focal_length_35mm", "REAL"), ("aperture", "REAL"), ("exposure", "REAL"),
    ("iso", "INTEGER"), ("pixel_width", "INTEGER"), ("pixel_height", "INTEGER"), ("orientation", "INTEGER"),
    ("file_type", "TEXT"), ("file_size", "INTEGER"),
    ("place_city", "TEXT"), ("place_region", "TEXT"), ("place_country", "TEXT"), ("country_code", "TEXT"),
    ("city_key", "TEXT"), ("region_key", "TEXT"), ("country_key", "TEXT"),
)
METADATA_INDEXED: tuple[str, ...] = (
    "taken_ts", "gps_lat", "camera_key", "model_key", "file_type", "country_code", "city_key", "region_key",
    "country_key",
)
METADATA_READER = MetadataReader()
