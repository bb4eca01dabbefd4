"""Decode functions for worker processes that fail on marked files, as real decoders and machines do.

They live in a module of their own so that a decode worker can import them by name.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

from clipsearch.pipeline import read_file


def killed_on_marked(record, target_size, spec, readers=()):
    """SIGKILL, as the OOM killer or a user would, while on a file named *kill*."""
    if "kill" in os.path.basename(record.path):
        os.kill(os.getpid(), signal.SIGKILL)
    return read_file(record, target_size, spec, readers)


def crashes_once_on_marked(record, target_size, spec, readers=()):
    """A SIGSEGV on the first try of a file named *flaky* (a marker file remembers the try), then fine."""
    if "flaky" in os.path.basename(record.path):
        marker = Path(record.path + ".crashed")
        if not marker.exists():
            marker.write_text("once")
            os.kill(os.getpid(), signal.SIGSEGV)
    return read_file(record, target_size, spec, readers)


def slow_on_marked(record, target_size, spec, readers=()):
    """Hangs on a file named *slow* (a decoder stuck in a loop)."""
    if "slow" in os.path.basename(record.path):
        import time

        time.sleep(600)
    return read_file(record, target_size, spec, readers)
