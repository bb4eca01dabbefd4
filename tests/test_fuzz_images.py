"""The image loader fuzzed: mutated bytes of valid JPEG, PNG, GIF, WebP, TIFF and BMP files
(bit flips, truncations, 16- and 32-bit header values, inserted and deleted bytes) give an
RGB image or ImageLoadError, never another exception, in bounded time and memory.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hostile import MUTATIONS, mutate, seed_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipsearch.errors import ImageLoadError
from clipsearch.images import load_image

SEEDS = seed_images()
HOSTILE = Path(__file__).with_name("hostile.py")
# A low cap keeps each example's memory small here; the cap's own bound is measured below.
MAX_PIXELS = 4_000_000

positions = st.one_of(st.integers(0, 63), st.integers(0, 1 << 16))  # headers most of the time
values = st.one_of(st.integers(0, 63), st.integers(0, (1 << 32) - 1))
mutations = st.lists(st.tuples(st.sampled_from(MUTATIONS), positions, values), min_size=1, max_size=5)


@pytest.mark.slow
@settings(max_examples=1500, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(sorted(SEEDS)), ops=mutations, target=st.sampled_from([None, 8, 64]))
def test_mutated_images_load_as_rgb_or_raise_image_load_error(seed: str, ops: list, target: int | None) -> None:
    data = mutate(SEEDS[seed], ops)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt TIFF tags and EXIF; the result is what counts
        try:
            image = load_image(data, target_size=target, max_pixels=MAX_PIXELS, name=f"{seed}.bin")
        except ImageLoadError as exc:
            assert exc.path == f"{seed}.bin" and exc.reason
            return
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert image.width >= 1 and image.height >= 1 and image.width * image.height <= MAX_PIXELS
    image.getpixel((0, 0))  # fully loaded: nothing is read lazily from the (gone) bytes
    assert getattr(image, "fp", None) is None


def test_every_seed_loads_unmutated() -> None:
    for name, data in SEEDS.items():
        assert load_image(data).size in ((16, 12), (12, 16)), name


@pytest.mark.slow
def test_thousands_of_mutations_in_a_fresh_process_stay_within_time_and_memory() -> None:
    # Memory follows the pixel cap, not the file: a 300-byte GIF may declare a 100 MP canvas
    # (docs/reliability.md). Under a 20 MP cap the whole run must stay far below 150 MP's worth.
    cap = 20_000_000
    result = subprocess.run([sys.executable, str(HOSTILE), "--fuzz", "10000", "7", str(cap)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["unexpected"] == [], summary["unexpected"][:3]
    assert summary["loaded"] > 100 and summary["refused"] > 100
    assert summary["max_seconds"] < 2.0
    assert summary["peak_growth_mb"] < 6 * cap / 1e6 + 30, summary  # RGB plus the decoded original
