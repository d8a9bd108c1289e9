"""The shapes world is deterministic from its seed and covers what the built-in model needs."""

import numpy as np

from training.world import (BASE_SHAPES, PATTERNS, SHAPES, Scene, ShapeObject, class_prior_scenes, concept_scene,
                            render, reshaped, sample_scene, vocabulary)


def test_same_seed_same_scene_and_pixels():
    for seed in (0, 1, 99, 12345):
        for make in (lambda s: sample_scene(s), lambda s: sample_scene(s, shapes=SHAPES, patterns=PATTERNS),
                     lambda s: concept_scene(s, "star", "dotted")):
            a, b = make(seed), make(seed)
            assert a == b and a.caption == b.caption
            assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    assert sample_scene(0).caption != sample_scene(1).caption


def test_base_scenes_hold_no_held_out_concepts():
    scenes = [sample_scene(s) for s in range(500)]
    assert all(o.shape in BASE_SHAPES for sc in scenes for o in sc.objects)
    assert {sc.pattern for sc in scenes} == {"plain", "striped"}
    assert {sc.kind for sc in scenes} == {"single", "two", "count"}
    words = set(vocabulary())
    assert all(w in words for sc in scenes for w in sc.caption.split())


def test_caption_augmentations_are_deterministic_and_keep_every_word():
    import random

    from training.world import caption_single, sample_scene, sprinkle_words

    scene = next(s for s in map(sample_scene, range(100)) if s.kind == "single")
    once = [caption_single(scene, random.Random(seed), 0.0, shuffle=True) for seed in range(20)]
    assert once == [caption_single(scene, random.Random(seed), 0.0, shuffle=True) for seed in range(20)]
    assert len(set(once)) > 2  # the phrases come in different orders
    obj = scene.objects[0]
    assert all(obj.colour in c and obj.shape in c and scene.background in c for c in once)
    assert sum(c.startswith("on ") for c in once) > 0  # sometimes the background or position comes first
    noisy = sprinkle_words(scene.caption, random.Random(4))
    words, added = scene.caption.split(), noisy.split()
    assert 1 <= len(added) - len(words) <= 2
    it = iter(added)
    assert all(w in it for w in words)  # the original words keep their order


def test_concept_dataset_balances_colours_sizes_and_positions():
    from collections import Counter

    from training.world import COLOURS, POSITIONS, concept_dataset

    scenes = concept_dataset(32, "star")
    assert scenes == concept_dataset(32, "star") and scenes != concept_dataset(32, "star", seed=1)
    objects = [s.objects[0] for s in scenes]
    assert all(o.shape == "star" and s.background != o.colour and o.colour in s.caption
               for s, o in zip(scenes, objects))
    assert Counter(o.colour for o in objects) == {c: 4 for c in COLOURS}
    assert Counter((o.colour, o.size) for o in objects) == {(c, z): 2 for c in COLOURS for z in ("small", "large")}
    positions = Counter(o.position for o in objects)
    assert positions == dict(zip(POSITIONS, (7, 7, 6, 6, 6)))  # taken in turn: 32 = 5 * 6 + 2


def test_caption_phrasings_start_with_the_caption_and_vary_the_rest():
    from training.world import caption_phrasings

    scene = concept_scene(3, "star")
    phrasings = caption_phrasings(scene, 8, seed=2)
    assert phrasings == caption_phrasings(scene, 8, seed=2) and phrasings != caption_phrasings(scene, 8, seed=3)
    assert phrasings[0] == scene.caption and len(phrasings) == 8 and len(set(phrasings)) >= 3
    assert all("star" in p and "|" not in p and "\n" not in p for p in phrasings)  # no variant separators inside
    assert caption_phrasings(scene, 1) == [scene.caption]


def test_class_prior_scenes_redraw_the_concept_scenes_with_each_known_shape():
    stars = [concept_scene(seed, "star") for seed in range(4)]
    prior = class_prior_scenes(stars, 10)
    assert [p.objects[0].shape for p in prior] == ["circle"] * 4 + ["square"] * 4 + ["triangle"] * 2
    for k, scene in enumerate(prior):  # the same composition, the shape word swapped in the caption
        star = stars[k % 4]
        assert scene == concept_scene(k % 4, BASE_SHAPES[k // 4])
        assert scene.caption == star.caption.replace("star", scene.objects[0].shape)
        assert "star" not in scene.caption
        assert (scene.background, scene.objects[0].colour, scene.objects[0].centre) == \
            (star.background, star.objects[0].colour, star.objects[0].centre)
    count = reshaped(Scene("red", "plain", (ShapeObject("star", "blue", "small", (32, 64)),
                                            ShapeObject("star", "blue", "small", (96, 64))), "count",
                           "two blue stars on a red background"), "square")
    assert count.caption == "two blue squares on a red background"
    assert {o.shape for o in count.objects} == {"square"}
