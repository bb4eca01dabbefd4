"""clipsearch: search your photos by text, by image and by arithmetic on meaning.

Importing this package is cheap: no model, index or network is touched until you ask.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipsearch.errors import (
    CatalogError,
    ClipSearchError,
    ConceptError,
    ConceptExistsError,
    DatasetError,
    ImageLoadError,
    IndexFileError,
    IndexingError,
    LibraryLockedError,
    ModelError,
    ModelMismatchError,
    PhotoRootError,
    QueryError,
    SchemaVersionError,
    TrainingError,
    WeightsUnavailableError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from clipsearch.concepts import Concept
    from clipsearch.library import Library
    from clipsearch.search import Hit, TextHit

__all__ = [
    "Library", "Hit", "TextHit", "ClipSearchError", "CatalogError", "ImageLoadError",
    "IndexFileError", "IndexingError", "LibraryLockedError", "ModelError", "ModelMismatchError",
    "PhotoRootError", "QueryError", "SchemaVersionError", "WeightsUnavailableError", "DatasetError", "TrainingError",
    "ConceptError", "ConceptExistsError", "Concept",
]


def __getattr__(name: str) -> Any:
    # Lazy so that `import clipsearch` does not import torch, faiss or open_clip.
    if name == "Library":
        from clipsearch.library import Library
        return Library
    if name == "Concept":
        from clipsearch.concepts import Concept
        return Concept
    if name in ("Hit", "TextHit"):
        from clipsearch import search
        return getattr(search, name)
    raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
