"""The benchmark command's sections run end to end on the shipped built-in model and print their numbers
(tiny sizes: this checks the command still works, it measures nothing)."""

from __future__ import annotations

import re

import pytest

from studio import bench


@pytest.fixture(autouse=True)
def _needs_builtin(builtin_available):
    if not builtin_available:
        pytest.skip("the built-in model is not installed")


def _number(out: str, label: str) -> float:
    line = next(line for line in out.splitlines() if label in line)
    return float(re.findall(r"-?\d+(?:\.\d+)?", line[line.index(label) + len(label):])[-1 if "->" in line else 0])


def test_generation_cache_gallery_and_adherence_sections_print_their_numbers(tmp_path, capsys):
    bench.bench_generation(tmp_path / "g", repeats=1)
    bench.bench_cache(tmp_path / "c")
    bench.bench_gallery(tmp_path, 300)
    bench.bench_adherence(tmp_path / "a", limit=3)
    out = capsys.readouterr().out
    assert _number(out, "wall-time ratio studio/raw (target <= 1.05)") > 0
    assert _number(out, "largest pixel difference studio vs raw (0..255; frozen CPU graphs round differently)") <= 3, \
        "the studio draws what diffusers draws"
    assert _number(out, "hit vs cold speed-up (target >= 20x)") > 1
    assert "Gallery store (300 images)" in out
    assert 0 <= _number(out, "overall") <= 1
    assert _number(out, "mean seconds per image (target <= 1 s)") > 0


def test_lora_proof_section_trains_scores_and_compares_with_a_bare_loop(tmp_path, capsys):
    bench.bench_lora(tmp_path / "l", bench.LoraProofRecipe(max_steps=3, eval_prompts=2, out=str(tmp_path / "out")))
    out = capsys.readouterr().out
    assert 0 <= _number(out, "star prompts (target >= 0.7) overall before -> after") <= 1
    assert 0 <= _number(out, "other concepts (target >= 0.8) overall before -> after") <= 1
    assert "3 steps" in out
    assert _number(out, "step time studio trainer / bare peft loop (target <= 1.1)") > 0
    kept = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"star-before.png", "star-after.png", "star.safetensors", "star-prompts.txt"} <= kept


def test_every_lora_recipe_field_has_a_flag_that_sets_it():
    from dataclasses import fields

    assert {field for _, field, _ in bench.LORA_RECIPE_FLAGS} == {f.name for f in fields(bench.LoraProofRecipe)}
    _, recipe = bench.parse_args([])
    assert recipe == bench.LoraProofRecipe()
    _, recipe = bench.parse_args(["--quick", "--lora-lr", "0.002", "--no-lora-embedding", "--lora-text-encoder",
                                  "--lora-skip-blocks", "up_blocks.2", "--lora-precision", "bf16",
                                  "--lora-images", "32", "--lora-class-prior", "0"])
    assert (recipe.minutes, recipe.learning_rate, recipe.train_embedding, recipe.train_text_encoder) == (1.0, 0.002,
                                                                                                         False, True)
    assert (recipe.skip_blocks, recipe.mixed_precision, recipe.images, recipe.class_prior) == ("up_blocks.2", "bf16",
                                                                                               32, 0)
