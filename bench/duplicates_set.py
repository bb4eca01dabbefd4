"""A labelled benchmark for duplicate detection: copies, moments and same-caption distractors.

`make_set(out_dir, ...)` writes image files and returns their labels:

* **copies**: every original (a toy-world scene or a textured photo) is saved once as a
  camera JPEG and then put through each copy transformation in `TRANSFORMS` (resize,
  re-encode at any quality, PNG/WebP/HEIC, crop up to ~10 %, EXIF and pixel rotation,
  exposure and colour edits, a burned-in caption or watermark). All files of one original
  are one *picture*.
* **moments**: `toyworld.render_series` shots of one scene, objects moved a little
  between shots (and, in half the series, the camera too): different pictures of one
  *moment*.
* **distractors**: the same scene (same caption: objects, colours, setting, time) drawn
  again from another random stream: a different picture that a caption cannot tell
  apart. It must never be grouped as a copy of the original.

Ground truth is pairwise: two files are a copy pair when they share `picture`, a moment
pair when they share `moment` but not `picture`; `distractor_of` names the original a
distractor imitates.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from clipsearch import toyworld as tw


@dataclass(frozen=True)
class Item:
    path: str
    picture: int         # files of one picture are copies of each other
    moment: int          # pictures of one moment (a burst) share this
    kind: str            # "original", a transformation name, "shot", "distractor"
    distractor_of: int | None = None  # the picture a distractor imitates


def textured_photo(rng: np.random.Generator, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A photo-like picture with texture at every scale: smooth colour fields, shapes, fine grain."""
    w, h = size
    arr = np.zeros((h, w, 3), np.float32)
    for octave, amp in ((4, 90), (8, 45), (16, 25), (48, 12)):
        small = rng.uniform(-1, 1, (octave * h // w + 1, octave, 3)).astype(np.float32)
        arr += amp * np.asarray(Image.fromarray(small[:, :, 0], "F").resize((w, h), Image.Resampling.BICUBIC))[..., None] \
            * np.array([1, .8, .6], np.float32)
        for c in range(3):
            arr[..., c] += amp * 0.5 * np.asarray(Image.fromarray(small[:, :, c], "F").resize((w, h), Image.Resampling.BICUBIC))
    arr += rng.uniform(60, 190, 3).astype(np.float32)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 10))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.04, 0.18) * w
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse([x - r, y - r * rng.uniform(.4, 1), x + r, y + r], fill=colour, outline=(20, 20, 20))
        else:
            d.rectangle([x - r, y - r / 2, x + r, y + r / 2], fill=colour)
    grain = rng.standard_normal((h, w, 3)).astype(np.float32) * rng.uniform(3, 8)
    return Image.fromarray((np.asarray(img, np.float32) + grain).clip(0, 255).astype(np.uint8))


def _exif_bytes(meta: Image.Exif | None) -> bytes:
    return meta.tobytes() if meta is not None else b""


def _save(img: Image.Image, path: Path, fmt: str, **kw: object) -> None:
    img.save(path, format=fmt, **kw)


def _jpeg(q: int) -> Callable[[Image.Image, np.random.Generator], tuple[Image.Image, str, dict]]:
    return lambda img, rng: (img, "JPEG", {"quality": q})


def _resize(f: float) -> Callable:
    return lambda img, rng: (img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.LANCZOS),
                             "JPEG", {"quality": 88})


def _crop(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    # Up to ~10 % of the area: each side loses 0-5 % of the width or height.
    l, t, r, b = rng.uniform(0.0, 0.05, 4)
    box = (round(l * img.width), round(t * img.height), round((1 - r) * img.width), round((1 - b) * img.height))
    return img.crop(box), "JPEG", {"quality": 90}


def _rotate(deg: int) -> Callable:
    method = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}[deg]
    return lambda img, rng: (img.transpose(method), "JPEG", {"quality": 90})


def _exif_rotate(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    # Pixels stored turned by 90 degrees, orientation 6 says "turn them back to show".
    exif = Image.Exif()
    exif[0x0112] = 6
    return img.transpose(Image.Transpose.ROTATE_90), "JPEG", {"quality": 90, "exif": exif.tobytes()}


def _exposure(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    f = float(rng.choice([0.8, 0.88, 1.12, 1.2]))
    return ImageEnhance.Brightness(img).enhance(f), "JPEG", {"quality": 90}


def _colour(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    out = ImageEnhance.Color(img).enhance(float(rng.choice([0.7, 1.3])))
    out = ImageEnhance.Contrast(out).enhance(float(rng.choice([0.9, 1.1])))
    tint = np.array([1.05, 1.0, 0.94] if rng.random() < .5 else [0.95, 1.0, 1.05], np.float32)
    arr = (np.asarray(out, np.float32) * tint).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr), "JPEG", {"quality": 90}


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _caption(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    out = img.copy()
    d = ImageDraw.Draw(out)
    text = str(rng.choice(["Summer holiday 2023", "Grandma's 80th", "IMG_2041 - edited", "Lake trip, day 3"]))
    size = max(10, img.height // 14)
    y = img.height - size * 1.6
    d.text((img.width * 0.05, y), text, fill=(255, 255, 255), font=_font(size), stroke_width=2, stroke_fill=(0, 0, 0))
    return out, "JPEG", {"quality": 90}


def _watermark(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    size = max(10, img.width // 12)
    x, y = img.width * float(rng.uniform(.05, .5)), img.height * float(rng.uniform(.05, .8))
    d.text((x, y), "(c) PhotoStudio", fill=(255, 255, 255, 110), font=_font(size))
    return Image.alpha_composite(base, layer).convert("RGB"), "JPEG", {"quality": 90}


def _heic(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str, dict]:
    return img, "HEIF", {"quality": 80}


TRANSFORMS: dict[str, Callable[[Image.Image, np.random.Generator], tuple[Image.Image, str, dict]]] = {
    "jpeg_q95": _jpeg(95),
    "jpeg_q30": _jpeg(30),
    "resize_50": _resize(0.5),
    "resize_150": _resize(1.5),
    "png": lambda img, rng: (img, "PNG", {}),
    "webp": lambda img, rng: (img, "WEBP", {"quality": 75}),
    "heic": _heic,
    "crop": _crop,
    "exif_rotate": _exif_rotate,
    "rotate_90": _rotate(90),
    "rotate_180": _rotate(180),
    "exposure": _exposure,
    "colour": _colour,
    "caption": _caption,
    "watermark": _watermark,
}
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "HEIF": ".heic"}


def _heif_ok() -> bool:
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        buf = io.BytesIO()
        Image.new("RGB", (16, 16)).save(buf, format="HEIF")
        return True
    except Exception:  # noqa: BLE001 - no HEIF encoder: leave that transformation out
        return False


def _camera_exif(rng: np.random.Generator, taken: "datetime.datetime") -> Image.Exif:
    meta = tw.ToyPhotoMeta(taken, tw.CITIES[0], tw.CAMERAS[int(rng.integers(len(tw.CAMERAS)))], False, 0.0, 0.0,
                           100, 1 / 250)
    return tw.exif_bytes(meta)


def make_set(out_dir: str | os.PathLike, *, toy: int = 20, photos: int = 10, series: int = 10, shots: int = 3,
             distractors: int = 20, transforms: tuple[str, ...] | None = None, size: int = 384,
             seed: int = 0, exif: bool = True) -> list[Item]:
    """Write the labelled set under `out_dir` and return its items (see the module docstring).

    With `exif`, every camera file carries a capture time (EXIF DateTimeOriginal): the
    copies saved as JPEG or HEIC keep their original's, PNG and WebP exports lose it, the
    shots of a burst are 1-3 s apart and a distractor was taken on another day.
    """
    import datetime

    start = datetime.datetime(2021, 5, 1, 10, 0, 0, tzinfo=datetime.timezone.utc)
    camera_rng = np.random.default_rng([seed, 9])

    def stamp(day: int, seconds: float = 0.0) -> Image.Exif | None:
        if not exif:
            return None
        return _camera_exif(camera_rng, start + datetime.timedelta(days=day, seconds=seconds))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(transforms or TRANSFORMS)
    if "heic" in names and not _heif_ok():
        names.remove("heic")
    items: list[Item] = []
    picture = 0
    toy_scenes: list[tuple[int, tw.Scene]] = []

    def put(img: Image.Image, name: str, fmt: str, kw: dict, meta: Image.Exif | None = None,
            **labels: object) -> None:
        path = out / f"{name}{EXTENSIONS[fmt]}"
        if meta is not None and fmt in ("JPEG", "HEIF"):
            if "exif" in kw:  # the EXIF-rotated copy: the camera's EXIF with its orientation
                meta = Image.Exif()
                meta.load(_exif_bytes(stamp_of[labels["picture"]]))
                meta[0x0112] = 6
            kw = {**kw, "exif": meta.tobytes() if hasattr(meta, "tobytes") else meta}
        _save(img, path, fmt, **kw)
        items.append(Item(str(path), **labels))  # type: ignore[arg-type]

    originals: list[tuple[int, Image.Image, str]] = []
    stamp_of: dict[int, Image.Exif | None] = {}
    for i in range(toy):
        scene = tw.sample_scene(rng, "train")
        img = tw.render(scene, np.random.default_rng([seed, 1, i]), size)
        originals.append((picture, img, f"toy{i:03d}"))
        toy_scenes.append((picture, scene))
        picture += 1
    for i in range(photos):
        img = textured_photo(np.random.default_rng([seed, 2, i]))
        originals.append((picture, img, f"photo{i:03d}"))
        picture += 1
    for pic, img, stem in originals:
        stamp_of[pic] = stamp(pic, 0.0)
        put(img, f"{stem}_original", "JPEG", {"quality": 92}, stamp_of[pic], picture=pic, moment=pic,
            kind="original")
        for t, name in enumerate(names):
            trng = np.random.default_rng([seed, 3, pic, t])
            out_img, fmt, kw = TRANSFORMS[name](img, trng)
            put(out_img, f"{stem}_{name}", fmt, kw, stamp_of[pic], picture=pic, moment=pic, kind=name)
    moment = picture
    for s in range(series):
        scene = tw.sample_scene(rng, "train")
        reframe = 0.015 if s % 2 else 0.0
        shots_ = tw.render_series(scene, np.random.default_rng([seed, 4, s]), shots, size, motion=0.06,
                                  reframe=reframe)
        when = 0.0
        for k, img in enumerate(shots_):
            when += float(np.random.default_rng([seed, 6, s, k]).uniform(1, 3)) if k else 0.0
            put(img, f"series{s:03d}_shot{k}", "JPEG", {"quality": 92}, stamp(1000 + s, when), picture=picture,
                moment=moment, kind="shot")
            picture += 1
        moment += 1
    for d in range(min(distractors, len(toy_scenes))):
        of, scene = toy_scenes[d % len(toy_scenes)]
        img = tw.render(scene, np.random.default_rng([seed, 5, d]), size)
        put(img, f"toy{of:03d}_distractor{d}", "JPEG", {"quality": 92}, stamp(2000 + d, 0.0), picture=picture,
            moment=moment,
            kind="distractor", distractor_of=of)
        picture += 1
        moment += 1
    return items
