"""Photo metadata: EXIF of several makers' layouts and byte orders, every container, hostile EXIF."""
from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest
from PIL import Image

from clipsearch.metadata import (
    camera_name, date_from_filename, parse_exif_datetime, read_metadata, wall_seconds,
)
from exif_builder import EXIF_IFD, GPS_IFD, MAKER_NOTE, Entry, Ifd, Writer, gps_ifd, RATIONAL, LONG, ASCII, SHORT

_LISBON = (38.7223, -9.1393)


def _picture(size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, (200, 80, 40))


def _save(path: Path, exif: bytes | None, fmt: str, **kw: object) -> Path:
    im = _picture()
    if exif is not None:
        kw["exif"] = exif
    im.save(path, format=fmt, **kw)
    return path


def _iphone(w: Writer) -> Ifd:
    exif = Ifd([
        w.ascii(0x9003, "2019:07:04 18:30:05"), w.ascii(0x9011, "+01:00"), w.ascii(0x9291, "120"),
        w.ascii(0x9004, "2019:07:04 18:30:05"), w.rational(0x829A, (1, 250)), w.rational(0x829D, (16, 10)),
        w.short(0x8827, 32), w.rational(0x920A, (42, 10)), w.short(0xA405, 26),
        w.ascii(0xA433, "Apple"), w.ascii(0xA434, "iPhone 12 back dual wide camera 4.2mm f/1.6"),
        w.undefined(MAKER_NOTE, b"Apple iOS\0\0\x01MM" + bytes(range(64))),
    ])
    gps = gps_ifd(w, *_LISBON, alt=12.5, stamp=("2019:07:04", (17, 30, 3)))
    return Ifd([w.ascii(0x010F, "Apple"), w.ascii(0x0110, "iPhone 12"), w.short(0x0112, 6)],
               {EXIF_IFD: exif, GPS_IFD: gps})


def _canon(w: Writer) -> Ifd:
    # Canon's maker note is a bare IFD whose offsets count from the TIFF header.
    note = struct.pack(f"{w.e}H", 2) + struct.pack(f"{w.e}HHL4s", 1, SHORT, 2, b"\1\0\2\0") + \
        struct.pack(f"{w.e}HHLL", 6, ASCII, 32, 0xFFFF) + b"\0\0\0\0"
    exif = Ifd([
        w.ascii(0x9003, "2016:02:29 07:15:00"), w.rational(0x829A, (1, 250)), w.rational(0x829D, (28, 10)),
        w.short(0x8827, 400), w.rational(0x920A, (35, 1)), w.ascii(0xA434, "EF35mm f/1.4L II USM"),
        w.undefined(MAKER_NOTE, note),
    ])
    return Ifd([w.ascii(0x010F, "Canon"), w.ascii(0x0110, "Canon EOS 5D Mark IV"), w.short(0x0112, 1)],
               {EXIF_IFD: exif})


def _nikon(w: Writer) -> Ifd:
    # Nikon's maker note carries its own TIFF header.
    note = b"Nikon\0\x02\x11\0\0" + b"MM\0*\0\0\0\x08" + b"\0\x01" + struct.pack(">HHL4s", 2, 3, 2, b"\0\0\x01\x90")
    exif = Ifd([
        w.ascii(0x9003, "2021:12:31 23:59:59"), w.ascii(0x9011, "-05:00"), w.rational(0x829A, (1, 60)),
        w.rational(0x829D, (8, 1)), w.short(0x8827, 1600), w.rational(0x920A, (50, 1)),
        w.ascii(0xA434, "50.0 mm f/1.8"), w.undefined(MAKER_NOTE, note),
    ])
    gps = gps_ifd(w, 40.7128, -74.0060, alt=-3.0)
    return Ifd([w.ascii(0x010F, "NIKON CORPORATION"), w.ascii(0x0110, "NIKON D750"), w.short(0x0112, 8),
                w.long(0x0100, 6016), w.long(0x0101, 4016)], {EXIF_IFD: exif, GPS_IFD: gps})


def test_iphone_jpeg_little_endian(tmp_path: Path) -> None:
    path = _save(tmp_path / "IMG_0001.JPG", Writer(False).exif(_iphone(Writer(False))), "JPEG")
    m = read_metadata(path)
    assert m.taken_at == "2019-07-04T18:30:05.120+01:00"
    assert m.taken_source == "exif" and m.taken_offset == 60
    assert m.taken_ts == pytest.approx(wall_seconds(parse_exif_datetime("2019:07:04 18:30:05")) + 0.12)
    assert m.gps_lat == pytest.approx(_LISBON[0], abs=1e-5) and m.gps_lon == pytest.approx(_LISBON[1], abs=1e-5)
    assert m.gps_alt == pytest.approx(12.5)
    assert (m.camera_make, m.camera_model, m.camera) == ("Apple", "iPhone 12", "Apple iPhone 12")
    assert m.lens == "iPhone 12 back dual wide camera 4.2mm f/1.6"
    assert (m.focal_length, m.focal_length_35mm, m.aperture, m.iso) == (pytest.approx(4.2), 26, 1.6, 32)
    assert m.exposure == pytest.approx(1 / 250)
    assert (m.pixel_width, m.pixel_height, m.orientation) == (64, 48, 6)
    assert m.file_type == "jpeg" and m.file_size == path.stat().st_size


def test_canon_jpeg_without_offset_or_gps(tmp_path: Path) -> None:
    path = _save(tmp_path / "canon.jpg", Writer(False).exif(_canon(Writer(False))), "JPEG")
    m = read_metadata(path)
    assert m.taken_at == "2016-02-29T07:15:00" and m.taken_offset is None and m.taken_source == "exif"
    assert m.camera == "Canon EOS 5D Mark IV" and m.lens == "EF35mm f/1.4L II USM"
    assert (m.aperture, m.iso, m.focal_length) == (2.8, 400, 35.0)
    assert m.gps_lat is None and m.gps_lon is None


def test_nikon_raw_big_endian(tmp_path: Path) -> None:
    w = Writer(big_endian=True)
    path = tmp_path / "DSC_0042.NEF"
    path.write_bytes(w.tiff(_nikon(w)) + bytes(1000))  # a TIFF-based RAW: EXIF sits in the head
    m = read_metadata(path)
    assert m.file_type == "raw"
    assert m.taken_at == "2021-12-31T23:59:59-05:00"
    assert m.camera == "NIKON D750" and m.camera_make == "NIKON CORPORATION"
    assert m.gps_lat == pytest.approx(40.7128, abs=1e-5) and m.gps_lon == pytest.approx(-74.006, abs=1e-5)
    assert m.gps_alt == pytest.approx(-3.0)  # altitude ref 1: below sea level
    assert (m.exposure, m.aperture, m.iso, m.orientation) == (pytest.approx(1 / 60), 8.0, 1600, 8)


@pytest.mark.parametrize("big_endian", [False, True])
def test_png_exif_chunk(tmp_path: Path, big_endian: bool) -> None:
    w = Writer(big_endian)
    ifd = Ifd([w.ascii(0x010F, "Google"), w.ascii(0x0110, "Pixel 7")],
              {EXIF_IFD: Ifd([w.ascii(0x9003, "2022:05:01 10:00:00"), w.ascii(0x9011, "+09:00")]),
               GPS_IFD: gps_ifd(w, 35.6762, 139.6503)})
    m = read_metadata(_save(tmp_path / "shot.png", w.exif(ifd), "PNG"))
    assert m.camera == "Google Pixel 7" and m.taken_at == "2022-05-01T10:00:00+09:00"
    assert m.gps_lat == pytest.approx(35.6762, abs=1e-5) and m.file_type == "png"


def test_png_xmp_only(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
           'exif:DateTimeOriginal="2018-08-15T14:02:33.5+02:00" tiff:Make="FUJIFILM" tiff:Model="X-T3" '
           'exif:GPSLatitude="48,51.3948N" exif:GPSLongitude="2,21.0132E"/></rdf:RDF></x:xmpmeta>')
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    path = tmp_path / "edit.png"
    _picture().save(path, pnginfo=info)
    m = read_metadata(path)
    assert m.taken_at == "2018-08-15T14:02:33.500+02:00" and m.taken_source == "exif"
    assert m.camera == "FUJIFILM X-T3"
    assert m.gps_lat == pytest.approx(48.85658, abs=1e-4) and m.gps_lon == pytest.approx(2.35022, abs=1e-4)


def test_webp_big_endian(tmp_path: Path) -> None:
    w = Writer(big_endian=True)
    ifd = Ifd([w.ascii(0x010F, "SONY"), w.ascii(0x0110, "ILCE-7M3")],
              {EXIF_IFD: Ifd([w.ascii(0x9004, "2020:01:02 03:04:05"), w.ascii(0x9012, "+05:30")])})
    m = read_metadata(_save(tmp_path / "a.webp", w.exif(ifd), "WEBP"))
    assert m.camera == "SONY ILCE-7M3"
    assert m.taken_at == "2020-01-02T03:04:05+05:30" and m.taken_source == "exif-create"
    assert m.file_type == "webp"


def test_heic(tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    w = Writer(False)
    path = _save(tmp_path / "IMG_4242.HEIC", w.exif(_iphone(w)), "HEIF")
    m = read_metadata(path)
    assert m.file_type == "heic" and m.camera == "Apple iPhone 12"
    assert m.taken_at == "2019-07-04T18:30:05.120+01:00"
    assert m.gps_lon == pytest.approx(_LISBON[1], abs=1e-5)


def test_offset_derived_from_gps_stamp(tmp_path: Path) -> None:
    w = Writer(False)
    ifd = Ifd([], {EXIF_IFD: Ifd([w.ascii(0x9003, "2019:07:04 18:30:05")]),
                   GPS_IFD: gps_ifd(w, *_LISBON, stamp=("2019:07:04", (17, 29, 58)))})
    m = read_metadata(_save(tmp_path / "x.jpg", w.exif(ifd), "JPEG"))
    assert m.taken_at == "2019-07-04T18:30:05+01:00" and m.taken_offset == 60


def test_gps_time_is_the_third_fallback(tmp_path: Path) -> None:
    w = Writer(False)
    ifd = Ifd([], {GPS_IFD: gps_ifd(w, *_LISBON, stamp=("2017:03:09", (8, 7, 6)))})
    m = read_metadata(_save(tmp_path / "IMG_20190101_000000.jpg", w.exif(ifd), "JPEG"))
    assert m.taken_source == "gps" and m.taken_at == "2017-03-09T08:07:06+00:00"


@pytest.mark.parametrize("name, expected", [
    ("IMG_20190704_123456.jpg", "2019-07-04T12:34:56"),
    ("PXL_20230102_030405123.jpg", "2023-01-02T03:04:05"),
    ("2018-08-15 14.02.33.png", "2018-08-15T14:02:33"),
    ("IMG-20200229-WA0001.jpg", "2020-02-29T00:00:00"),
    ("Screenshot 2021-10-11 at 09.08.07.png", "2021-10-11T00:00:00"),
])
def test_date_from_file_name(tmp_path: Path, name: str, expected: str) -> None:
    m = read_metadata(_save(tmp_path / name, None, "PNG" if name.endswith("png") else "JPEG"))
    assert m.taken_source == "filename" and m.taken_at == expected and m.taken_offset is None


@pytest.mark.parametrize("name", ["IMG_20191345_000000.jpg", "photo_12345678.jpg", "DSC01234.jpg"])
def test_no_date_in_these_names(name: str) -> None:
    assert date_from_filename(name) is None


def test_mtime_is_the_last_fallback(tmp_path: Path) -> None:
    path = _save(tmp_path / "plain.jpg", None, "JPEG")
    stamp = time.mktime((2015, 6, 7, 8, 9, 10, 0, 0, -1))
    os.utime(path, (stamp, stamp))
    m = read_metadata(path)
    assert m.taken_source == "mtime" and m.taken_at.startswith("2015-06-07T08:09:10")
    assert m.taken_offset is not None  # this machine's zone is known


@pytest.mark.parametrize("value", ["0000:00:00 00:00:00", "    :  :     :  :  ", "2019:13:45 25:61:00",
                                   "", "garbage", "1066:10:14 09:00:00", "9999:12:31 23:59:59"])
def test_bad_dates_are_skipped(tmp_path: Path, value: str) -> None:
    w = Writer(False)
    ifd = Ifd([w.ascii(0x0110, "Model X")], {EXIF_IFD: Ifd([w.ascii(0x9003, value),
                                                               w.ascii(0x9004, "2019:01:02 03:04:05")])})
    m = read_metadata(_save(tmp_path / "bad.jpg", w.exif(ifd), "JPEG"))
    assert m.taken_source == "exif-create" and m.taken_at == "2019-01-02T03:04:05"
    assert m.camera_model == "Model X"


def _hostile_cases(w: Writer) -> dict[str, Ifd]:
    return {
        "date as a number": Ifd([w.ascii(0x0110, "M")], {EXIF_IFD: Ifd([w.short(0x9003, 2019)])}),
        "gps as text": Ifd([w.ascii(0x0110, "M")], {GPS_IFD: Ifd([w.ascii(1, "N"), w.ascii(2, "38.7"),
                                                                  w.ascii(3, "W"), w.ascii(4, "9.1")])}),
        "offset past the end": Ifd([w.ascii(0x0110, "M"), Entry(0x010F, ASCII, 40, b"x" * 40, raw_offset=10_000_000)]),
        "huge count": Ifd([w.ascii(0x0110, "M"), Entry(0x829A, RATIONAL, 0x7FFFFFFF, b"\0" * 8, raw_offset=8)]),
        "zero denominators": Ifd([w.ascii(0x0110, "M")], {
            EXIF_IFD: Ifd([w.rational(0x829A, (1, 0)), w.rational(0x829D, (0, 0)), w.rational(0x920A, (5, 0))]),
            GPS_IFD: Ifd([w.ascii(1, "N"), w.rational(2, (38, 0), (0, 0), (0, 0)), w.ascii(3, "E"),
                          w.rational(4, (9, 1), (1, 1), (1, 1))])}),
        "latitude out of range": Ifd([w.ascii(0x0110, "M")], {GPS_IFD: gps_ifd(w, 38.0, 9.0)} | {}),
        "sub-IFD pointer past the end": Ifd([w.ascii(0x0110, "M"), w.long(EXIF_IFD, 0xFFFFFF00)]),
        "sub-IFD pointing at itself": Ifd([w.ascii(0x0110, "M"), w.long(EXIF_IFD, 8)]),
        "binary junk in text": Ifd([w.ascii(0x0110, "M"), Entry(0x010F, ASCII, 6, b"\xff\xfe\x00\x01ab")]),
        "wrong ref letter": Ifd([w.ascii(0x0110, "M")], {GPS_IFD: Ifd([w.ascii(1, "Q"), w.rational(2, 1, 2, 3),
                                                                      w.ascii(3, "E"), w.rational(4, 1, 2, 3)])}),
        "bad offset string": Ifd([w.ascii(0x0110, "M")], {EXIF_IFD: Ifd([w.ascii(0x9003, "2019:07:04 18:30:05"),
                                                                         w.ascii(0x9011, "+99:99")])}),
        "signed negative exposure": Ifd([w.ascii(0x0110, "M")], {EXIF_IFD: Ifd([w.srational(0x829A, (-1, 100)),
                                                                                w.long(0x8827, 0)])}),
    }


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("case", sorted(_hostile_cases(Writer()).keys()))
def test_hostile_exif_gives_missing_fields(tmp_path: Path, case: str, big_endian: bool) -> None:
    w = Writer(big_endian)
    ifd = _hostile_cases(w)[case]
    if case == "latitude out of range":
        ifd.children[GPS_IFD].entries[1] = w.rational(2, (95, 1), (0, 1), (0, 1))
    path = _save(tmp_path / "hostile.jpg", w.exif(ifd), "JPEG")
    m = read_metadata(path)  # never raises
    assert m.file_type == "jpeg" and m.pixel_width == 64
    assert m.taken_source in ("exif", "mtime")
    if case != "bad offset string":
        assert m.taken_source == "mtime"
    else:
        assert m.taken_offset is None and m.taken_at == "2019-07-04T18:30:05"
    assert m.gps_lat is None and m.gps_lon is None
    assert m.exposure is None and m.aperture is None and m.focal_length is None and m.iso is None
    if case == "binary junk in text":
        assert m.camera_make in (None, "ab") or "\x00" not in (m.camera_make or "")
    if case in ("offset past the end", "huge count"):
        assert m.camera_model == "M"


def test_truncated_and_garbage_exif(tmp_path: Path) -> None:
    w = Writer(False)
    full = w.exif(_iphone(w))
    for n, blob in enumerate([full[:40], full[:-30], b"Exif\0\0" + os.urandom(300), b"Exif\0\0MM\0*\xff\xff\xff\xff"]):
        m = read_metadata(_save(tmp_path / f"t{n}.jpg", blob, "JPEG"))
        assert m.file_type == "jpeg"


def test_not_an_image_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "IMG_20200101_101010.jpg"
    path.write_bytes(b"not a jpeg at all")
    m = read_metadata(path)
    assert m.taken_source == "filename" and m.file_size == 17 and m.pixel_width is None
    fake_raw = tmp_path / "x.cr2"
    fake_raw.write_bytes(b"II*\0" + b"\xff" * 100)
    assert read_metadata(fake_raw).file_type == "raw"
    gone = read_metadata(tmp_path / "gone.jpg")
    assert gone.file_size is None and gone.taken_at is None


def test_uses_the_callers_image(tmp_path: Path) -> None:
    w = Writer(False)
    path = _save(tmp_path / "c.jpg", w.exif(_canon(w)), "JPEG")
    with Image.open(path) as im:
        assert read_metadata(path, im).camera == "Canon EOS 5D Mark IV"


@pytest.mark.parametrize("make, model, expected", [
    ("Canon", "Canon EOS R5", "Canon EOS R5"), ("Google", "Pixel 7", "Google Pixel 7"),
    ("NIKON CORPORATION", "NIKON D750", "NIKON D750"), ("OLYMPUS IMAGING CORP.", "E-M5", "OLYMPUS E-M5"),
    (None, "X100V", "X100V"), ("Apple", None, "Apple"), (None, None, None),
])
def test_camera_name(make: str | None, model: str | None, expected: str | None) -> None:
    assert camera_name(make, model) == expected


def test_decoded_image_gives_the_files_size(tmp_path: Path) -> None:
    from clipsearch.images import load_image

    w = Writer(False)
    path = _save(tmp_path / "rot.jpg", w.exif(_iphone(w)), "JPEG")  # 64x48 stored, orientation 6
    small = load_image(path, target_size=16)
    m = read_metadata(path, small)
    assert (m.pixel_width, m.pixel_height, m.orientation) == (64, 48, 6)
    assert m.camera == "Apple iPhone 12"


@pytest.mark.parametrize("tags, size, expect", [
    # A huge altitude (a float of 400 digits is inf) and a zero frame size: missing, the rest kept.
    ({"creation_time": "2019-07-14T18:30:00Z", "location": "+38.7223-009.1393+" + "9" * 400 + "/"}, (0, 48),
     {"taken_source": "video", "gps_lat": 38.7223, "gps_alt": None, "pixel_width": None, "pixel_height": 48}),
    ({"creation_time": "0000-00-00T00:00:00Z", "location": "+91.0+200.0/", "make": "\x00"}, (64, 48),
     {"taken_source": "mtime", "gps_lat": None, "gps_lon": None, "camera_make": None, "pixel_width": 64}),
    ({"com.apple.quicktime.creationdate": "2021-02-03T04:05:06+0100",
      "com.apple.quicktime.location.ISO6709": "-33.8688+151.2093-012.5/", "com.apple.quicktime.model": "iPhone 12"},
     (1920, 1080), {"taken_at": "2021-02-03T04:05:06+01:00", "gps_lon": 151.2093, "gps_alt": -12.5,
                    "camera_model": "iPhone 12"}),
])
def test_a_videos_hostile_or_odd_tags_cost_fields_never_the_video(tmp_path: Path, monkeypatch, tags, size,
                                                                  expect) -> None:
    import clipsearch.video

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    monkeypatch.setattr(clipsearch.video, "video_tags", lambda path: (tags, size))
    meta = read_metadata(clip)
    assert meta.file_type == "video" and meta.file_size == 64
    for field, value in expect.items():
        assert getattr(meta, field) == value, (field, getattr(meta, field))
