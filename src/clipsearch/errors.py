"""The project's exceptions: one base class, one subclass per thing that can go wrong."""
from __future__ import annotations


class ClipSearchError(Exception):
    """Base class of every error clipsearch raises on purpose."""


class ModelError(ClipSearchError):
    """A model name, pretrained tag or checkpoint could not be used."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights are neither cached locally nor downloadable."""


class ModelMismatchError(ClipSearchError):
    """A library was opened with a different model than the one it was built with."""


class ImageLoadError(ClipSearchError):
    """A file could not be decoded into an RGB image; `path` and `reason` say which and why.

    `transient`: the fault is not the file's bytes (it could not be read just now: gone,
    permissions, an I/O error, out of memory, changed while read), so an indexer tries it
    again next run instead of remembering it as failed.
    """

    def __init__(self, path: object, reason: str, *, transient: bool = False) -> None:
        self.path = str(path)
        self.reason = reason
        self.transient = transient
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple:
        return _image_load_error, (self.path, self.reason, self.transient)


def _image_load_error(path: str, reason: str, transient: bool) -> ImageLoadError:
    return ImageLoadError(path, reason, transient=transient)


class CatalogError(ClipSearchError):
    """The library's SQLite catalog is unusable."""


class SchemaVersionError(CatalogError):
    """The catalog was written by a newer clipsearch."""


class IndexFileError(ClipSearchError):
    """A FAISS index file is missing, damaged or inconsistent with the catalog."""


class QueryError(ClipSearchError):
    """A search query could not be parsed or has nothing to search with."""


class PhotoRootError(ClipSearchError):
    """A folder to index is missing, unreadable or suspiciously empty."""


class LibraryLockedError(ClipSearchError):
    """Another process is already writing to this library."""


class DatasetError(ClipSearchError):
    """A captions csv is missing, malformed or names images that do not exist."""


class TrainingError(ClipSearchError):
    """A training run cannot start or continue as asked."""


class IndexingError(ClipSearchError):
    """An indexing run stopped: every file of a batch failed the same way, for a reason not their own."""


class ConceptError(QueryError):
    """A personal concept cannot be made, found or used (bad name, no examples, made with another model)."""


class ConceptExistsError(ConceptError):
    """A concept of that name exists and was not to be replaced."""
