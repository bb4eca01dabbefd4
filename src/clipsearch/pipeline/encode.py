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

log = logging.getLogger(__name__)


def pixel_spec_of(encoder: "Encoder") -> PixelSpec | None:
    """The encoder's pixel spec when it encodes model pixels directly (the read stage makes them), else None."""
    spec = getattr(encoder, "pixel_spec", None)
    return spec if isinstance(spec, PixelSpec) and callable(getattr(encoder, "encode_pixels", None)) else None


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
            return encoder.encode_pixels(np.stack(items))
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


__all__ = ["encode_batch", "pixel_spec_of"]
