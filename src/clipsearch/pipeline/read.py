"""Stage 2, read: one file to the model's input (pixels or a PIL image) plus its per-file facts.

Runs in a decode worker of either executor (the single-machine indexer's process pool,
a Ray actor's thread pool), so everything here is a module-level function of picklable
arguments. A file that cannot be read costs that file only: the reason is returned,
never raised.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from clipsearch.errors import ImageLoadError
from clipsearch.facts import FactReader, read_facts
from clipsearch.images import PixelSpec, load_image, to_pixels
from clipsearch.pipeline.faults import FILE, READ, RUNTIME
from clipsearch.scan import FileRecord
from clipsearch.video import VideoLimits, is_video, sample_frames

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    """One file, read: model pixels (pixel path) or an image (PIL path), its facts, or why not."""

    record: FileRecord
    image: "Image.Image | None" = None
    pixels: np.ndarray | None = None
    original_size: tuple[int, int] | None = None
    error: str | None = None
    fault: str = FILE  # whose fault the error is (clipsearch.pipeline.faults)
    facts: Mapping[str, Any] = field(default_factory=dict)
    # A video: its sampled frames' times and model inputs (pixels when a spec is given, else
    # images), one each; `pixels`/`image` stay None.
    times: tuple[float, ...] = ()
    frames: tuple[Any, ...] = ()

    @property
    def retry(self) -> bool:
        """Whether the failure is not the file's own: not stored, tried again next run."""
        return self.error is not None and self.fault != FILE

    @property
    def model_input(self) -> Any:
        """What the encode stage takes: the pixels when there are, else the image."""
        return self.pixels if self.pixels is not None else self.image

    @property
    def model_inputs(self) -> list[Any]:
        """Every input the file contributes to the encode stage: one for a photo, one per sampled frame for a video."""
        return list(self.frames) if self.times else [self.model_input]


def read_file(record: FileRecord, target_size: int | None, spec: PixelSpec | None,
              readers: Sequence[FactReader] = ()) -> Decoded:
    """Runs in a decode worker: the file as model pixels (when `spec` is given) or as an image, and its facts.

    A video (`clipsearch.video.is_video`) gives its sampled frames instead (`Decoded.times`, `.frames`).
    """
    if is_video(record.path):
        return read_video(record, target_size, spec, readers)
    try:
        image = load_image(record.path, target_size=target_size)
    except ImageLoadError as exc:
        return Decoded(record, error=exc.reason, fault=READ if exc.transient else FILE)
    except Exception as exc:  # a loader bug must cost one file, not the run, and is not the file's fault
        log.warning("unexpected error decoding %s", record.path, exc_info=True)
        return Decoded(record, error=f"unexpected error: {exc}", fault=RUNTIME)
    original_size = image.info.get("original_size")
    read = image.info.get("file_stat")
    if read is not None and read != (record.size, record.mtime_ns):
        # Changed since the scan: the catalog must record the version decoded, not the one scanned.
        record = FileRecord(record.path, *read)
    facts = read_facts(readers, record.path, image) if readers else {}
    if spec is None:
        return Decoded(record, image=image, original_size=original_size, facts=facts)
    try:
        return Decoded(record, pixels=to_pixels(image, spec), original_size=original_size, facts=facts)
    except Exception as exc:  # as encode_images would have failed on it in the model's preprocess
        return Decoded(record, error=f"could not encode: {exc}", fault=RUNTIME)


def read_video(record: FileRecord, target_size: int | None, spec: PixelSpec | None,
               readers: Sequence[FactReader] = (), limits: VideoLimits | None = None) -> Decoded:
    """Runs in a decode worker: a video's sampled frames (`clipsearch.video.sample_frames`) as model inputs.

    The facts come from the readers with the first frame as the image; the video's own
    capture time and duration are added where a reader declares those columns.
    """
    try:
        info, frames = sample_frames(record.path, limits or VideoLimits(), target_size=target_size)
    except ImageLoadError as exc:
        return Decoded(record, error=exc.reason, fault=READ if exc.transient else FILE)
    except Exception as exc:  # a decoder bug must cost one file, not the run
        log.warning("unexpected error decoding video %s", record.path, exc_info=True)
        return Decoded(record, error=f"unexpected error: {exc}", fault=RUNTIME)
    if info.truncated:
        log.warning("%s: %s; indexed %d frames up to there", record.path, info.truncated, len(frames))
    try:
        inputs = tuple(to_pixels(f.image, spec) if spec is not None else f.image for f in frames)
    except Exception as exc:
        return Decoded(record, error=f"could not encode: {exc}", fault=RUNTIME)
    facts = read_facts(readers, record.path, frames[0].image) if readers else {}
    return Decoded(record, original_size=(info.width, info.height), facts=facts,
                   times=tuple(f.time for f in frames), frames=inputs)


def read_facts_only(record: FileRecord, target_size: int | None, spec: PixelSpec | None,
                    readers: Sequence[FactReader] = ()) -> Decoded:
    """Runs in a decode worker for a back-fill: the file's facts only (no pixels), the image decoded for the readers.

    A file that cannot be decoded still gets the facts its readers can read without an
    image; one that changed since `record` was taken is left alone (an error), for the
    next sync to index again.
    """
    try:
        image = load_image(record.path, target_size=target_size)
    except Exception:  # the readers get no image; the file's fate is the next sync's business
        image = None
    if image is not None and image.info.get("file_stat", (record.size, record.mtime_ns)) != (record.size,
                                                                                           record.mtime_ns):
        return Decoded(record, error="changed since it was indexed", fault=READ)
    return Decoded(record, facts=read_facts(readers, record.path, image))


__all__ = ["Decoded", "read_facts_only", "read_file", "read_video"]
