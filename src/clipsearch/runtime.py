"""Process-wide settings for the native runtimes clipsearch loads, made once where a process starts.

Library code never writes the environment: importing clipsearch changes nothing. The
`clipsearch` command (`clipsearch.cli.main`) and the web UI's `serve` call
`configure_process()` before anything loads torch or faiss; a program that uses the
Python API and searches in a loop should call it first thing too.
"""
from __future__ import annotations

import os

# faiss and torch each bring their own OpenMP runtime, and by default an idle OpenMP
# thread spins for a while before it sleeps. In one process that encodes a query (torch)
# and then searches (faiss), each pool's spinning threads take the cores the other needs:
# on 2 cores a ViT-B-32 text query took 720 ms at p50 instead of 80 ms
# (docs/performance.md, "Query latency"). Sleeping waits cost microseconds per call.
PROCESS_DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def configure_process() -> dict[str, str]:
    """Set PROCESS_DEFAULTS in the environment where the user has not set them; returns what is in force.

    Both OpenMP runtimes read OMP_WAIT_POLICY when they load, so call this before torch or
    faiss is imported; later it changes nothing. A value the user set is kept.
    """
    for key, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in PROCESS_DEFAULTS}


__all__ = ["PROCESS_DEFAULTS", "configure_process"]
