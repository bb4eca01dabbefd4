"""The text collection's inputs: labels typed in a box, caption files, and their clean-up, read in one place.

The CLI (`clipsearch texts add`), the web UI's labels box, the HTTP API and
`Library.add_texts` all go through these, so a label means the same wherever it is typed.
"""
from __future__ import annotations

import csv
import re
import sys
from pathlib import Path
from typing import Iterable

from clipsearch.errors import ClipSearchError

# The columns of a CSV file that hold texts, in order of preference.
TEXT_COLUMNS = ("title", "caption", "text", "label")


def clean_texts(texts: Iterable[str | None]) -> list[str]:
    """Texts stripped, without empty ones and duplicates, in their first order."""
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def parse_labels(text: str | None) -> list[str]:
    """Labels typed as a comma- or line-separated list ("a dog, a cat"), stripped, without duplicates."""
    return clean_texts(re.split(r"[,\n]", text or ""))


def read_texts(source: str) -> list[str]:
    """The texts of a file: one per line, or a CSV's title/caption/text/label column; "-" reads stdin.

    ClipSearchError names the file when it is missing or a CSV has none of those columns.
    """
    if source == "-":
        return sys.stdin.read().splitlines()
    path = Path(source)
    if not path.is_file():
        raise ClipSearchError(f"text file {source} does not exist; give a file with one caption or label per line")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            column = next((c for c in TEXT_COLUMNS if c in (reader.fieldnames or [])), None)
            if column is None:
                raise ClipSearchError(f"{source} has no {', '.join(TEXT_COLUMNS[:-1])} or {TEXT_COLUMNS[-1]} column")
            return [row[column] for row in reader]
    return path.read_text(encoding="utf-8").splitlines()


__all__ = ["TEXT_COLUMNS", "clean_texts", "parse_labels", "read_texts"]
