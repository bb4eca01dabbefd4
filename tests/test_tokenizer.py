"""The torch-free tokenizer gives open_clip's token ids, string for string."""
from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from clipsearch.tokenizer import ClipTokenizer

open_clip = pytest.importorskip("open_clip")

_WORDS = ("a red car at night beach sunset people dog cat photo of the on in with t-shirt 3-year-old "
          "don't it's we're they've I'm you'll he'd Straße café naïve façade Ærøskøbing Zürich").split()
_UNICODE = ["東京の夜景", "猫と犬", "한국어 문장", "Привет мир", "مرحبا بالعالم", "שלום", "ελληνικά",
            "🚗🌅🐶", "👨‍👩‍👧‍👦 family", "e\u0301te\u0301", "ﬁsh ﬂower", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ",
            "â€œquotedâ€\x9d", "Ã©tÃ©", "“curly” ‘quotes’", "x\u200by", "tab\there", "\x1b[31mred\x1b[0m",
            "&amp;amp; &lt;b&gt; &#39; &nbsp;", "<b>bold</b> &amp;", "١٢٣ ௫ Ⅻ ½ ²", "\u00a0nbsp\u00a0",
            "ǅ ǈ ǋ", "a\x00b\x07c", "\ud83d", "line\r\nbreak\rhere", "   ", "", "_under_score_",
            "CAPS Lock MiXeD", "word" * 60, "ß" * 40]


def _strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pieces = _WORDS + _UNICODE + list("!?.,;:'\"()[]{}<>/\\|@#$%^&*~`+=-_0123456789")
    out = list(_UNICODE)
    while len(out) < n:
        k = rng.choice((1, 2, 3, 5, 8, 20, 60))  # 60 pieces: longer than any context, cut
        sep = rng.choice((" ", " ", "", "  ", "\n"))
        out.append(sep.join(rng.choice(pieces) for _ in range(k)))
        if rng.random() < 0.1:  # random code points, surrogates excluded
            out.append("".join(chr(rng.choice((rng.randrange(32, 0x2FF), rng.randrange(0x300, 0xD7FF),
                                               rng.randrange(0xE000, 0x1FFFF)))) for _ in range(rng.randrange(1, 30))))
    return out[:n]


def _open_clip_ids(tokenizer: object, texts: list[str]) -> np.ndarray:
    return tokenizer(texts).numpy()  # type: ignore[operator]


@pytest.mark.parametrize("model", ["ViT-B-32", "toyworld"])
def test_ids_equal_open_clips(model: str) -> None:
    from clipsearch.encoder import register_model_configs

    register_model_configs()
    theirs = open_clip.get_tokenizer(model)
    ours = ClipTokenizer(theirs.context_length)
    texts = _strings(3000, seed=len(model))
    expected = _open_clip_ids(theirs, texts)
    got = ours(texts)
    assert got.shape == expected.shape == (len(texts), 77 if model == "ViT-B-32" else 32)
    bad = [t for t, a, b in zip(texts, got, expected) if not np.array_equal(a, b)]
    assert not bad, f"{len(bad)} strings tokenised differently, first: {bad[0]!r}"


@pytest.mark.parametrize("clean", ["whitespace", "canonicalize"])
def test_other_cleaners_equal_open_clips(clean: str) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    texts = _strings(500, seed=7)
    expected = SimpleTokenizer(context_length=77, clean=clean)(texts).numpy()
    np.testing.assert_array_equal(ClipTokenizer(77, clean=clean)(texts), expected)


def test_long_text_is_cut_with_the_end_token_last() -> None:
    tok = ClipTokenizer(16)
    ids = tok(["dog " * 100])[0]
    assert ids[0] == tok.sot_token_id and ids[-1] == tok.eot_token_id and (ids[1:-1] > 0).all()


def test_importing_and_tokenising_never_imports_torch() -> None:
    code = ("import sys; from clipsearch.tokenizer import ClipTokenizer; ClipTokenizer()(['a café ☕', 'dog']);"
            "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_cached_vocabulary_gives_the_same_ids_and_a_broken_cache_is_rebuilt(tmp_path) -> None:
    from clipsearch import tokenizer as tk

    texts = _strings(300, seed=3)
    plain = ClipTokenizer()(texts)
    tk._load_vocab.cache_clear()
    first = ClipTokenizer(cache_dir=tmp_path)(texts)  # parses and writes the cache
    (cached,) = tmp_path.glob("bpe-vocab-*.marshal")
    tk._load_vocab.cache_clear()
    second = ClipTokenizer(cache_dir=tmp_path)(texts)  # reads it
    cached.write_bytes(b"\x00 not marshal")
    tk._load_vocab.cache_clear()
    third = ClipTokenizer(cache_dir=tmp_path)(texts)  # ignores the broken file and writes it again
    assert np.array_equal(plain, first) and np.array_equal(plain, second) and np.array_equal(plain, third)
    assert cached.stat().st_size > 1_000_000
