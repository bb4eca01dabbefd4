"""The torch-free query path: the exported text tower gives torch's vectors and rankings, and
query commands (and a sync with nothing to encode) never import torch or open_clip."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipsearch.cli import main
from clipsearch.encoder import LazyEncoder
from clipsearch.library import Library
from clipsearch.text_onnx import PROBE_QUERIES, TEXT_MIN_COSINE, find_export

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 40-photo toy-world library indexed with the bundled model, a few captions in its text collection."""
    root = tmp_path_factory.mktemp("fast")
    assert main(["-q", "toyworld", "generate", "--n", "40", "--workers", "1", str(root / "tw")]) == 0
    with Library.open(root / "lib", model="toyworld") as lib:
        lib.index(root / "tw" / "images")
        lib.add_texts(["a red circle", "a blue square", "a green triangle", "night", "day"])
    return root / "lib", root / "tw" / "images"


def test_exported_text_tower_matches_torch_vectors_and_rankings(built: tuple[Path, Path]) -> None:
    lib_dir, _ = built
    with Library.open(lib_dir, fast_path=False) as slow, Library.open(lib_dir) as fast:
        queries = list(PROBE_QUERIES)
        want, got = slow.encoder.encode_texts(queries), fast.encoder.encode_texts(queries)
        assert isinstance(fast.encoder, LazyEncoder) and fast.encoder.text_backend == "onnxruntime"
        assert slow.encoder.text_backend == "torch"
        assert float((want * got).sum(axis=1).min()) >= TEXT_MIN_COSINE
        for q in queries:
            assert [h.id for h in fast.search(q, k=10)] == [h.id for h in slow.search(q, k=10)], q
        record = find_export("toyworld", "bundled")
        assert record is not None and record.usable and record.min_cosine >= TEXT_MIN_COSINE


_PROBE = """
import sys
from clipsearch.cli import main
codes = [main(argv) for argv in {argvs!r}]
print({{"codes": codes, "heavy": sorted(m for m in ("torch", "open_clip", "torchvision") if m in sys.modules)}})
"""


def _run_cli_sequence(argvs: list[list[str]], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(argvs=argvs)], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=300, input="a yellow star\n")
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip().splitlines()[-1])  # a dict literal printed by _PROBE


def test_query_commands_and_a_noop_sync_never_import_torch(built: tuple[Path, Path]) -> None:
    lib_dir, photos = built
    with Library.open(lib_dir) as lib:
        lib.encoder.encode_texts(["warm the export"])  # the first query of a model exports its text tower
    lib = str(lib_dir)
    argvs = [["-q", "search", "a red circle", "-l", lib], ["-q", "search", "red + 2:night - day", "-l", lib],
             ["-q", "similar", "#1", "-l", lib], ["-q", "similar", "#2", "--text", "at night", "-l", lib],
             ["-q", "describe", "#3", "-l", lib], ["-q", "info", "-l", lib], ["-q", "duplicates", "-l", lib],
             ["-q", "index", str(photos), "-l", lib], ["-q", "texts", "add", "-", "-l", lib]]
    result = _run_cli_sequence(argvs)
    assert result == {"codes": [0] * len(argvs), "heavy": []}
    with Library.open(lib_dir) as library:
        assert "a yellow star" in library.texts()  # encoded without torch by `texts add`
    # The torch path is still there when asked for.
    slow = _run_cli_sequence([["-q", "search", "a red circle", "-l", lib, "--no-fast-path"]])
    assert slow == {"codes": [0], "heavy": ["open_clip", "torch", "torchvision"]}


def test_a_noop_sync_works_offline_with_the_weights_gone(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, photos = built
    from clipsearch.encoder import bundled_weights_path

    weights = tmp_path / "toy.safetensors"
    shutil.copy(bundled_weights_path(), weights)
    lib = tmp_path / "lib"
    with Library.open(lib, model="toyworld", pretrained=str(weights)) as library:
        assert library.index(photos).added == 40
    weights.unlink()
    result = _run_cli_sequence([["-q", "index", str(photos), "-l", str(lib), "--json"]],
                               env={"HF_HUB_OFFLINE": "1", "CLIPSEARCH_OFFLINE": "1"})
    assert result == {"codes": [0], "heavy": []}
    with Library.open(lib) as library:
        assert library.last_report().unchanged == 40 and library.info().images == 40


def test_the_first_query_of_a_model_exports_once_and_says_so(built: tuple[Path, Path], tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    lib_dir, _ = built
    cache = tmp_path / "onnx"
    enc = LazyEncoder("toyworld", "bundled", 256, cache_dir=cache)
    with caplog.at_level("WARNING"):
        first = enc.encode_texts(["a red circle"])
    assert enc.loaded and "exported the text tower of toyworld" in caplog.text
    caplog.clear()
    again = LazyEncoder("toyworld", "bundled", 256, cache_dir=cache)
    second = again.encode_texts(["a red circle"])
    assert not again.loaded and not caplog.text  # found the export: no torch model, nothing said
    np.testing.assert_allclose(first, second, atol=1e-6)
    assert sorted(p.suffix for p in cache.iterdir()) == [".data", ".json", ".marshal", ".npy", ".onnx"]
    # The graph keeps its weights in the .data file, which onnxruntime maps instead of parsing.
    graph = next(cache.glob("*.onnx"))
    weights = graph.with_name(graph.name + ".data")
    assert graph.stat().st_size < weights.stat().st_size / 10


def test_the_second_call_moves_to_the_prepacked_session_with_the_same_vectors(built: tuple[Path, Path],
                                                                                tmp_path: Path) -> None:
    from clipsearch import text_onnx

    cache = tmp_path / "onnx"
    LazyEncoder("toyworld", "bundled", 256, cache_dir=cache).encode_texts(["x"])  # exports
    record = text_onnx.find_export("toyworld", "bundled", cache)
    enc = text_onnx.OnnxTextEncoder(record, cache)
    texts = ["a red circle", "two blue squares at night"]
    quick = enc.encode_texts(texts)
    assert not enc.prepacked
    packed = enc.encode_texts(texts)
    assert enc.prepacked
    np.testing.assert_allclose(quick, packed, atol=1e-5)
    big = text_onnx.OnnxTextEncoder(record, cache)
    big.encode_texts(texts * 5)  # a batch larger than QUICK_TEXTS goes to the prepacked session at once
    assert big.prepacked


def test_a_warmed_up_library_answers_on_the_prepacked_session(built: tuple[Path, Path]) -> None:
    lib_dir, _ = built
    with Library.open(lib_dir) as lib:
        lib.warm_up()
        text = lib.encoder.text_tower
        assert text is not None and text.prepacked and not lib.encoder.loaded  # no torch model for it
        assert lib.search("a red circle", k=3)


def test_an_export_in_an_older_format_is_removed_when_the_new_one_is_written(tmp_path: Path) -> None:
    import json

    from clipsearch import text_onnx

    cache = tmp_path / "onnx"
    cache.mkdir()
    old = cache / "toyworld-text-0123456789abcdef-opset17"
    for suffix in (".onnx", "-embeddings.npy"):
        Path(str(old) + suffix).write_bytes(b"old")
    Path(str(old) + ".json").write_text(json.dumps({"model": "toyworld", "key": "0123456789abcdef", "format": 1}))
    other = cache / "ViT-B-32-text-fedcba9876543210-opset17.json"  # another model's: kept
    other.write_text(json.dumps({"model": "ViT-B-32", "key": "fedcba9876543210", "format": 1}))
    LazyEncoder("toyworld", "bundled", 256, cache_dir=cache).encode_texts(["a red circle"])  # exports format 2
    names = sorted(p.name for p in cache.iterdir())
    assert not [n for n in names if n.startswith(old.name)] and other.name in names
    assert text_onnx.find_export("toyworld", "bundled", cache) is not None
