"""Read a shapes-world image back and score how well it follows its prompt (GenEval-style categories).

    analyse_image(img)  -> background colour, objects (colour, shape, size, position), count
    parse_prompt(text)  -> what the prompt asks for (also phrasings never used in training)
    score(prompt, img)  -> {"colour", "shape", "background", "size", "position", "two_objects", "counting"}
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np

from training.world import (BASE_SHAPES, COLOURS, COUNT_WORDS, IMAGE_SIZE, PATTERN_TINT, POSITIONS, SHAPES, SIZES,
                            _tint, sample_scene)

CATEGORIES = ("colour", "shape", "background", "size", "position", "two_objects", "counting")
COLOUR_NAMES = list(COLOURS)
SIZE_WORDS = {"small": "small", "tiny": "small", "little": "small", "large": "large", "big": "large",
              "huge": "large"}
POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "upper": "top", "bottom": "bottom",
                  "lower": "bottom", "center": "center", "centre": "center", "middle": "center"}
NUMBER_WORDS = {**{v: k for k, v in COUNT_WORDS.items()}, "1": 1, "2": 2, "3": 3, "single": 1, "a": 1, "an": 1}
BACKGROUND_WORDS = ("background", "backdrop", "backgrounds")
MIN_COMPONENT_PX = 30
SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2


# ---------------------------------------------------------------- image analysis

@dataclass
class DetectedObject:
    colour: str
    shape: str
    size: str
    position: str
    area: int
    centre: tuple[float, float]


@dataclass
class ImageAnalysis:
    background: str
    objects: list[DetectedObject]

    @property
    def count(self) -> int:
        return len(self.objects)


def _palette():
    """Palette entries (RGB) and the colour name each stands for (pattern tints map to their base colour)."""
    rgb, names = [], []
    for name, value in COLOURS.items():
        rgb.append(value)
        names.append(name)
        rgb.append(_tint(value, PATTERN_TINT))
        names.append(name)
    return np.array(rgb, dtype=np.float32), names


def _label_pixels(arr: np.ndarray) -> np.ndarray:
    """Index into COLOUR_NAMES of the nearest palette colour for every pixel."""
    palette, names = _palette()
    dist = ((arr[:, :, None, :] - palette[None, None, :, :]) ** 2).sum(-1)
    nearest = dist.argmin(-1)
    lookup = np.array([COLOUR_NAMES.index(n) for n in names])
    return lookup[nearest]


def _classify_shape(mask: np.ndarray) -> str:
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(mask)
    area = len(xs)
    w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    fill = area / float(w * h)
    try:
        pts = np.concatenate([np.stack([xs, ys], 1) + d for d in ((0, 0), (1, 0), (0, 1), (1, 1))])
        hull = ConvexHull(pts).volume
        solidity = area / hull if hull > 0 else 1.0
    except (QhullError, ValueError):
        solidity = 1.0
    if solidity < 0.75:
        return "star"
    if fill > 0.88:
        return "square"
    if fill > 0.66:
        return "circle"
    return "triangle"


def analyse_image(img) -> ImageAnalysis:
    """Background colour and every object (components of non-background colour) of a 128x128-ish image."""
    from PIL import Image
    from scipy import ndimage

    img = img.convert("RGB")
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    labels = _label_pixels(arr)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    bg_index = int(np.bincount(border, minlength=len(COLOUR_NAMES)).argmax())
    mask = labels != bg_index
    mask = ndimage.binary_opening(mask, iterations=1)
    components, n = ndimage.label(mask)
    objects = []
    for i in range(1, n + 1):
        comp = components == i
        area = int(comp.sum())
        if area < MIN_COMPONENT_PX:
            continue
        colour = COLOUR_NAMES[int(np.bincount(labels[comp], minlength=len(COLOUR_NAMES)).argmax())]
        ys, xs = np.nonzero(comp)
        cx, cy = float(xs.mean()), float(ys.mean())
        radius = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / 2
        position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] * IMAGE_SIZE - cx) ** 2
                       + (POSITIONS[p][1] * IMAGE_SIZE - cy) ** 2)
        objects.append(DetectedObject(colour, _classify_shape(comp), "small" if radius < SIZE_SPLIT else "large",
                                      position, area, (cx, cy)))
    objects.sort(key=lambda o: -o.area)
    return ImageAnalysis(COLOUR_NAMES[bg_index], objects)


# ---------------------------------------------------------------- prompt parsing

@dataclass
class ObjectSpec:
    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    position: str | None = None
    count: int = 1


@dataclass
class PromptSpec:
    background: str | None
    objects: list[ObjectSpec] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if len(self.objects) >= 2:
            return "two"
        if self.objects and self.objects[0].count != 1:
            return "count"
        return "single"


def _shape_of(word: str) -> str | None:
    for shape in SHAPES:
        if word in (shape, shape + "s"):
            return shape
    return None


def parse_prompt(prompt: str) -> PromptSpec:
    """What a prompt asks for: background colour and objects with their attributes (None = not said)."""
    words = re.findall(r"[a-z0-9]+", prompt.lower())
    background = None
    used = set()
    for i, w in enumerate(words):
        if w in BACKGROUND_WORDS:
            for j in range(i - 1, max(-1, i - 4), -1):
                if words[j] in COLOURS:
                    background, _ = words[j], used.add(j)
                    break
    if background is None:  # "... on black" with no shape noun after the colour
        for i, w in enumerate(words):
            if w == "on" and i + 1 < len(words) and words[i + 1] in COLOURS and \
                    not any(_shape_of(x) for x in words[i + 2:]):
                background = words[i + 1]
                used.add(i + 1)
    nouns = [i for i, w in enumerate(words) if _shape_of(w)]
    objects, bounds = [], [-1] + nouns
    for k, i in enumerate(nouns):
        spec = ObjectSpec(shape=_shape_of(words[i]))
        start = bounds[k] + 1
        for j in range(start, i):
            w = words[j]
            if j in used:
                continue
            if w in COLOURS:
                spec.colour = w
            elif w in SIZE_WORDS:
                spec.size = SIZE_WORDS[w]
            elif w in NUMBER_WORDS and w not in ("a", "an"):
                spec.count = NUMBER_WORDS[w]
        # "a circle that is orange": colour after the noun, before the next noun
        end = nouns[k + 1] if k + 1 < len(nouns) else len(words)
        if spec.colour is None:
            for j in range(i + 1, end):
                if words[j] in COLOURS and j not in used:
                    spec.colour = words[j]
                    used.add(j)
                    break
        objects.append(spec)
    # positions go to the nearest object noun
    for j, w in enumerate(words):
        if w in POSITION_WORDS and objects:
            if w in ("top", "bottom") and j + 1 < len(words) and words[j + 1] in ("left", "right"):
                continue
            nearest = min(range(len(nouns)), key=lambda k: (abs(nouns[k] - j), nouns[k] < j))
            if objects[nearest].position is None:
                objects[nearest].position = POSITION_WORDS[w]
    return PromptSpec(background, objects)


# ---------------------------------------------------------------- scoring

def _matches(obj: DetectedObject, spec: ObjectSpec) -> bool:
    return (spec.shape is None or obj.shape == spec.shape) and (spec.colour is None or obj.colour == spec.colour)


def score(prompt: str, img) -> dict[str, float]:
    """Per-category adherence (0/1) for the categories the prompt specifies, plus their mean as "overall"."""
    spec = parse_prompt(prompt)
    found = analyse_image(img)
    out: dict[str, float] = {}
    if spec.background:
        out["background"] = float(found.background == spec.background)
    if spec.kind == "single" and spec.objects:
        want = spec.objects[0]
        obj = found.objects[0] if found.objects else None
        for cat, attr in (("colour", "colour"), ("shape", "shape"), ("size", "size"), ("position", "position")):
            if getattr(want, attr) is not None:
                out[cat] = float(obj is not None and getattr(obj, attr) == getattr(want, attr))
    elif spec.kind == "two":
        remaining = list(found.objects)
        ok = len(found.objects) >= 2
        for want in spec.objects[:2]:
            match = next((o for o in remaining if _matches(o, want) and
                          (want.position is None or o.position == want.position)), None)
            ok = ok and match is not None
            if match is not None:
                remaining.remove(match)
        out["two_objects"] = float(ok)
    elif spec.kind == "count":
        want = spec.objects[0]
        out["counting"] = float(found.count == want.count and all(_matches(o, want) for o in found.objects))
    if out:
        out["overall"] = float(np.mean(list(out.values())))
    return out


def evaluate(pairs) -> dict[str, float]:
    """Mean of each category over the (prompt, image) pairs that have it, and the overall mean."""
    sums: dict[str, list[float]] = {}
    for prompt, img in pairs:
        for cat, value in score(prompt, img).items():
            sums.setdefault(cat, []).append(value)
    result = {cat: float(np.mean(v)) for cat, v in sums.items() if cat != "overall"}
    ordered = {cat: result[cat] for cat in CATEGORIES if cat in result}
    ordered["overall"] = float(np.mean(sums.get("overall", [0.0])))
    return ordered


# ---------------------------------------------------------------- prompt sets

def _pos_phrase(position: str, rng: random.Random) -> str:
    if position == "center":
        return rng.choice(["in the centre", "right in the middle", "centered"])
    return rng.choice([f"{position} side", f"towards the {position}", f"over on the {position}"])


NOVEL_SINGLE = [
    "a {colour} {shape} on a {bg} backdrop",
    "{bg} background with a {size} {colour} {shape} {pos}",
    "{colour} {shape}, {pos}, {bg} backdrop",
    "a {size} {shape} that is {colour}, {pos}, on a {bg} background",
    "picture of a {size} {colour} {shape} {pos} against a {bg} background",
]


def heldout_prompt_set(n: int = 240, seed: int = 20261125, shapes: tuple[str, ...] = BASE_SHAPES) -> list[tuple[str, int]]:
    """Fixed (prompt, seed) pairs: training-style captions and novel phrasings (>= 40%), base concepts only."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = i % 5
        if r < 3:  # captions in the training style, scenes the model never saw (other seeds)
            scene = sample_scene(seed * 1000 + i, shapes=shapes, drop=0.0)
            out.append((scene.caption, 10_000 + i))
            continue
        bg = rng.choice(COLOUR_NAMES)
        colours = [c for c in COLOUR_NAMES if c != bg]
        if r == 3:
            text = rng.choice(NOVEL_SINGLE).format(colour=rng.choice(colours), shape=rng.choice(shapes),
                                                   size=rng.choice(list(SIZES)), bg=bg,
                                                   pos=_pos_phrase(rng.choice(list(POSITIONS)), rng))
        elif i % 2:
            c1, c2 = rng.sample(colours, 2)
            s1, s2 = rng.choice(shapes), rng.choice(shapes)
            pair = rng.choice([("left", "right"), ("top", "bottom")])
            text = f"on the {pair[0]} a {c1} {s1}, on the {pair[1]} a {c2} {s2}, {bg} backdrop"
        else:
            count = rng.choice([1, 2, 3])
            shape = rng.choice(shapes)
            noun = shape + ("s" if count > 1 else "")
            text = f"exactly {COUNT_WORDS[count]} {rng.choice(colours)} {noun} on a {bg} background"
        out.append((text, 10_000 + i))
    return out


def concept_prompt_set(shape: str = "star", n: int = 40, seed: int = 7) -> list[tuple[str, int]]:
    """Single-object prompts featuring a (held-out) shape, for measuring what a LoRA taught."""
    pairs = heldout_prompt_set(n * 3, seed, shapes=(shape,))
    return [(p, s) for p, s in pairs if parse_prompt(p).kind == "single"][:n]
