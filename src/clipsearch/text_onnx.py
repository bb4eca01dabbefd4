"""The torch-free text path: a model's text tower exported to ONNX once, run with onnxruntime.

A query needs one text vector, and importing torch and open_clip to make it costs seconds
(the search itself takes milliseconds). So the first query of a model loads it, exports
its text tower here (next to the image tower's export, in the same cache folder), checks
the exported tower against torch, and every later query runs on:

- `clipsearch.tokenizer.ClipTokenizer` (open_clip's ids, no torch),
- the token and position embeddings, read from a memory-mapped `.npy` (only the rows a
  query uses are read from disk),
- the transformer, final norm, end-token pooling and projection in onnxruntime, over the
  positions up to the batch's last end token (see `ClipEncoder._text_pool`). The graph is
  saved with its weights in a separate file (ONNX external data): onnxruntime then maps
  them instead of parsing them out of one large protobuf, which took ViT-B-32's session
  from about 0.6 s to 0.2 s of CPU at start (docs/performance.md, "Cold query").

An export is named by `model_key`: the model name, the weights (a pretrained tag, or a
checkpoint's path, size and time), and the open_clip and torch versions, all of which are
known without importing torch. A model whose text tower or tokenizer this path cannot
reproduce is recorded as such (`TextExport.reason`), so later queries go straight to torch.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clipsearch.errors import ModelError

if TYPE_CHECKING:
    from clipsearch.encoder import ClipEncoder

log = logging.getLogger(__name__)

FORMAT = 2  # 2: weights as external data (1: one protobuf)
TEXT_MIN_COSINE = 0.9999
# Calls (of at most QUICK_TEXTS texts) served by the session made without weight prepacking.
QUICK_CALLS = 1
QUICK_TEXTS = 8
_OPSET = 17
# The fixed query set an export is checked on (and tests/bench rank with): short and long,
# punctuation, unicode, a text longer than any context.
PROBE_QUERIES = (
    "a red car", "a photo of a dog", "x", "beach at sunset", "two people walking in the snow",
    "a red car on a road at night, seen from afar", "a close-up of a blue circle", "the Eiffel Tower",
    "café au lait ☕", "東京の夜景", "a green square next to a yellow triangle", "night", "day",
    "an empty room", "a cat sleeping on a sofa", "children playing football in a park",
    "a mountain lake reflecting the sky", "t-shirt", "3-year-old", "&amp; <b>bold</b>",
    "a purple star above a small orange house with a long shadow across the grass " * 8,
)


@dataclass(frozen=True)
class TextExport:
    """What the cache holds for one model: a checked export (`reason` empty) or why there is none."""

    model: str
    key: str
    dim: int = 0
    context_length: int = 0
    clean: str = "lower"
    vocab_size: int = 0
    min_cosine: float = 0.0          # against torch's encode_text on PROBE_QUERIES
    export_seconds: float = 0.0
    reason: str = ""                 # non-empty: this model has no torch-free text path, and why
    format: int = FORMAT

    @property
    def usable(self) -> bool:
        return not self.reason


def model_key(model: str, pretrained: str | None) -> str:
    """A short digest naming one model's weights, computed without importing torch.

    `pretrained` as a library stores it: a tag, "bundled", a checkpoint path, or None.
    A checkpoint file enters with its size and modification time, so a retrained file
    gets a new export.
    """
    import hashlib
    from importlib import metadata

    from clipsearch.encoder import BUNDLED_TAG, bundled_weights_path, pretrained_name

    if pretrained is None or pretrained_name(pretrained) is None:
        weights = "random"
    else:
        path = bundled_weights_path() if pretrained == BUNDLED_TAG else Path(pretrained)
        if path.is_file():
            st = path.stat()
            weights = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        else:
            weights = f"tag:{pretrained}"
    versions = []
    for dist in ("open_clip_torch", "torch"):
        try:
            versions.append(metadata.version(dist))
        except metadata.PackageNotFoundError:
            versions.append("-")
    raw = json.dumps([FORMAT, model, weights, *versions])
    return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


def _file_name(model: str) -> str:
    """A model name as a file name's start (no separators)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model)


def _paths(folder: Path, model: str, key: str) -> tuple[Path, Path, Path]:
    stem = folder / f"{_file_name(model)}-text-{key}-opset{_OPSET}"
    return stem.with_suffix(".onnx"), stem.with_name(stem.name + "-embeddings.npy"), stem.with_suffix(".json")


def _weights_path(onnx_path: Path) -> Path:
    # The graph's external data file; the graph names it by this base name.
    return onnx_path.with_name(onnx_path.name + ".data")


def find_export(model: str, pretrained: str | None, cache_dir: str | os.PathLike | None = None) -> TextExport | None:
    """The cached export record for this model and weights, or None when there is none yet."""
    from clipsearch.encoder import onnx_cache_dir

    key = model_key(model, pretrained)
    _, _, meta = _paths(onnx_cache_dir(cache_dir), model, key)
    try:
        raw = json.loads(meta.read_text(encoding="utf-8"))
        record = TextExport(**raw)
    except (OSError, ValueError, TypeError):
        return None
    return record if record.format == FORMAT and record.key == key else None


class OnnxTextEncoder:
    """Texts → L2-normalised float32 vectors with an exported text tower; imports no torch."""

    def __init__(self, record: TextExport, cache_dir: str | os.PathLike | None = None, *,
                 threads: int | None = None) -> None:
        from clipsearch.encoder import onnx_cache_dir
        from clipsearch.tokenizer import ClipTokenizer

        try:
            import onnxruntime  # noqa: F401  (checked here; sessions are made in _new_session)
        except ImportError as exc:
            raise ModelError("the torch-free text path needs onnxruntime: pip install 'clipsearch[onnx]'") from exc
        onnx_path, table_path, _ = _paths(onnx_cache_dir(cache_dir), record.model, record.key)
        self.record = record
        self.dim = record.dim
        self._onnx_path = onnx_path
        self._threads = threads
        self._lock = threading.Lock()
        self._calls = 0
        self._packed = False
        try:
            self._table = np.load(table_path, mmap_mode="r")
            self._session = self._new_session(prepack=False)
        except Exception as exc:  # a missing, truncated or foreign file: onnxruntime raises its own types
            raise ModelError(f"the text tower export {onnx_path} cannot be loaded ({exc}); "
                             "delete it to export it again") from exc
        self._vocab = record.vocab_size
        self.tokenizer = ClipTokenizer(record.context_length, clean=record.clean, cache_dir=onnx_cache_dir(cache_dir))

    @property
    def prepacked(self) -> bool:
        """Whether texts now run on the session with prepacked weights (see `_session_for`)."""
        return self._packed

    def _new_session(self, *, prepack: bool) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if self._threads:
            options.intra_op_num_threads = self._threads
        if not prepack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        return onnxruntime.InferenceSession(str(self._onnx_path), options, providers=["CPUExecutionProvider"])

    def prepack(self) -> None:
        """Move to the session with prepacked weights now (a server about to answer many queries)."""
        with self._lock:
            self._pack()

    def _pack(self) -> None:
        if self._packed:
            return
        try:
            self._session = self._new_session(prepack=True)
        except Exception as exc:  # the same files loaded a moment ago; keep the session we have
            log.warning("text tower %s: no prepacked session (%s); keeping the first one", self._onnx_path, exc)
        self._packed = True

    def _session_for(self, count: int) -> Any:
        # The first session skips prepacking the weights (re-laying them out for the matrix
        # kernels): it starts ~4x cheaper and runs one query ~2x slower, the right trade for a
        # command that asks one question. A process that asks again, or a big batch, gets
        # the prepacked session (built once, then the first one is dropped).
        with self._lock:
            self._calls += 1
            if self._calls > QUICK_CALLS or count > QUICK_TEXTS:
                self._pack()
            return self._session

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, dim) float32 unit rows, in the order of `texts`."""
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        session = self._session_for(len(texts))
        tokens = self.tokenizer(list(texts))
        ends = tokens.argmax(axis=1)  # the end token has the highest id
        order = np.argsort(-ends, kind="stable")
        out = np.empty((len(texts), self.dim), np.float32)
        positions = self._table[self._vocab:]
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            length = int(ends[rows].max()) + 1
            x = np.asarray(self._table[tokens[rows, :length]], np.float32) + np.asarray(positions[:length], np.float32)
            features = session.run(None, {"x": x, "eot": ends[rows].astype(np.int64)})[0]
            out[rows] = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        return out


def _unsupported(encoder: "ClipEncoder") -> str:
    """Why this model's text tower or tokenizer is not one the torch-free path reproduces; '' if it is."""
    import open_clip
    import torch
    from open_clip.tokenizer import SimpleTokenizer

    model = encoder.model
    if type(model) is not open_clip.model.CLIP:
        return f"{type(model).__name__} text towers are not exported (only open_clip's CLIP class)"
    if getattr(model, "text_pool_type", None) != "argmax" or getattr(model, "attn_mask", None) is None:
        return "the text tower does not pool at the end token under a causal mask"
    from open_clip.transformer import ResidualAttentionBlock

    blocks = getattr(model.transformer, "resblocks", [])
    if not getattr(model.transformer, "batch_first", False) or any(
            type(r) is not ResidualAttentionBlock or hasattr(r, "ln_1_kv")
            or type(r.attn) is not torch.nn.MultiheadAttention or r.attn.in_proj_weight is None for r in blocks):
        return "the text transformer's blocks are not open_clip's default attention blocks"
    tok = encoder.tokenizer
    if type(tok) is not SimpleTokenizer or tok.reduction_fn is not None or len(tok.all_special_ids) != 2:
        return f"the tokenizer {type(tok).__name__} is not open_clip's plain SimpleTokenizer"
    clean = getattr(tok.clean_fn, "__name__", "").removeprefix("_clean_")
    from clipsearch.tokenizer import CLEANERS

    if clean not in CLEANERS:
        return f"the tokenizer's text cleaning {clean!r} is unknown to clipsearch"
    return ""


def export_text_tower(encoder: "ClipEncoder", pretrained: str | None,
                      cache_dir: str | os.PathLike | None = None) -> TextExport:
    """Export `encoder`'s text tower for the torch-free path, check it against torch, and record the result.

    Returns the record; `record.usable` is False (with the reason) for a model the path
    cannot reproduce, which is recorded too so no later query tries again. Raises
    ModelError when the cache folder cannot be written.
    """
    import torch

    from clipsearch.encoder import onnx_cache_dir
    from clipsearch.tokenizer import ClipTokenizer

    started = time.monotonic()
    folder = onnx_cache_dir(cache_dir)
    key = model_key(encoder.name, pretrained)
    onnx_path, table_path, meta_path = _paths(folder, encoder.name, key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot write the text tower export to {folder} ({exc.strerror or exc}); "
                         "set $CLIPSEARCH_ONNX_CACHE to a writable folder") from exc
    reason = _unsupported(encoder)
    record = TextExport(encoder.name, key, dim=encoder.dim)
    if not reason:
        tok = encoder.tokenizer
        clean = tok.clean_fn.__name__.removeprefix("_clean_")
        ours = ClipTokenizer(tok.context_length, clean=clean)
        if not np.array_equal(ours(list(PROBE_QUERIES)), tok(list(PROBE_QUERIES)).numpy()):
            reason = "clipsearch's tokenizer gives other ids than the model's"
        else:
            record = TextExport(encoder.name, key, dim=encoder.dim, context_length=int(tok.context_length),
                                clean=clean, vocab_size=int(encoder.model.token_embedding.weight.shape[0]))
            try:
                _write_onnx(encoder.model, onnx_path)
                table = torch.cat([encoder.model.token_embedding.weight.detach(),
                                   encoder.model.positional_embedding.detach()]).float().cpu().numpy()
                _atomic(table_path, lambda tmp: np.save(tmp, table))
                expected = encoder.encode_texts(list(PROBE_QUERIES))
                got = OnnxTextEncoder(record, cache_dir).encode_texts(list(PROBE_QUERIES))
                cosine = float((expected * got).sum(axis=1).min())
                record = TextExport(**{**asdict(record), "min_cosine": cosine})
                if cosine < TEXT_MIN_COSINE:
                    reason = f"the exported text tower's vectors differ from torch's (cosine {cosine:.6f})"
            except ModelError:
                raise
            except Exception as exc:  # the exporter and onnxruntime raise many types
                reason = f"the text tower could not be exported ({type(exc).__name__}: {exc})"
    if reason:
        for path in (onnx_path, _weights_path(onnx_path), table_path):
            path.unlink(missing_ok=True)
        record = TextExport(encoder.name, key, dim=encoder.dim, reason=reason)
    record = TextExport(**{**asdict(record), "export_seconds": round(time.monotonic() - started, 2)})
    _atomic(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(asdict(record), indent=1), encoding="utf-8"))
    remove_outdated_exports(folder, encoder.name)
    return record


def remove_outdated_exports(folder: Path, model: str) -> list[Path]:
    """Delete `model`'s text tower exports in `folder` written in an older FORMAT (no query reads them again).

    A format-1 ViT-B-32 export is 250 MB; an upgrade would otherwise leave it behind for
    good. Returns the files removed; a file that cannot be removed is left (logged).
    """
    removed: list[Path] = []
    for meta in sorted(folder.glob(f"{_file_name(model)}-text-*.json")):
        try:
            raw = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(raw, dict) or raw.get("model") != model or raw.get("format", FORMAT) >= FORMAT:
            continue
        graph = meta.with_suffix(".onnx")
        for path in (graph, _weights_path(graph), meta.with_name(meta.stem + "-embeddings.npy"), meta):
            try:
                if path.exists():
                    path.unlink()
                    removed.append(path)
            except OSError as exc:
                log.warning("could not remove the outdated text export %s (%s)", path, exc)
    if removed:
        log.info("removed %d files of outdated text tower exports of %s", len(removed), model)
    return removed


def _atomic(path: Path, write: Any) -> None:
    from clipsearch.atomic import atomic_path

    with atomic_path(path) as tmp:
        write(str(tmp))


def _write_onnx(model: Any, path: Path) -> None:
    import warnings

    import torch

    class Block(torch.nn.Module):
        # open_clip's ResidualAttentionBlock with the attention written out: reshapes that
        # name no batch or length, so the exported graph takes any (the traced
        # nn.MultiheadAttention bakes the example's length in).
        def __init__(self, block: Any) -> None:
            super().__init__()
            self.block = block
            self.heads = block.attn.num_heads

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            b, attn = self.block, self.block.attn
            h = b.ln_1(x)
            q, k, v = torch.nn.functional.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
            scores = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-1, -2) + mask
            out = (scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
            x = x + b.ls_1(attn.out_proj(out))
            return x + b.ls_2(b.mlp(b.ln_2(x)))

    class TextTower(torch.nn.Module):
        # open_clip's CLIP.encode_text after the embeddings, over the first L positions.
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(Block(r) for r in model.transformer.resblocks)
            self.ln_final = model.ln_final
            self.register_buffer("attn_mask", model.attn_mask, persistent=False)
            self.text_projection = model.text_projection

        def forward(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
            length = x.shape[1]
            mask = self.attn_mask[:length, :length].to(x.dtype)
            for block in self.blocks:
                x = block(x, mask)
            x = self.ln_final(x)
            x = x[torch.arange(x.shape[0]), eot]
            projection = self.text_projection
            if projection is None:
                return x
            return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection

    width = model.token_embedding.weight.shape[1]
    dummy = (torch.zeros(2, 5, width), torch.tensor([4, 2]))

    import tempfile

    import onnx

    from clipsearch.atomic import fsync_dir

    weights = _weights_path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        embedded = Path(tmp) / "embedded.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(TextTower().eval(), dummy, str(embedded), input_names=["x", "eot"],
                              output_names=["features"], opset_version=_OPSET, dynamo=False,
                              dynamic_axes={"x": {0: "batch", 1: "length"}, "eot": {0: "batch"},
                                            "features": {0: "batch"}})
        staged = Path(tmp) / path.name
        onnx.save_model(onnx.load(str(embedded)), str(staged), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=weights.name, size_threshold=1024)
        for written in (Path(tmp) / weights.name, staged):
            with open(written, "rb") as fh:
                os.fsync(fh.fileno())
        # The weights first, then the graph that names them: a crash in between leaves no graph.
        os.replace(Path(tmp) / weights.name, weights)
        os.replace(staged, path)
    fsync_dir(path.parent)
