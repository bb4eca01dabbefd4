"""The demo (README quick start 1): a generated collection indexed with the bundled model, searchable, served."""
from __future__ import annotations

import csv
import socket
from pathlib import Path

import pytest

from clipsearch.cli import main
from clipsearch.demo import EXAMPLE_QUERIES, prepare_demo
from clipsearch.library import Library


def _canonicals(photos: Path) -> dict[str, str]:
    out = {}
    for captions in photos.glob("*/captions.csv"):
        with captions.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                out[str((captions.parent / row["filepath"]).resolve())] = row["canonical"]
    return out


def test_the_demo_indexes_its_collection_once_and_finds_scenes_by_their_description(tmp_path: Path) -> None:
    setup = prepare_demo(tmp_path / "demo", n=60, workers=1, clips=2)
    canonical = _canonicals(setup.photos)
    assert len(canonical) == 60  # 40 of seen combinations, 20 of held-out ones
    assert sorted(p.name for p in setup.photos.iterdir()) == ["held-out", "seen", "videos", "videos.csv"]
    assert (setup.report.added, setup.report.skipped) == (62, [])  # and two clips
    assert setup.texts_added == len(set(canonical.values()))

    again = prepare_demo(tmp_path / "demo", n=60, workers=1, clips=2)  # nothing generated or encoded twice
    assert (again.report.added, again.report.unchanged, again.texts_added) == (0, 62, 0)

    with Library.open(setup.library, create=False) as lib:
        assert lib.info().model == "toyworld"
        # Text -> image: a scene's own description finds a scene described so, in the top 3.
        found = 0
        for path, description in sorted(canonical.items())[:20]:
            top = [canonical.get(str(Path(h.path).resolve())) for h in lib.search(description, k=3)]
            found += description in top
        assert found >= 17, f"only {found} of 20 descriptions found their scene in the top 3"
        # Image -> text over the loaded captions: a photo's own description is among its top 3.
        path, description = sorted(canonical.items())[0]
        assert description in [t.text for t in lib.describe(path, k=3)]
        # A clip's scene finds the clip, at that moment.
        with (setup.photos / "videos.csv").open(newline="", encoding="utf-8") as fh:
            segment = next(csv.DictReader(fh))
        hit = lib.search(segment["canonical"], k=1)[0]
        assert hit.path == str(setup.photos / segment["filepath"])
        assert hit.segment[0] < float(segment["end"]) and hit.segment[1] > float(segment["start"])


def test_demo_no_serve_prints_the_example_searches(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--no-serve", "--n", "30", "--workers", "1", "--data", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "38 added" in out  # 30 photos and the demo's 8 clips
    for query in EXAMPLE_QUERIES:
        block = out.split(f"search: {query}\n", 1)[1].split("\n\n", 1)[0]
        assert len(block.splitlines()) == 3 and all(str(tmp_path / "d" / "photos") in line for line in block.splitlines())


def test_demo_prints_the_address_it_really_serves_on(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gradio")
    import clipsearch_ui

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = []
    real_serve = clipsearch_ui.serve

    def serve_and_stop(lib, **kwargs):  # the real server, not left blocking
        app = real_serve(lib, **{**kwargs, "block": False})
        served.append(app.local_url)
        app.close()
        return app

    monkeypatch.setattr(clipsearch_ui, "serve", serve_and_stop)
    # serve() points Gradio's process-wide temp folder into the library unless one is set:
    # set one, so that it is unset again afterwards for the other UI tests.
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    assert main(["demo", "--n", "6", "--workers", "1", "--data", str(tmp_path / "d"),
                 "--port", str(port), "--no-browser"]) == 0
    assert served and f":{port}" in served[0]
    assert f"serving the web UI on {served[0]}" in capsys.readouterr().out
