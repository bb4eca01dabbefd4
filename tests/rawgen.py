"""A minimal DNG writer for tests: a Bayer (RGGB) mosaic of an RGB picture, 16-bit, uncompressed.

Camera RAW files cannot be made with a camera in a test, and no library on PyPI we use
writes them; DNG is Adobe's documented RAW container (a TIFF with CFA tags) that LibRaw
reads like any camera's RAW, so the test writes one itself: optionally with an embedded
JPEG preview in IFD0 and the mosaic in a SubIFD, as cameras and converters write them.
"""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

_SHORT, _LONG, _ASCII, _BYTE, _RATIONAL, _SRATIONAL = 3, 4, 2, 1, 5, 10


def mosaic(rgb: np.ndarray, white: int = 4095) -> np.ndarray:
    """The RGGB Bayer mosaic of an (h, w, 3) uint8 picture, scaled to 0..white (a 12-bit sensor)."""
    h, w, _ = rgb.shape
    scaled = rgb.astype(np.uint32) * white // 255
    out = np.empty((h, w), np.uint16)
    out[0::2, 0::2] = scaled[0::2, 0::2, 0]
    out[0::2, 1::2] = scaled[0::2, 1::2, 1]
    out[1::2, 0::2] = scaled[1::2, 0::2, 1]
    out[1::2, 1::2] = scaled[1::2, 1::2, 2]
    return out


def write_dng(path: str | Path, rgb: np.ndarray, *, preview: Image.Image | None = None, white: int = 4095) -> None:
    """Write `rgb` (h, w, 3 uint8, even sizes) as a DNG; with `preview`, a JPEG preview in IFD0 too."""
    cfa = mosaic(rgb, white)
    h, w = cfa.shape
    raw_bytes = cfa.astype("<u2").tobytes()
    jpeg = b""
    if preview is not None:
        buf = io.BytesIO()
        preview.convert("RGB").save(buf, "JPEG", quality=90)
        jpeg = buf.getvalue()

    def raw_tags(data_offset: int) -> list[tuple[int, int, list]]:
        return [
            (254, _LONG, [0]), (256, _LONG, [w]), (257, _LONG, [h]), (258, _SHORT, [16]), (259, _SHORT, [1]),
            (262, _SHORT, [32803]), (273, _LONG, [data_offset]), (277, _SHORT, [1]), (278, _LONG, [h]),
            (279, _LONG, [len(raw_bytes)]), (284, _SHORT, [1]),
            (33421, _SHORT, [2, 2]), (33422, _BYTE, [0, 1, 1, 2]),
            (50714, _LONG, [0]), (50717, _LONG, [white]),
        ]

    common = [(271, _ASCII, "clipsearch"), (272, _ASCII, "test DNG"), (50706, _BYTE, [1, 4, 0, 0]),
              (50707, _BYTE, [1, 1, 0, 0]), (50708, _ASCII, "clipsearch test DNG"),
              # ColorMatrix1: identity, CalibrationIlluminant1: D65; AsShotNeutral: neutral.
              (50721, _SRATIONAL, [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]),
              (50778, _SHORT, [21]), (50728, _RATIONAL, [(1, 1), (1, 1), (1, 1)])]
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    # Layout: header, IFD0, [SubIFD], then the extra data blocks, then the image data.
    if preview is None:
        ifds = [sorted(common + raw_tags(0), key=lambda t: t[0])]
    else:
        pw, ph = preview.size
        ifd0 = sorted(common + [
            (254, _LONG, [1]), (256, _LONG, [pw]), (257, _LONG, [ph]), (258, _SHORT, [8, 8, 8]), (259, _SHORT, [7]),
            (262, _SHORT, [6]), (273, _LONG, [0]), (277, _SHORT, [3]), (278, _LONG, [ph]), (279, _LONG, [len(jpeg)]),
            (330, _LONG, [0]),
        ], key=lambda t: t[0])
        ifds = [ifd0, sorted(raw_tags(0), key=lambda t: t[0])]
    _write_ifds(out, ifds, raw_bytes, jpeg)
    Path(path).write_bytes(bytes(out))


def _encode(typ: int, values) -> bytes:
    if typ == _ASCII:
        return values.encode() + b"\x00"
    if typ == _BYTE:
        return bytes(values)
    if typ == _SHORT:
        return struct.pack(f"<{len(values)}H", *values)
    if typ == _LONG:
        return struct.pack(f"<{len(values)}I", *values)
    fmt = "<ii" if typ == _SRATIONAL else "<II"
    return b"".join(struct.pack(fmt, *v) for v in values)


def _write_ifds(out: bytearray, ifds: list[list], raw_bytes: bytes, jpeg: bytes) -> None:
    # Two passes: sizes first (offsets depend on them), then bytes.
    sizes = [2 + 12 * len(ifd) + 4 for ifd in ifds]
    ifd_offsets = [8 + sum(sizes[:i]) for i in range(len(ifds))]
    extra_start = 8 + sum(sizes)
    extras = bytearray()
    extra_pos: dict[tuple[int, int], int] = {}
    for i, ifd in enumerate(ifds):
        for tag, typ, values in ifd:
            data = _encode(typ, values)
            if len(data) > 4:
                extra_pos[(i, tag)] = extra_start + len(extras)
                extras += data + (b"\x00" if len(data) % 2 else b"")
    data_start = extra_start + len(extras)
    raw_offset = data_start
    jpeg_offset = data_start + len(raw_bytes)
    for i, ifd in enumerate(ifds):
        is_raw = i == len(ifds) - 1
        out += struct.pack("<H", len(ifd))
        for tag, typ, values in ifd:
            if tag == 273:
                values = [raw_offset if is_raw else jpeg_offset]
            if tag == 330:
                values = [ifd_offsets[-1]]
            data = _encode(typ, values)
            count = len(values) if typ != _ASCII else len(data)
            if len(data) > 4:
                field = struct.pack("<I", extra_pos[(i, tag)])
            else:
                field = data.ljust(4, b"\x00")
            out += struct.pack("<HHI", tag, typ, count) + field
        out += struct.pack("<I", 0)  # no next IFD (the SubIFD is reached through tag 330)
    out += extras + raw_bytes + jpeg
