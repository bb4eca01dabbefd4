"""Stage 3, encode: a batch of model inputs to vectors, with a one-by-one retry that finds the culprit.

Both executors call `encode_batch` (the indexer in its main process, the Ray path in its
actors), so the same file fails, with the same reason, wherever it is encoded.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from clipsearch.errors import ClipSearchError
from clipsearch.images import PixelSpec

if TYPE_CHECKING:
    from clipsearch.encoder import Encoder
    from clipsearch.pipeline.read import Decoded
    from clipsearch.pipeline.store import FileResult

log = logging.getLogger(__name__)


def pixel_spec_of(encoder: "Encoder") -> PixelSpec | None:
    """The encoder's pixel spec when it encodes model pixels directly (a `PixelEncoder` with one), else None."""
    from clipsearch.encoder import pixel_encoder

    bulk = pixel_encoder(encoder)
    return bulk.pixel_spec if bulk is not None else None


def encode_batch(encoder: "Encoder", inputs: Sequence[Any], spec: PixelSpec | None, *, batch_size: int = 64
                 ) -> tuple[np.ndarray, list[str | None]]:
    """(vectors, errors) for `inputs` (pixels when `spec`, else PIL images), one row each: a zero row and
    "could not encode: ..." for a file the model failed on (a RUNTIME fault: tried again next run).

    A failed batch is retried one by one to find the culprit; a ClipSearchError (the model
    itself is unusable) is raised. When every file fails, the caller decides whether that
    is systematic (`faults.check_systematic`).
    """
    dim = int(encoder.dim)

    def encode(items: Sequence[Any]) -> np.ndarray:
        if spec is not None:
            return encoder.encode_pixels(np.stack(items))  # type: ignore[attr-defined]  # a PixelEncoder
        return encoder.encode_images(list(items), batch_size=batch_size)

    if not len(inputs):
        return np.zeros((0, dim), np.float32), []
    try:
        return np.asarray(encode(inputs), np.float32), [None] * len(inputs)
    except ClipSearchError:
        raise
    except Exception:  # one odd image must not sink the batch: find it
        log.debug("batch encode failed; retrying one by one", exc_info=True)
    vectors = np.zeros((len(inputs), dim), np.float32)
    errors: list[str | None] = [None] * len(inputs)
    for i, item in enumerate(inputs):
        try:
            vectors[i] = encode([item])[0]
        except ClipSearchError:
            raise
        except Exception as exc:
            errors[i] = f"could not encode: {exc}"
    return vectors, errors


def encode_files(encoder: "Encoder", files: Sequence["Decoded"], spec: PixelSpec | None, *, batch_size: int = 64,
                 check: bool = True) -> list["FileResult"]:
    """Read files (none failed) through `encode_batch` to one `FileResult` each: a photo's vector, or a video's
    frame vectors (one row per `Decoded.times`). A video any of whose frames failed fails as a whole (RUNTIME).

    When every input fails the same way, `faults.check_systematic` raises (unless not `check`:
    the Ray path leaves that to its store stage).
    """
    from clipsearch.pipeline.faults import RUNTIME, check_systematic
    from clipsearch.pipeline.store import FileResult

    inputs = [x for d in files for x in d.model_inputs]
    vectors, errors = encode_batch(encoder, inputs, spec, batch_size=batch_size)
    if check and errors and all(errors):  # the same fault on every file: the model's, not theirs
        check_systematic([e or "" for e in errors], len(errors))
    results: list[FileResult] = []
    at = 0
    for d in files:
        n = len(d.model_inputs)
        error = next((e for e in errors[at:at + n] if e), None)
        if error:
            results.append(FileResult(d.record, error=error, fault=RUNTIME))
        elif d.times:
            results.append(FileResult(d.record, vectors[at:at + n], d.original_size, d.facts, times=d.times))
        else:
            results.append(FileResult(d.record, vectors[at], d.original_size, d.facts))
        at += n
    return results


__all__ = ["encode_batch", "encode_files", "pixel_spec_of"]
