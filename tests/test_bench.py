"""The benchmark command's sections run end to end on the shipped built-in model and print their numbers
(tiny sizes: this checks the command still works, it measures nothing)."""

from __future__ import annotations

import re

import pytest

from bench import lora_proof, run


@pytest.fixture(autouse=True)
def _needs_builtin(builtin_available):
    if not builtin_available:
        pytest.skip("the built-in model is not installed")


def _number(out: str, label: str) -> float:
    line = next(line for line in out.splitlines() if label in line)
    return float(re.findall(r"-?\d+(?:\.\d+)?", line[line.index(label) + len(label):])[-1 if "->" in line else 0])


def test_generation_cache_gallery_and_adherence_sections_print_their_numbers(tmp_path, capsys):
    run.bench_generation(tmp_path / "g", repeats=1)
    run.bench_cache(tmp_path / "c")
    run.bench_gallery(tmp_path, 300)
    run.bench_adherence(tmp_path / "a", limit=3)
    out = capsys.readouterr().out
    assert _number(out, "wall-time ratio studio/raw (target <= 1.05)") > 0
    assert _number(out, "largest pixel difference studio vs raw (0..255; frozen CPU graphs round differently)") <= 3, \
        "the studio draws what diffusers draws"
    assert _number(out, "hit vs cold speed-up (target >= 20x)") > 1
    assert "Gallery store (300 images)" in out
    assert 0 <= _number(out, "overall") <= 1
    assert _number(out, "mean seconds per image (target <= 1 s)") > 0
    assert _number(out, "UNet GFLOP per call (batch 2 with CFG), calls") > 0
    assert 0 < _number(out, "UNet FLOP rate / matmul peak (studio)") < 1
    assert 0 < _number(out, "UNet FLOP rate / matmul peak (raw diffusers)") < 1


def test_lora_proof_section_trains_scores_and_compares_with_a_bare_loop(tmp_path, capsys):
    lora_proof.bench_lora(tmp_path / "l", lora_proof.LoraProofRecipe(max_steps=3, eval_prompts=2,
                                                                     out=str(tmp_path / "out")))
    out = capsys.readouterr().out
    assert 0 <= _number(out, "star prompts (target >= 0.7) overall before -> after") <= 1
    assert 0 <= _number(out, "other concepts (target >= 0.8) overall before -> after") <= 1
    assert "3 steps" in out
    assert _number(out, "step time studio trainer / bare peft loop (target <= 1.1)") > 0
    assert _number(out, "UNet GFLOP per training step (forward + backward)") > 0
    assert 0 < _number(out, "UNet FLOP rate / matmul peak (training)") < 1
    kept = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"star-before.png", "star-after.png", "star.safetensors", "star-prompts.txt"} <= kept


def test_every_lora_recipe_field_has_a_flag_that_sets_it():
    from dataclasses import fields

    assert {field for _, field, _ in lora_proof.LORA_RECIPE_FLAGS} == {f.name for f in
                                                                       fields(lora_proof.LoraProofRecipe)}
    _, recipe = run.parse_args([])
    assert recipe == lora_proof.LoraProofRecipe()
    _, recipe = run.parse_args(["--quick", "--lora-lr", "0.002", "--no-lora-embedding", "--lora-text-encoder",
                                  "--lora-skip-blocks", "up_blocks.2", "--lora-precision", "bf16",
                                  "--lora-images", "32", "--lora-class-prior", "0"])
    assert (recipe.minutes, recipe.learning_rate, recipe.train_embedding, recipe.train_text_encoder) == (1.0, 0.002,
                                                                                                         False, True)
    assert (recipe.skip_blocks, recipe.mixed_precision, recipe.images, recipe.class_prior) == ("up_blocks.2", "bf16",
                                                                                               32, 0)


def test_the_lora_proof_trains_the_new_shape_preset():
    """The proof's recipe is read from training/recipes.py: the "new shape" preset and the PROOF_* settings."""
    from training.recipes import PRESETS, PROOF_PRIOR_IMAGES, PROOF_RESOLUTION, PROOF_WARMUP_STEPS

    cfg, preset = lora_proof.proof_config(lora_proof.LoraProofRecipe()), PRESETS["new shape"]
    for name in ("rank", "alpha", "learning_rate", "max_steps", "batch_size", "lr_scheduler", "train_embedding",
                 "embedding_learning_rate", "subject_weight", "lora_dropout"):
        assert getattr(cfg, name) == preset[name], name
    assert preset["lora_layers"] == "convolutions only" and (cfg.train_conv, cfg.train_attention) == (True, False)
    assert (cfg.rank, cfg.learning_rate, cfg.max_steps, cfg.batch_size) == (16, 1e-3, 1500, 8)  # the measured recipe
    assert (cfg.resolution, cfg.warmup_steps, lora_proof.PRIOR_IMAGES) == (PROOF_RESOLUTION, PROOF_WARMUP_STEPS,
                                                                           PROOF_PRIOR_IMAGES)


def test_flop_counts_of_a_linear_layer_and_the_share_of_the_matmul_peak():
    import torch

    from bench.flops import CallRecorder, forward_flops, matmul_peak, share_of_peak, train_step_flops

    layer, x = torch.nn.Linear(8, 4), torch.zeros(3, 8)
    assert forward_flops(layer, x) == 2 * 8 * 4 * 3  # one multiply and one add per weight and row
    # backward: the weight's gradient only (the input needs none), as many FLOPs as the forward
    assert train_step_flops(layer, lambda y: y.sum(), x) == 2 * (2 * 8 * 4 * 3)
    assert layer.weight.grad is None
    assert train_step_flops(layer, lambda y: y.sum(), x.requires_grad_()) == 3 * (2 * 8 * 4 * 3)
    q = torch.zeros(2, 4, 64, 32)  # batch, heads, tokens, channels: two (64 x 32) @ (32 x 64)-sized products per head
    assert forward_flops(torch.nn.functional.scaled_dot_product_attention, q, q, q) == 2 * (2 * 2 * 4 * 64 * 64 * 32)
    with CallRecorder(layer) as calls:
        for _ in range(5):
            layer(torch.zeros(2, 8))
    assert calls.calls == 5 and forward_flops(layer, *calls.args, **calls.kwargs) == 2 * 8 * 4 * 2
    layer(x)
    assert calls.calls == 5, "the recorder leaves the module when its block ends"
    peak = matmul_peak(torch.float32, n=256, repeats=3)
    assert peak > 1e8
    assert share_of_peak(peak / 4, 2, 1.0, peak) == f"0.50 ({peak / 2e9:.1f} of {peak / 1e9:.1f} GFLOP/s)"
    assert share_of_peak(peak / 50, 1, 1.0, peak).startswith("0.020 (")


def test_controlnet_section_counts_weight_loads_and_prints_the_cost_beside_its_bound(tmp_path, capsys):
    from bench.controlnet import bench_controlnet

    bench_controlnet(tmp_path / "cn", repeats=1, layouts=2)
    out = capsys.readouterr().out
    assert _number(out, "weight loads when adding the ControlNet") == 1
    assert _number(out, "weight loads, txt2img <-> ControlNet x2") == 0
    assert _number(out, "cost ControlNet/plain (bound 1+CN/UNet FLOP)") > 1
    assert "preprocessor canny: first / cached" in out and "not cached" not in out
    assert 0 <= _number(out, "2 held-out layouts, ControlNet, edges") <= 1
