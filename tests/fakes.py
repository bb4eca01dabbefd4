"""Test doubles: an encoder whose vectors are known, so ranking tests can fail."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

# Named colours and their RGB: each is one axis of the fake embedding space.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "purple": (140, 40, 170), "orange": (250, 140, 20), "white": (245, 245, 245), "black": (10, 10, 10),
}
NAMES = list(COLOURS)
HASH_DIMS = 8


class FakeEncoder:
    """Maps an image to the colour axis its mean colour is nearest to (softly) and a text to
    the axes of the colour words it contains; other words land on hashed axes."""

    def __init__(self, name: str = "fake", pretrained: str | None = "test") -> None:
        self.name = name
        self.pretrained = pretrained
        self.dim = len(NAMES) + HASH_DIMS
        self.image_size = 32
        self.images_encoded = 0
        self.texts_encoded = 0

    def image_vector(self, image: Image.Image) -> np.ndarray:
        mean = np.asarray(image.convert("RGB").resize((16, 16)), np.float32).reshape(-1, 3).mean(axis=0)
        protos = np.array([COLOURS[n] for n in NAMES], np.float32)
        d2 = ((protos - mean) ** 2).sum(axis=1)
        v = np.zeros(self.dim, np.float32)
        v[: len(NAMES)] = np.exp(-(d2 - d2.min()) / 2000.0)
        # A faint, image-specific component so that distinct images never tie exactly.
        v[len(NAMES):] = 0.01 * (mean / 255.0).repeat(3)[:HASH_DIMS]
        return v / np.linalg.norm(v)

    def text_vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        for word in text.lower().replace(",", " ").split():
            if word in COLOURS:
                v[NAMES.index(word)] += 1.0
            else:
                h = int(hashlib.sha1(word.encode()).hexdigest(), 16)
                v[len(NAMES) + h % HASH_DIMS] += 0.3
        if not v.any():
            v[-1] = 1.0
        return v / np.linalg.norm(v)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        self.images_encoded += len(images)
        return np.stack([self.image_vector(im) for im in images]).astype(np.float32).reshape(-1, self.dim)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        self.texts_encoded += len(texts)
        return np.stack([self.text_vector(t) for t in texts]).astype(np.float32).reshape(-1, self.dim)


def write_colour_photos(folder, names: Sequence[str] = NAMES, size: tuple[int, int] = (64, 48),
                        ext: str = ".jpg", seed: int = 0) -> dict[str, str]:
    """One solid-colour photo per colour name (with a little noise); returns name -> path.

    The noise comes from `seed`: two calls with the same seed write the same bytes for a
    colour (copies of one photo, to the indexer), with different seeds different photos.
    """
    import os

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        arr = np.clip(np.array(COLOURS[name], np.float32) + rng.normal(0, 6, (size[1], size[0], 3)), 0, 255)
        path = os.path.join(folder, f"{name}{ext}")
        Image.fromarray(arr.astype(np.uint8)).save(path)
        out[name] = path
    return out


@dataclass(frozen=True)
class DummyReader:
    """A FactReader for tests (clipsearch.facts): facts of a file's name, bytes and decoded image.

    `fail_on`: raise on files whose name contains it (a buggy reader).
    """

    name: str = "dummy"
    version: int = 1
    fail_on: str | None = None

    @property
    def columns(self) -> dict[str, str]:
        return {"stem": "TEXT", "name_len": "INTEGER", "red": "REAL", "head": "BLOB"}

    @property
    def indexed(self) -> tuple[str, ...]:
        return ("stem",)

    def read(self, path: str, image: Image.Image | None) -> dict[str, Any]:
        base = os.path.basename(path)
        if self.fail_on and self.fail_on in base:
            raise RuntimeError(f"dummy reader fails on {base}")
        with open(path, "rb") as fh:
            head = fh.read(4)
        red = float(np.asarray(image.convert("RGB"), np.float32)[..., 0].mean()) if image is not None else None
        return {"stem": os.path.splitext(base)[0], "name_len": len(base), "red": red, "head": head,
                "not_a_column": 1}
