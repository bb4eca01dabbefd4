"""Write EXIF (TIFF-structured IFDs) byte by byte, in either byte order, hostile values included.

The tests build their own EXIF instead of trusting one library to write what another
reads: each entry is (tag, type, count, payload) exactly as it lands in the file, so a
test can also write what no camera should (wrong types, offsets past the end, huge counts).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from fractions import Fraction

BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED, SLONG, SRATIONAL = 1, 2, 3, 4, 5, 7, 9, 10
_SIZES = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, UNDEFINED: 1, SLONG: 4, SRATIONAL: 8}
EXIF_IFD, GPS_IFD, MAKER_NOTE = 0x8769, 0x8825, 0x927C


@dataclass
class Entry:
    tag: int
    type: int
    count: int
    payload: bytes = b""
    raw_offset: int | None = None  # write this as the value offset instead of the payload's real one


@dataclass
class Ifd:
    entries: list[Entry] = field(default_factory=list)
    children: dict[int, "Ifd"] = field(default_factory=dict)  # pointer tag -> sub-IFD

    def add(self, entry: Entry) -> "Ifd":
        self.entries.append(entry)
        return self


class Writer:
    """Values of one byte order."""

    def __init__(self, big_endian: bool = False) -> None:
        self.e = ">" if big_endian else "<"

    def ascii(self, tag: int, text: str) -> Entry:
        data = text.encode("utf-8") + b"\0"
        return Entry(tag, ASCII, len(data), data)

    def short(self, tag: int, *values: int) -> Entry:
        return Entry(tag, SHORT, len(values), struct.pack(f"{self.e}{len(values)}H", *values))

    def long(self, tag: int, *values: int) -> Entry:
        return Entry(tag, LONG, len(values), struct.pack(f"{self.e}{len(values)}L", *values))

    def rational(self, tag: int, *values: float | tuple[int, int]) -> Entry:
        out = b""
        for v in values:
            num, den = v if isinstance(v, tuple) else Fraction(v).limit_denominator(1_000_000).as_integer_ratio()
            out += struct.pack(f"{self.e}LL", num, den)
        return Entry(tag, RATIONAL, len(values), out)

    def srational(self, tag: int, *values: tuple[int, int]) -> Entry:
        return Entry(tag, SRATIONAL, len(values), b"".join(struct.pack(f"{self.e}ll", *v) for v in values))

    def undefined(self, tag: int, data: bytes) -> Entry:
        return Entry(tag, UNDEFINED, len(data), data)

    def byte(self, tag: int, *values: int) -> Entry:
        return Entry(tag, BYTE, len(values), bytes(values))

    def tiff(self, ifd0: Ifd) -> bytes:
        """The whole TIFF structure: header, IFD0 and its sub-IFDs, each followed by its values."""
        header = (b"II" if self.e == "<" else b"MM") + struct.pack(f"{self.e}HL", 42, 8)
        order: list[Ifd] = []

        def walk(ifd: Ifd) -> None:
            order.append(ifd)
            for child in ifd.children.values():
                walk(child)

        walk(ifd0)

        def size(ifd: Ifd) -> int:
            n = len(ifd.entries) + len(ifd.children)
            data = sum(len(e.payload) + (len(e.payload) & 1) for e in ifd.entries if len(e.payload) > 4)
            return 2 + 12 * n + 4 + data

        starts, pos = {}, 8
        for ifd in order:
            starts[id(ifd)] = pos
            pos += size(ifd)
        out = bytearray(header)
        for ifd in order:
            start = starts[id(ifd)]
            entries = list(ifd.entries) + [
                Entry(tag, LONG, 1, struct.pack(f"{self.e}L", starts[id(child)])) for tag, child in ifd.children.items()]
            entries.sort(key=lambda e: e.tag)
            data_pos = start + 2 + 12 * len(entries) + 4
            table, data = struct.pack(f"{self.e}H", len(entries)), b""
            for e in entries:
                if len(e.payload) > 4:
                    value = struct.pack(f"{self.e}L", data_pos + len(data))
                    data += e.payload + (b"\0" if len(e.payload) & 1 else b"")
                else:
                    value = e.payload.ljust(4, b"\0")
                if e.raw_offset is not None:
                    value = struct.pack(f"{self.e}L", e.raw_offset)
                table += struct.pack(f"{self.e}HHL", e.tag, e.type, e.count) + value
            out += table + struct.pack(f"{self.e}L", 0) + data
        return bytes(out)

    def exif(self, ifd0: Ifd) -> bytes:
        """APP1 / eXIf payload: "Exif\\0\\0" and the TIFF structure."""
        return b"Exif\0\0" + self.tiff(ifd0)


def gps_ifd(w: Writer, lat: float, lon: float, alt: float | None = None, stamp: tuple[str, tuple[int, int, int]] | None = None
            ) -> Ifd:
    """A GPS IFD at (lat, lon) in degrees/minutes/seconds rationals, with refs."""
    def dms(x: float) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        x = abs(x)
        d = int(x)
        m = int((x - d) * 60)
        s = round(((x - d) * 60 - m) * 60 * 1000)
        return (d, 1), (m, 1), (s, 1000)

    ifd = Ifd()
    ifd.add(w.ascii(1, "N" if lat >= 0 else "S")).add(w.rational(2, *dms(lat)))
    ifd.add(w.ascii(3, "E" if lon >= 0 else "W")).add(w.rational(4, *dms(lon)))
    if alt is not None:
        ifd.add(w.byte(5, 1 if alt < 0 else 0)).add(w.rational(6, abs(alt)))
    if stamp is not None:
        date, (h, m, s) = stamp
        ifd.add(w.rational(7, (h, 1), (m, 1), (s, 1))).add(w.ascii(29, date))
    return ifd
