"""CLIP's byte-pair tokenizer without torch: open_clip's `SimpleTokenizer`, token for token.

open_clip's tokenizer module imports torch (and open_clip's package imports all of its
models), which costs seconds before a query can run. This module reads the same BPE
vocabulary file (`bpe_simple_vocab_16e6.txt.gz`, found inside the installed open_clip
package without importing it) and repeats the same cleaning (ftfy, HTML unescaping,
whitespace, lower case), splitting pattern, merges and truncation, returning numpy.
`tests/test_tokenizer.py` checks the ids against open_clip's on thousands of strings.
"""
from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import logging
import marshal
import os
import string
from pathlib import Path
from typing import Sequence

import numpy as np

from clipsearch.errors import ModelError

log = logging.getLogger(__name__)

CLEANERS = ("lower", "whitespace", "canonicalize")
DEFAULT_CONTEXT_LENGTH = 77
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_MERGES = 49152 - 256 - 2  # open_clip keeps the first 48,894 merges of the file
# Characters ftfy.fix_text leaves alone (printable ASCII; whitespace is collapsed after it
# anyway), so the common query skips importing ftfy (0.1-0.2 s). '&' goes to ftfy because
# it unescapes HTML entities once more before the two html.unescape calls.
_PLAIN = frozenset(string.ascii_letters + string.digits + " \t\n\r!\"#$%'()*+,-./:;<=>?@[\\]^_`{|}~")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def default_vocab_path() -> Path:
    """open_clip's BPE vocabulary file, located without importing open_clip (or torch)."""
    spec = importlib.util.find_spec("open_clip")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / _VOCAB_FILE
        if path.is_file():
            return path
    raise ModelError(f"open_clip's vocabulary file {_VOCAB_FILE} was not found; reinstall open_clip_torch")


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte → printable character table, as open_clip builds it.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _fix_text(text: str) -> str:
    if all(c in _PLAIN for c in text):
        return text
    import ftfy

    return ftfy.fix_text(text)


def _basic_clean(text: str) -> str:
    return html.unescape(html.unescape(_fix_text(text))).strip()


def _clean(text: str, how: str) -> str:
    text = _basic_clean(text)
    if how == "canonicalize":
        text = text.replace("_", " ").translate(_PUNCTUATION).lower()
        return " ".join(text.split()).strip()
    text = " ".join(text.split()).strip()
    return text.lower() if how == "lower" else text


class ClipTokenizer:
    """Text → (N, context_length) int64 token ids, the ids open_clip's SimpleTokenizer gives."""

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH, *, clean: str = "lower",
                 vocab_path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> None:
        """`cache_dir`: where to keep the parsed vocabulary (half the cost of parsing it again), if anywhere."""
        import regex

        if clean not in CLEANERS:
            raise ModelError(f"unknown tokenizer cleaning {clean!r}; choose one of {', '.join(CLEANERS)}")
        self.context_length = int(context_length)
        self.clean = clean
        self._byte_encoder = _bytes_to_unicode()
        path = str(vocab_path or default_vocab_path())
        self._encoder, self._ranks = _load_vocab(path, str(cache_dir) if cache_dir else None)
        self.sot_token_id = self._encoder["<start_of_text>"]
        self.eot_token_id = self._encoder["<end_of_text>"]
        self.vocab_size = len(self._encoder)
        self._cache: dict[str, list[int]] = {}
        self._pattern = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)

    def encode(self, text: str) -> list[int]:
        """The ids of `text` without the start and end tokens (no truncation)."""
        ids: list[int] = []
        for token in self._pattern.findall(_clean(text, self.clean)):
            ids.extend(self._bpe(token))
        return ids

    def _bpe(self, token: str) -> list[int]:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        if token in ("<start_of_text>", "<end_of_text>"):
            ids = [self._encoder[token]]
        else:
            chars = "".join(self._byte_encoder[b] for b in token.encode("utf-8"))
            ids = [self._encoder[piece] for piece in self._merge(chars)]
        if len(self._cache) < 100_000:
            self._cache[token] = ids
        return ids

    def _merge(self, chars: str) -> list[str]:
        word = [*chars[:-1], chars[-1] + "</w>"]
        ranks = self._ranks
        while len(word) > 1:
            # The lowest-ranked adjacent pair merges first, everywhere it occurs, left to right.
            best = min(((ranks.get(pair, _INF), pair) for pair in zip(word, word[1:])), key=lambda rp: rp[0])
            if best[0] == _INF:
                break
            first, second = best[1]
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """(N, context_length) int64: start token, ids, end token, zeros; too long → cut, end token last."""
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        out = np.zeros((len(texts), length), np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            out[row, :len(ids)] = ids
        return out


_INF = float("inf")


@functools.lru_cache(maxsize=4)
def _load_vocab(path: str, cache_dir: str | None = None) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    cached = _vocab_cache_file(path, cache_dir) if cache_dir else None
    if cached is not None:
        try:
            encoder, ranks = marshal.loads(cached.read_bytes())
            if isinstance(encoder, dict) and isinstance(ranks, dict) and len(ranks) == _MERGES:
                return encoder, ranks
        except (OSError, ValueError, EOFError, TypeError):
            pass
    encoder, ranks = _parse_vocab(path)
    if cached is not None:
        try:
            from clipsearch.atomic import atomic_writer

            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_writer(cached, "wb", durable=False) as fh:
                fh.write(marshal.dumps((encoder, ranks)))
        except OSError as exc:  # a cache that cannot be written only costs the parse next time
            log.debug("tokenizer: not caching the vocabulary in %s (%s)", cache_dir, exc)
    return encoder, ranks


def _vocab_cache_file(path: str, cache_dir: str) -> Path | None:
    # Named by the vocabulary file's identity and the interpreter (marshal's format is its own).
    import hashlib
    import sys

    try:
        st = os.stat(path)
    except OSError:
        return None
    raw = f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}:{sys.version_info[:2]}:{marshal.version}:{_MERGES}"
    return Path(cache_dir) / f"bpe-vocab-{hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()}.marshal"


def _parse_vocab(path: str) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    with gzip.open(path) as fh:
        lines = fh.read().decode("utf-8").split("\n")[1:_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    base = list(_bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<start_of_text>", "<end_of_text>"]
    return {v: i for i, v in enumerate(vocab)}, {m: i for i, m in enumerate(merges)}  # type: ignore[misc]
