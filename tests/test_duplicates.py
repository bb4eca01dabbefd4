"""Duplicates: the pixel rule, candidates against brute force, keepers, the library and CLI, moves and undo."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch import toyworld as tw
from clipsearch.duplicates import (
    DuplicateGroup, DuplicatesError, PhotoFacts, choose_keeper, compare, dct_hash, group_pairs, rotate_hash,
)
from clipsearch.duplicates.candidates import clip_pairs, hash_pairs
from clipsearch.duplicates.pixels import signature_of_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import duplicates_set  # noqa: E402


def _sig(img: Image.Image):
    return signature_of_image(img.convert("RGB"))


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return duplicates_set.textured_photo(np.random.default_rng(3), (320, 240))


@pytest.fixture(scope="module")
def scene() -> tw.Scene:
    return tw.Scene(obj="car", colour="red", setting="road", time="day", relation="left of", obj2="tree",
                    colour2="green")


def test_rotating_a_hash_is_hashing_the_rotated_picture(photo: Image.Image) -> None:
    grey = np.asarray(photo.convert("L"), np.float32)
    for k in range(4):
        turned = dct_hash(np.ascontiguousarray(np.rot90(grey, k)))
        assert bin(turned ^ rotate_hash(dct_hash(grey), 90 * k)).count("1") <= 2


@pytest.mark.parametrize("name", ["resize_50", "jpeg_q30", "crop", "rotate_90", "exposure", "colour", "caption"])
def test_copy_transformations_are_copies(photo: Image.Image, name: str) -> None:
    import io

    out, fmt, kw = duplicates_set.TRANSFORMS[name](photo, np.random.default_rng(0))
    buf = io.BytesIO()
    out.save(buf, format=fmt, **kw)
    copy = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    ev = compare(_sig(photo), _sig(copy))
    assert ev.level == "copy", ev
    if name == "rotate_90":
        assert ev.rotation == 270


def test_a_burst_is_a_moment_and_the_same_caption_drawn_again_is_nothing(scene: tw.Scene) -> None:
    shots = tw.render_series(scene, np.random.default_rng(11), 2, 256, motion=0.06)
    ev = compare(_sig(shots[0]), _sig(shots[1]))
    assert ev.level == "moment", ev
    again = tw.render(scene, np.random.default_rng(12), 256)
    assert compare(_sig(shots[0]), _sig(again)).level is None


def test_the_rule_tells_a_moment_by_what_moved_and_what_stayed() -> None:
    from clipsearch.duplicates.pixels import rule

    assert rule(0.95, 0.9, 0, 0.05)[0] == "copy"
    assert rule(0.8, 0.2, 20, 0.5)[0] == "moment"           # much moved, the rest mostly there
    assert rule(0.8, 0.5, 8, 0.2)[0] == "moment"            # a little moved, nothing else changed
    # A little moved and a good deal changed: one drawing only when a third of it is untouched
    # (a scene drawn again never leaves that much unchanged to the noise).
    assert rule(0.85, 0.40, 12, 0.43)[0] == "moment"
    assert rule(0.85, 0.14, 12, 0.43)[0] is None
    assert rule(0.5, 0.5, 20, 0.3)[0] is None               # not one view
    assert rule(0.8, 0.0, 3, 0.9) == (None, "different content")


def test_render_series_first_shot_is_render(scene: tw.Scene) -> None:
    shots = tw.render_series(scene, np.random.default_rng(5), 3, 128)
    assert np.array_equal(np.asarray(shots[0]), np.asarray(tw.render(scene, np.random.default_rng(5), 128)))
    assert not np.array_equal(np.asarray(shots[0]), np.asarray(shots[1]))
    assert [s.size for s in tw.render_series(scene, np.random.default_rng(5), 2, 128, reframe=0.02)] == [(128, 128)] * 2
    with pytest.raises(ValueError, match="n must be"):
        tw.render_series(scene, np.random.default_rng(5), 0)


def test_clip_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 24)).astype(np.float32)
    x[100:110] = x[100] + 0.05 * rng.standard_normal((10, 24))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs, sims = clip_pairs(x, k=20, min_similarity=0.9)
    s = x @ x.T
    i, j = np.nonzero(np.triu(s >= 0.9, 1))
    assert {tuple(p) for p in pairs.tolist()} == set(zip(i.tolist(), j.tolist()))
    assert np.allclose(sims, s[pairs[:, 0], pairs[:, 1]], atol=1e-5)


def test_clip_pairs_cluster_join_finds_the_near_copies_of_brute_force() -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((30, 32)).astype(np.float32)
    x = centres[rng.integers(0, 30, 3000)] + 0.6 * rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src, dst = rng.choice(3000, 200, replace=False).reshape(2, 100)
    x[dst] = x[src] + 0.05 * rng.standard_normal((100, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs, sims = clip_pairs(x, k=4, min_similarity=0.9, flat_max=500)     # 3000 rows: the cluster join
    assert pairs.dtype == np.int32 and np.all(pairs[:, 0] < pairs[:, 1])
    assert np.allclose(sims, np.einsum("ij,ij->i", x[pairs[:, 0]], x[pairs[:, 1]]), atol=1e-5)
    assert sims.min() >= 0.9
    found = {tuple(p) for p in pairs.tolist()}
    assert {(min(a, b), max(a, b)) for a, b in zip(src.tolist(), dst.tolist())} <= found
    # each row keeps at most its k best, and its best neighbour is among them
    s = x @ x.T
    np.fill_diagonal(s, -1)
    best = s.argmax(axis=1)
    near = np.flatnonzero(s.max(axis=1) >= 0.9)
    assert all((min(i, best[i]), max(i, best[i])) in found for i in near.tolist())


def test_scale_bench_groups_every_planted_copy_through_the_cluster_join(tmp_path) -> None:
    """The scale benchmark's pipeline on a small catalog (above the exact-search size): every
    planted copy (a quarter of them turned, found by the hash alone) and burst is grouped."""
    import bench_duplicates_scale as bench

    from clipsearch.duplicates import candidates

    n = candidates.FLAT_MAX + 3000
    bench.build(n, tmp_path)
    got = bench.measure(n, tmp_path)
    assert got["copies_recall"] == 1.0 and got["bursts_recall"] == 1.0
    assert got["copy_groups"] == int(0.03 * n) and got["copy_strays"] == 0


def test_hash_pairs_with_fewer_longer_parts_still_find_close_hashes() -> None:
    rng = np.random.default_rng(2)
    h = rng.integers(0, 2 ** 63 - 1, 3000)
    h[10] = rotate_hash(int(h[20]), 90) ^ (1 << 5)          # turned, 1 bit off
    h[30] = int(h[40]) ^ (1 << 1) ^ (1 << 60)                 # 2 bits off, in different parts
    pairs, dist = hash_pairs(h, max_distance=4, budget=0)     # no budget: the fewest parts (2)
    assert [10, 20] in pairs.tolist() and dict(zip(map(tuple, pairs.tolist()), dist.tolist()))[(10, 20)] == 1
    pairs, dist = hash_pairs(h, max_distance=4)
    assert sorted(pairs.tolist()) == [[10, 20], [30, 40]] and sorted(dist.tolist()) == [1, 2]


def test_group_pairs_from_codes_and_names_agree() -> None:
    from clipsearch.duplicates.groups import level_codes

    pairs = np.array([[0, 1], [1, 2], [3, 4], [5, 6], [6, 7]], np.int32)
    names = ["copy", "copy", "moment", None, "moment"]
    for levels in (names, level_codes(names)):
        assert group_pairs(8, pairs, levels, "copies") == [[0, 1, 2]]
        assert group_pairs(8, pairs, levels, "moments") == [[3, 4], [6, 7]]


def test_hash_pairs_find_turned_copies_only() -> None:
    rng = np.random.default_rng(1)
    h = rng.integers(0, 2 ** 63 - 1, 2000)
    h[1500] = rotate_hash(int(h[7]), 180) ^ (1 << 3) ^ (1 << 50)
    pairs, dist = hash_pairs(h, max_distance=4)
    assert pairs.tolist() == [[7, 1500]] and dist.tolist() == [2]


def _facts(w: int, h: int, kind: str = "jpeg", meta: bool = True, size: int = 100_000, sharp: float = 100.0):
    return PhotoFacts(0, sharp, w, h, kind, size, meta, None)


def test_keeper_prefers_size_then_format_then_metadata_then_compression_then_sharpness() -> None:
    f = {1: _facts(800, 600), 2: _facts(1600, 1200)}
    assert choose_keeper(f, [1, 2], "copies") == (2, "largest (1600×1200)")
    f = {1: _facts(800, 600, "png"), 2: _facts(800, 600, "jpeg")}
    assert choose_keeper(f, [1, 2], "copies")[0] == 2
    f = {1: _facts(800, 600, meta=False), 2: _facts(800, 600)}
    assert choose_keeper(f, [1, 2], "copies") == (2, "has camera metadata")
    f = {1: _facts(800, 600, size=50_000), 2: _facts(800, 600, size=200_000)}
    assert choose_keeper(f, [1, 2], "copies")[0] == 2
    f = {1: _facts(800, 600, sharp=50), 2: _facts(400, 300, sharp=500)}
    assert choose_keeper(f, [1, 2], "moments")[0] == 2       # a burst keeps its sharpest shot


# -- the library, the CLI, moves -------------------------------------------------------------
@pytest.fixture(scope="module")
def dup_library(tmp_path_factory: pytest.TempPathFactory):
    """A toyworld-model library over a small labelled set: two pictures with copies, a burst, a distractor."""
    from clipsearch.library import Library

    root = tmp_path_factory.mktemp("dups")
    photos = root / "photos"
    items = duplicates_set.make_set(photos, toy=2, photos=1, series=1, shots=3, distractors=1,
                                    transforms=("resize_50", "png", "rotate_90", "crop", "caption"), size=256,
                                    seed=3)
    lib = Library.open(root / "lib")
    lib.index(photos)
    yield lib, items, root
    lib.close()


def _pairs(groups: list[DuplicateGroup]) -> set[frozenset[str]]:
    out = set()
    for g in groups:
        paths = [m.path for m in g.members]
        out |= {frozenset((a, b)) for i, a in enumerate(paths) for b in paths[i + 1:]}
    return out


def test_library_groups_copies_and_moments_and_never_the_distractor(dup_library) -> None:
    lib, items, _ = dup_library
    copies = lib.duplicates("copies")
    by_picture: dict[int, set[str]] = {}
    for it in items:
        by_picture.setdefault(it.picture, set()).add(it.path)
    families = [paths for paths in by_picture.values() if len(paths) > 1]
    found = _pairs(copies)
    truth = {frozenset((a, b)) for f in families for a in f for b in f if a < b}
    assert found <= truth                                   # every grouped pair is a true copy pair
    assert len(found) >= 0.8 * len(truth)                   # and most true pairs are found
    assert len(copies) == len(families)
    for g in copies:
        keeper = next(m for m in g.members if m.id == g.keep_id)
        assert g.keep == keeper.path and keeper.why.startswith("keep:")
        assert "original" in keeper.path or "resize" not in keeper.path   # the 50 % copy is never kept
    distractor = next(it for it in items if it.kind == "distractor")
    assert not any(distractor.path in p for p in _pairs(copies))
    moments = lib.duplicates("moments")
    shots = {it.path for it in items if it.kind == "shot"}
    burst = [g for g in moments if {m.path for m in g.members} & shots]
    assert len(burst) == 1 and {m.path for m in burst[0].members} <= shots and len(burst[0].members) >= 2
    assert not any(distractor.path in p for p in _pairs(moments))


def test_hashes_are_stored_at_index_time(dup_library) -> None:
    from clipsearch.duplicates.groups import stored_hashes

    lib, _, _ = dup_library
    ids = lib.image_ids()
    assert (stored_hashes(lib.catalog, ids) >= 0).all()


def test_fast_mode_groups_only_true_copies_without_decoding_pairs(dup_library) -> None:
    from clipsearch.duplicates import DuplicateOptions

    lib, items, _ = dup_library
    picture = {it.path: it.picture for it in items}
    groups = lib.duplicates("copies", options=DuplicateOptions(verify="fast"))
    assert groups and all(len({picture[m.path] for m in g.members}) == 1 for g in groups)


def test_capture_times_overrule_the_fast_rule() -> None:
    from clipsearch.duplicates import DuplicateOptions
    from clipsearch.duplicates.groups import fast_levels

    opts = DuplicateOptions(verify="fast")
    clip, hd, rot = np.array([0.99] * 5), np.array([1, 1, 1, 10, 10]), np.zeros(5, int)
    a = np.array([0.0, 0.0, 0.0, 0.0, 0.0])
    b = np.array([0.0, 3.0, 3600.0, np.nan, 0.0])
    # same instant: copy; seconds apart: moment; an hour apart: nothing; unknown: the hash and CLIP decide
    assert fast_levels(clip, hd, rot, a, b, opts).tolist() == ["copy", "moment", "", "moment", "copy"]


def test_a_photo_without_capture_time_inherits_its_copies_time() -> None:
    from clipsearch.duplicates import DuplicateOptions
    from clipsearch.duplicates.groups import inherit_capture_times

    # 0 and 1 are copies (1 is a PNG export without EXIF); 2, taken a day later, looks like a moment of 1.
    pairs = np.array([[0, 1], [1, 2]])
    taken = np.array([0.0, np.nan, 86400.0])
    assert inherit_capture_times(pairs, ["copy", "moment"], taken, DuplicateOptions()) == ["copy", None]
    assert inherit_capture_times(pairs, ["copy", "moment"], taken,
                                 DuplicateOptions(use_capture_time=False)) == ["copy", "moment"]


def test_unknown_level_names_the_choices(dup_library) -> None:
    lib, _, _ = dup_library
    with pytest.raises(DuplicatesError, match="copies, moments"):
        lib.duplicates("triplicates")


def test_cli_json_move_dry_run_move_and_undo(dup_library, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    from clipsearch.cli import main
    from clipsearch.duplicates import moves

    lib, items, root = dup_library
    folder = str(lib.folder)
    assert main(["duplicates", "--library", folder, "--json", "--folder", str(root / "photos")]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert groups and all(set(g) >= {"level", "keep", "members"} for g in groups)
    assert all(set(m) >= {"path", "id", "score", "why"} for g in groups for m in g["members"])
    others = [m["path"] for g in groups for m in g["members"] if m["path"] != g["keep"]]

    dest = root / "aside"
    assert main(["duplicates", "--library", folder, "--move-to", str(dest), "--dry-run"]) == 0
    assert not dest.exists() and all(os.path.exists(p) for p in others)
    capsys.readouterr()

    # The third move fails (a full disk): that file stays, the others move, the journal is true.
    real = moves._move_file
    calls = {"n": 0}

    def flaky(src: str, dst: str) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(moves, "_move_file", flaky)
    assert main(["duplicates", "--library", folder, "--move-to", str(dest), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)["moves"]
    journal = result["journal"]
    assert result["done"] == len(others) - 1 and result["failed"][0]["reason"] == "No space left on device"
    lines = [json.loads(line) for line in open(journal)]
    assert len(lines[0]["moves"]) == len(others) and len(lines) == len(others)   # the plan, then one line per move
    for m in lines[0]["moves"]:
        assert os.path.exists(m["from"]) != os.path.exists(m["to"])            # old place or new, never both/neither
        row = lib.catalog.get_image(m["id"])
        assert row.path == (m["to"] if os.path.exists(m["to"]) else m["from"])  # the library followed
    assert lib.duplicates("copies", folder=str(dest)) != []                      # still indexed where they are now

    monkeypatch.setattr(moves, "_move_file", real)
    assert main(["duplicates", "--library", folder, "--undo", journal]) == 0
    assert all(os.path.exists(p) for p in others)
    assert all(lib.catalog.find_path(p) is not None for p in others)


def test_undo_of_a_file_that_is_not_a_journal_says_so(dup_library, tmp_path: Path) -> None:
    lib, _, _ = dup_library
    bogus = tmp_path / "notes.jsonl"
    bogus.write_text("hello\n")
    from clipsearch.duplicates.moves import MoveError

    with pytest.raises(MoveError, match="not a clipsearch move journal"):
        lib.undo_moves(bogus)
    with pytest.raises(MoveError, match="no move journal"):
        lib.undo_moves(tmp_path / "missing.jsonl")


def test_ui_tab_shows_groups_with_keeper_and_moves_only_once_confirmed(dup_library, tmp_path: Path) -> None:
    import threading

    from clipsearch_ui import duplicates_tab
    from clipsearch_ui.app import build_app

    lib, _, _ = dup_library
    assert "Duplicates" in {label for _, label, _ in __import__("clipsearch_ui.app", fromlist=["TABS"]).TABS}
    build_app(lib)  # the tab builds with the others
    lock = threading.RLock()
    groups, status = duplicates_tab.find(lib, lock, "copies", None)
    assert groups and status.startswith(f"{len(groups)} groups of copies")
    value = duplicates_tab.groups_value(groups)
    assert all(sum(m["keep"] for m in g["members"]) == 1 for g in value["groups"])
    assert all("×" in m["size"] for g in value["groups"] for m in g["members"])
    others = [m.path for g in groups for m in g.others]
    assert duplicates_tab.move(lib, lock, groups, str(tmp_path / "aside"), False).startswith("Tick")
    assert all(os.path.exists(p) for p in others)
    message = duplicates_tab.move(lib, lock, groups, str(tmp_path / "aside"), True)
    assert message.startswith(f"Moved {len(others)} photos") and "--undo" in message
    journal = message.split("--undo ")[1].rstrip("`")
    lib.undo_moves(journal)
    assert all(os.path.exists(p) for p in others)
