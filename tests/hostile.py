"""Hostile image bytes for tests: headers that claim absurd sizes, deflate bombs, seeds to fuzz.

Run as a script, loads each named case with `load_image` and prints one JSON line per
case: the reason it was refused (or "loaded"), the seconds it took and how much the
process's peak memory grew. A fresh process, so that the peak is this load's own.

    python hostile.py CASE [CASE ...]
    python hostile.py --fuzz COUNT SEED MAX_PIXELS   (a JSON summary of COUNT mutated seed images)
"""
from __future__ import annotations

import io
import json
import resource
import struct
import sys
import time
import zlib

from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, body: bytes | None = None, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose IHDR declares width×height; the body is a few zero bytes unless given."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", body if body is not None else zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def png_deflate_bomb(side: int) -> bytes:
    """A real, valid 1-bit PNG of side×side black pixels: ~20 KB that inflate to side² pixels."""
    row = b"\0" * (1 + (side + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return png(side, side, body, bit_depth=1, colour_type=0)


def jpeg(width: int, height: int) -> bytes:
    """A small JPEG whose SOF marker claims width×height."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 0, 0)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif(width: int, height: int) -> bytes:
    """A GIF with a width×height logical screen and one 1×1 frame."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00" + b"\x3b")


def bmp(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "BMP")
    data = bytearray(buf.getvalue())
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def tiff(width: int, height: int) -> bytes:
    """An uncompressed greyscale TIFF claiming width×height, with a 16-byte strip."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0" * 16


def webp(width: int, height: int) -> bytes:
    """A lossless WebP header claiming width×height, with a garbage bitstream."""
    vp8l = b"\x2f" + struct.pack("<I", (width - 1) | ((height - 1) << 14)) + b"\0" * 32
    chunk = b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


# Each over the default 150 MP cap or the 100:1 aspect cap: all must be refused from the header.
BOMBS = {
    "png-header": lambda: png(100_000, 100_000),
    "png-deflate": lambda: png_deflate_bomb(13_000),   # 169 MP of real, valid data in ~20 KB
    "jpeg": lambda: jpeg(65_500, 65_500),
    "gif": lambda: gif(65_535, 65_535),
    "bmp": lambda: bmp(30_000, 30_000),
    "tiff": lambda: tiff(100_000, 100_000),
    "webp": lambda: webp(16_383, 16_383),
    "strip": lambda: png(1, 10_000_000),               # 10 MP, but 1 pixel wide
}


def seed_images() -> dict[str, bytes]:
    """Small valid files of every allowed format, the seeds the fuzzer mutates."""
    import numpy as np

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    out = {}
    for fmt, image, kwargs in [
        ("JPEG", rgb, {"quality": 80}),
        ("JPEG", rgb, {"progressive": True}),
        ("PNG", rgb.convert("RGBA"), {}),
        ("PNG", rgb.convert("P"), {"transparency": 0}),
        ("GIF", rgb.convert("P"), {"save_all": True, "append_images": [rgb.rotate(90).convert("P")]}),
        ("WEBP", rgb, {"quality": 80}),
        ("WEBP", rgb, {"lossless": True}),
        ("TIFF", rgb, {"compression": "tiff_lzw"}),
        ("TIFF", rgb.convert("CMYK"), {}),
        ("BMP", rgb, {}),
    ]:
        buf = io.BytesIO()
        image.save(buf, fmt, **kwargs)
        out[f"{fmt.lower()}-{len(out)}"] = buf.getvalue()
    return out


MUTATIONS = ("flip", "truncate", "set16", "set32", "insert", "delete")
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: bit flips, truncation, 16/32-bit header values, inserted and deleted bytes."""
    out = bytearray(data)
    for kind, pos, value in ops:
        if not out:
            break
        pos %= len(out)
        if kind == "flip":
            out[pos] ^= 1 << (value % 8)
        elif kind == "truncate":
            del out[pos:]
        elif kind in ("set16", "set32"):
            width = 2 if kind == "set16" else 4
            number = _INTERESTING[value % len(_INTERESTING)] if value < 64 else value
            chunk = (number % (1 << (8 * width))).to_bytes(width, "big" if value % 2 else "little")
            out[pos:pos + width] = chunk
        elif kind == "insert":
            out[pos:pos] = bytes([value % 256]) * (1 + value % 7)
        elif kind == "delete":
            del out[pos:pos + 1 + value % 16]
    return bytes(out)


def fuzz(count: int, seed: int, max_pixels: int) -> dict:
    """Load `count` seeded random mutations of the seed images under a `max_pixels` cap; a summary."""
    import random
    import traceback
    import warnings

    warnings.simplefilter("ignore")  # Pillow warns about every corrupt TIFF tag

    from clipsearch.errors import ImageLoadError
    from clipsearch.images import load_image

    rng = random.Random(seed)
    seeds = list(seed_images().values())
    load_image(seeds[2])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = {"loaded": 0, "refused": 0, "max_seconds": 0.0, "unexpected": []}
    for _ in range(count):
        ops = [(rng.choice(MUTATIONS), rng.choice([rng.randrange(64), rng.randrange(1 << 16)]),
                rng.randrange(1 << 32) if rng.random() < 0.5 else rng.randrange(64))
               for _ in range(rng.randint(1, 4))]
        data = mutate(rng.choice(seeds), ops)
        started = time.perf_counter()
        try:
            image = load_image(data, max_pixels=max_pixels)
            assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
            summary["loaded"] += 1
        except ImageLoadError:
            summary["refused"] += 1
        except BaseException:  # noqa: BLE001 - reported to the test, with the input to replay
            summary["unexpected"].append({"input": data.hex(), "error": traceback.format_exc(limit=3)})
        summary["max_seconds"] = max(summary["max_seconds"], time.perf_counter() - started)
    summary["peak_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return summary


def main(cases: list[str]) -> int:
    if cases[:1] == ["--fuzz"]:
        print(json.dumps(fuzz(int(cases[1]), int(cases[2]), int(cases[3]))))
        return 0
    from clipsearch.errors import ImageLoadError
    from clipsearch.images import load_image

    load_image(seed_images()["png-2"])  # warm up: imports and plugin registration are not the bomb's cost
    for case in cases:
        data = BOMBS[case]()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        try:
            load_image(data)
            reason = "loaded"
        except ImageLoadError as exc:
            reason = exc.reason
        seconds = time.perf_counter() - started
        grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({"case": case, "bytes": len(data), "reason": reason, "seconds": seconds,
                          "peak_growth_mb": grown_kb / 1024}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
