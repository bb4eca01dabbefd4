"""The demo: a sample toy-world photo collection, indexed with the bundled model.

`prepare_demo` is idempotent: photos are generated once, and re-running only re-syncs
the index (nothing is re-encoded).
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from clipsearch.indexer import IndexReport
from clipsearch.library import Library

log = logging.getLogger(__name__)

# (folder name, split, count share, seed): a folder of seen combinations and one of
# held-out ones, so the folder filter and composition both have something to show.
_PARTS = (("seen", "seen", 2 / 3, 101), ("held-out", "test", 1 / 3, 202))

# A few short clips whose scenes change at known times: video results show the moment.
DEMO_CLIPS = 8

EXAMPLE_QUERIES = (
    "a red car on a road at night",
    "a red car on a road at night - night + day",
    "a red car at night - red + blue",
    "a blue car on a road",
    # With the photos' metadata (capture time, place, camera: see docs/metadata.md).
    "a red car on a road at night after:2020",
    "a boat at sea camera:pixel|iphone",
)


@dataclass(frozen=True)
class DemoSetup:
    """Where the demo's pieces are and what indexing them did."""

    photos: Path
    library: Path
    report: IndexReport
    texts_added: int


def _generated(folder: Path, n: int) -> bool:
    csv_path = folder / "captions.csv"
    if not csv_path.is_file():
        return False
    with csv_path.open(newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.DictReader(fh)) == n


def prepare_demo(data_dir: str | Path = "data/demo", n: int = 3000, *, model: str = "toyworld",
                 pretrained: str | None = "bundled", progress: bool = False,
                 workers: int | None = None, clips: int = DEMO_CLIPS) -> DemoSetup:
    """Generate (once) `n` toy-world photos and `clips` short video clips under `data_dir/photos`,
    index them into `data_dir/library` and load the photos' canonical captions as the text collection."""
    from clipsearch import toyworld

    data_dir = Path(data_dir)
    photos = data_dir / "photos"
    canonicals: list[str] = []
    for name, split, share, seed in _PARTS:
        folder = photos / name
        count = max(1, round(n * share))
        if not _generated(folder, count):
            log.info("generating %d %s toy-world photos in %s", count, split, folder)
            toyworld.generate(folder, count, split=split, seed=seed, workers=workers, progress=progress)
        with (folder / "captions.csv").open(newline="", encoding="utf-8") as fh:
            canonicals.extend(row["canonical"] for row in csv.DictReader(fh))
    if clips and not (photos / "videos.csv").is_file():  # the clips go to photos/videos/
        from clipsearch.toyworld_video import generate_videos

        log.info("generating %d toy-world video clips in %s", clips, photos / "videos")
        generate_videos(photos, clips, seed=303)
    library_dir = data_dir / "library"
    with Library.open(library_dir, model=model, pretrained=pretrained) as lib:
        report = lib.index(photos, progress=progress)
        added = lib.add_texts(sorted(set(canonicals)))
    return DemoSetup(photos=photos, library=library_dir, report=report, texts_added=added)
