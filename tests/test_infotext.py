"""A1111 infotext: build, save in a PNG chunk, read back, parse, fill fields; foreign images."""

from __future__ import annotations

from PIL import Image

from studio.infotext import (build_infotext, infotext_to_fields, parse_infotext, read_png_parameters,
                             save_png_with_infotext)

A1111 = ('masterpiece, (red:1.2) circle,\nsecond line\nNegative prompt: blurry, lowres\nSteps: 28, Sampler: DPM++ 2M, '
         'Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, Model hash: 6ce0161689, '
         'Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Lora hashes: "stars: abc123, other: def456", '
         'Version: v1.10.1')


def test_round_trip_through_a_png(tmp_path):
    text = build_infotext("a red circle, big", "blurry", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7,
                                                          "Seed": 42, "Size": "128x96", "Model hash": "abc",
                                                          "Model": "builtin-shapes"})
    path = save_png_with_infotext(Image.new("RGB", (128, 96)), tmp_path / "x.png", text)
    assert read_png_parameters(path) == text
    fields = infotext_to_fields(parse_infotext(read_png_parameters(path)))
    assert fields == {"prompt": "a red circle, big", "negative_prompt": "blurry", "steps": 20,
                      "sampler": "Euler a", "cfg_scale": 7.0, "seed": 42, "width": 128, "height": 96,
                      "model": "builtin-shapes"}
    assert not list(tmp_path.glob(".*tmp"))


def test_parses_a1111_text_with_quotes_and_multiline_prompt():
    info = parse_infotext(A1111)
    assert info["Prompt"] == "masterpiece, (red:1.2) circle,\nsecond line"
    assert info["Negative prompt"] == "blurry, lowres"
    assert info["Lora hashes"] == "stars: abc123, other: def456"
    fields = infotext_to_fields(info)
    assert (fields["width"], fields["height"], fields["sampler"]) == (512, 768, "DPM++ 2M Karras")
    assert fields["denoising_strength"] == 0.45 and fields["seed"] == 1234567


def test_prompt_without_parameters_line():
    info = parse_infotext("just a prompt")
    assert info["Prompt"] == "just a prompt" and "Steps" not in info


def test_images_without_metadata(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    (tmp_path / "c.png").write_bytes(b"not an image")
    assert read_png_parameters(tmp_path / "a.jpg") is None
    assert read_png_parameters(tmp_path / "b.png") is None
    assert read_png_parameters(tmp_path / "c.png") is None
