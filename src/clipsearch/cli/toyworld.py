"""`clipsearch toyworld ...`: draw the synthetic captioned world the bundled model learns from."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, Iterator


class _Deferred:
    """A constant of `clipsearch.toyworld`, imported when argparse first reads it.

    Building the `clipsearch` parser registers every command; importing the generator
    (its patterns and drawing code) there would cost every command, a query included,
    about 0.05 s.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def value(self) -> Any:
        from clipsearch import toyworld

        return getattr(toyworld, self.name)

    def __contains__(self, item: object) -> bool:
        return item in self.value()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.value())

    def __str__(self) -> str:
        return str(self.value())


def _at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _jpeg_quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 1 to 100, got {value}")
    return value


def register(subparsers: Any) -> None:
    """Add `toyworld generate` to the `clipsearch` command."""
    parser = subparsers.add_parser(
        "toyworld", help="generate the synthetic captioned image world",
        description="Generate the synthetic captioned image world (see data/README.md).")
    sub = parser.add_subparsers(dest="toyworld_command", metavar="COMMAND", required=True)

    gen = sub.add_parser(
        "generate", help="draw N captioned images and their captions.csv",
        description="Draw N captioned images into OUT/images/ and write OUT/captions.csv "
                    "(open_clip csv format: filepath, title, canonical).")
    gen.add_argument("out", metavar="OUT", help="output folder, e.g. data/toyworld-train")
    gen.add_argument("--n", type=_at_least(1), default=None, help="number of images (required unless --videos)")
    gen.add_argument("--videos", type=_at_least(0), default=0, metavar="N",
                     help="also write N short clips whose scenes change at known times into OUT/videos/ "
                          "and OUT/videos.csv (start, end, caption per segment)")
    gen.add_argument("--split", choices=_Deferred("SPLITS"), default="train", metavar="SPLIT",
                     help="train: no held-out combination; test: each image has one; "
                          "seen: a fresh sample of seen combinations (default: train)")
    gen.add_argument("--seed", type=_at_least(0), default=0, help="random seed (default: 0)")
    gen.add_argument("--size", type=_at_least(32), default=256, help="image side in pixels (default: 256)")
    gen.add_argument("--workers", type=_at_least(1), default=None, help="processes (default: all CPUs)")
    gen.add_argument("--world", choices=_Deferred("WORLDS"), default="base", metavar="WORLD",
                     help="base: the bundled model's world (default); ext: every scene shows a word the bundled "
                          "model never saw (objects star/kite/balloon, colours pink/brown, setting beach)")
    gen.add_argument("--quality", type=_jpeg_quality, default=_Deferred("JPEG_QUALITY"),
                     help="JPEG quality 1-100 (default: %(default)s)")
    variants = gen.add_mutually_exclusive_group()
    variants.add_argument("--variants", dest="variants", action="store_true", default=None,
                          help="include variant groups (default for test and seen)")
    variants.add_argument("--no-variants", dest="variants", action="store_false",
                          help="no variant groups (default for train)")
    gen.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    if args.n is None and not args.videos:
        print("clipsearch toyworld generate: error: give --n IMAGES, --videos CLIPS, or both", file=sys.stderr)
        return 2
    if args.videos:
        from clipsearch.toyworld_video import generate_videos

        start = time.perf_counter()
        video_csv = generate_videos(args.out, args.videos, seed=args.seed,
                                    split="test" if args.split == "test" else "seen")
        print(f"wrote {args.videos} clips and {video_csv} in {time.perf_counter() - start:.1f} s")
    if not args.n:
        return 0
    from clipsearch import toyworld

    quality = args.quality.value() if isinstance(args.quality, _Deferred) else args.quality
    start = time.perf_counter()
    csv_path = toyworld.generate(
        args.out, args.n, split=args.split, seed=args.seed, size=args.size, workers=args.workers,
        variants=args.variants, progress=logging.getLogger().getEffectiveLevel() <= logging.WARNING,
        world=args.world, quality=quality)
    seconds = time.perf_counter() - start
    world = "" if args.world == "base" else f" {args.world}-world"
    print(f"wrote {args.n}{world} {args.split} images and {csv_path} "
          f"in {seconds:.1f} s ({args.n / seconds:.0f} images/s)")
    return 0
