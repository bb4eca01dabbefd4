"""A deterministic, procedurally drawn world of captioned pictures to train and test CLIP on.

Every image shows one scene: either one to three objects of one kind and colour ("count"
scenes) or two objects of different kinds in a spatial relation ("relation" scenes), in a
setting, at a time of day. A scene has one canonical English description
(`canonical`, parsed back by `parse_canonical`) and several caption phrasings (`caption`).

Some colour-object and object-time combinations never appear in the train split
(`HELD_OUT_COLOUR_OBJECT`, `HELD_OUT_OBJECT_TIME`); the test split holds only scenes with
at least one of them, so a model's compositional generalisation can be measured. See
data/README.md for the whole description.

Longer than most modules on purpose: the world's vocabulary, captions, drawing and
generation share private drawing helpers and one determinism contract (the same seed gives
the same bytes).
"""
from __future__ import annotations

import csv
import logging
import math
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clipsearch.atomic import atomic_writer

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------

OBJECTS: tuple[str, ...] = (
    "car", "boat", "house", "tree", "sun", "moon", "cloud", "bird", "fish", "flower",
)
PLURALS: dict[str, str] = {name: name + "s" for name in OBJECTS} | {"fish": "fish"}

# Saturated, well separated hues; every object also gets a contrasting outline, so a blue
# boat stays visible at sea and a white house in the snow.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 30),
    "orange": (250, 135, 20),
    "yellow": (250, 220, 30),
    "green": (40, 175, 55),
    "blue": (35, 75, 235),
    "purple": (145, 50, 200),
    "white": (248, 248, 248),
    "black": (22, 22, 22),
}
SETTINGS: tuple[str, ...] = ("sea", "field", "road", "snow", "desert")
TIMES: tuple[str, ...] = ("day", "sunset", "night")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three")
SPLITS: tuple[str, ...] = ("train", "test", "seen")

# The extension world ("ext"): words the bundled model never saw in training. Every ext
# scene shows at least one of them, so a model that does not know them fails there; the
# base world never draws them, so the bundled model's data stays byte-identical.
EXTRA_OBJECTS: tuple[str, ...] = ("star", "kite", "balloon")
EXTRA_COLOURS: dict[str, tuple[int, int, int]] = {"pink": (250, 110, 185), "brown": (120, 72, 30)}
EXTRA_SETTINGS: tuple[str, ...] = ("beach",)
WORLDS: tuple[str, ...] = ("base", "ext")
ALL_OBJECTS: tuple[str, ...] = OBJECTS + EXTRA_OBJECTS
ALL_COLOURS: dict[str, tuple[int, int, int]] = COLOURS | EXTRA_COLOURS
ALL_SETTINGS: tuple[str, ...] = SETTINGS + EXTRA_SETTINGS
PLURALS |= {name: name + "s" for name in EXTRA_OBJECTS}

SWAPPED_RELATION: dict[str, str] = {
    "left of": "right of", "right of": "left of", "above": "below", "below": "above",
}
SETTING_PHRASE: dict[str, str] = {
    "sea": "at sea", "field": "in a field", "road": "on a road",
    "snow": "in the snow", "desert": "in a desert", "beach": "on a beach",
}
TIME_PHRASE: dict[str, str] = {"day": "by day", "sunset": "at sunset", "night": "at night"}

# Held out of the train split. The colour-object pairs use seven colours and seven kinds,
# each once, so each held-out pair combines a colour and a kind the model has seen many
# times, just never together. The object-time pairs likewise.
HELD_OUT_COLOUR_OBJECT: frozenset[tuple[str, str]] = frozenset({
    ("red", "boat"),
    ("blue", "car"),
    ("yellow", "bird"),
    ("green", "house"),
    ("purple", "fish"),
    ("white", "tree"),
    ("orange", "flower"),
})
HELD_OUT_OBJECT_TIME: frozenset[tuple[str, str]] = frozenset({
    ("car", "sunset"),
    ("boat", "night"),
    ("bird", "night"),
})

_SPLIT_ID = {name: i for i, name in enumerate(SPLITS)}
_WORLD_ID = {name: i for i, name in enumerate(WORLDS)}
# Seeds are [seed, split, stream, ...]: one stream plans the scenes, one draws each image,
# one makes up where, when and with what each photo was taken (its EXIF).
_PLAN_STREAM, _IMAGE_STREAM, _EXIF_STREAM = 0, 1, 2


# ---------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scene:
    """What one image shows. A relation scene has `relation`, `obj2` and `colour2` set."""

    obj: str
    colour: str
    setting: str
    time: str
    count: int = 1
    relation: str | None = None
    obj2: str | None = None
    colour2: str | None = None

    def __post_init__(self) -> None:
        def check(value: object, allowed: Sequence[object], what: str) -> None:
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; expected one of {list(allowed)}")

        check(self.obj, ALL_OBJECTS, "object")
        check(self.colour, tuple(ALL_COLOURS), "colour")
        check(self.setting, ALL_SETTINGS, "setting")
        check(self.time, TIMES, "time")
        check(self.count, (1, 2, 3), "count")
        if self.relation is None:
            if self.obj2 is not None or self.colour2 is not None:
                raise ValueError("obj2 and colour2 need a relation")
            return
        check(self.relation, RELATIONS, "relation")
        check(self.obj2, ALL_OBJECTS, "object")
        check(self.colour2, tuple(ALL_COLOURS), "colour")
        if self.count != 1:
            raise ValueError("a relation scene has one object of each kind (count=1)")
        if self.obj == self.obj2:
            raise ValueError(f"a relation needs two different kinds of object, got {self.obj} twice")

    @property
    def is_relation(self) -> bool:
        return self.relation is not None

    @property
    def objects(self) -> tuple[tuple[str, str], ...]:
        """The (colour, object) pairs the scene shows, one per distinct object."""
        if self.relation is None:
            return ((self.colour, self.obj),)
        return ((self.colour, self.obj), (self.colour2, self.obj2))  # type: ignore[return-value]

    def swapped(self) -> Scene:
        """The same picture described from the other object: B right of A for A left of B."""
        if self.relation is None:
            return self
        return replace(self, obj=self.obj2, colour=self.colour2, obj2=self.obj,
                       colour2=self.colour, relation=SWAPPED_RELATION[self.relation])


def is_held_out(scene: Scene) -> bool:
    """True if any object of the scene has a held-out colour or is shown at a held-out time."""
    return any(
        (colour, obj) in HELD_OUT_COLOUR_OBJECT or (obj, scene.time) in HELD_OUT_OBJECT_TIME
        for colour, obj in scene.objects
    )


def has_new_word(scene: Scene) -> bool:
    """True if the scene shows an object, colour or setting of the extension world."""
    return (scene.setting in EXTRA_SETTINGS
            or any(colour in EXTRA_COLOURS or obj in EXTRA_OBJECTS for colour, obj in scene.objects))


def _allowed(scene: Scene, split: str, world: str = "base") -> bool:
    if world == "ext" and not has_new_word(scene):
        return False
    return is_held_out(scene) if split == "test" else not is_held_out(scene)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


def _check_world(world: str) -> None:
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; expected one of {list(WORLDS)}")


def _vocabulary(world: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(objects, colours, settings) a world draws from."""
    if world == "ext":
        return ALL_OBJECTS, tuple(ALL_COLOURS), ALL_SETTINGS
    return OBJECTS, tuple(COLOURS), SETTINGS


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _any_scene(rng: np.random.Generator, relation: bool, world: str = "base") -> Scene:
    objects, colours, settings = _vocabulary(world)
    setting = _choice(rng, settings)
    time = _choice(rng, TIMES)
    if not relation:
        return Scene(obj=_choice(rng, objects), colour=_choice(rng, colours), setting=setting,
                     time=time, count=int(rng.integers(1, 4)))
    a, b = rng.choice(len(objects), size=2, replace=False)
    return Scene(obj=objects[a], colour=_choice(rng, colours), setting=setting, time=time,
                 relation=_choice(rng, RELATIONS), obj2=objects[b], colour2=_choice(rng, colours))


def sample_scene(rng: np.random.Generator, split: str = "train", world: str = "base") -> Scene:
    """A random scene obeying the split's rule (and, in the ext world, showing a new word): half count, half relation."""
    _check_split(split)
    _check_world(world)
    # The kind is drawn first: relation scenes, having two objects, are held out more often.
    relation = bool(rng.random() < 0.5)
    while True:  # rejection keeps the distribution within the split uniform
        scene = _any_scene(rng, relation, world)
        if _allowed(scene, split, world):
            return scene


# ---------------------------------------------------------------------------------------
# Words: canonical description, captions, parsing, differences
# ---------------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(colour: str, obj: str, count: int = 1, *, numeral: bool = False) -> str:
    if count == 1:
        return f"{'one' if numeral else _article(colour)} {colour} {obj}"
    return f"{COUNT_WORDS[count - 1]} {colour} {PLURALS[obj]}"


def _subject(scene: Scene) -> str:
    """The objects part of the description: "two red cars", "a red car left of a blue boat"."""
    if scene.relation is None:
        return _noun_phrase(scene.colour, scene.obj, scene.count, numeral=True)
    return (f"{_noun_phrase(scene.colour, scene.obj)} {scene.relation} "
            f"{_noun_phrase(scene.colour2, scene.obj2)}")  # type: ignore[arg-type]


def canonical(scene: Scene) -> str:
    """The one exact description of a scene, e.g. "two red cars on a road at night"."""
    return f"{_subject(scene)} {SETTING_PHRASE[scene.setting]} {TIME_PHRASE[scene.time]}"


_SETTING_NOUN = {"sea": "the sea", "field": "a field", "road": "a road",
                 "snow": "the snow", "desert": "a desert", "beach": "a beach"}
_SETTING_ON = {"sea": "at sea", "field": "in the field", "road": "on the road",
               "snow": "in the snow", "desert": "in the desert", "beach": "on the beach"}
_TIME_LEAD = {"day": "daytime", "sunset": "sunset", "night": "night time"}
_TIME_TAIL = {"day": "during the day", "sunset": "at sunset", "night": "at night"}
_RELATION_LONG = {"left of": "to the left of", "right of": "to the right of",
                  "above": "above", "below": "below"}


def _caption_subject(scene: Scene, rng: np.random.Generator) -> str:
    if scene.relation is None:
        # "a red car" reads more naturally than the canonical "one red car"
        return _noun_phrase(scene.colour, scene.obj, scene.count)
    if rng.random() < 0.5:
        scene = scene.swapped()
    relation = _RELATION_LONG[scene.relation] if rng.random() < 0.5 else scene.relation
    return (f"{_noun_phrase(scene.colour, scene.obj)} {relation} "
            f"{_noun_phrase(scene.colour2, scene.obj2)}")  # type: ignore[arg-type]


_PHRASINGS: tuple[Callable[[str, Scene], str], ...] = (
    lambda s, sc: f"a photo of {s} {SETTING_PHRASE[sc.setting]} {TIME_PHRASE[sc.time]}",
    lambda s, sc: f"{_TIME_LEAD[sc.time]}: {s} {_SETTING_ON[sc.setting]}",
    lambda s, sc: f"{_SETTING_NOUN[sc.setting]} {TIME_PHRASE[sc.time]} with {s}",
    lambda s, sc: f"{s} {_SETTING_ON[sc.setting]} {_TIME_TAIL[sc.time]}",
    lambda s, sc: f"a picture of {_SETTING_NOUN[sc.setting]} {_TIME_TAIL[sc.time]}, showing {s}",
)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A training caption: the canonical text or one of several paraphrases of it."""
    k = int(rng.integers(len(_PHRASINGS) + 1))
    if k == len(_PHRASINGS):
        return canonical(scene)
    return _PHRASINGS[k](_caption_subject(scene, rng), scene)


def _alternation(words: Sequence[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_PLURAL_TO_OBJ = {plural: obj for obj, plural in PLURALS.items()}
_COLOUR_RE = _alternation(tuple(ALL_COLOURS))
_TAIL_RE = (rf" (?P<setting>{_alternation(tuple(SETTING_PHRASE.values()))})"
            rf" (?P<time>{_alternation(tuple(TIME_PHRASE.values()))})$")
_COUNT_RE = re.compile(
    rf"^(?P<count>{_alternation(COUNT_WORDS)}) (?P<colour>{_COLOUR_RE}) "
    rf"(?P<obj>{_alternation(tuple(ALL_OBJECTS) + tuple(_PLURAL_TO_OBJ))})" + _TAIL_RE)
_RELATION_RE = re.compile(
    rf"^(?:a|an) (?P<colour>{_COLOUR_RE}) (?P<obj>{_alternation(ALL_OBJECTS)}) "
    rf"(?P<relation>{_alternation(RELATIONS)}) "
    rf"(?:a|an) (?P<colour2>{_COLOUR_RE}) (?P<obj2>{_alternation(ALL_OBJECTS)})" + _TAIL_RE)
_SETTING_FROM_PHRASE = {v: k for k, v in SETTING_PHRASE.items()}
_TIME_FROM_PHRASE = {v: k for k, v in TIME_PHRASE.items()}


def parse_canonical(text: str) -> Scene:
    """The scene a canonical description describes; ValueError if `text` is not one."""
    m = _RELATION_RE.match(text) or _COUNT_RE.match(text)
    if m is None:
        raise ValueError(f"not a canonical toyworld description: {text!r}")
    g = m.groupdict()
    setting, time = _SETTING_FROM_PHRASE[g["setting"]], _TIME_FROM_PHRASE[g["time"]]
    if "relation" in g:
        scene = Scene(obj=g["obj"], colour=g["colour"], setting=setting, time=time,
                      relation=g["relation"], obj2=g["obj2"], colour2=g["colour2"])
    else:
        scene = Scene(obj=_PLURAL_TO_OBJ.get(g["obj"], g["obj"]), colour=g["colour"],
                      setting=setting, time=time, count=COUNT_WORDS.index(g["count"]) + 1)
    if canonical(scene) != text:  # wrong number or article, e.g. "two red car", "a orange"
        raise ValueError(f"not a canonical toyworld description: {text!r} "
                         f"(did you mean {canonical(scene)!r}?)")
    return scene


def _word(attribute: str, value: object) -> str:
    if value is None:
        return ""
    if attribute == "count":
        return COUNT_WORDS[int(value) - 1]  # type: ignore[arg-type]
    return str(value)


def scene_diff(a: Scene, b: Scene) -> list[tuple[str, str, str]]:
    """(attribute, word in a, word in b) for each attribute that differs, e.g. ("time", "day", "night").

    Attributes are the `Scene` field names; words are what you would type ("two", "red",
    "snow"). A relation scene described from its other object ("a blue boat right of a red
    car") counts as the same scene.
    """
    if (a.relation is not None and b.relation is not None
            and (a.obj, a.obj2) == (b.obj2, b.obj)):
        b = b.swapped()
    return [
        (f.name, _word(f.name, getattr(a, f.name)), _word(f.name, getattr(b, f.name)))
        for f in fields(Scene)
        if getattr(a, f.name) != getattr(b, f.name)
    ]


# ---------------------------------------------------------------------------------------
# Variant groups: a base scene plus scenes that each change exactly one attribute
# ---------------------------------------------------------------------------------------

def _one_change(scene: Scene, rng: np.random.Generator, world: str = "base") -> Scene:
    """`scene` with one random attribute changed to another value of the world's vocabulary."""
    objects, colours, settings = _vocabulary(world)
    attributes = ["colour", "obj", "time", "setting"]
    attributes += ["relation", "colour2", "obj2"] if scene.is_relation else ["count"]
    attribute = _choice(rng, attributes)
    current = getattr(scene, attribute)
    options: Sequence[object] = {
        "colour": colours, "colour2": colours, "time": TIMES,
        "setting": settings, "relation": RELATIONS, "count": (1, 2, 3),
        "obj": tuple(o for o in objects if o != scene.obj2),
        "obj2": tuple(o for o in objects if o != scene.obj),
    }[attribute]
    options = [o for o in options if o != current]
    return replace(scene, **{attribute: options[int(rng.integers(len(options)))]})


def _variant_group(rng: np.random.Generator, split: str, world: str = "base") -> list[Scene]:
    base = sample_scene(rng, split, world)
    want = int(rng.integers(2, 4))
    group = [base]
    for _ in range(50):  # in the test split most single changes lose the held-out pair
        variant = _one_change(base, rng, world)
        if variant not in group and _allowed(variant, split, world):
            group.append(variant)
            if len(group) == want + 1:
                break
    return group


def plan_scenes(n: int, split: str = "train", seed: int = 0, variants: bool | None = None,
                world: str = "base") -> list[Scene]:
    """The `n` scenes `generate` draws, in order; with variants about half are in variant groups.

    Consecutive indices hold a group (base first). A longer plan starts with the shorter one.
    """
    _check_split(split)
    if variants is None:
        variants = split != "train"
    _check_world(world)
    rng = np.random.default_rng(_stream(seed, split, _PLAN_STREAM, world))
    # A group has 3.5 images on average; p = 1/4.5 puts half the images in groups.
    p_group = 1 / 4.5 if variants else 0.0
    scenes: list[Scene] = []
    while len(scenes) < n:
        if p_group and rng.random() < p_group:
            scenes.extend(_variant_group(rng, split, world))
        else:
            scenes.append(sample_scene(rng, split, world))
    return scenes[:n]


# ---------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------

Colour = tuple[int, int, int]
_TRUNK: Colour = (110, 70, 35)
_STEM: Colour = (35, 130, 35)
_GLASS: Colour = (185, 215, 235)
_TYRE: Colour = (35, 35, 35)
_DARK: Colour = (25, 25, 25)


def _shade(rgb: Colour, factor: float) -> Colour:
    return tuple(max(0, min(255, round(c * factor))) for c in rgb)  # type: ignore[return-value]


def _is_dark(rgb: Colour) -> bool:
    return sum(rgb) < 150


def _is_warm(rgb: Colour) -> bool:
    """Red, orange or yellow: details drawn in orange or yellow would vanish on it."""
    return rgb[0] > 150 and rgb[2] < 100


# Object shapes in unit coordinates (x right, y down, both 0..1 over the object's box).
# Each function draws with `p(x, y)` -> pixel point and `r(x0, y0, x1, y1)` -> pixel box.
Draw = ImageDraw.ImageDraw
PointFn = Callable[[float, float], tuple[float, float]]
BoxFn = Callable[[float, float, float, float], tuple[float, float, float, float]]


def _draw_car(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    d.polygon([p(.2, .45), p(.32, .08), p(.7, .08), p(.84, .45)], fill=c)
    d.rounded_rectangle(r(.01, .38, .99, .8), radius=r(0, 0, .08, 0)[2], fill=c)
    d.polygon([p(.3, .42), p(.37, .16), p(.49, .16), p(.49, .42)], fill=_GLASS)
    d.polygon([p(.53, .42), p(.53, .16), p(.67, .16), p(.76, .42)], fill=_GLASS)
    for x in (.24, .76):
        d.ellipse(r(x - .12, .6, x + .12, 1.0), fill=_TYRE)
        d.ellipse(r(x - .05, .72, x + .05, .88), fill=(150, 150, 150))


def _draw_boat(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    d.polygon([p(0, .6), p(1, .6), p(.82, .95), p(.18, .95)], fill=c)
    d.rectangle(r(.47, .02, .53, .62), fill=_TRUNK)
    d.polygon([p(.56, .04), p(.56, .55), p(.94, .55)], fill=c)
    d.polygon([p(.44, .14), p(.44, .55), p(.12, .55)], fill=c)


def _draw_house(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    d.rectangle(r(.12, .45, .88, 1.0), fill=c)
    d.polygon([p(0, .48), p(.5, .02), p(1, .48)], fill=c if _is_dark(c) else _shade(c, .7))
    d.rectangle(r(.42, .66, .58, 1.0), fill=(95, 55, 25))
    d.rectangle(r(.2, .56, .34, .72), fill=_GLASS)
    d.rectangle(r(.66, .56, .8, .72), fill=_GLASS)


def _draw_tree(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    d.rectangle(r(.4, .78, .6, 1.0), fill=_TRUNK)
    d.polygon([p(.5, .0), p(.18, .34), p(.82, .34)], fill=c)
    d.polygon([p(.5, .16), p(.08, .58), p(.92, .58)], fill=c)
    d.polygon([p(.5, .36), p(0, .82), p(1, .82)], fill=c)


def _draw_sun(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    d.ellipse(r(.22, .22, .78, .78), fill=c)
    for k in range(10):
        a = 2 * math.pi * k / 10
        d.polygon([p(.5 + .31 * math.cos(a - .2), .5 + .31 * math.sin(a - .2)),
                   p(.5 + .5 * math.cos(a), .5 + .5 * math.sin(a)),
                   p(.5 + .31 * math.cos(a + .2), .5 + .31 * math.sin(a + .2))], fill=c)


def _draw_moon(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    d.ellipse(r(.04, .04, .96, .96), fill=c)
    d.ellipse(r(.34, -.06, 1.14, .74), fill=(0, 0, 0, 0))


def _draw_cloud(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    for box in ((0, .38, .42, 1), (.16, .06, .6, .8), (.42, .16, .84, .86), (.6, .42, 1, 1)):
        d.ellipse(r(*box), fill=c)
    d.rectangle(r(.2, .6, .8, 1), fill=c)


def _draw_bird(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    d.polygon([p(.2, .58), p(0, .42), p(0, .78)], fill=c)  # tail
    d.ellipse(r(.12, .46, .76, .8), fill=c)  # body
    d.ellipse(r(.6, .3, .88, .6), fill=c)  # head
    d.polygon([p(.86, .4), p(1, .47), p(.86, .53)], fill=_DARK if _is_warm(c) else (250, 170, 0))
    d.ellipse(r(.73, .38, .79, .45), fill=(230, 230, 230) if _is_dark(c) else _DARK)
    d.polygon([p(.28, .6), p(.58, .6), p(.14, 0)], fill=c if _is_dark(c) else _shade(c, .8))  # wing


def _draw_fish(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    d.polygon([p(.32, .5), p(0, .04), p(0, .96)], fill=c)  # tail
    d.polygon([p(.45, .2), p(.56, 0), p(.72, .2)], fill=c)  # fin
    d.ellipse(r(.2, .12, 1, .88), fill=c)
    d.ellipse(r(.74, .3, .86, .48), fill=(240, 240, 240))
    d.ellipse(r(.78, .34, .84, .44), fill=_DARK)


def _draw_flower(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    d.rectangle(r(.46, .45, .54, 1), fill=_STEM)
    d.polygon([p(.5, .85), p(.14, .62), p(.3, .82)], fill=_STEM)
    d.polygon([p(.5, .75), p(.86, .55), p(.7, .74)], fill=_STEM)
    for k in range(6):
        a = 2 * math.pi * k / 6
        x, y = .5 + .24 * math.cos(a), .3 + .17 * math.sin(a)
        d.ellipse(r(x - .2, y - .14, x + .2, y + .14), fill=c)
    centre = (120, 70, 20) if _is_warm(c) and c[1] > 100 else (250, 210, 40)
    d.ellipse(r(.36, .2, .64, .4), fill=centre)


def _draw_star(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    points = []
    for k in range(10):
        a = -math.pi / 2 + math.pi * k / 5
        rad = .5 if k % 2 == 0 else .21
        points.append(p(.5 + rad * math.cos(a), .53 + rad * math.sin(a)))
    d.polygon(points, fill=c)


def _draw_kite(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    d.line([p(.5, .68), p(.42, .8), p(.58, .88), p(.46, 1.0)], fill=_DARK, width=max(1, round(r(0, 0, .03, 0)[2])))
    d.polygon([p(.5, 0), p(.95, .26), p(.5, .7), p(.05, .26)], fill=c)
    d.line([p(.5, 0), p(.5, .7)], fill=_DARK if not _is_dark(c) else (200, 200, 200), width=1)
    d.line([p(.05, .26), p(.95, .26)], fill=_DARK if not _is_dark(c) else (200, 200, 200), width=1)


def _draw_balloon(d: Draw, p: PointFn, r: BoxFn, c: Colour) -> None:
    d.line([p(.5, .66), p(.44, .82), p(.54, 1.0)], fill=_DARK, width=max(1, round(r(0, 0, .025, 0)[2])))
    d.polygon([p(.44, .7), p(.56, .7), p(.5, .6)], fill=c)
    d.ellipse(r(.08, 0, .92, .66), fill=c)
    d.ellipse(r(.24, .1, .36, .26), fill=_shade(c, 1.35) if not _is_dark(c) else (90, 90, 90))


# kind -> (draw function, height/width of its box, may be mirrored)
_SHAPES: dict[str, tuple[Callable[[Draw, PointFn, BoxFn, Colour], None], float, bool]] = {
    "car": (_draw_car, .55, True),
    "boat": (_draw_boat, .85, True),
    "house": (_draw_house, 1.0, True),
    "tree": (_draw_tree, 1.35, False),
    "sun": (_draw_sun, 1.0, False),
    "moon": (_draw_moon, 1.0, True),
    "cloud": (_draw_cloud, .6, True),
    "bird": (_draw_bird, .75, True),
    "fish": (_draw_fish, .6, True),
    "flower": (_draw_flower, 1.4, False),
    "star": (_draw_star, 1.0, False),
    "kite": (_draw_kite, 1.35, True),
    "balloon": (_draw_balloon, 1.45, False),
}
_SUPERSAMPLE = 2


def _object_sprite(obj: str, rgb: Colour, extent: float, rng: np.random.Generator, outline: Colour) -> Image.Image:
    """An RGBA sprite of one object whose longer side is about `extent` pixels, outlined and tilted."""
    draw_fn, aspect, mirror = _SHAPES[obj]
    aspect *= float(rng.uniform(.9, 1.1))
    w, h = (extent, extent * aspect) if aspect <= 1 else (extent / aspect, extent)
    pad = 4
    W, H = (round((w + 2 * pad) * _SUPERSAMPLE), round((h + 2 * pad) * _SUPERSAMPLE))
    ox, oy, sw, sh = pad * _SUPERSAMPLE, pad * _SUPERSAMPLE, w * _SUPERSAMPLE, h * _SUPERSAMPLE
    img = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)

    def p(x: float, y: float) -> tuple[float, float]:
        return ox + x * sw, oy + y * sh

    def r(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return ox + x0 * sw, oy + y0 * sh, ox + x1 * sw, oy + y1 * sh

    draw_fn(d, p, r, rgb)
    img = img.resize((W // _SUPERSAMPLE, H // _SUPERSAMPLE), Image.Resampling.BOX)
    if mirror and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # The outline separates an object from a background of the same colour.
    alpha = img.getchannel("A")
    ring = alpha.point(lambda a: 255 if a > 100 else 0).filter(ImageFilter.MaxFilter(2 * max(1, round(extent / 40)) + 1))
    sprite = Image.new("RGBA", img.size, outline + (0,))
    sprite.putalpha(ring)
    sprite.alpha_composite(img)
    sprite = sprite.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BICUBIC, expand=True)
    return sprite.crop(sprite.getbbox())  # the size that placement sees is the visible size


_SKY: dict[str, tuple[Colour, Colour]] = {  # (top, horizon)
    "day": ((70, 140, 225), (175, 215, 245)),
    "sunset": ((225, 95, 150), (255, 160, 55)),
    "night": ((4, 6, 22), (22, 28, 62)),
}
# Night darkens the background strongly, sunset warms it; objects are only slightly affected.
_GROUND_LIGHT: dict[str, tuple[float, float, float]] = {
    "day": (1.0, 1.0, 1.0), "sunset": (1.0, .88, .8), "night": (.36, .38, .5),
}
_OBJECT_LIGHT: dict[str, tuple[float, float, float]] = {
    "day": (1.0, 1.0, 1.0), "sunset": (1.0, .97, .94), "night": (.9, .9, .92),
}
_GROUND: dict[str, Colour] = {
    "sea": (30, 95, 170), "field": (75, 150, 45), "road": (92, 92, 98),
    "snow": (236, 240, 248), "desert": (225, 190, 120), "beach": (238, 214, 160),
}


def _jitter(rgb: Colour, rng: np.random.Generator, amount: float) -> Colour:
    f = rng.uniform(1 - amount, 1 + amount)
    return tuple(int(np.clip(c * f + rng.uniform(-8, 8), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _background(scene: Scene, rng: np.random.Generator, size: int) -> Image.Image:
    horizon = int(size * rng.uniform(.36, .56))
    top, bottom = (np.array(c, dtype=np.float32) for c in _SKY[scene.time])
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None]
    arr = np.empty((size, size, 3), dtype=np.uint8)
    arr[:horizon] = (top * (1 - t) + bottom * t).astype(np.uint8)[:, None, :]
    ground = _jitter(_GROUND[scene.setting], rng, .06)
    arr[horizon:] = ground
    sky = Image.fromarray(arr[:horizon].copy())
    img = Image.fromarray(arr)
    d = ImageDraw.Draw(img)
    s = size / 256
    gh = size - horizon

    def uni(a: float, b: float) -> float:
        return float(rng.uniform(a, b))

    if scene.setting == "sea":
        for _ in range(int(rng.integers(14, 22))):
            x, y = uni(-20, size), uni(horizon + 4, size)
            ln = uni(14, 34) * s * (0.5 + (y - horizon) / gh)
            d.line([(x, y), (x + ln, y)], fill=(120, 175, 230), width=max(1, round(2 * s)))
        d.rectangle([0, horizon, size, horizon + 2 * s], fill=(20, 70, 140))
    elif scene.setting == "field":
        dark = _shade(ground, .75)
        for _ in range(int(rng.integers(50, 80))):
            x, y = uni(0, size), uni(horizon + 3, size)
            ln = (4 + 10 * (y - horizon) / gh) * s
            d.line([(x, y), (x + uni(-3, 3) * s, y - ln)], fill=dark, width=max(1, round(2 * s)))
    elif scene.setting == "road":
        d.rectangle([0, horizon, size, horizon + gh * .1], fill=(70, 135, 50))  # verge
        mid = horizon + gh * uni(.45, .6)
        dash, gap, x = 22 * s, 14 * s, -uni(0, 36) * s
        while x < size:
            d.rectangle([x, mid - 3 * s, x + dash, mid + 3 * s], fill=(240, 240, 240))
            x += dash + gap
        edge = horizon + gh * .13
        d.rectangle([0, edge, size, edge + 3 * s], fill=(235, 200, 40))
        d.rectangle([0, size - 8 * s, size, size - 5 * s], fill=(240, 240, 240))
    elif scene.setting == "snow":
        for _ in range(int(rng.integers(4, 8))):
            x, y = uni(-40, size), uni(horizon + 6, size)
            w = uni(40, 110) * s
            d.ellipse([x, y, x + w, y + w * .18], fill=(200, 212, 232))
    elif scene.setting == "beach":  # a strip of sea at the horizon, pale sand with a foam line below
        shore = horizon + gh * uni(.22, .34)
        d.rectangle([0, horizon, size, shore], fill=(40, 120, 190))
        xs = np.linspace(0, size, 24)
        amp, freq, phase = uni(2, 5) * s, uni(2, 4) * 2 * math.pi / size, uni(0, 6.3)
        foam = [(float(x), float(shore + amp * math.sin(freq * x + phase))) for x in xs]
        d.polygon(foam + [(size, horizon), (0, horizon)], fill=(40, 120, 190))
        d.line(foam, fill=(250, 250, 250), width=max(1, round(3 * s)))
        for _ in range(int(rng.integers(6, 12))):  # shells and pebbles
            x, y = uni(0, size), uni(shore + 8 * s, size)
            w = uni(3, 7) * s
            d.ellipse([x, y, x + w, y + w * .7], fill=(205, 170, 130))
    else:  # desert: two or three dune ridges, darker further down
        xs = np.linspace(0, size, 24)
        for k in range(int(rng.integers(2, 4))):
            y0 = horizon + gh * (.15 + .3 * k) + uni(-6, 6) * s
            amp, freq, phase = uni(5, 12) * s, uni(1.2, 2.5) * 2 * math.pi / size, uni(0, 6.3)
            ridge = [(float(x), float(y0 - amp * math.sin(freq * x + phase))) for x in xs]
            d.polygon(ridge + [(size, size), (0, size)], fill=_shade(ground, .93 - .05 * k))
            d.line(ridge, fill=_shade(ground, 1.06), width=max(1, round(2 * s)))

    ground_img = img.crop((0, horizon, size, size))
    ground_img = Image.fromarray(
        (np.asarray(ground_img, dtype=np.float32) * np.array(_GROUND_LIGHT[scene.time], dtype=np.float32))
        .clip(0, 255).astype(np.uint8))
    img.paste(ground_img, (0, horizon))
    img.paste(sky, (0, 0))
    if scene.time == "night":
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(15, 30))):
            x, y = uni(0, size), uni(0, horizon - 2)
            v = int(rng.integers(150, 255))
            d.point((x, y), fill=(v, v, v))
    return img


def _sprite_colour(colour: str, time: str, rng: np.random.Generator) -> Colour:
    base = ALL_COLOURS[colour]
    if colour == "white":
        f = rng.uniform(.9, 1.0)
        rgb = tuple(int(c * f) for c in base)
    elif colour == "black":
        v = int(rng.integers(10, 40))
        rgb = (v, v, v)
    else:
        rgb = _jitter(base, rng, .06)
    light = _OBJECT_LIGHT[time]
    return tuple(int(c * l) for c, l in zip(rgb, light))  # type: ignore[return-value]


def _outline_colour(colour: str) -> Colour:
    return (225, 225, 225) if colour == "black" else (18, 18, 18)


def _boxes_overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float], gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _place_free(sprites: list[Image.Image], size: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners for sprites that do not overlap (random, with retries)."""
    margin = 2
    for _ in range(200):
        boxes: list[tuple[float, float, float, float]] = []
        for sp in sprites:
            w, h = sp.size
            for _ in range(30):
                x = float(rng.uniform(margin, max(margin, size - w - margin)))
                y = float(rng.uniform(margin, max(margin, size - h - margin)))
                box = (x, y, x + w, y + h)
                if not any(_boxes_overlap(box, b, 4) for b in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == len(sprites):
            return [(round(b[0]), round(b[1])) for b in boxes]
    # Cannot happen with the sizes `render` uses; fall back to a row.
    return [(round(i * size / len(sprites)), round(size / 3)) for i in range(len(sprites))]


def _place_relation(a: Image.Image, b: Image.Image, relation: str, size: int,
                    rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int]]:
    """Corners for A and B with A clearly `relation` B: apart on one axis, aligned on the other."""
    horizontal = relation in ("left of", "right of")
    first, second = (a, b) if relation in ("left of", "above") else (b, a)
    margin = 2
    ax = 0 if horizontal else 1  # main axis
    lengths = (first.size[ax], second.size[ax])
    free = size - 2 * margin - sum(lengths)
    min_gap = 0.04 * size
    gap = min_gap + float(rng.uniform(.1, .7)) * max(free - min_gap, 0)
    start = margin + float(rng.uniform(0, max(0.0, free - gap)))
    main = (start, start + lengths[0] + gap)
    # Cross axis: centres within a small offset so the relation cannot read the other way.
    cross_len = (first.size[1 - ax], second.size[1 - ax])
    centre = float(rng.uniform(max(cross_len) / 2 + margin, size - max(cross_len) / 2 - margin))
    offset = float(rng.uniform(-1, 1)) * min(.08 * size, .25 * gap + .05 * size)
    cross = (centre - offset / 2 - cross_len[0] / 2, centre + offset / 2 - cross_len[1] / 2)
    cross = tuple(min(max(c, margin), size - l - margin) for c, l in zip(cross, cross_len))
    corners = [(main[i], cross[i]) if horizontal else (cross[i], main[i]) for i in range(2)]
    corner_first, corner_second = ((round(x), round(y)) for x, y in corners)
    return (corner_first, corner_second) if first is a else (corner_second, corner_first)


def _layers(scene: Scene, rng: np.random.Generator, size: int
            ) -> tuple[Image.Image, list[Image.Image], list[tuple[int, int]]]:
    """The background, the object sprites and their corners, drawn in `render`'s order."""
    img = _background(scene, rng, size)
    if scene.relation is None:
        lo, hi = ((.42, .58), (.32, .42), (.27, .34))[scene.count - 1]
        extents = [size * float(rng.uniform(lo, hi)) for _ in range(scene.count)]
        sprites = [_object_sprite(scene.obj, _sprite_colour(scene.colour, scene.time, rng), e, rng,
                                  _outline_colour(scene.colour)) for e in extents]
        corners = _place_free(sprites, size, rng)
    else:  # at most .37: two tilted square objects and a gap still fit side by side
        sprites = [
            _object_sprite(obj, _sprite_colour(colour, scene.time, rng), size * float(rng.uniform(.28, .37)),
                           rng, _outline_colour(colour))
            for colour, obj in scene.objects
        ]
        corners = list(_place_relation(sprites[0], sprites[1], scene.relation, size, rng))
    return img, sprites, corners


def _composite(background: Image.Image, sprites: list[Image.Image], corners: Sequence[tuple[int, int]],
               rng: np.random.Generator) -> Image.Image:
    img = background.copy()
    for sprite, corner in zip(sprites, corners):
        img.paste(sprite, corner, sprite)
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * float(rng.uniform(2.0, 6.0))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def render(scene: Scene, rng: np.random.Generator, size: int = 256) -> Image.Image:
    """Draw `scene` as an RGB image `size` pixels square; positions, sizes, shades and noise come from `rng`."""
    background, sprites, corners = _layers(scene, rng, size)
    return _composite(background, sprites, corners, rng)


def render_series(scene: Scene, rng: np.random.Generator, n: int, size: int = 256, *,
                  motion: float = 0.04, reframe: float = 0.0) -> list[Image.Image]:
    """`n` shots of one moment, like a burst: one drawing of `scene` whose objects move a little between shots.

    With `reframe` 0 the first shot is `render(scene, rng, size)` for the same `rng`
    state. In each later shot every object has moved by a third to all of `motion` of the
    image size from the previous shot, and the sensor noise is new. With `reframe` > 0
    every shot is a window of `1 - 2 * reframe` of the drawing at a random offset, scaled
    back to `size`: the camera moved a little. Shots of one series are one moment; the
    same scene drawn from another `rng` is another picture.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 <= reframe < 0.25:
        raise ValueError(f"reframe must be in [0, 0.25), got {reframe}")
    background, sprites, corners = _layers(scene, rng, size)
    where = [tuple(map(float, c)) for c in corners]
    shots = []
    for i in range(n):
        if i:
            moved = []
            for (x, y), sprite in zip(where, sprites):
                angle = float(rng.uniform(0, 2 * math.pi))
                step = size * motion * float(rng.uniform(1 / 3, 1))
                w, h = sprite.size
                moved.append((min(max(x + step * math.cos(angle), 0.0), float(size - w)),
                              min(max(y + step * math.sin(angle), 0.0), float(size - h))))
            where = moved
        shot = _composite(background, sprites, [(round(x), round(y)) for x, y in where], rng)
        if reframe > 0:
            x0, y0 = (float(v) for v in rng.uniform(0, 2 * reframe, 2) * size)
            side = (1 - 2 * reframe) * size
            shot = shot.resize((size, size), Image.Resampling.BICUBIC, box=(x0, y0, x0 + side, y0 + side))
        shots.append(shot)
    return shots


# ---------------------------------------------------------------------------------------
# Dataset generation
# ---------------------------------------------------------------------------------------

JPEG_QUALITY = 90
CSV_COLUMNS = ("filepath", "title", "canonical")


def _stream(seed: int, split: str, stream: int, world: str, *more: int) -> list[int]:
    # The base world's seeds are what they always were; other worlds get their own streams.
    key = [seed, _SPLIT_ID[split], stream, *more]
    return key if world == "base" else key + [1000 + _WORLD_ID[world]]


def image_rng(seed: int, split: str, index: int, world: str = "base") -> np.random.Generator:
    """The random stream for image `index` of a split: independent of workers and of `n`."""
    return np.random.default_rng(_stream(seed, split, _IMAGE_STREAM, world, index))


def _image_path(index: int, width: int) -> str:
    return f"images/{index:0{width}d}.jpg"


# ---------------------------------------------------------------------------------------
# Photo metadata: the toy world's photos were taken in real cities, over several years,
# with a few cameras (some of which write no GPS), and some carry no EXIF at all.
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class City:
    name: str
    country_code: str
    lat: float
    lon: float
    utc_offset: int        # minutes, standard time
    summer_time: bool      # +60 minutes from April to October (northern cities)


CITIES: tuple[City, ...] = (
    City("Lisbon", "PT", 38.7223, -9.1393, 0, True),
    City("Paris", "FR", 48.8566, 2.3522, 60, True),
    City("Zürich", "CH", 47.3769, 8.5417, 60, True),
    City("New York City", "US", 40.7128, -74.0060, -300, True),
    City("Tokyo", "JP", 35.6895, 139.6917, 540, False),
    City("Sydney", "AU", -33.8688, 151.2093, 600, False),
    City("São Paulo", "BR", -23.5505, -46.6333, -180, False),
    City("Reykjavík", "IS", 64.1466, -21.9426, 0, False),
)


@dataclass(frozen=True)
class Camera:
    make: str
    model: str
    lens: str | None
    focal_length: float
    aperture: float
    writes_gps: bool


CAMERAS: tuple[Camera, ...] = (
    Camera("Google", "Pixel 7", None, 6.81, 1.85, True),
    Camera("Apple", "iPhone 12", "iPhone 12 back dual wide camera 4.2mm f/1.6", 4.2, 1.6, True),
    Camera("Canon", "Canon EOS R5", "RF24-105mm F4 L IS USM", 50.0, 4.0, False),
    Camera("FUJIFILM", "X-T3", "XF35mmF1.4 R", 35.0, 1.4, True),
)
# Photos without any EXIF (a scan, a messaging app's copy): dated by their file only.
NO_EXIF_SHARE = 0.1
_YEARS = (2016, 2024)  # capture times fall in these years, inclusive
_HOURS = {"day": (9, 16), "sunset": (18, 20), "night": (21, 23)}


@dataclass(frozen=True)
class ToyPhotoMeta:
    """Where, when and with what a toy-world photo was taken (what its EXIF says)."""

    taken: "datetime.datetime"     # aware: wall-clock time with the city's offset
    city: City
    camera: Camera
    has_gps: bool
    lat: float
    lon: float
    iso: int
    exposure: float


def photo_metadata(seed: int, split: str, index: int, scene: Scene) -> ToyPhotoMeta | None:
    """The made-up EXIF of image `index` of a split; None for a photo without EXIF.

    Its own random stream: the pixels and captions are the same with or without it. The
    hour follows the scene's time of day.
    """
    import datetime

    rng = np.random.default_rng([seed, _SPLIT_ID[split], _EXIF_STREAM, index])
    if rng.random() < NO_EXIF_SHARE:
        return None
    city = CITIES[int(rng.integers(len(CITIES)))]
    camera = CAMERAS[int(rng.integers(len(CAMERAS)))]
    start = datetime.date(_YEARS[0], 1, 1).toordinal()
    day = datetime.date.fromordinal(start + int(rng.integers(datetime.date(_YEARS[1], 12, 31).toordinal() - start + 1)))
    lo, hi = _HOURS[scene.time]
    wall = datetime.datetime(day.year, day.month, day.day, int(rng.integers(lo, hi + 1)), int(rng.integers(60)),
                             int(rng.integers(60)))
    offset = city.utc_offset + (60 if city.summer_time and 4 <= day.month <= 10 else 0)
    taken = wall.replace(tzinfo=datetime.timezone(datetime.timedelta(minutes=offset)))
    # Within about 3 km of the centre: the same city, some streets apart.
    dist, bearing = 3.0 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    lat = city.lat + dist / 111.2 * math.cos(bearing)
    lon = city.lon + dist / (111.2 * math.cos(math.radians(city.lat))) * math.sin(bearing)
    iso = int((50, 100, 200, 400, 800, 1600, 3200)[int(rng.integers(7)) if scene.time != "day" else int(rng.integers(3))])
    exposure = float((1 / 1000, 1 / 250, 1 / 60, 1 / 15)[int(rng.integers(4))])
    return ToyPhotoMeta(taken, city, camera, camera.writes_gps, round(lat, 6), round(lon, 6), iso, exposure)


def _rational(value: float, den: int = 10_000) -> "TiffImagePlugin.IFDRational":
    from PIL import TiffImagePlugin

    return TiffImagePlugin.IFDRational(round(value * den), den)


def exif_bytes(meta: ToyPhotoMeta) -> Image.Exif:
    """The EXIF a camera would write for `meta`: IFD0, Exif IFD, and GPS IFD when it has GPS."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = meta.camera.make, meta.camera.model, 1
    sub = exif.get_ifd(0x8769)
    stamp = meta.taken.strftime("%Y:%m:%d %H:%M:%S")
    offset = meta.taken.strftime("%z")
    sub[0x9003] = sub[0x9004] = stamp
    sub[0x9011] = sub[0x9012] = f"{offset[:3]}:{offset[3:]}"
    sub[0x829A] = _rational(meta.exposure, 100_000)
    sub[0x829D] = _rational(meta.camera.aperture, 100)
    sub[0x8827] = meta.iso
    sub[0x920A] = _rational(meta.camera.focal_length, 100)
    if meta.camera.lens:
        sub[0xA434] = meta.camera.lens
    if meta.has_gps:
        gps = exif.get_ifd(0x8825)

        def dms(x: float) -> tuple:
            x = abs(x)
            d, m = int(x), int((abs(x) - int(x)) * 60)
            return (_rational(d, 1), _rational(m, 1), _rational((x - d - m / 60) * 3600, 1000))

        gps[1], gps[2] = ("N" if meta.lat >= 0 else "S"), dms(meta.lat)
        gps[3], gps[4] = ("E" if meta.lon >= 0 else "W"), dms(meta.lon)
    return exif


def _render_chunk(job: tuple[Path, str, int, int, int, list[tuple[int, Scene]], str, int]) -> list[tuple[int, str]]:
    """Draw and save some images with their EXIF; return (index, caption) for each. Runs in a worker process."""
    out_dir, split, seed, size, width, items, world, quality = job
    rows = []
    for index, scene in items:
        rng = image_rng(seed, split, index, world)
        meta = photo_metadata(seed, split, index, scene)
        extra = {"exif": exif_bytes(meta)} if meta is not None else {}
        path = out_dir / _image_path(index, width)
        render(scene, rng, size).save(path, format="JPEG", quality=quality, **extra)
        rows.append((index, caption(scene, rng)))
    return rows


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork starts workers at once and, unlike spawn, works from any caller (a notebook, a
    # script without a __main__ guard); the workers use only numpy and Pillow, never torch.
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def generate(out_dir: str | os.PathLike[str], n: int, split: str = "train", seed: int = 0, size: int = 256,
             workers: int | None = None, variants: bool | None = None, progress: bool = True,
             world: str = "base", quality: int = JPEG_QUALITY) -> Path:
    """Write `n` images under `out_dir/images/` and `out_dir/captions.csv`; return the csv path.

    The same (`seed`, `split`, `n`, `size`, `variants`, `world`, `quality`) always gives the
    same bytes, whatever `workers` is. `variants` defaults to on for the test and seen
    splits. `world` "ext" draws scenes that each show at least one word of the extension
    vocabulary (`EXTRA_OBJECTS`, `EXTRA_COLOURS`, `EXTRA_SETTINGS`); `quality` is the JPEG quality.
    """
    _check_split(split)
    _check_world(world)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1 to 100, got {quality}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes = plan_scenes(n, split, seed, variants, world)
    width = max(6, len(str(n - 1)))
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    chunk = max(1, min(200, n // (workers * 8) or 1))
    items = list(enumerate(scenes))
    jobs = [(out, split, seed, size, width, items[i:i + chunk], world, quality) for i in range(0, n, chunk)]
    titles: list[str] = [""] * n
    log.info("drawing %d %s images of the %s world into %s with %d workers", n, split, world, out, workers)
    with ExitStack() as stack:
        from tqdm import tqdm  # imported here: the CLI imports this module for every command

        bar = stack.enter_context(tqdm(total=n, desc=f"toyworld {split}", unit="img", disable=not progress))
        if workers == 1:
            done: Iterator[list[tuple[int, str]]] = map(_render_chunk, jobs)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=_mp_context()))
            done = pool.map(_render_chunk, jobs)
        for rows in done:
            for index, title in rows:
                titles[index] = title
            bar.update(len(rows))
    csv_path = out / "captions.csv"
    with atomic_writer(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for index, scene in enumerate(scenes):
            writer.writerow((_image_path(index, width), titles[index], canonical(scene)))
    log.info("wrote %s", csv_path)
    return csv_path


def read_captions(csv_path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a captions.csv written by `generate`, as dicts keyed by `CSV_COLUMNS`."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
