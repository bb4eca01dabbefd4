"""Encoder plumbing on a tiny random-init open_clip model: shapes, norms, determinism, weights lookup."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch import ModelError, WeightsUnavailableError
from clipsearch.encoder import ClipEncoder, load_encoder, resolve_weights

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
HUB_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cfg") / "clipsearch-tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tiny_config: str) -> ClipEncoder:
    return load_encoder(tiny_config, None, device="cpu")


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8)) for i in range(5)]


TEXTS = ["a red car", "a dog on a beach", "t-shirt", "", "sunset over the sea at night"]


def test_tiny_model_encodes_to_unit_float32_rows(tiny: ClipEncoder) -> None:
    assert (tiny.name, tiny.pretrained, tiny.dim, tiny.image_size) == ("clipsearch-tiny", None, 32, 32)
    for vecs, n in ((tiny.encode_images(_images()), 5), (tiny.encode_texts(TEXTS), 5)):
        assert vecs.shape == (n, 32)
        assert vecs.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert tiny.encode_images([]).shape == (0, 32)
    assert tiny.encode_texts([]).shape == (0, 32)


def test_random_init_is_the_same_in_every_load(tiny_config: str, tiny: ClipEncoder) -> None:
    import torch

    before = torch.get_rng_state()
    again = load_encoder(tiny_config, "none", device="cpu")
    # Seeding the init must not reset the caller's random stream.
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(again.encode_images(_images()), tiny.encode_images(_images()))
    np.testing.assert_array_equal(again.encode_texts(TEXTS), tiny.encode_texts(TEXTS))


def test_batching_gives_the_same_vectors_as_one_by_one(tiny: ClipEncoder) -> None:
    images = _images()
    batched = tiny.encode_images(images, batch_size=2)
    single = np.concatenate([tiny.encode_images([im], batch_size=1) for im in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    batched_t = tiny.encode_texts(TEXTS, batch_size=3)
    single_t = np.concatenate([tiny.encode_texts([t]) for t in TEXTS])
    np.testing.assert_allclose(batched_t, single_t, atol=1e-5)
    # Different inputs give different vectors: the model is not a constant.
    assert not np.allclose(batched[0], batched[1])
    assert not np.allclose(batched_t[0], batched_t[1])


def test_unknown_model_name_lists_the_valid_ones() -> None:
    with pytest.raises(ModelError, match="no-such-model") as err:
        load_encoder("no-such-model", None)
    assert "ViT-B-32" in str(err.value) and "toyworld" in str(err.value)


def test_missing_model_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    with pytest.raises(ModelError, match=str(missing)):
        load_encoder(str(missing), None)


def test_unknown_tag_lists_the_models_tags() -> None:
    with pytest.raises(ModelError, match="no-such-tag") as err:
        load_encoder("ViT-B-32", "no-such-tag")
    assert not isinstance(err.value, WeightsUnavailableError)
    assert "laion2b_s34b_b79k" in str(err.value) and "openai" in str(err.value)


def _assert_says_how_to_supply_weights(message: str) -> None:
    assert "ViT-B-32/laion2b_s34b_b79k" in message
    assert "--pretrained" in message
    assert "--model toyworld" in message


def test_uncached_weights_offline_fail_fast_with_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        load_encoder("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path / "hub"))
    assert time.monotonic() - started < 5
    _assert_says_how_to_supply_weights(str(err.value))


def test_uncached_weights_without_network_fail_fast_with_help(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Downloads allowed, but the endpoint is unreachable: no retries, the same advice.
    monkeypatch.setattr("clipsearch.encoder._network_reachable", lambda url, timeout=3.0: False)
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path / "hub"), allow_download=True)
    assert time.monotonic() - started < 5
    _assert_says_how_to_supply_weights(str(err.value))


@pytest.mark.parametrize("name", ["missing.pt", "weights/open_clip_pytorch_model.bin", "sub/model"])
def test_missing_checkpoint_path_is_named(tiny_config: str, tmp_path: Path, name: str) -> None:
    path = str(tmp_path / name)
    with pytest.raises(WeightsUnavailableError, match=path):
        load_encoder(tiny_config, path)


def test_local_checkpoint_loads_its_weights(tiny_config: str, tiny: ClipEncoder, tmp_path: Path) -> None:
    import torch

    # Weights that differ from the seeded random init, so loading them is visible.
    trained = load_encoder(tiny_config, None, device="cpu")
    with torch.no_grad():
        for p in trained.model.parameters():
            p.mul_(1.5).add_(0.01)
    ckpt = tmp_path / "tiny.pt"
    torch.save(trained.model.state_dict(), ckpt)

    loaded = load_encoder(tiny_config, str(ckpt), device="cpu")
    assert loaded.pretrained == str(ckpt)
    np.testing.assert_array_equal(loaded.encode_images(_images()), trained.encode_images(_images()))
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS), trained.encode_texts(TEXTS))
    assert not np.allclose(loaded.encode_texts(TEXTS), tiny.encode_texts(TEXTS))


def _fake_hub_file(cache: Path, filename: str, revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    # huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<rev>/<file>}.
    repo_dir = cache / ("models--" + HUB_REPO.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(b"not really weights")
    return snapshot / filename


@pytest.mark.parametrize("filename", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_cached_hub_weights_are_found_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     filename: str) -> None:
    monkeypatch.setattr("clipsearch.encoder._network_reachable",
                        lambda *a, **k: pytest.fail("looked for the network despite a cached file"))
    cached = _fake_hub_file(tmp_path / "hub", filename)
    weights = resolve_weights("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path / "hub"), allow_download=True)
    assert Path(weights.path).resolve() == cached.resolve()
    # The tag's preprocessing travels with the weights.
    assert weights.preprocess_cfg["interpolation"] == "bicubic"
    assert weights.quick_gelu is False


def test_random_and_checkpoint_resolution(tiny_config: str, tmp_path: Path) -> None:
    for tag in (None, "none", "random", "None"):
        assert resolve_weights("ViT-B-32", tag).path is None
    ckpt = tmp_path / "w.bin"
    ckpt.write_bytes(b"x")
    assert resolve_weights("ViT-B-32", str(ckpt)).path == str(ckpt.resolve())
    with pytest.raises(ModelError, match="toyworld"):
        resolve_weights("ViT-B-32", "bundled")


def test_cached_url_weights_are_found_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenAI's tags also have a plain URL; open_clip caches those as the URL's file name.
    monkeypatch.setattr("clipsearch.encoder._network_reachable",
                        lambda *a, **k: pytest.fail("looked for the network despite a cached file"))
    (tmp_path / "ViT-B-32.pt").write_bytes(b"not really weights")
    weights = resolve_weights("ViT-B-32", "openai", cache_dir=str(tmp_path), allow_download=True)
    assert weights.path == str(tmp_path / "ViT-B-32.pt")
    assert weights.quick_gelu is True


def _open_clip_text_vectors(encoder: ClipEncoder, texts: list[str]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        features = encoder.model.encode_text(encoder.tokenizer(texts))
    return torch.nn.functional.normalize(features.float(), dim=-1).numpy()


def test_text_encoding_stops_at_the_end_token_with_open_clips_vectors(tiny: ClipEncoder) -> None:
    long_text = " ".join(["a very long caption"] * 20)  # longer than the context: truncated, ends at the last slot
    texts = [*TEXTS, long_text, "dog", "ünïcödé café ☕", "a dog" * 3, "x"]
    assert tiny._text_pool() == "argmax"
    # Small batches, so that texts of different lengths meet in and across batches.
    got = tiny.encode_texts(texts, batch_size=3)
    np.testing.assert_allclose(got, _open_clip_text_vectors(tiny, texts), atol=2e-5)
    # And it really computes fewer positions: the transformer sees the batch's longest text only.
    seen: list[int] = []
    hook = tiny.model.transformer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        tiny.encode_texts(["a dog", "a red car"])
    finally:
        hook.remove()
    ends = tiny.tokenizer(["a dog", "a red car"]).argmax(dim=-1)
    assert seen == [int(ends.max()) + 1] and seen[0] < tiny.tokenizer(["x"]).shape[1]


def test_a_text_tower_that_cannot_stop_early_encodes_every_position(tiny_config: str) -> None:
    encoder = load_encoder(tiny_config, None, device="cpu")
    encoder.model.text_pool_type = "last"  # reads the last position: padding matters there
    assert encoder._text_pool() is None
    texts = ["a dog", "a red car at night", ""]
    np.testing.assert_allclose(encoder.encode_texts(texts), _open_clip_text_vectors(encoder, texts), atol=1e-6)


def test_the_bulk_capabilities_are_a_declared_protocol_not_probed(tiny: ClipEncoder) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from fakes import FakeEncoder

    from clipsearch.encoder import Encoder, LazyEncoder, PixelEncoder, input_size
    from clipsearch.pipeline import pixel_spec_of

    fake = FakeEncoder()
    assert isinstance(fake, Encoder) and not isinstance(fake, PixelEncoder)
    assert pixel_spec_of(fake) is None and input_size(fake) == 32  # images go to encode_images
    assert isinstance(tiny, PixelEncoder) and pixel_spec_of(tiny) is tiny.pixel_spec is not None
    # A lazily loaded model offers the protocol and hands over what its model has.
    lazy_fake = LazyEncoder("fake", "test", fake.dim, full=fake)
    assert isinstance(lazy_fake, PixelEncoder) and pixel_spec_of(lazy_fake) is None
    lazy_fake.prepare_bulk_encoding(10)  # nothing to prepare: no error
    with lazy_fake.image_threads(1):
        pass
    lazy_tiny = LazyEncoder(tiny.name, None, tiny.dim, full=tiny)
    assert pixel_spec_of(lazy_tiny) == tiny.pixel_spec and lazy_tiny.image_size == tiny.image_size
