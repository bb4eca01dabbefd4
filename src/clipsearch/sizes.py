"""Byte sizes for people and from people: one parser, one formatter (decimal units, as disks are sold)."""
from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """Bytes from "600MB", "2GB", "1.5G", "512MiB" or "123456"; ValueError saying what is accepted."""
    m = _SIZE.match(str(text))
    if not m or (m.group(3) and not m.group(2)):
        raise ValueError(f"invalid size {text!r}: use a number with a unit, like 600MB, 2GB or 512MiB")
    number, unit, binary = float(m.group(1)), m.group(2).lower(), bool(m.group(3))
    value = int(number * (1024 if binary else 1000) ** _POWERS[unit])
    if value <= 0:
        raise ValueError(f"invalid size {text!r}: it must be more than zero")
    return value


def format_size(n: float | None, *, binary: bool = False) -> str:
    """A byte count for people: "536.9 MB" (powers of 1000, as disks are sold), or "512.0 MiB" with `binary`.

    The one size formatter: the CLI, the UI, index sizes and file-size limits all print through it.
    """
    if n is None:
        return "?"
    base, units = (1024, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (1000, ("B", "kB", "MB", "GB", "TB"))
    for unit in units:
        if abs(n) < base or unit == units[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= base
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["format_size", "parse_size"]
