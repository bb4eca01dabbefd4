"""`clipsearch watch` as a real process for tests/test_watch.py, with the colour fake encoder.

    python watch_helper.py WATCH-ARGS...

Runs the command's own entry point (argument parsing, signals, printing) with the model
loader replaced by the fake, so a test can start, kill and restart it in a second.
Prints "model loaded" on stderr when the fake model is loaded, and "encoded N" after
each batch; $WATCH_HELPER_DELAY seconds of sleep per batch make a sync slow enough to
stop in the middle.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fakes import FakeEncoder  # noqa: E402

import clipsearch.library  # noqa: E402
from clipsearch.cli import main  # noqa: E402


class SlowEncoder(FakeEncoder):
    def encode_images(self, images, batch_size=64):  # type: ignore[no-untyped-def]
        time.sleep(float(os.environ.get("WATCH_HELPER_DELAY", "0")))
        out = super().encode_images(images, batch_size)
        print(f"encoded {self.images_encoded}", file=sys.stderr, flush=True)
        return out


def fake_load(model: str, pretrained: str | None, device: str | None, *, image_backend: str | None = None
              ) -> FakeEncoder:
    print("model loaded", file=sys.stderr, flush=True)
    return SlowEncoder(model, pretrained)


if __name__ == "__main__":
    clipsearch.library._load_encoder = fake_load  # type: ignore[assignment]
    sys.exit(main(sys.argv[1:]))
