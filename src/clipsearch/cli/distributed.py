"""`--ray [ADDRESS]` for `clipsearch index` and `clipsearch rebuild-index`: the same commands, run on a Ray cluster.

Nothing here imports Ray; `clipsearch.distributed` does, when a command asks for it.
"""
from __future__ import annotations

import argparse
import json
import os


def add_ray_args(p: argparse.ArgumentParser, *, embedding: bool = True) -> None:
    """The flags that move a command onto Ray (docs/scale-out.md)."""
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray (pip install 'clipsearch[distributed]'): without ADDRESS, a Ray instance on "
                        "this machine (or $RAY_ADDRESS); 'auto' for the cluster started here with `ray start`; or "
                        "HOST:PORT. Put it after the photo folders, or write --ray=ADDRESS")
    p.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="embedding workers (default: one per GPU, else one per CPU of the cluster)")
    if embedding:
        p.add_argument("--ray-worker-cpus", type=float, default=1.0, metavar="N",
                       help="CPUs each embedding worker reserves and decodes with (default 1)")
        p.add_argument("--shard-rows", type=int, default=None, metavar="N",
                       help="files per result shard (default 4096): a run that dies resumes at this granularity")


def _options(args: argparse.Namespace) -> "object":
    from clipsearch.distributed import DEFAULT_SHARD_ROWS, RayOptions

    return RayOptions(address=args.ray or None, workers=args.ray_workers,
                      cpus_per_worker=getattr(args, "ray_worker_cpus", 1.0),
                      shard_rows=getattr(args, "shard_rows", None) or DEFAULT_SHARD_ROWS)


def cmd_index_ray(args: argparse.Namespace) -> int:
    """`clipsearch index PHOTOS --ray`: prints what `clipsearch index` prints."""
    from clipsearch.cli.common import index_line, open_library, print_index_report, run_status
    from clipsearch.distributed import EncoderSpec, index_on_ray
    from clipsearch.encoder import IMAGE_BACKEND_ENV

    options = _options(args)
    with open_library(args, create=True) as lib:
        before = lib.vector_index
        encoder = EncoderSpec(lib.model, lib.pretrained, getattr(args, "device", None),
                              image_backend=args.image_backend or os.environ.get(IMAGE_BACKEND_ENV))
        reports = []
        status = 0
        for root in args.photos:
            report = index_on_ray(lib, root, encoder=encoder, options=options, progress=not args.quiet, wait=args.wait,
                                  allow_empty=args.allow_empty, exclude=args.exclude, index_kind=args.index,
                                  max_memory=args.max_memory, retry_failed=args.retry_failed)
            status = max(status, run_status(report))
            if args.json:
                reports.append(report.to_dict())
                continue
            print_index_report(report, args.show_skipped)
        if args.json:
            print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=1))
        elif lib.vector_index is not before:
            # A new library's first index is built, not rebuilt.
            print(f"index {'rebuilt' if before.ntotal else 'built'}: {index_line(lib)}")
    return status


def cmd_rebuild_ray(args: argparse.Namespace) -> int:
    """`clipsearch rebuild-index --ray`."""
    from clipsearch.cli.common import index_line, open_library
    from clipsearch.distributed import rebuild_index_on_ray

    with open_library(args) as lib:
        count = rebuild_index_on_ray(lib, options=_options(args), index_kind=args.index, max_memory=args.max_memory,
                                     wait=args.wait)
        print(f"index rebuilt from stored vectors on Ray: {count} images")
        print(f"index:     {index_line(lib)}")
    return 0
