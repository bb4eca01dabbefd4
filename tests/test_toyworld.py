"""The toy world generator: determinism, held-out splits, texts, files and pixels."""
from __future__ import annotations

import argparse
import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from clipsearch import toyworld as tw
from clipsearch.cli import toyworld as toyworld_cli


def _scenes(split: str, n: int, seed: int = 0) -> list[tw.Scene]:
    rng = np.random.default_rng(seed)
    return [tw.sample_scene(rng, split) for _ in range(n)]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tw.generate(tmp_path_factory.mktemp("test"), 40, split="test", seed=3, workers=2, progress=False)


# --- determinism --------------------------------------------------------------------------

def test_same_seed_gives_same_bytes_whatever_the_workers(tmp_path: Path, test_split: Path) -> None:
    again = tw.generate(tmp_path, 40, split="test", seed=3, workers=1, progress=False)
    assert again.read_bytes() == test_split.read_bytes()
    for row in tw.read_captions(again):
        assert (again.parent / row["filepath"]).read_bytes() == (test_split.parent / row["filepath"]).read_bytes()


def test_different_seed_gives_different_images_and_captions(tmp_path: Path, test_split: Path) -> None:
    other = tw.generate(tmp_path, 40, split="test", seed=4, workers=1, progress=False)
    assert other.read_bytes() != test_split.read_bytes()
    first = "images/000000.jpg"
    assert not np.array_equal(_pixels(other.parent / first), _pixels(test_split.parent / first))


def test_render_is_a_function_of_scene_and_rng() -> None:
    scene = tw.parse_canonical("a red car left of a blue boat at sea by day")
    a = np.asarray(tw.render(scene, np.random.default_rng(7)))
    b = np.asarray(tw.render(scene, np.random.default_rng(7)))
    c = np.asarray(tw.render(scene, np.random.default_rng(8)))
    assert a.shape == (256, 256, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_longer_plan_starts_with_the_shorter_one() -> None:
    assert tw.plan_scenes(300, "test", seed=1)[:120] == tw.plan_scenes(120, "test", seed=1)


# --- splits ---------------------------------------------------------------------------------

def test_held_out_rule_holds_in_every_split() -> None:
    train = _scenes("train", 3000) + tw.plan_scenes(1000, "train", variants=True)
    seen = tw.plan_scenes(2000, "seen")
    test = tw.plan_scenes(2000, "test")
    assert not any(tw.is_held_out(s) for s in train)
    assert not any(tw.is_held_out(s) for s in seen)
    assert all(tw.is_held_out(s) for s in test)
    # every held-out combination is actually tested
    pairs = {pair for s in test for pair in s.objects}
    times = {(obj, s.time) for s in test for _, obj in s.objects}
    assert tw.HELD_OUT_COLOUR_OBJECT <= pairs
    assert tw.HELD_OUT_OBJECT_TIME <= times
    # and seen is a fresh sample, not the train images again
    assert tw.plan_scenes(200, "seen") != tw.plan_scenes(200, "train")


def test_held_out_covers_either_object_of_a_relation() -> None:
    assert tw.is_held_out(tw.parse_canonical("a green tree left of a red boat at sea by day"))
    assert tw.is_held_out(tw.parse_canonical("a green tree above a white bird in the snow at night"))
    assert not tw.is_held_out(tw.parse_canonical("a red car left of a blue boat at sea by day"))


def test_splits_are_about_half_count_and_half_relation_scenes() -> None:
    for split in tw.SPLITS:
        share = np.mean([s.is_relation for s in _scenes(split, 2000)])
        assert 0.4 < share < 0.6, split


def test_unknown_split_and_bad_scene_are_refused() -> None:
    with pytest.raises(ValueError, match="train"):
        tw.sample_scene(np.random.default_rng(0), "validation")
    with pytest.raises(ValueError, match="colour"):
        tw.Scene(obj="car", colour="teal", setting="sea", time="day")
    with pytest.raises(ValueError, match="different kinds"):
        tw.Scene(obj="car", colour="red", setting="sea", time="day", relation="above", obj2="car", colour2="blue")


# --- texts ----------------------------------------------------------------------------------

scenes = st.one_of(
    st.builds(tw.Scene, obj=st.sampled_from(tw.OBJECTS), colour=st.sampled_from(list(tw.COLOURS)),
              setting=st.sampled_from(tw.SETTINGS), time=st.sampled_from(tw.TIMES),
              count=st.integers(1, 3)),
    st.builds(lambda objs, **kw: tw.Scene(obj=objs[0], obj2=objs[1], **kw),
              st.lists(st.sampled_from(tw.OBJECTS), min_size=2, max_size=2, unique=True),
              colour=st.sampled_from(list(tw.COLOURS)), colour2=st.sampled_from(list(tw.COLOURS)),
              setting=st.sampled_from(tw.SETTINGS), time=st.sampled_from(tw.TIMES),
              relation=st.sampled_from(tw.RELATIONS)),
)


@settings(max_examples=300, deadline=None)
@given(scenes)
def test_canonical_round_trips(scene: tw.Scene) -> None:
    assert tw.parse_canonical(tw.canonical(scene)) == scene
    assert tw.scene_diff(scene, scene.swapped()) == []


def test_canonical_round_trips_over_sampled_scenes() -> None:
    for scene in _scenes("train", 1000) + tw.plan_scenes(1000, "test"):
        assert tw.parse_canonical(tw.canonical(scene)) == scene


def test_canonical_template_examples() -> None:
    assert tw.canonical(tw.Scene("car", "red", "road", "night", count=2)) == "two red cars on a road at night"
    assert tw.canonical(tw.Scene("fish", "green", "snow", "sunset", count=3)) == "three green fish in the snow at sunset"
    assert tw.canonical(tw.Scene("house", "white", "field", "day")) == "one white house in a field by day"
    relation = tw.Scene("car", "orange", "sea", "day", relation="left of", obj2="boat", colour2="blue")
    assert tw.canonical(relation) == "an orange car left of a blue boat at sea by day"


@pytest.mark.parametrize("text", [
    "two red car on a road at night",  # number
    "a orange car left of a blue boat at sea by day",  # article
    "two teal cars on a road at night",
    "a red car left of a red car at sea by day",
    "two red cars on a road",
])
def test_parse_canonical_refuses_non_canonical_text(text: str) -> None:
    with pytest.raises(ValueError):
        tw.parse_canonical(text)


def test_captions_vary_and_name_every_attribute() -> None:
    count = tw.parse_canonical("two red cars on a road at night")
    relation = tw.parse_canonical("a red car left of a blue boat at sea by day")
    rng = np.random.default_rng(0)
    count_captions = {tw.caption(count, rng) for _ in range(200)}
    relation_captions = {tw.caption(relation, rng) for _ in range(200)}
    assert len(count_captions) >= 3 and len(relation_captions) >= 3
    assert tw.canonical(count) in count_captions
    for text in count_captions:
        assert "two red cars" in text and "night" in text and "road" in text
    assert any("a blue boat right of a red car" in text for text in relation_captions)
    for text in relation_captions:
        assert "red car" in text and "blue boat" in text and "sea" in text


def test_scene_diff_names_the_changed_attribute_in_words() -> None:
    a = tw.parse_canonical("two red cars on a road at night")
    assert tw.scene_diff(a, tw.parse_canonical("three red cars on a road at night")) == [("count", "two", "three")]
    assert tw.scene_diff(a, tw.parse_canonical("two red boats in the snow at night")) == [
        ("obj", "car", "boat"), ("setting", "road", "snow")]
    r = tw.parse_canonical("a red car left of a blue boat at sea by day")
    assert tw.scene_diff(r, tw.parse_canonical("a blue boat right of a red car at sea by day")) == []
    assert tw.scene_diff(r, tw.parse_canonical("a blue boat left of a red car at sea by day")) == [
        ("relation", "left of", "right of")]
    assert tw.scene_diff(r, tw.parse_canonical("a red car left of a blue boat at sea at sunset")) == [
        ("time", "day", "sunset")]


# --- files and variant groups ---------------------------------------------------------------

def test_csv_is_open_clip_format_with_256px_jpegs(test_split: Path) -> None:
    with open(test_split, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        assert next(reader) == ["filepath", "title", "canonical"]
        rows = list(reader)
    assert len(rows) == 40
    for filepath, title, text in rows:
        with Image.open(test_split.parent / filepath) as img:
            assert (img.format, img.size, img.mode) == ("JPEG", (256, 256), "RGB")
        assert tw.is_held_out(tw.parse_canonical(text))
        assert title


def test_test_split_has_variant_groups_differing_in_one_attribute() -> None:
    plan = tw.plan_scenes(2000, "test")
    # a group is a base followed by its variants, so a variant is one change from a scene
    # at most three places before it
    in_group = np.zeros(len(plan), dtype=bool)
    changed: set[str] = set()
    for i, scene in enumerate(plan):
        for j in range(max(0, i - 3), i):
            diff = tw.scene_diff(plan[j], scene)
            if len(diff) == 1:
                in_group[[i, j]] = True
                changed.add(diff[0][0])
    assert 0.35 < in_group.mean() < 0.65
    assert {"colour", "obj", "time", "setting", "count", "relation"} <= changed


def test_train_split_has_no_variant_groups_by_default() -> None:
    plan = tw.plan_scenes(500, "train")
    neighbours = sum(len(tw.scene_diff(a, b)) == 1 for a, b in zip(plan, plan[1:]))
    assert neighbours < 10


# --- pixels ---------------------------------------------------------------------------------

def test_a_red_object_has_red_pixels_and_a_blue_one_does_not() -> None:
    def reddish(text: str) -> float:
        img = np.asarray(tw.render(tw.parse_canonical(text), np.random.default_rng(0)), dtype=np.int16)
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        return float(((r > 150) & (g < 90) & (b < 90)).mean())

    for time in tw.TIMES:
        assert reddish(f"one red car in the snow {tw.TIME_PHRASE[time]}") > 0.03
        assert reddish(f"one blue car in the snow {tw.TIME_PHRASE[time]}") < 0.002


@pytest.mark.parametrize("relation", tw.RELATIONS)
def test_relations_are_drawn_where_they_say(relation: str) -> None:
    scene = tw.parse_canonical(f"a red cloud {relation} a blue moon in the snow by day")
    for seed in range(5):
        img = np.asarray(tw.render(scene, np.random.default_rng(seed)), dtype=np.int16)
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        red = np.argwhere((r > 150) & (g < 90) & (b < 90))  # (y, x)
        blue = np.argwhere((b > 150) & (r < 90) & (g < 130))
        assert len(red) > 500 and len(blue) > 500
        (ry, rx), (by, bx) = red.mean(axis=0), blue.mean(axis=0)
        along, across = {"left of": (bx - rx, by - ry), "right of": (rx - bx, ry - by),
                         "above": (by - ry, bx - rx), "below": (ry - by, rx - bx)}[relation]
        assert along > 50 and abs(across) < along / 2, (seed, along, across)


def test_night_is_darker_than_day() -> None:
    rng = np.random.default_rng(0)
    brightness = {}
    for time in ("day", "night"):
        values = []
        for _ in range(12):
            scene = replace(tw.sample_scene(rng, "train"), time=time)
            values.append(np.asarray(tw.render(scene, rng)).mean())
        brightness[time] = float(np.mean(values))
    assert brightness["night"] < 0.6 * brightness["day"]


def test_other_sizes_render() -> None:
    scene = tw.parse_canonical("three purple flowers in a desert at sunset")
    assert tw.render(scene, np.random.default_rng(0), size=64).size == (64, 64)


# --- CLI ------------------------------------------------------------------------------------

def test_cli_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="clipsearch")
    toyworld_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["toyworld", "generate", str(tmp_path), "--n", "6", "--split", "seen",
                              "--seed", "2", "--workers", "1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "6 seen images" in out and str(tmp_path / "captions.csv") in out
    assert len(tw.read_captions(tmp_path / "captions.csv")) == 6
    with pytest.raises(SystemExit):
        parser.parse_args(["toyworld", "generate", str(tmp_path), "--n", "0"])


def test_the_extension_world_shows_a_new_word_in_every_scene_and_the_base_world_none(tmp_path) -> None:
    ext = tw.plan_scenes(300, "train", seed=3, world="ext")
    assert all(tw.has_new_word(s) and not tw.is_held_out(s) for s in ext)
    assert all(tw.parse_canonical(tw.canonical(s)) == s for s in ext)
    assert {o for s in ext for _, o in s.objects} >= set(tw.EXTRA_OBJECTS)
    assert "beach" in {s.setting for s in ext}
    assert not any(tw.has_new_word(s) for s in tw.plan_scenes(300, "train", seed=3))
    assert all(tw.is_held_out(s) for s in tw.plan_scenes(100, "test", seed=3, world="ext"))
    with pytest.raises(ValueError, match="unknown world"):
        tw.plan_scenes(5, world="mars")
    csv_path = tw.generate(tmp_path / "ext", 6, split="seen", seed=1, size=64, workers=1, world="ext", quality=40,
                           progress=False)
    rows = tw.read_captions(csv_path)
    assert all(tw.has_new_word(tw.parse_canonical(r["canonical"])) for r in rows)
    small = (tmp_path / "ext" / rows[0]["filepath"]).stat().st_size
    tw.generate(tmp_path / "ext95", 6, split="seen", seed=1, size=64, workers=1, world="ext", quality=95,
                progress=False)
    assert (tmp_path / "ext95" / rows[0]["filepath"]).stat().st_size > small
