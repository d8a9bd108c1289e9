"""The evaluator reads ground-truth world images back perfectly and parses unusual phrasings."""

from __future__ import annotations

from PIL import Image

from training.evaluator import (CATEGORIES, concept_prompt_set, evaluate, heldout_prompt_set, parse_prompt,
                                score)
from training.world import COLOURS, PATTERNS, SHAPES, Scene, ShapeObject, concept_scene, render, sample_scene


def test_ground_truth_scores_at_least_098_in_every_category():
    pairs = []
    for seed in range(300):
        if seed % 3 == 0:
            scene = sample_scene(seed, shapes=SHAPES, patterns=PATTERNS, drop=0.0)
        elif seed % 3 == 1:
            scene = concept_scene(seed, "star", "dotted" if seed % 2 else "plain")
        else:
            scene = sample_scene(seed)
        pairs.append((scene.caption, render(scene)))
    result = evaluate(pairs)
    assert result["overall"] >= 0.98
    assert all(result[c] >= 0.97 for c in CATEGORIES), result


def test_unusual_phrasings():
    spec = parse_prompt("a blue background with a large yellow triangle in the middle")
    assert spec.background == "blue" and spec.objects[0].colour == "yellow"
    assert (spec.objects[0].shape, spec.objects[0].size, spec.objects[0].position) == ("triangle", "large", "center")
    spec = parse_prompt("red square, left side, green backdrop")
    assert (spec.background, spec.objects[0].colour, spec.objects[0].position) == ("green", "red", "left")
    spec = parse_prompt("three purple stars on black")
    assert spec.background == "black" and spec.kind == "count" and spec.objects[0].count == 3
    spec = parse_prompt("on the left a red circle, on the right a blue square, white background")
    assert spec.kind == "two" and [o.position for o in spec.objects] == ["left", "right"]
    assert [o.colour for o in spec.objects] == ["red", "blue"] and spec.background == "white"
    assert parse_prompt("a circle that is orange").objects[0].colour == "orange"


def test_wrong_images_score_zero():
    empty = Image.new("RGB", (128, 128), COLOURS["blue"])
    result = score("a red circle on a blue background", empty)
    assert result["shape"] == 0 and result["colour"] == 0 and result["background"] == 1
    wrong = render(Scene("blue", "plain", (ShapeObject("circle", "green", "large", (64, 64), "center"),)))
    assert score("a red circle on a blue background", wrong)["colour"] == 0


def test_prompt_sets_are_fixed_and_cover_every_category():
    first, second = heldout_prompt_set(), heldout_prompt_set()
    assert first == second and len(first) >= 200
    covered = set()
    for prompt, _ in first:
        covered |= {k for k in score(prompt, Image.new("RGB", (128, 128))) if k != "overall"}
    assert covered == set(CATEGORIES)
    assert all("star" not in p for p, _ in first)
    stars = concept_prompt_set("star", 20)
    assert len(stars) == 20 and all("star" in p for p, _ in stars)
