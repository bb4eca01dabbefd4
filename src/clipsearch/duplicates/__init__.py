"""Duplicates and near-duplicates: copies of one picture apart from shots of one moment.

    groups = lib.duplicates(level="copies")      # or "moments"
    for g in groups:
        print(g.keep, [m.path for m in g.others])

* `groups`: the pipeline (candidates → a decision per pair → groups → keeper);
* `pixels`: the pixel evidence (DCT hash, alignment, residual blocks) and the rule;
* `candidates`: CLIP neighbours and hash buckets (never all pairs);
* `facts`: per-photo facts (hash, sharpness, format, metadata, capture time) and their cache;
* `moves`: moving the others to a folder with a journal, and undoing it.

Nothing here imports torch: it reads stored vectors.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Names resolve on first use (PEP 562): opening a library imports `facts` for its catalog
# columns, and a query should not pay for the grouping code too.
_WHERE = {
    "facts": ("PHASH_READER", "FactsCache", "PhashReader", "PhotoFacts"),
    "groups": ("LEVELS", "DuplicateGroup", "DuplicateMember", "DuplicateOptions", "DuplicateReport", "DuplicatesError",
               "PairDecision", "choose_keeper", "decide", "find_all_duplicates", "find_duplicates", "group_pairs"),
    "pixels": ("PairEvidence", "Signature", "compare", "dct_hash", "load_signature", "rotate_hash"),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}

if TYPE_CHECKING:
    from clipsearch.duplicates.facts import PHASH_READER, FactsCache, PhashReader, PhotoFacts
    from clipsearch.duplicates.groups import (
        LEVELS, DuplicateGroup, DuplicateMember, DuplicateOptions, DuplicateReport, DuplicatesError, PairDecision,
        choose_keeper, decide, find_all_duplicates, find_duplicates, group_pairs,
    )
    from clipsearch.duplicates.pixels import PairEvidence, Signature, compare, dct_hash, load_signature, rotate_hash


def __getattr__(name: str) -> Any:
    module = _MODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "LEVELS", "PHASH_READER", "DuplicateGroup", "DuplicateMember", "DuplicateOptions", "DuplicateReport",
    "DuplicatesError", "FactsCache", "PairDecision", "PairEvidence", "PhashReader", "PhotoFacts", "Signature",
    "choose_keeper", "compare", "dct_hash", "decide", "find_all_duplicates", "find_duplicates", "group_pairs", "load_signature",
    "rotate_hash",
]
