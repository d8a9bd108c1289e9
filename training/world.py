"""The "shapes world": procedural scenes of coloured shapes with captions.

Every scene is deterministic from its seed. The built-in model is trained on it, the evaluator reads its
geometry back, and LoRA tests use its held-out concepts (the star shape and the dotted pattern).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field, replace

from PIL import Image, ImageDraw

IMAGE_SIZE = 128

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}

BASE_SHAPES = ("circle", "square", "triangle")
HELD_OUT_SHAPES = ("star",)
SHAPES = BASE_SHAPES + HELD_OUT_SHAPES

BASE_PATTERNS = ("plain", "striped")
HELD_OUT_PATTERNS = ("dotted",)
PATTERNS = BASE_PATTERNS + HELD_OUT_PATTERNS

SIZES = {"small": 15, "large": 27}  # radius in pixels at IMAGE_SIZE
POSITIONS = {  # centre as a fraction of the image side
    "center": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
PATTERN_TINT = 28  # how far a pattern's marks sit from the background colour


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object: its shape, colour, size name, and centre in pixels."""

    shape: str
    colour: str
    size: str
    centre: tuple[float, float]
    position: str = "center"


@dataclass(frozen=True)
class Scene:
    """A whole image description: background, pattern and objects, plus how the caption was phrased."""

    background: str
    pattern: str
    objects: tuple[ShapeObject, ...]
    kind: str = "single"  # single | two | count
    caption: str = ""
    attrs: dict = field(default_factory=dict, compare=False)


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.86
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    raise ValueError(f"unknown shape {shape!r}")


def _tint(rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    mean = sum(rgb) / 3
    sign = -1 if mean > 128 else 1
    return tuple(max(0, min(255, c + sign * amount)) for c in rgb)


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw a scene as an RGB image (supersampled 2x for clean edges)."""
    ss = 2
    big = size * ss
    bg = COLOURS[scene.background]
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    mark = _tint(bg, PATTERN_TINT)
    if scene.pattern == "striped":
        step = big // 8
        for x in range(0, big, step):
            draw.rectangle([x, 0, x + step // 2 - 1, big], fill=mark)
    elif scene.pattern == "dotted":
        step = big // 8
        for y in range(step // 2, big, step):
            for x in range(step // 2, big, step):
                draw.ellipse([x - step // 5, y - step // 5, x + step // 5, y + step // 5], fill=mark)
    scale = big / IMAGE_SIZE
    for obj in scene.objects:
        cx, cy = obj.centre[0] * scale, obj.centre[1] * scale
        r = SIZES[obj.size] * scale
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon(_shape_points(obj.shape, cx, cy, r), fill=colour)
    return img.resize((size, size), Image.LANCZOS)


# ---------------------------------------------------------------- captions

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _position_phrase(position: str, rng: random.Random) -> str:
    if position == "center":
        return rng.choice(["in the center", "in the middle", "at the center"])
    return rng.choice([f"on the {position}", f"at the {position}"])


def _bg_phrase(background: str, pattern: str, rng: random.Random) -> str:
    pat = "" if pattern == "plain" else f"{pattern} "
    return rng.choice([f"on a {pat}{background} background", f"on {_article(pat or background)} {pat}{background} background"])


def describe_object(obj: ShapeObject, rng: random.Random, keep: dict[str, bool], plural: bool = False) -> str:
    """Noun phrase for an object, e.g. "a small red circle"; attributes dropped when keep[...] is False."""
    words = []
    if keep.get("size", True):
        words.append(obj.size)
    if keep.get("colour", True):
        words.append(obj.colour)
    noun = obj.shape + ("s" if plural else "")
    phrase = " ".join(words + [noun])
    return phrase if plural else f"{_article(phrase)} {phrase}"


def caption_single(scene: Scene, rng: random.Random, drop: float = 0.0, shuffle: bool = False) -> str:
    """Caption for a one-object scene; each attribute is dropped with probability `drop`; `shuffle` puts the
    object, position and background phrases in any order (else only position and background may swap)."""
    obj = scene.objects[0]
    keep = {k: rng.random() >= drop for k in ("size", "colour", "position", "background")}
    noun = describe_object(obj, rng, keep)
    parts = [noun]
    if keep["position"]:
        parts.append(_position_phrase(obj.position, rng))
    if keep["background"]:
        parts.append(_bg_phrase(scene.background, scene.pattern, rng))
    if shuffle:
        rng.shuffle(parts)
    elif rng.random() < 0.5 and len(parts) == 3:
        parts[1], parts[2] = parts[2], parts[1]
    return " ".join(parts)


FILLER_WORDS = ("with", "image", "photo", "picture", "drawing", "of", "there", "is", "shape", "object", "style")


def sprinkle_words(caption: str, rng: random.Random, most: int = 2) -> str:
    """Insert 1..`most` words that carry no scene information (filler words, or made-up words the tokenizer
    splits into characters) at random places, so a model learns to ignore words it has no use for."""
    words = caption.split()
    for _ in range(rng.randint(1, most)):
        if rng.random() < 0.5:
            word = rng.choice(FILLER_WORDS)
        else:
            word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
        words.insert(rng.randint(0, len(words)), word)
    return " ".join(words)


def caption_two(scene: Scene, rng: random.Random) -> str:
    a, b = scene.objects
    first = f"{describe_object(a, rng, {'size': False})} {_position_phrase(a.position, rng)}"
    second = f"{describe_object(b, rng, {'size': False})} {_position_phrase(b.position, rng)}"
    return f"{first} and {second} {_bg_phrase(scene.background, scene.pattern, rng)}"


def caption_count(scene: Scene, rng: random.Random) -> str:
    obj = scene.objects[0]
    n = len(scene.objects)
    noun = describe_object(obj, rng, {"size": False}, plural=n > 1)
    if n == 1:
        noun = f"one {obj.colour} {obj.shape}"
    return f"{COUNT_WORDS[n]} {noun.split(' ', 1)[1] if n == 1 else noun} {_bg_phrase(scene.background, scene.pattern, rng)}"


def varied_caption(scene: Scene, rng: random.Random, drop: float = 0.15, shuffle: float = 0.3,
                   noise: float = 0.3) -> str:
    """A fresh phrasing of the scene's caption, as the built-in model trains on: single-object captions drop
    each attribute with probability `drop` and put their phrases in any order a `shuffle` share of the time;
    a `noise` share gets filler words (sprinkle_words)."""
    if scene.kind == "single":
        text = caption_single(scene, rng, drop, shuffle=rng.random() < shuffle)
    else:
        text = {"two": caption_two, "count": caption_count}[scene.kind](scene, rng)
    return sprinkle_words(text, rng) if rng.random() < noise else text


def caption_phrasings(scene: Scene, n: int, seed: int = 0, drop: float = 0.1, shuffle: float = 0.5,
                      noise: float = 0.3) -> list[str]:
    """`n` phrasings of a scene for a training caption's variants: its own caption first, then n - 1
    varied_caption draws (deterministic for a seed)."""
    rng = random.Random(seed)
    return [scene.caption] + [varied_caption(scene, rng, drop, shuffle, noise) for _ in range(n - 1)]


# ---------------------------------------------------------------- scene sampling

def _pick_colours(rng: random.Random, n: int, exclude: str) -> list[str]:
    names = [c for c in COLOURS if c != exclude]
    return [rng.choice(names) for _ in range(n)]


def sample_scene(
    seed: int,
    shapes: tuple[str, ...] = BASE_SHAPES,
    patterns: tuple[str, ...] = BASE_PATTERNS,
    kind_weights: tuple[float, float, float] = (0.7, 0.15, 0.15),
    drop: float = 0.15,
) -> Scene:
    """Deterministically sample a scene (and its caption) from `seed`."""
    rng = random.Random(seed)
    kind = rng.choices(["single", "two", "count"], weights=kind_weights)[0]
    background = rng.choice(list(COLOURS))
    pattern = rng.choices(patterns, weights=[3 if p == "plain" else 1 for p in patterns])[0]
    if kind == "single":
        position = rng.choice(list(POSITIONS))
        fx, fy = POSITIONS[position]
        obj = ShapeObject(rng.choice(shapes), _pick_colours(rng, 1, background)[0], rng.choice(list(SIZES)),
                          (fx * IMAGE_SIZE, fy * IMAGE_SIZE), position)
        scene = Scene(background, pattern, (obj,), kind)
        return Scene(background, pattern, (obj,), kind, caption_single(scene, rng, drop))
    if kind == "two":
        pair = rng.choice([("left", "right"), ("top", "bottom")])
        if rng.random() < 0.5:
            pair = pair[::-1]
        colours = _pick_colours(rng, 2, background)
        while colours[1] == colours[0]:
            colours[1] = _pick_colours(rng, 1, background)[0]
        objs = tuple(
            ShapeObject(rng.choice(shapes), colours[i], "small",
                        (POSITIONS[p][0] * IMAGE_SIZE, POSITIONS[p][1] * IMAGE_SIZE), p)
            for i, p in enumerate(pair)
        )
        scene = Scene(background, pattern, objs, kind)
        return Scene(background, pattern, objs, kind, caption_two(scene, rng))
    n = rng.choice([1, 2, 3])
    shape = rng.choice(shapes)
    colour = _pick_colours(rng, 1, background)[0]
    slots = {1: [(0.5, 0.5)], 2: [(0.28, 0.5), (0.72, 0.5)], 3: [(0.22, 0.5), (0.5, 0.5), (0.78, 0.5)]}[n]
    if rng.random() < 0.5:
        slots = [(y, x) for x, y in slots]
    objs = tuple(ShapeObject(shape, colour, "small", (x * IMAGE_SIZE, y * IMAGE_SIZE)) for x, y in slots)
    scene = Scene(background, pattern, objs, kind)
    return Scene(background, pattern, objs, kind, caption_count(scene, rng))


def moved(scene: Scene, position: str) -> Scene:
    """The same one-object scene with its object at another named position (caption left empty)."""
    fx, fy = POSITIONS[position]
    obj = replace(scene.objects[0], centre=(fx * IMAGE_SIZE, fy * IMAGE_SIZE), position=position)
    return replace(scene, objects=(obj,), caption="")


def concept_scene(seed: int, shape: str = "star", pattern: str = "plain", colour: str = "", size: str = "",
                  position: str = "") -> Scene:
    """A single-object scene featuring a given (possibly held-out) shape and pattern, with a full caption;
    colour, size and position are drawn from `seed` unless given."""
    rng = random.Random(seed)
    background = rng.choice([c for c in COLOURS if c != colour])
    position = position or rng.choice(list(POSITIONS))
    fx, fy = POSITIONS[position]
    colour = colour or _pick_colours(rng, 1, background)[0]
    size = size or rng.choice(list(SIZES))
    obj = ShapeObject(shape, colour, size, (fx * IMAGE_SIZE, fy * IMAGE_SIZE), position)
    scene = Scene(background, pattern, (obj,), "single")
    return Scene(background, pattern, (obj,), "single", caption_single(scene, rng, 0.0))


def concept_dataset(n: int, shape: str = "star", seed: int = 0, pattern: str = "plain") -> list[Scene]:
    """`n` single-object scenes of a concept, as a person would pick them for a LoRA: every colour about equally
    often, each colour in both sizes, positions taken in turn (backgrounds drawn from the seed)."""
    colours, sizes, positions = list(COLOURS), list(SIZES), list(POSITIONS)
    return [concept_scene(seed * 100_000 + i, shape, pattern, colours[i % len(colours)],
                          sizes[(i // len(colours)) % len(sizes)], positions[i % len(positions)])
            for i in range(n)]


def reshaped(scene: Scene, shape: str) -> Scene:
    """The same scene (background, colours, sizes, positions) with every object drawn as `shape` and the
    caption's shape words (singular and plural) changed to match: a class-prior image of a concept's scene."""
    if not scene.objects:
        return scene
    words = re.compile(r"\b(" + "|".join(sorted({o.shape for o in scene.objects})) + r")(s?)\b")
    return replace(scene, objects=tuple(replace(o, shape=shape) for o in scene.objects),
                   caption=words.sub(lambda m: shape + m.group(2), scene.caption))


def class_prior_scenes(scenes: list[Scene], n: int, shapes: tuple[str, ...] = BASE_SHAPES) -> list[Scene]:
    """`n` class-prior scenes for a concept's training scenes: each scene with a known shape in its place, the
    shapes in turn (all of `scenes` as the first shape, then as the second, ...), so the known shapes are
    regularized in exactly the compositions the concept is taught in."""
    return [reshaped(scenes[k % len(scenes)], shapes[(k // len(scenes)) % len(shapes)]) for k in range(n)]


def vocabulary() -> list[str]:
    """Every word any caption can use (for the tokenizer), sorted."""
    words = set(COLOURS) | set(SHAPES) | {s + "s" for s in SHAPES} | set(SIZES) | set(POSITIONS)
    words |= set(PATTERNS) | set(COUNT_WORDS.values())
    words |= {"a", "an", "on", "the", "at", "in", "middle", "and", "background", "of", "with", "image", "photo",
              "picture", "drawing", "shape", "shapes", "object", "objects", "above", "below", "next", "to",
              "is", "there", "big", "tiny", "centre", "upper", "lower", "corner", "style", "star", "stars"}
    return sorted(words)
