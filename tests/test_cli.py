"""The `clipsearch` command in-process (fake encoder for rankings), one real-model run, and the import cost."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import FakeEncoder, write_colour_photos

import clipsearch.library
from clipsearch.cli import main


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def fake_load(model: str, pretrained: str | None, device: str | None, *,
                  image_backend: str | None = None) -> FakeEncoder:
        calls.append((model, pretrained, device, image_backend))
        return FakeEncoder(model, pretrained)

    monkeypatch.setattr(clipsearch.library, "_load_encoder", fake_load)
    monkeypatch.setenv("CLIPSEARCH_FAST_PATH", "0")  # a fake model has no exported text tower
    monkeypatch.delenv("CLIPSEARCH_LIBRARY", raising=False)
    return calls


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture, *argv: object):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def indexed(tmp_path: Path, colour_photos: dict[str, str], fake_models: list, capsys) -> Path:
    lib = tmp_path / "lib"
    code, out, err = run(capsys, "-q", "index", tmp_path / "photos", "--library", lib)
    assert code == 0, err
    assert "8 added" in out and "0 skipped" in out
    return lib


def test_index_reports_and_resyncs(tmp_path: Path, indexed: Path, capsys, colour_photos) -> None:
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"nope")
    Path(colour_photos["red"]).unlink()
    report = run_json(capsys, "-q", "index", tmp_path / "photos", "-l", indexed)
    assert (report["added"], report["removed"], report["unchanged"]) == (0, 1, 7)
    assert report["skipped"][0]["path"] == str(tmp_path / "photos" / "broken.jpg")
    code, out, _ = run(capsys, "-q", "index", tmp_path / "photos", "-l", indexed)
    assert code == 0 and "1 still failing" in out
    # Several folders in one command still print one JSON document.
    write_colour_photos(tmp_path / "more", ["red"])
    reports = run_json(capsys, "-q", "index", tmp_path / "photos", tmp_path / "more", "-l", indexed)
    assert [(r["root"], r["added"]) for r in reports] == [(str(tmp_path / "photos"), 0), (str(tmp_path / "more"), 1)]


def test_search_similar_describe_texts_info_rebuild(tmp_path: Path, indexed: Path, capsys,
                                                  colour_photos: dict[str, str], fake_models: list) -> None:
    hits = run_json(capsys, "search", "red", "-l", indexed, "-k", 3)
    assert len(hits) == 3 and hits[0]["path"] == colour_photos["red"]
    assert set(hits[0]) == {"path", "score", "id", "time", "segment", "moments", "taken_at", "place", "camera"}
    assert hits[0]["time"] is None
    # The query is the words joined; arithmetic works through the command line.
    hits = run_json(capsys, "search", "red", "+", "blue", "-l", indexed, "-k", 2)
    assert {h["path"] for h in hits} == {colour_photos["red"], colour_photos["blue"]}
    hits = run_json(capsys, "search", "red", "-l", indexed, "--folder", tmp_path / "photos" / "sub")
    assert {h["path"] for h in hits} == {colour_photos["white"], colour_photos["black"]}
    code, _, err = run(capsys, "search", "red", "-l", indexed, "--min-score", 2)
    assert code == 1 and "min:2.0 is not a cosine score" in err  # a typo for 0.2, not "nothing"
    assert run_json(capsys, "search", "red", "-l", indexed, "--min-score", 1) == []

    code, out, _ = run(capsys, "search", "red", "-l", indexed, "-k", 1)
    assert code == 0 and out.strip().endswith(colour_photos["red"])

    query = write_colour_photos(tmp_path / "q", ["blue"], ext=".png")["blue"]
    assert run_json(capsys, "similar", query, "-l", indexed, "-k", 1)[0]["path"] == colour_photos["blue"]
    hits = run_json(capsys, "similar", colour_photos["blue"], "-l", indexed)
    assert colour_photos["blue"] not in [h["path"] for h in hits] and len(hits) == 7
    red_id = run_json(capsys, "search", "red", "-l", indexed, "-k", 1)[0]["id"]
    hits = run_json(capsys, "similar", f"#{red_id}", "--text", "yellow", "-l", indexed, "-k", 1)
    assert hits[0]["path"] == colour_photos["yellow"]

    captions = tmp_path / "captions.txt"
    captions.write_text("a red photo\na blue photo\n\na green photo\na red photo\n")
    code, out, _ = run(capsys, "texts", "add", captions, "-l", indexed)
    assert code == 0 and out.startswith("3 texts added")
    csv = tmp_path / "labels.csv"
    csv.write_text("id,caption\n1,the sky\n2,a blue photo\n")
    code, out, _ = run(capsys, "texts", "add", csv, "-l", indexed)
    assert out.startswith("1 texts added (4 in the collection)")
    code, out, _ = run(capsys, "texts", "list", "-l", indexed)
    assert out.splitlines() == ["a red photo", "a blue photo", "a green photo", "the sky"]
    texts = run_json(capsys, "describe", colour_photos["green"], "-l", indexed, "-k", 2)
    assert texts[0]["text"] == "a green photo" and len(texts) == 2
    green_id = run_json(capsys, "search", "green", "-l", indexed, "-k", 1)[0]["id"]
    by_id = run_json(capsys, "describe", f"#{green_id}", "-l", indexed, "-k", 1)
    assert by_id[0]["text"] == "a green photo"
    code, out, _ = run(capsys, "texts", "remove", "the sky", "nothing", "-l", indexed)
    assert out.startswith("1 texts removed")

    info = run_json(capsys, "info", "-l", indexed)
    assert (info["images"], info["failed"], info["texts"], info["index_count"]) == (8, 0, 3, 8)
    assert info["model"] == "toyworld" and info["roots"] == [str(tmp_path / "photos")]
    code, out, _ = run(capsys, "info", "-l", indexed)
    assert "8 indexed" in out and "toyworld" in out

    code, out, _ = run(capsys, "rebuild-index", "-l", indexed)
    assert code == 0 and "8 images" in out
    assert run_json(capsys, "search", "red", "-l", indexed, "-k", 1)[0]["path"] == colour_photos["red"]
    # The library remembers its model: one load per command that needs it, always the stored one.
    assert set(fake_models) == {("toyworld", "bundled", None, None)}


def test_the_library_can_come_from_the_environment(tmp_path: Path, indexed: Path, capsys, colour_photos,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSEARCH_LIBRARY", str(indexed))
    assert run_json(capsys, "search", "blue", "-k", 1)[0]["path"] == colour_photos["blue"]


def _assert_error(code: int, err: str, *named: object) -> None:
    assert code == 1
    assert err.startswith("clipsearch: error:")
    for thing in named:
        assert str(thing) in err


def test_errors_exit_1_and_name_what_is_wrong(tmp_path: Path, indexed: Path, capsys, fake_models) -> None:
    missing_lib = tmp_path / "no-library"
    _assert_error(*run(capsys, "search", "red", "-l", missing_lib)[::2], missing_lib)
    assert not missing_lib.exists()
    _assert_error(*run(capsys, "info", "-l", missing_lib)[::2], missing_lib)
    missing_photos = tmp_path / "no-photos"
    _assert_error(*run(capsys, "index", missing_photos, "-l", indexed)[::2], missing_photos)
    missing_file = tmp_path / "no-captions.txt"
    _assert_error(*run(capsys, "texts", "add", missing_file, "-l", indexed)[::2], missing_file)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n")
    _assert_error(*run(capsys, "texts", "add", bad_csv, "-l", indexed)[::2], bad_csv, "caption")
    _assert_error(*run(capsys, "describe", tmp_path / "photos" / "red.jpg", "-l", indexed)[::2], "texts add")
    _assert_error(*run(capsys, "search", "red", "-", "red", "-l", indexed)[::2], "cancel")
    _assert_error(*run(capsys, "similar", tmp_path / "nope.jpg", "-l", indexed)[::2], tmp_path / "nope.jpg")
    _assert_error(*run(capsys, "similar", "#99999", "-l", indexed)[::2], "99999")
    _assert_error(*run(capsys, "search", "red", "-l", indexed, "--model", "ViT-B-32")[::2], "ViT-B-32", "toyworld")
    _assert_error(*run(capsys, "search", "red", "-l", indexed, "-k", 0)[::2], "k must be")
    not_sqlite = tmp_path / "junk-lib"
    not_sqlite.mkdir()
    (not_sqlite / "catalog.sqlite").write_bytes(b"junk" * 1000)
    _assert_error(*run(capsys, "info", "-l", not_sqlite)[::2], not_sqlite / "catalog.sqlite")


def test_no_command_exits_2_with_help(capsys) -> None:
    code, out, _ = run(capsys)
    assert code == 2 and "COMMAND" in out and "search" in out


def test_bad_arguments_exit_2(capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["search", "red", "-k", "many"])
    assert exc.value.code == 2
    assert "-k" in capsys.readouterr().err


def test_help_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "clipsearch", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("index", "search", "similar", "describe", "texts", "info", "rebuild-index"):
        assert command in done.stdout


def test_importing_clipsearch_loads_no_heavy_library() -> None:
    code = ("import sys, clipsearch; heavy = sorted(m for m in ('torch', 'faiss', 'open_clip') if m in sys.modules); "
            "print(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


@pytest.mark.slow
def test_the_whole_sequence_on_a_random_toyworld_model(tmp_path: Path, capsys) -> None:
    photos = write_colour_photos(tmp_path / "photos", ["red", "green", "blue", "yellow"])
    lib = tmp_path / "lib"
    report = run_json(capsys, "-q", "index", tmp_path / "photos", "-l", lib, "--model", "toyworld",
                      "--pretrained", "none", "--device", "cpu")
    assert report["added"] == 4
    hits = run_json(capsys, "search", "a red square", "-l", lib, "-k", 3)
    assert len(hits) == 3 and all(-1.0 <= h["score"] <= 1.0 for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # The random model is seeded, so a photo encoded by a fresh load finds its own indexed vector.
    hits = run_json(capsys, "search", photos["green"], "-l", lib, "-k", 1, "--pretrained", "none")
    assert hits[0]["path"] == photos["green"] and hits[0]["score"] > 0.999
    hits = run_json(capsys, "similar", photos["green"], "-l", lib)
    assert len(hits) == 3 and photos["green"] not in [h["path"] for h in hits]
    text_file = tmp_path / "t.txt"
    text_file.write_text("red\ngreen\n")
    assert run(capsys, "texts", "add", text_file, "-l", lib)[0] == 0
    assert len(run_json(capsys, "describe", photos["blue"], "-l", lib)) == 2
    info = run_json(capsys, "info", "-l", lib)
    assert (info["model"], info["pretrained"], info["dim"], info["images"]) == ("toyworld", None, 256, 4)
    assert run(capsys, "rebuild-index", "-l", lib)[0] == 0
    code, _, err = run(capsys, "search", "red", "-l", lib, "--pretrained", "bundled")
    assert code == 1 and "toyworld/none" in err


def test_index_passes_the_image_backend_to_the_model(tmp_path: Path, colour_photos, fake_models: list,
                                                     capsys) -> None:
    code, _, err = run(capsys, "-q", "index", tmp_path / "photos", "-l", tmp_path / "lib", "--image-backend", "torch")
    assert code == 0, err
    assert [c[3] for c in fake_models] == ["torch"]  # the model the library loads is told; nothing global changes
    code, _, _ = run(capsys, "-q", "search", "red", "-l", tmp_path / "lib")
    assert code == 0 and [c[3] for c in fake_models] == ["torch", None]  # default: $CLIPSEARCH_IMAGE_BACKEND, else auto
    with pytest.raises(SystemExit) as exit_info:
        main(["index", str(tmp_path / "photos"), "-l", str(tmp_path / "lib"), "--image-backend", "tpu"])
    assert exit_info.value.code == 2
    assert "--image-backend" in capsys.readouterr().err


def test_a_new_librarys_index_is_built_and_a_changed_kind_rebuilt(tmp_path: Path, colour_photos: dict[str, str],
                                                                   fake_models: list, capsys) -> None:
    lib = tmp_path / "lib"
    code, out, err = run(capsys, "-q", "index", tmp_path / "photos", "--library", lib)
    assert code == 0, err
    assert "index built: flat" in out and "rebuilt" not in out
    code, out, err = run(capsys, "-q", "index", tmp_path / "photos", "--library", lib, "--index", "hnsw")
    assert code == 0, err
    assert "index rebuilt: hnsw" in out
    code, out, err = run(capsys, "-q", "index", tmp_path / "photos", "--library", lib)
    assert code == 0 and "built" not in out  # nothing changed: nothing said about the index


def test_date_order_that_keeps_nothing_says_the_querys_cutoff(indexed: Path, capsys) -> None:
    """No photo passes `min:auto`: the CLI says so on stderr, with the cutoff search applied, and how to see more."""
    code, out, err = run(capsys, "search", "nothing at all sort:date", "-l", indexed)
    assert code == 0 and out == "" and "no results" in err
    with clipsearch.library.Library.open(indexed) as lib:
        cutoff = lib.searcher.relevance_cutoff("nothing at all")
        assert lib.search("nothing at all", k=1)[0].score < cutoff  # nothing reached it
    assert f"min:auto = {cutoff:.3f}" in err and "min:0.3" in err
    code, out, err = run(capsys, "search", "red sort:date", "-l", indexed)
    assert code == 0 and "red" in out and "min:auto" not in err
