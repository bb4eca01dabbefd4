from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Never touch the network from tests: weights come from caches or nowhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLIPSEARCH_OFFLINE", "1")
# Images encode with torch in tests (deterministic, and no ONNX export into ~/.cache);
# tests/test_indexer_parallel.py tries the "auto" and onnxruntime backends explicitly.
os.environ["CLIPSEARCH_IMAGE_BACKEND"] = "torch"
# Text-tower exports for the torch-free query path go to one temporary folder per test run.
if "CLIPSEARCH_ONNX_CACHE" not in os.environ:
    import tempfile

    os.environ["CLIPSEARCH_ONNX_CACHE"] = tempfile.mkdtemp(prefix="clipsearch-test-onnx-")
sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeEncoder, write_colour_photos  # noqa: E402


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def colour_photos(tmp_path: Path) -> dict[str, str]:
    """Eight solid-colour JPEGs (red, green, ...) in tmp_path/photos, plus two in a sub-folder."""
    photos = write_colour_photos(tmp_path / "photos", ["red", "green", "blue", "yellow", "purple", "orange"])
    photos.update(write_colour_photos(tmp_path / "photos" / "sub", ["white", "black"]))
    return photos


@pytest.fixture
def library(tmp_path: Path, fake_encoder: FakeEncoder, colour_photos: dict[str, str]):
    """A library indexed from `colour_photos` with the fake encoder."""
    from clipsearch import Library

    lib = Library.open(tmp_path / "lib", encoder=fake_encoder)
    lib.index(tmp_path / "photos")
    yield lib
    lib.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (`item.rep_call`), so fixtures can tell a failure
    (the browser tests save a screenshot then)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
