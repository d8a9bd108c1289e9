"""GenEval-style prompt adherence for the shapes world: read a generated image back and score it.

    parse_prompt(text)   -> PromptSpec: background colour/pattern, objects (shape, colour, size, position),
                            expected count, kind (single / two / count)
    analyse_image(img)   -> ImageAnalysis: background colour/pattern and the objects found (same attributes)
    score(prompt, img)   -> {"colour", "shape", "background", "size", "position", "two_objects", "counting"}
                            in 0..1 (only the categories the prompt specifies) plus "overall", their mean
    evaluate(pairs)      -> each category averaged over the images that have it, "overall" over all images
    heldout_prompt_set() -> fixed (prompt, seed) benchmark: base concepts, 40% phrasings training never uses
    concept_prompt_set() -> single-object prompts featuring a held-out shape (to measure what a LoRA taught)

Everything is rule-based and uses the world's own vocabulary and geometry (training/world.py), so ground-truth
renders score ~1.0 in every category; see tests/test_evaluator.py.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from training.world import (BASE_PATTERNS, BASE_SHAPES, COLOURS, COUNT_WORDS, IMAGE_SIZE, PATTERN_TINT,
                            POSITIONS, SHAPES, SIZES, Scene, ShapeObject, _tint, concept_scene, sample_scene)

CATEGORIES = ("colour", "shape", "background", "size", "position", "two_objects", "counting")
COLOUR_NAMES = tuple(COLOURS)
PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)
TINTS = np.array([_tint(COLOURS[c], PATTERN_TINT) for c in COLOUR_NAMES], dtype=np.float32)

# ---------------------------------------------------------------- vocabulary (world words plus synonyms)

COLOUR_WORDS = {**{c: c for c in COLOURS}, "violet": "purple"}
SHAPE_WORDS = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}}
PLURAL_SHAPE_WORDS = {s + "s" for s in SHAPES}
GENERIC_NOUNS = {"shape": False, "shapes": True, "object": False, "objects": True, "thing": False,
                 "things": True}  # noun -> plural
SIZE_WORDS = {"small": "small", "tiny": "small", "little": "small", "large": "large", "big": "large",
              "huge": "large"}
POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "upper": "top", "bottom": "bottom",
                  "lower": "bottom", "center": "center", "centre": "center", "middle": "center",
                  "central": "center", "centered": "center", "centred": "center"}
RELATION_WORDS = {"above": ("top", "bottom"), "below": ("bottom", "top"), "under": ("bottom", "top"),
                  "beneath": ("bottom", "top"), "underneath": ("bottom", "top")}
NUMBER_WORDS = {**{w: n for n, w in COUNT_WORDS.items()}, "four": 4, "five": 5, "single": 1, "pair": 2,
                **{str(n): n for n in range(1, 10)}}
PATTERN_WORDS = {"plain": "plain", "solid": "plain", "striped": "striped", "stripes": "striped",
                 "stripy": "striped", "stripe": "striped", "dotted": "dotted", "dots": "dotted",
                 "dot": "dotted", "spotted": "dotted", "polka": "dotted"}
BACKGROUND_WORDS = {"background", "backgrounds", "backdrop", "bg"}
CLAUSE_BREAKS = {",", ";", ".", ":", "and", "with", "while", "plus"}
ARTICLES = {"a", "an", "the"}
LINKING_WORDS = {"is", "of", "colour", "color", ":", "in", "coloured", "colored"}  # "background is blue"

# ---------------------------------------------------------------- analysis constants (128x128 working size)

MIN_COMPONENT_PX = 30              # smaller components are noise
MIN_CORE_PX = 12                   # ... and so are components with less left after a 2-pixel erosion
FOREGROUND_MIN_DIST = 40.0         # RGB distance a foreground pixel keeps from the background..tint segment
SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2   # radius threshold between small and large
GENERATED_BLUR_PX = 2.0            # Gaussian blur (sigma, px) that stands for the VAE's softening of outlines
# area of each world shape in units of r^2 (geometry of world._shape_points), to turn area into a radius
AREA_PER_R2 = {"circle": np.pi, "square": 1.72 ** 2, "triangle": 0.5 * 1.9 * 1.75,
               "star": 5 * 0.45 * np.sin(np.pi / 5)}
# template outlines normalised to their bounding box (0..1), used for shape classification by IoU
_STAR = [(0.5 + 0.5 * (1 if i % 2 == 0 else 0.45) * np.cos(-np.pi / 2 + i * np.pi / 5) / np.cos(np.pi / 10),
          ((1 if i % 2 == 0 else 0.45) * np.sin(-np.pi / 2 + i * np.pi / 5) + 1) / (1 + np.cos(np.pi / 5)))
         for i in range(10)]
TEMPLATES = {"square": [(0, 0), (1, 0), (1, 1), (0, 1)], "triangle": [(0.5, 0), (1, 1), (0, 1)],
             "triangle_down": [(0, 0), (1, 0), (0.5, 1)], "star": _STAR, "circle": None}


# ================================================================ prompt parsing

@dataclass(frozen=True)
class ObjectSpec:
    """One object a prompt asks for; None means the prompt does not say."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for. kind: "single" (one object), "two" (two different objects) or "count"
    (n copies of one object; count None = an unspecified plural)."""

    background: str | None
    pattern: str | None
    objects: tuple[ObjectSpec, ...]
    count: int | None
    kind: str


def _tokens(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9]+|[,;.:]", prompt.lower())


def _clause_ids(tokens: list[str]) -> list[int]:
    ids, cid = [], 0
    for tok in tokens:
        if tok in CLAUSE_BREAKS:
            cid += 1
        ids.append(cid)
    return ids


def _find_background(tokens: list[str], nouns: set[int]) -> tuple[str | None, set[int]]:
    """Background colour and the token indices it used: "<colour> background", "background is <colour>",
    or a bare "on/against <colour>" that no shape noun follows."""
    colour_at = lambda i: 0 <= i < len(tokens) and tokens[i] in COLOUR_WORDS  # noqa: E731
    skip = ARTICLES | set(PATTERN_WORDS)
    for b, tok in enumerate(tokens):
        if tok not in BACKGROUND_WORDS:
            continue
        j = b - 1
        while j >= 0 and (tokens[j] in skip or colour_at(j)):  # "a striped blue background"
            if colour_at(j):
                return COLOUR_WORDS[tokens[j]], {j}
            j -= 1
        j = b + 1
        while j < len(tokens) and (tokens[j] in skip or tokens[j] in LINKING_WORDS):
            j += 1
        if colour_at(j) and j + 1 not in nouns:  # "background: blue", "background is blue"
            return COLOUR_WORDS[tokens[j]], {j}
    for i, tok in enumerate(tokens):
        if tok not in ("on", "against", "over"):
            continue
        j = i + 1
        while j < len(tokens) and tokens[j] in skip:
            j += 1
        if colour_at(j):
            k = j + 1
            while k < len(tokens) and tokens[k] in PATTERN_WORDS:
                k += 1
            if k not in nouns:  # "on black", "against a blue" (but not "on a blue square")
                return COLOUR_WORDS[tokens[j]], {j}
    return None, set()


def _attach(j: int, nouns: list[int], clause: list[int], forward_first: bool) -> int | None:
    """Index into `nouns` of the object the modifier at token j belongs to. Adjectives and numbers look
    forward in their clause first ("a red circle"), position words look back first ("a circle on the
    left"); a clause with no noun ("red square, left side") attaches to the previous object, else the next."""
    same = [k for k, n in enumerate(nouns) if clause[n] == clause[j]]
    before = [k for k in same if nouns[k] < j]
    after = [k for k in same if nouns[k] > j]
    order = [after[:1], before[-1:]] if forward_first else [before[-1:], after[:1]]
    order += [[k for k, n in enumerate(nouns) if n < j][-1:], [k for k, n in enumerate(nouns) if n > j][:1]]
    for candidate in order:
        if candidate:
            return candidate[0]
    return None


def parse_prompt(prompt: str) -> PromptSpec:
    """Rule-based reading of a prompt (the world's own captions and free phrasings alike).

    Object nouns are shape words (and generic "shape"/"object" right after an attribute); colours, sizes and
    numbers attach to the noun they modify, positions to the noun they describe, "X above/below Y" and
    "X (to the) left/right of Y" set both positions; the background is "<colour> background", "background is
    <colour>" or "on <colour>". With two or more nouns the kind is "two"; one noun with a number or in the
    plural is "count"; otherwise "single"."""
    tokens = _tokens(prompt)
    modifiers = set(COLOUR_WORDS) | set(SIZE_WORDS) | set(NUMBER_WORDS)
    nouns = [i for i, t in enumerate(tokens)
             if t in SHAPE_WORDS or (t in GENERIC_NOUNS and i > 0 and tokens[i - 1] in modifiers)]
    clause = _clause_ids(tokens)
    background, used = _find_background(tokens, set(nouns))
    patterns = [PATTERN_WORDS[t] for t in tokens if t in PATTERN_WORDS]
    attrs = [{"shape": SHAPE_WORDS.get(tokens[n])} for n in nouns]
    counts: list[int | None] = [None] * len(nouns)

    def put(k: int | None, key: str, value) -> None:
        if k is not None and attrs[k].get(key) is None:
            attrs[k][key] = value

    relation_slots = set()
    for j, tok in enumerate(tokens):  # relations first: they fix both objects' positions
        rel = RELATION_WORDS.get(tok)
        if tok in ("left", "right") and j + 1 < len(tokens) and tokens[j + 1] == "of":
            rel = (tok, "right" if tok == "left" else "left")
        prev = [k for k, n in enumerate(nouns) if n < j][-1:]
        nxt = [k for k, n in enumerate(nouns) if n > j][:1]
        if rel and prev and nxt:
            put(prev[0], "position", rel[0])
            put(nxt[0], "position", rel[1])
            relation_slots.add(j)
    for j, tok in enumerate(tokens):
        if j in used or j in relation_slots or j in nouns:
            continue
        if tok in COLOUR_WORDS:
            put(_attach(j, nouns, clause, True), "colour", COLOUR_WORDS[tok])
        elif tok in SIZE_WORDS:
            put(_attach(j, nouns, clause, True), "size", SIZE_WORDS[tok])
        elif tok in NUMBER_WORDS:
            k = _attach(j, nouns, clause, True)
            if k is not None and counts[k] is None:
                counts[k] = NUMBER_WORDS[tok]
        elif tok in POSITION_WORDS:
            nxt = tokens[j + 1] if j + 1 < len(tokens) else ""
            if tok in ("top", "bottom", "upper", "lower") and nxt in ("left", "right"):
                continue  # "top left" corner: the world only has left/right there
            put(_attach(j, nouns, clause, False), "position", POSITION_WORDS[tok])
    objects = tuple(ObjectSpec(**a) for a in attrs)
    plural = len(nouns) == 1 and (tokens[nouns[0]] in PLURAL_SHAPE_WORDS
                                  or GENERIC_NOUNS.get(tokens[nouns[0]], False))
    if len(objects) >= 2:
        kind, count = "two", len(objects)
    elif objects and (counts[0] is not None or plural):
        kind, count = "count", counts[0]
    else:
        kind, count = "single", len(objects)
    return PromptSpec(background, patterns[0] if patterns else None, objects, count, kind)


# ================================================================ image analysis

@dataclass(frozen=True)
class DetectedObject:
    """One connected blob of non-background colour."""

    shape: str
    colour: str
    size: str
    position: str
    area: int
    centre: tuple[float, float]  # centre of mass (x, y) in 128x128 pixels


@dataclass(frozen=True)
class ImageAnalysis:
    background: str
    pattern: str  # plain | striped | dotted
    objects: tuple[DetectedObject, ...]  # largest first

    @property
    def count(self) -> int:
        return len(self.objects)


def _nearest(pixels: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest palette colour and the distance to it, per pixel (..., 3)."""
    dist = np.sqrt(((pixels[..., None, :] - palette) ** 2).sum(-1))
    idx = dist.argmin(-1)
    return idx, np.take_along_axis(dist, idx[..., None], -1)[..., 0]


def _segment_distance(pixels: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each pixel to the RGB segment a..b, and its position t (0 = a, 1 = b) along it."""
    ab = b - a
    t = np.clip(((pixels - a) @ ab) / max(float(ab @ ab), 1e-6), 0, 1)
    return np.linalg.norm(pixels - (a + t[..., None] * ab), axis=-1), t


def _draw_template(name: str, w: int, h: int, pad: int = 0, ss: int = 4) -> np.ndarray:
    """Coverage (0..1) of a shape template stretched to a w x h box, inside a `pad`-pixel margin."""
    canvas = Image.new("L", ((w + 2 * pad) * ss, (h + 2 * pad) * ss), 0)
    draw = ImageDraw.Draw(canvas)
    if TEMPLATES[name] is None:
        draw.ellipse([pad * ss, pad * ss, (pad + w) * ss - 1, (pad + h) * ss - 1], fill=255)
    else:
        draw.polygon([((pad + x * w) * ss, (pad + y * h) * ss) for x, y in TEMPLATES[name]], fill=255)
    return np.asarray(canvas.resize((w + 2 * pad, h + 2 * pad), Image.BOX), dtype=np.float32) / 255


@lru_cache(maxsize=4096)
def _template_masks(name: str, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A template stretched to a w x h box, crisp and as a decoded image draws it: blurred by GENERATED_BLUR_PX,
    cut at half coverage (points shorten, a star's notches fill) and stretched back to w x h."""
    pad = int(3 * GENERATED_BLUR_PX) + 1
    coverage = Image.fromarray((_draw_template(name, w, h, pad) * 255).astype(np.uint8))
    blurred = np.asarray(coverage.filter(ImageFilter.GaussianBlur(GENERATED_BLUR_PX)), dtype=np.float32) > 127.5
    ys, xs = np.nonzero(blurred)
    cut = Image.fromarray(blurred[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8) * 255)
    soft = np.asarray(cut.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255
    return _draw_template(name, w, h), soft


def classify_shape(mask: np.ndarray) -> str:
    """Shape of a binary blob: the template (circle, square, triangle, star) with the best IoU when stretched
    to the blob's bounding box, crisp or blurred. On world renders the right template scores >= 0.87 and any
    other <= 0.82 (square vs circle is the closest call). Decoded images are blurred by the VAE: small stars come
    back with filled notches that the crisp star template reads as a circle (6 of 30 VAE round trips), and all
    30 read right against the blurred one; squashed or rounded generated blobs land on the nearest shape."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    h, w = crop.shape
    ious = {name: max(float(np.minimum(crop, t).sum() / max(np.maximum(crop, t).sum(), 1e-6))
                      for t in _template_masks(name, w, h)) for name in TEMPLATES}
    best = max(ious, key=ious.get)
    return "triangle" if best == "triangle_down" else best


def _pattern(pixels: np.ndarray, bg: np.ndarray, tint: np.ndarray, keep: np.ndarray) -> str:
    """plain / striped / dotted from the background pixels (`keep`) closer to the tint than to the colour."""
    marks = (_segment_distance(ndimage.uniform_filter(pixels, size=(3, 3, 1)), bg, tint)[1] > 0.5) & keep
    if marks.sum() < 0.06 * max(keep.sum(), 1):
        return "plain"
    columns = marks.sum(0) / np.maximum(keep.sum(0), 1)  # stripes are vertical bands: whole columns of marks
    return "striped" if (columns > 0.7).mean() > 0.2 else "dotted"


def _describe(comp: np.ndarray, colour: int) -> DetectedObject:
    shape = classify_shape(comp)
    ys, xs = np.nonzero(comp)
    cx, cy = float(xs.mean()), float(ys.mean())
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] * IMAGE_SIZE - cx) ** 2
                   + (POSITIONS[p][1] * IMAGE_SIZE - cy) ** 2)
    radius = np.sqrt(comp.sum() / AREA_PER_R2[shape])
    return DetectedObject(shape, COLOUR_NAMES[colour], "small" if radius < SIZE_SPLIT else "large", position,
                          int(comp.sum()), (cx, cy))


def _is_object(comp: np.ndarray) -> bool:
    """Big enough, and not too thin: the halos a generator leaves around shapes survive an opening but not a
    2-pixel erosion."""
    return comp.sum() >= MIN_COMPONENT_PX and ndimage.binary_erosion(comp, iterations=2).sum() >= MIN_CORE_PX


def _read_objects(px: np.ndarray, comp: np.ndarray, bg: int) -> list[DetectedObject]:
    """The objects in one foreground component: its colour is the median of its core, then it is re-cut as
    the pixels nearer that colour than the background (drops halos, keeps edges, splits haloed neighbours)."""
    if not _is_object(comp):
        return []
    colour = int(_nearest(np.median(px[ndimage.binary_erosion(comp, iterations=2)], 0), PALETTE)[0])
    if colour == bg:
        return [_describe(comp, colour)]
    mine = np.linalg.norm(px - PALETTE[colour], axis=-1) < _segment_distance(px, PALETTE[bg], TINTS[bg])[0]
    parts, count = ndimage.label(mine & ndimage.binary_dilation(comp, iterations=2))
    pieces = [ndimage.binary_fill_holes(parts == k) for k in range(1, count + 1)]
    pieces = [p for p in pieces if _is_object(p)]
    return [_describe(p, colour) for p in pieces] if pieces else [_describe(comp, colour)]


def _foreground(img: Image.Image) -> tuple[np.ndarray, int, np.ndarray]:
    """(pixels, background colour index, foreground mask) of an image at the world's 128x128."""
    img = img.convert("RGB")
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    px = np.asarray(img, dtype=np.float32)
    both = np.concatenate([PALETTE, TINTS])
    label = _nearest(px, both)[0] % len(COLOUR_NAMES)  # tints count as their base colour
    border = np.concatenate([label[:2].ravel(), label[-2:].ravel(), label[:, :2].ravel(),
                             label[:, -2:].ravel()])
    bg = int(np.bincount(border, minlength=len(COLOUR_NAMES)).argmax())
    off_bg = (label != bg) & (_segment_distance(px, PALETTE[bg], TINTS[bg])[0] > FOREGROUND_MIN_DIST)
    return px, bg, ndimage.binary_fill_holes(ndimage.binary_opening(off_bg))


def foreground_mask(img: Image.Image) -> np.ndarray:
    """The 128x128 boolean mask of everything that is clearly not background (the objects), as analyse_image
    reads it: off the background colour and its pattern tint, opened, holes filled."""
    return _foreground(img)[2]


def analyse_image(img: Image.Image) -> ImageAnalysis:
    """Background colour (dominant palette colour on the border, pattern tints counted as their colour) and
    pattern, then every connected blob that is clearly not background: colour, shape, size, position.
    Any image size works (it is resized to the world's 128x128 first)."""
    px, bg, mask = _foreground(img)
    components, n = ndimage.label(mask)
    objects = []
    for i in range(1, n + 1):
        objects += _read_objects(px, components == i, bg)
    keep = ~ndimage.binary_dilation(mask, iterations=2)
    pattern = _pattern(px, PALETTE[bg], TINTS[bg], keep)
    return ImageAnalysis(COLOUR_NAMES[bg], pattern, tuple(sorted(objects, key=lambda o: -o.area)))


# ================================================================ scoring

def _matches(obj: DetectedObject, want: ObjectSpec) -> bool:
    return want.shape in (None, obj.shape) and want.colour in (None, obj.colour)


OPPOSITE = {("left", "right"): 0, ("right", "left"): 0, ("top", "bottom"): 1, ("bottom", "top"): 1}
RELATION_MARGIN = 8.0  # px the two centres must differ by along a left/right or top/bottom relation


def _two_objects_ok(found: tuple[DetectedObject, ...], a: ObjectSpec, b: ObjectSpec) -> bool:
    """Some two distinct detected objects match a and b in shape and colour, and stand where the prompt says:
    opposite positions ("left" and "right") are checked as a relation, others as absolute positions."""
    axis = OPPOSITE.get((a.position, b.position))
    for oa, ob in permutations(found, 2):
        if not (_matches(oa, a) and _matches(ob, b)):
            continue
        if axis is not None:
            first, second = (oa, ob) if a.position in ("left", "top") else (ob, oa)
            if second.centre[axis] - first.centre[axis] >= RELATION_MARGIN:
                return True
        elif a.position in (None, oa.position) and b.position in (None, ob.position):
            return True
    return False


def score(prompt: str, img: Image.Image) -> dict[str, float]:
    """Per-category adherence (0 or 1) for the categories the prompt specifies, plus "overall" (their mean).

    background: colour (and the pattern, when the prompt names one); single-object prompts: colour, shape,
    size and position of the largest object; two objects: "two_objects"; counts: "counting" (number of
    objects right and every one of the asked shape/colour; an unspecified plural needs >= 2)."""
    spec = parse_prompt(prompt)
    found = analyse_image(img)
    out: dict[str, float] = {}
    if spec.background or spec.pattern:
        out["background"] = float(spec.background in (None, found.background)
                                  and spec.pattern in (None, found.pattern))
    if spec.kind == "single" and spec.objects:
        want, obj = spec.objects[0], (found.objects[0] if found.objects else None)
        for cat in ("colour", "shape", "size", "position"):
            if getattr(want, cat) is not None:
                out[cat] = float(obj is not None and getattr(obj, cat) == getattr(want, cat))
    elif spec.kind == "two":
        out["two_objects"] = float(_two_objects_ok(found.objects, spec.objects[0], spec.objects[1]))
    elif spec.kind == "count":
        right_number = found.count == spec.count if spec.count is not None else found.count >= 2
        out["counting"] = float(right_number and all(_matches(o, spec.objects[0]) for o in found.objects))
    if out:
        out["overall"] = float(np.mean(list(out.values())))
    return out


def evaluate(pairs) -> dict[str, float]:
    """Mean of each category over the (prompt, image) pairs that specify it (in CATEGORIES order), and
    "overall": the mean of the per-image overall scores."""
    per_cat: dict[str, list[float]] = {}
    for prompt, img in pairs:
        for cat, value in score(prompt, img).items():
            per_cat.setdefault(cat, []).append(value)
    result = {cat: float(np.mean(per_cat[cat])) for cat in CATEGORIES if cat in per_cat}
    result["overall"] = float(np.mean(per_cat.get("overall", [0.0])))
    return result


def evaluate_by_phrasing(pairs, scenes) -> dict[str, dict[str, float]]:
    """evaluate() over all pairs, over those in the training captions' style and over the novel phrasings
    (`scenes` are the heldout_scenes behind the pairs, in the same order)."""
    novel = [bool(scene.attrs.get("novel")) for scene, _ in scenes]
    return {"all prompts": evaluate(pairs),
            "training-style phrasings": evaluate([p for p, n in zip(pairs, novel) if not n]),
            "novel phrasings": evaluate([p for p, n in zip(pairs, novel) if n])}


# ================================================================ benchmark prompt sets

_NOVEL_POS = {
    "center": ["in the centre", "in the middle of the image", "centred"],
    "left": ["to the left", "on the left of the image", "left side"],
    "right": ["to the right", "on the right of the picture", "right side"],
    "top": ["near the top", "in the upper half", "at the top of the image"],
    "bottom": ["near the bottom", "in the lower half", "at the bottom of the picture"],
}
_NOVEL_SIZE = {"small": ["small", "tiny", "little"], "large": ["large", "big"]}
_NOVEL_SINGLE = [
    "{bgp} background with {a} {size} {colour} {shape} {pos}",
    "{colour} {shape}, {size}, {pos}, {bgp} backdrop",
    "there is {a} {size} {shape} that is {colour} {pos} on {bga} {bgp} background",
    "picture of {a} {size} {colour} {shape} {pos}, background is {bg}",
    "{a} {size} {colour} {shape} {pos} on {bg}",
    "drawing of {a} {size} {colour} {shape} {pos} against {bga} {bgp} background",
]
_NOVEL_TWO = [
    "on the {p1} {a1} {c1} {s1}, on the {p2} {a2} {c2} {s2}, {bgp} background",
    "{a1} {c1} {s1} {rel} {a2} {c2} {s2} on {bg}",
    "{bgp} background with {a1} {c1} {s1} at the {p1} and {a2} {c2} {s2} at the {p2}",
    "image of {a1} {c1} {s1} ({p1}) and {a2} {c2} {s2} ({p2}) on {bga} {bgp} background",
]
_NOVEL_COUNT = [
    "{n} {c} {s} on {bg}",
    "exactly {n} {c} {s} on {bga} {bgp} background",
    "{bgp} background with {n} {c} {s}",
    "an image of {n} {s}, all {c}, on {bga} {bgp} background",
]
_RELATION = {("left", "right"): "to the left of", ("right", "left"): "to the right of",
             ("top", "bottom"): "above", ("bottom", "top"): "below"}
_COUNT_SLOTS = {1: [(0.5, 0.5)], 2: [(0.28, 0.5), (0.72, 0.5)], 3: [(0.22, 0.5), (0.5, 0.5), (0.78, 0.5)]}
HELDOUT_SCENE_SEEDS = 500_000  # benchmark scenes: 500,000..900,000+n; the built-in model trains on 1,000,000+


def _centre(position: str) -> tuple[float, float]:
    return POSITIONS[position][0] * IMAGE_SIZE, POSITIONS[position][1] * IMAGE_SIZE


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _bg_words(bg: str, pattern: str) -> dict[str, str]:
    bgp = bg if pattern == "plain" else f"{pattern} {bg}"
    return {"bg": bg, "bgp": bgp, "bga": _article(bgp)}


def _novel_scene(rng: random.Random, kind: str, shapes: tuple[str, ...], pattern: str) -> Scene:
    """A scene with a prompt in a phrasing the world's captions never use (Scene.caption holds the prompt)."""
    bg = rng.choice(COLOUR_NAMES)
    others = [c for c in COLOUR_NAMES if c != bg]
    words = _bg_words(bg, pattern)
    if kind == "single":
        pos, size, colour, shape = rng.choice(list(POSITIONS)), rng.choice(list(SIZES)), rng.choice(others), \
            rng.choice(shapes)
        obj = ShapeObject(shape, colour, size, _centre(pos), pos)
        size_word = rng.choice(_NOVEL_SIZE[size])
        text = rng.choice(_NOVEL_SINGLE).format(a=_article(size_word), size=size_word, colour=colour,
                                                shape=shape, pos=rng.choice(_NOVEL_POS[pos]), **words)
        return Scene(bg, pattern, (obj,), kind, text, {"novel": True})
    if kind == "two":
        pair = rng.choice(list(_RELATION))
        colours, kinds = rng.sample(others, 2), [rng.choice(shapes) for _ in pair]
        objs = tuple(ShapeObject(s, c, "small", _centre(p), p) for s, c, p in zip(kinds, colours, pair))
        text = rng.choice(_NOVEL_TWO).format(p1=pair[0], p2=pair[1], c1=colours[0], c2=colours[1],
                                             s1=kinds[0], s2=kinds[1], a1=_article(colours[0]),
                                             a2=_article(colours[1]), rel=_RELATION[pair], **words)
        return Scene(bg, pattern, objs, kind, text, {"novel": True})
    n, colour, shape = rng.choice(list(_COUNT_SLOTS)), rng.choice(others), rng.choice(shapes)
    slots = _COUNT_SLOTS[n] if rng.random() < 0.5 else [(y, x) for x, y in _COUNT_SLOTS[n]]
    objs = tuple(ShapeObject(shape, colour, "small", (x * IMAGE_SIZE, y * IMAGE_SIZE)) for x, y in slots)
    template = rng.choice(_NOVEL_COUNT[:3] if n == 1 else _NOVEL_COUNT)  # "one circle, all red" reads oddly
    text = template.format(n=COUNT_WORDS[n], c=colour, s=shape + ("s" if n > 1 else ""), **words)
    return Scene(bg, pattern, objs, "count", text, {"novel": True})


def heldout_scenes(n: int = 240, seed: int = 2025) -> list[tuple[Scene, int]]:
    """The scenes behind heldout_prompt_set (Scene.caption is the prompt), with a generation seed each.

    Per block of 5: 3 captions in the training style (fully specified; scenes the model never trained on) and
    2 novel phrasings cycling through single / two / count (Scene.attrs["novel"]), so 40% of the prompts use
    phrasings training never does. Base shapes and plain/striped backgrounds only."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 5 < 3:
            scene_seed = HELDOUT_SCENE_SEEDS + (seed % 400) * 1000 + i
            scene = sample_scene(scene_seed, BASE_SHAPES, BASE_PATTERNS, drop=0.0)
        else:
            kind = ("single", "two", "count")[(2 * (i // 5) + i % 5 - 3) % 3]
            scene = _novel_scene(rng, kind, BASE_SHAPES, "striped" if rng.random() < 0.3 else "plain")
        out.append((scene, 10_000 + i))
    return out


def heldout_prompt_set(n: int = 240, seed: int = 2025) -> list[tuple[str, int]]:
    """Fixed (prompt, seed) pairs for benchmarking the built-in model: base shapes, plain/striped backgrounds;
    single-object (colour/shape/background/size/position), two-object and counting prompts; 40% novel
    phrasings. Deterministic for a given (n, seed)."""
    return [(scene.caption, s) for scene, s in heldout_scenes(n, seed)]


def concept_prompt_set(shape: str = "star", n: int = 40, seed: int = 7,
                       pattern: str = "plain") -> list[tuple[str, int]]:
    """Single-object prompts featuring a (held-out) shape, half in the training captions' style (scene seeds
    far from those a LoRA trains on) and half in novel phrasings; for measuring what a LoRA taught."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            text = concept_scene(HELDOUT_SCENE_SEEDS + (seed % 400) * 1000 + i, shape, pattern).caption
        else:
            text = _novel_scene(rng, "single", (shape,), pattern).caption
        out.append((text, 20_000 + i))
    return out
