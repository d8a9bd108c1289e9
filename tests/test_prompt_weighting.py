"""A1111 prompt syntax: parser cases, LoRA tags, exact equality with diffusers for plain prompts, chunking."""

from __future__ import annotations

import pytest
import torch

from pipelines.prompt_weighting import (encode_weighted_prompt, extract_lora_tags, has_weighting,
                                        parse_prompt_attention)

CASES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("", [("", 1.0)]),
    ("one BREAK two", [("one", 1.0), ("BREAK", -1.0), ("two", 1.0)]),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_parse_matches_a1111(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_lora_tags():
    clean, tags = extract_lora_tags("a star <lora:stars:0.8> on blue <lora:style>")
    assert clean == "a star on blue" and tags == [("stars", 0.8), ("style", 1.0)]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from tests.tiny_models import tiny_sd_pipeline

    return tiny_sd_pipeline(tmp_path_factory.mktemp("tok"))


def test_plain_prompt_equals_diffusers_encoding(pipe):
    prompt = "a small red circle on the left"
    assert not has_weighting(prompt, pipe.tokenizer)
    ours = encode_weighted_prompt(pipe, prompt, "blurry", "cpu")
    theirs, negative = pipe.encode_prompt(prompt, "cpu", 1, True, "blurry")
    assert torch.equal(ours["prompt_embeds"], theirs) and torch.equal(ours["negative_prompt_embeds"], negative)


def test_weights_change_embeddings(pipe):
    plain = encode_weighted_prompt(pipe, "a red circle", "", "cpu")["prompt_embeds"]
    weighted = encode_weighted_prompt(pipe, "a (red:1.5) circle", "", "cpu")["prompt_embeds"]
    assert has_weighting("a (red:1.5) circle") and not torch.equal(plain, weighted)


def test_long_prompt_is_chunked_not_cut(pipe):
    prompt = " ".join(["red circle"] * 100)  # 200 tokens -> 3 chunks of 75
    assert has_weighting(prompt, pipe.tokenizer)
    kwargs = encode_weighted_prompt(pipe, prompt, "", "cpu")
    assert kwargs["prompt_embeds"].shape[1] == 3 * 77 == kwargs["negative_prompt_embeds"].shape[1]
    image = pipe(num_inference_steps=2, width=64, height=64, output_type="np", **kwargs).images[0]
    assert image.shape == (64, 64, 3)
