"""Other tools' image metadata: one real file per tool (A1111 infotext, EXIF and stealth pixels; ComfyUI, Fooocus,
InvokeAI, NovelAI, shaped after sd-parsers' test images) read into the same fields; PNG info through
GenerationService; folder import into a real SQLite gallery, with corrupt, truncated and odd files."""

from __future__ import annotations

import errno
import gzip
import json
import os
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from studio.errors import CorruptImageError, ValidationError
from studio.gallery_import import IMPORT_DIR, import_folder
from studio.generation_service import MAX_SEED, GenerationService
from studio.image_metadata import display_fields, read_image_metadata, shorten
from studio.paths import PathGuard
from studio.png_chunks import read_png_text
from studio.stores.gallery_store import GalleryStore
from studio.tool_samplers import studio_sampler

A1111_TEXT = ("a photo of a duck, <lora:pond:0.7>\nNegative prompt: monochrome, blurry\n"
              "Steps: 15, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 235284042, Size: 512x400, "
              "Model hash: c0d1994c73, Model: realisticVisionV20, Clip skip: 2, Version: v1.10.1")


# ---------------------------------------------------------------------------------------------- image builders
def png_with_text(path: Path, chunks: dict, size=(64, 48), mode="RGB") -> Path:
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new(mode, size, (90, 120, 200)[:len(mode)] if mode != "L" else 128).save(path, pnginfo=info)
    return path


def comfyui_chunks() -> dict:
    """A txt2img graph as ComfyUI saves it: the API prompt and the editor workflow with its links."""
    prompt = {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 156680208700286, "steps": 20, "cfg": 8.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a castle on a hill at dawn", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }
    links = [[1, 4, 0, 3, 0, "MODEL"], [2, 6, 0, 3, 1, "CONDITIONING"], [3, 7, 0, 3, 2, "CONDITIONING"],
             [4, 5, 0, 3, 3, "LATENT"], [5, 4, 1, 6, 0, "CLIP"], [6, 4, 1, 7, 0, "CLIP"], [7, 3, 0, 8, 0, "LATENT"],
             [8, 4, 2, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"]]
    workflow = {"last_node_id": 9, "last_link_id": 9, "nodes": [{"id": int(k), "type": v["class_type"]}
                                                                  for k, v in prompt.items()], "links": links,
                "version": 0.4}
    return {"prompt": json.dumps(prompt), "workflow": json.dumps(workflow)}


def fooocus_chunks() -> dict:
    parameters = {
        "adm_guidance": "(1.5, 0.8, 0.3)", "base_model": "juggernautXL_v8Rundiffusion", "base_model_hash": "aeb7e9e689",
        "clip_skip": 2, "full_negative_prompt": ["(worst quality:1.4)", "anime, cartoon"],
        "full_prompt": ["cinematic still a smiling goldfish . emotional", "a smiling goldfish, deep focus"],
        "guidance_scale": 4, "loras": [], "metadata_scheme": "fooocus", "negative_prompt": "anime",
        "performance": "Speed", "prompt": "a smiling goldfish", "prompt_expansion": "a smiling goldfish, deep focus",
        "refiner_model": "None", "refiner_switch": 0.5, "resolution": "(768, 1280)", "sampler": "dpmpp_2m_sde_gpu",
        "scheduler": "karras", "seed": "6952411511246973023", "sharpness": 2, "steps": 30,
        "styles": "['Fooocus V2', 'Fooocus Enhance']", "vae": "Default (model)", "version": "Fooocus v2.4.3"}
    return {"parameters": json.dumps(parameters), "fooocus_scheme": "fooocus"}


def invokeai_chunks() -> dict:
    metadata = {"generation_mode": "sdxl_txt2img", "positive_prompt": "digital artwork, oil painting",
                "negative_prompt": "grainy, photo", "width": 1024, "height": 1024, "seed": 3293022630,
                "rand_device": "cpu", "cfg_scale": 8.0, "cfg_rescale_multiplier": 0.0, "steps": 35,
                "scheduler": "dpmpp_2m_k", "model": {"model_name": "juggernautXL", "base_model": "sdxl",
                                                      "model_type": "main"},
                "vae": {"model_name": "VAEFix", "base_model": "sdxl"}}
    return {"invokeai_metadata": json.dumps(metadata)}


def novelai_chunks() -> dict:
    comment = {"steps": 28, "height": 832, "width": 1216, "scale": 5.0, "uncond_scale": 1.0, "cfg_rescale": 0.0,
               "seed": 2253955223, "n_samples": 1, "noise_schedule": "native", "sampler": "k_euler_ancestral",
               "strength": 0.7, "noise": 0.0, "uc": "lowres, bad anatomy", "request_type": "PromptGenerateRequest"}
    return {"Title": "AI generated image", "Description": "masterpiece, best quality, cat, space, icon",
            "Software": "NovelAI", "Source": "Stable Diffusion XL C1E1DE52", "Comment": json.dumps(comment)}


def stealth_png(path: Path, text: str, signature: str = "stealth_pngcomp") -> Path:
    """An image with `text` in its pixels' low bits, as A1111's stealth-pnginfo extension writes it."""
    payload = text.encode()
    if signature.endswith("comp"):
        payload = gzip.compress(payload)
    bits = np.unpackbits(np.frombuffer(signature.encode() + (len(payload) * 8).to_bytes(4, "big") + payload,
                                       dtype=np.uint8))
    alpha = "png" in signature
    width = height = 128
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 4 if alpha else 3), dtype=np.uint8)
    if alpha:
        pixels[..., 3] = 255
    columns = pixels.transpose(1, 0, 2)  # the writer goes down each column, left to right
    flat = columns[..., 3].reshape(-1) if alpha else columns[..., :3].reshape(-1)
    flat[:bits.size] = (flat[:bits.size] & 0xFE) | bits
    if alpha:
        columns[..., 3] = flat.reshape(width, height)
    else:
        columns[..., :3] = flat.reshape(width, height, 3)
    Image.fromarray(columns.transpose(1, 0, 2).copy(), "RGBA" if alpha else "RGB").save(path)
    return path


def jpeg_with_usercomment(path: Path, text: str, **save) -> Path:
    """A JPEG (or, by its suffix, a WebP) with A1111's EXIF UserComment."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
    Image.new("RGB", (40, 32), (10, 200, 30)).save(path, exif=exif, **save)
    return path


def webp_with_usercomment(path: Path, text: str) -> Path:
    return jpeg_with_usercomment(path, text, lossless=True)


# one image per supported tool: (builder, expected fields, a key its `extra` keeps)
TOOL_CASES = {
    "a1111": (lambda p: png_with_text(p / "a1111.png", {"parameters": A1111_TEXT}),
              dict(tool="AUTOMATIC1111", carrier="PNG text", prompt="a photo of a duck, <lora:pond:0.7>",
                   negative_prompt="monochrome, blurry", seed=235284042, steps=15, sampler="DPM++ 2M Karras",
                   tool_sampler="DPM++ 2M", cfg_scale=5.0, width=512, height=400, model="realisticVisionV20"),
              "Clip skip"),
    "a1111-jpeg": (lambda p: jpeg_with_usercomment(p / "a1111.jpg", A1111_TEXT),
                   dict(tool="AUTOMATIC1111", carrier="EXIF UserComment", seed=235284042, width=512, height=400),
                   "Model hash"),
    "a1111-webp": (lambda p: webp_with_usercomment(p / "a1111.webp", A1111_TEXT),
                   dict(tool="AUTOMATIC1111", carrier="EXIF UserComment", steps=15, model="realisticVisionV20"),
                   "Clip skip"),
    "a1111-stealth": (lambda p: stealth_png(p / "stealth.png", A1111_TEXT),
                      dict(tool="AUTOMATIC1111", carrier="stealth pixels", prompt="a photo of a duck, <lora:pond:0.7>",
                           seed=235284042, steps=15, sampler="DPM++ 2M Karras", cfg_scale=5.0),
                      "Version"),
    "a1111-stealth-rgb": (lambda p: stealth_png(p / "stealth-rgb.png", A1111_TEXT, "stealth_rgbinfo"),
                          dict(tool="AUTOMATIC1111", carrier="stealth pixels", seed=235284042), "Version"),
    "novelai-stealth": (lambda p: stealth_png(p / "novelai-stealth.png", json.dumps(novelai_chunks())),
                        dict(tool="NovelAI", carrier="stealth pixels", seed=2253955223, sampler="Euler a"), "noise"),
    "comfyui": (lambda p: png_with_text(p / "comfy.png", comfyui_chunks()),
                dict(tool="ComfyUI", prompt="a castle on a hill at dawn", negative_prompt="text, watermark",
                     seed=156680208700286, steps=20, sampler="DPM++ 2M Karras", tool_sampler="dpmpp_2m", cfg_scale=8.0,
                     width=64, height=48, model="sd_xl_base_1.0.safetensors"),
                "EmptyLatentImage"),
    "fooocus": (lambda p: png_with_text(p / "fooocus.png", fooocus_chunks()),
                dict(tool="Fooocus", prompt="a smiling goldfish", negative_prompt="anime", seed=6952411511246973023,
                     steps=30, sampler=None, tool_sampler="dpmpp_2m_sde_gpu", cfg_scale=4.0, width=768, height=1280,
                     model="juggernautXL_v8Rundiffusion"),
                "prompt_expansion"),
    "invokeai": (lambda p: png_with_text(p / "invoke.png", invokeai_chunks()),
                 dict(tool="InvokeAI", prompt="digital artwork, oil painting", negative_prompt="grainy, photo",
                      seed=3293022630, steps=35, sampler="DPM++ 2M Karras", tool_sampler="dpmpp_2m_k", cfg_scale=8.0,
                      width=1024, height=1024, model="juggernautXL"),
                 "generation_mode"),
    "novelai": (lambda p: png_with_text(p / "novelai.png", novelai_chunks()),
                dict(tool="NovelAI", prompt="masterpiece, best quality, cat, space, icon",
                     negative_prompt="lowres, bad anatomy", seed=2253955223, steps=28, sampler="Euler a",
                     cfg_scale=5.0, width=1216, height=832, model="Stable Diffusion XL"),
                "request_type"),
}


@pytest.mark.parametrize("case", list(TOOL_CASES))
def test_each_tool_is_read_into_the_same_fields(tmp_path, case):
    build, expected, extra_key = TOOL_CASES[case]
    found = read_image_metadata(build(tmp_path))
    assert found is not None
    assert {name: getattr(found, name) for name in expected} == expected
    assert extra_key in found.extra
    json.dumps(found.extra, allow_nan=False)  # plain JSON: it goes into gallery records
    assert found.raw
    assert found.prompt.split(",")[0] in found.infotext()


def test_a_comfyui_api_save_without_its_workflow_is_read(tmp_path):
    chunks = comfyui_chunks()
    del chunks["workflow"]
    found = read_image_metadata(png_with_text(tmp_path / "api.png", chunks))
    assert (found.tool, found.prompt, found.negative_prompt, found.model) == (
        "ComfyUI", "a castle on a hill at dawn", "text, watermark", "sd_xl_base_1.0.safetensors")


def insert_chunk(path: Path, kind: bytes, body: bytes, at: int) -> Path:
    """Put a chunk (with its length and CRC) into a PNG file at byte `at` (negative: from the end)."""
    data = path.read_bytes()
    at = at % len(data)
    chunk = len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    path.write_bytes(data[:at] + chunk + data[at:])
    return path


def test_text_after_the_image_data_is_found(tmp_path):
    path = insert_chunk(png_with_text(tmp_path / "a.png", {}), b"tEXt", b"parameters\0" + A1111_TEXT.encode(),
                        -12)  # between the last IDAT and IEND
    assert read_image_metadata(path).seed == 235284042


def test_bytes_after_the_end_chunk_are_allowed(tmp_path):
    path = png_with_text(tmp_path / "a.png", {"parameters": A1111_TEXT})
    path.write_bytes(path.read_bytes() + b"trailing bytes some tools append")
    assert read_image_metadata(path).seed == 235284042


def test_an_image_without_parameters_reads_as_none(tmp_path):
    plain = png_with_text(tmp_path / "plain.png", {"Software": "GIMP"})
    assert read_image_metadata(plain) is None
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.jpg")
    assert read_image_metadata(tmp_path / "plain.jpg") is None


def corrupt_files(folder: Path) -> dict[str, str]:
    """Broken files, each with a word its CorruptImageError must say."""
    good = png_with_text(folder / "good-source.png", {"parameters": A1111_TEXT}).read_bytes()
    crc_at = good.index(b"tEXt") + 10
    files = {"empty.png": (b"", "not a PNG"), "garbage.png": (b"hello, not an image", "not a PNG"),
             "truncated.png": (good[:len(good) // 2], "truncated"),
             "bad-crc.png": (good[:crc_at] + b"X" + good[crc_at + 1:], "CRC"),
             "no-header.png": (good[:8] + good[33:], "IHDR"),
             "truncated.jpg": (jpeg_with_usercomment(folder / "j.jpg", A1111_TEXT).read_bytes()[:-40], "truncated")}
    (folder / "good-source.png").unlink()
    (folder / "j.jpg").unlink()
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: word for name, (_, word) in files.items()}


def test_corrupt_and_truncated_files_raise_a_clear_error(tmp_path):
    for name, word in corrupt_files(tmp_path).items():
        with pytest.raises(CorruptImageError, match=word):
            read_image_metadata(tmp_path / name)


def test_a_text_chunk_that_inflates_without_end_is_refused(tmp_path):
    body = b"parameters\0\0" + zlib.compress(b"A" * (20 * 2**20), 9)
    path = insert_chunk(png_with_text(tmp_path / "bomb.png", {}), b"zTXt", body, 33)  # right after IHDR
    with pytest.raises(CorruptImageError, match="inflates past"):
        read_png_text(path)


def test_odd_and_huge_fields_are_kept_whole_and_shortened_for_display(tmp_path):
    huge = "x" * 100_000
    text = A1111_TEXT + f', Notes: "{huge}", Odd: "bell\\u0007 and \\u0000 nul"'
    found = read_image_metadata(png_with_text(tmp_path / "odd.png", {"parameters": text}))
    assert found.extra["Notes"] == huge and found.seed == 235284042
    shown = found.display_extra(limit=300)
    assert shown["Notes"].startswith("x" * 300) and "100,000 characters" in shown["Notes"]
    assert "\x07" not in shown["Odd"] and "\x00" not in shown["Odd"]
    assert shorten({"a": [1, 2]}) == '{"a": [1, 2]}'
    assert display_fields({"k" * 600: 1}, limit=10) == {"k" * 10 + "… (600 characters in all)": "1"}


@pytest.mark.parametrize("name, scheduler, expected", [
    ("Euler a", None, "Euler a"), ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),
    ("dpmpp_2m", "karras", "DPM++ 2M Karras"), ("dpmpp_2m", "normal", "DPM++ 2M"), ("euler_ancestral", None, "Euler a"),
    ("k_euler_ancestral", "native", "Euler a"),
    ("dpmpp_2m_k", None, "DPM++ 2M Karras"), ("sample_dpmpp_sde", "simple", "DPM++ SDE"), ("uni_pc", None, "UniPC"),
    ("k_lms", None, "LMS"), ("dpmpp_2m_sde_gpu", "karras", None), ("euler", "karras", None), ("", None, None),
    ("DPM++ 3M SDE", None, None)])
def test_other_tools_samplers_map_to_the_studio_names_only_when_one_matches(name, scheduler, expected):
    assert studio_sampler(name, scheduler) == expected


# ---------------------------------------------------------------------------------------------- PNG info
@pytest.fixture
def generation(tmp_path) -> GenerationService:
    """PNG info needs no model: a GenerationService without one."""
    return GenerationService(models=None, gallery=None, data_dir=tmp_path, device_lock=threading.Lock())


@pytest.mark.parametrize("case", list(TOOL_CASES))
def test_png_info_fills_the_fields_for_every_tool_and_names_it(tmp_path, generation, case):
    build, expected, _ = TOOL_CASES[case]
    fields = generation.parameters_of(str(build(tmp_path)))
    assert fields["tool"] == expected["tool"]
    assert fields["message"].startswith(f"Parameters read from the {expected['tool']} metadata")
    for name in ("prompt", "negative_prompt", "steps", "cfg_scale", "width", "height"):
        if expected.get(name) is not None:
            assert fields[name] == expected[name], name
    if expected.get("sampler"):
        assert fields["sampler"] == expected["sampler"]
    seed = expected.get("seed")
    if seed is not None and seed <= MAX_SEED:
        assert fields["seed"] == seed


def test_png_info_says_what_it_could_not_fill(tmp_path, generation):
    fields = generation.parameters_of(png_with_text(tmp_path / "f.png", fooocus_chunks()))
    assert "seed" not in fields and "sampler" not in fields
    assert "seed 6952411511246973023 is outside 0..4294967295" in fields["message"]
    assert "sampler 'dpmpp_2m_sde_gpu' has no match here" in fields["message"]
    assert "stealth" not in fields["message"]
    hidden = generation.parameters_of(stealth_png(tmp_path / "s.png", A1111_TEXT))
    assert hidden["message"].startswith("Parameters read from the AUTOMATIC1111 metadata hidden in the pixels")


def test_png_info_refuses_corrupt_and_bare_images_naming_the_field(tmp_path, generation):
    corrupt_files(tmp_path)
    with pytest.raises(ValidationError, match="png_info: .*truncated") as refused:
        generation.parameters_of(tmp_path / "truncated.png")
    assert refused.value.field == "png_info"
    with pytest.raises(ValidationError, match="carries no generation parameters .*ComfyUI"):
        generation.parameters_of(png_with_text(tmp_path / "bare.png", {}))
    assert generation.infotext_of(tmp_path / "truncated.png") == ""
    assert "Steps: 20" in generation.infotext_of(png_with_text(tmp_path / "c.png", comfyui_chunks()))


def test_png_info_on_the_app_services_keeps_controlnet_units_and_reads_comfyui(tmp_path, services):
    unit = ('"Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, Resize Mode: Crop and Resize, '
            'Low Vram: False, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0, '
            'Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced"')
    a1111 = png_with_text(tmp_path / "cn.png", {"parameters": f"{A1111_TEXT}, ControlNet 0: {unit}"})
    found = services.controlnet.parameters_of(str(a1111))
    assert found["controlnet"][0]["preprocessor"] == "canny" and found["seed"] == 235284042
    comfy = services.generation.parameters_of(str(png_with_text(tmp_path / "c.png", comfyui_chunks())))
    assert comfy["prompt"] == "a castle on a hill at dawn" and "controlnet" not in comfy
    assert comfy["message"].startswith("Parameters read from the ComfyUI metadata")


# ---------------------------------------------------------------------------------------------- folder import
@pytest.fixture
def studio_dirs(tmp_path):
    """(data dir, its SQLite gallery, a PathGuard allowing the data dir and tmp/imports)."""
    data = tmp_path / "data"
    data.mkdir()
    store = GalleryStore(data / "db", data)
    yield data, store, PathGuard([data, tmp_path / "imports"])
    store.close()


def import_source(root: Path) -> Path:
    """A folder like a real one: every tool's images (one in a subfolder), broken files, odd fields, a text
    file and a symbolic link."""
    folder = root / "imports" / "mixed"
    (folder / "2024-05-01").mkdir(parents=True)
    for case, (build, _, _) in TOOL_CASES.items():
        build(folder / "2024-05-01" if case == "comfyui" else folder)
    corrupt_files(folder)
    png_with_text(folder / "huge.png", {"parameters": A1111_TEXT + f', Notes: "{"y" * 200_000}", Odd: "\\ud800!"'})
    png_with_text(folder / "bare.png", {})
    (folder / "notes.txt").write_text("not an image")
    (folder / "link.png").symlink_to(folder / "a1111.png")
    (folder / "latin1-\xe9.png").write_bytes(b"")  # renamed below to a name that is not UTF-8
    os.rename(os.fsencode(folder / "latin1-\xe9.png"), os.fsencode(folder) + b"/latin1-\xe9.png")
    return folder


def test_import_records_every_readable_image_and_lists_the_broken(tmp_path, studio_dirs):
    data, store, guard = studio_dirs
    folder = import_source(tmp_path)
    seen = []
    report = import_folder(str(folder), store, data, guard, progress=seen.append)
    broken = {"empty.png", "garbage.png", "truncated.png", "bad-crc.png", "no-header.png", "truncated.jpg"}
    assert {path for path, _ in report.skipped} == broken | {"link.png", "latin1-\ufffd.png"}
    assert report.imported == len(TOOL_CASES) + 2 == store.count()
    assert report.found == report.imported + len(broken)
    assert report.without_parameters == 1
    assert report.tools == {"AUTOMATIC1111": 6, "NovelAI": 2, "ComfyUI": 1, "Fooocus": 1, "InvokeAI": 1}
    assert report.linked == report.imported and seen[0] == (0, report.found) and seen[-1] == (report.found,) * 2
    summary = report.summary()
    assert "truncated.png" in summary and f"Imported **{report.imported}** of {report.found}" in summary

    records = {Path(r["params"]["source_path"]).name: r for r in store.get_many(
        [r["id"] for r in store.list(limit=100)[0]])}
    comfy = records["comfy.png"]
    assert comfy["prompt"] == "a castle on a hill at dawn" and comfy["model"] == "sd_xl_base_1.0.safetensors"
    assert comfy["params"]["tool"] == "ComfyUI" and comfy["params"]["sampler"] == "DPM++ 2M Karras"
    assert comfy["params"]["seed"] == 156680208700286 and "EmptyLatentImage" in comfy["params"]["extra"]
    assert comfy["path"].startswith(f"{IMPORT_DIR}/mixed-") and comfy["path"].endswith("/2024-05-01/comfy.png")
    assert comfy["source"] == "import" and comfy["job_id"] == report.job_id
    assert comfy["created"] == pytest.approx((folder / "2024-05-01" / "comfy.png").stat().st_mtime)
    assert os.path.samefile(data / comfy["path"], folder / "2024-05-01" / "comfy.png")  # hard-linked, not copied
    fooocus = records["fooocus.png"]["params"]
    assert fooocus["sampler"] == "dpmpp_2m_sde_gpu" and fooocus["width"] == 768 and fooocus["cfg_scale"] == 4.0
    assert records["huge.png"]["params"]["extra"]["Notes"] == "y" * 200_000
    assert records["huge.png"]["params"]["extra"]["Odd"] == "?!"  # a lone surrogate escape, made storable
    assert records["a1111.png"]["params"]["infotext"] == A1111_TEXT
    assert records["bare.png"]["prompt"] == "" and "tool" not in records["bare.png"]["params"]


def test_reimporting_adds_only_new_images(tmp_path, studio_dirs):
    data, store, guard = studio_dirs
    folder = import_source(tmp_path)
    first = import_folder(str(folder), store, data, guard)
    again = import_folder(str(folder), store, data, guard)
    assert again.imported == 0 and again.already_imported == first.imported and store.count() == first.imported
    png_with_text(folder / "new.png", {"parameters": A1111_TEXT.replace("235284042", "7")})
    third = import_folder(str(folder), store, data, guard)
    assert third.imported == 1 and store.count() == first.imported + 1


def test_copies_of_one_file_in_the_folder_are_recorded_once(tmp_path, studio_dirs):
    data, store, guard = studio_dirs
    folder = tmp_path / "imports" / "with-backup"
    folder.mkdir(parents=True)
    original = png_with_text(folder / "a.png", comfyui_chunks())
    for copy in ("backup/a.png", "older/backup/a.png"):
        (folder / copy).parent.mkdir(parents=True, exist_ok=True)
        (folder / copy).write_bytes(original.read_bytes())
        os.utime(folder / copy, ns=(original.stat().st_atime_ns, original.stat().st_mtime_ns))
    report = import_folder(str(folder), store, data, guard)
    assert (report.found, report.imported, report.copies, store.count()) == (1, 1, 2, 1)


def test_import_copies_when_a_hard_link_is_impossible(tmp_path, studio_dirs, monkeypatch):
    data, store, guard = studio_dirs
    folder = tmp_path / "imports" / "other-disk"
    folder.mkdir(parents=True)
    png_with_text(folder / "x.png", novelai_chunks())

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    report = import_folder(str(folder), store, data, guard)
    assert report.copied == 1 and report.linked == 0
    record = store.list(limit=1)[0][0]
    assert not os.path.samefile(data / record["path"], folder / "x.png")
    assert (data / record["path"]).read_bytes() == (folder / "x.png").read_bytes()
    assert not list((data / record["path"]).parent.glob(".*.tmp"))


@pytest.mark.parametrize("typed", ["../", "../../etc", "imports/../../..", "/etc", "~"])
def test_import_refuses_paths_outside_the_allowed_folders(tmp_path, studio_dirs, typed):
    data, store, guard = studio_dirs
    (tmp_path / "imports").mkdir(exist_ok=True)
    with pytest.raises(ValidationError, match="import_folder .*outside the folders") as refused:
        import_folder(typed, store, data, guard)
    assert refused.value.field == "import_folder" and store.count() == 0


def test_import_refuses_the_gallerys_own_folders(tmp_path, studio_dirs):
    data, store, guard = studio_dirs
    (data / IMPORT_DIR / "x").mkdir(parents=True)
    with pytest.raises(ValidationError, match="gallery's own imported/ folder") as refused:
        import_folder(str(data / IMPORT_DIR / "x"), store, data, guard)
    assert refused.value.field == "import_folder"


def test_a_cancelled_import_keeps_what_it_recorded(tmp_path, studio_dirs):
    data, store, guard = studio_dirs
    folder = import_source(tmp_path)
    cancel = threading.Event()
    cancel.set()
    report = import_folder(str(folder), store, data, guard, cancel=cancel)
    assert report.cancelled and report.imported == 0 == store.count()
    assert "Cancelled" in report.summary()


def test_the_import_benchmark_prints_its_numbers(tmp_path, capsys):
    from bench.gallery_import import bench_gallery_import

    numbers = bench_gallery_import(tmp_path / "run", 300, cache=tmp_path / "cache")
    out = capsys.readouterr().out
    assert "Gallery import (300 A1111 PNGs" in out and "import of 100,000 s (extrapolated; target <= 60)" in out
    assert numbers["import rate (images/s)"] > 0 and numbers["hard-linked / copied"] == "300 / 0"


def test_a_folder_that_holds_the_data_dir_leaves_the_gallerys_files_alone(tmp_path):
    home = tmp_path / "home"
    data = home / "studio-data"
    (data / "outputs").mkdir(parents=True)
    (home / "pictures").mkdir()
    png_with_text(data / "outputs" / "made-here.png", {"parameters": A1111_TEXT})
    png_with_text(home / "pictures" / "made-elsewhere.png", comfyui_chunks())
    store = GalleryStore(data / "db", data)
    try:
        report = import_folder(str(home), store, data, PathGuard([data, home]))
        assert report.found == report.imported == 1
        assert store.list(limit=5)[0][0]["path"].endswith("/pictures/made-elsewhere.png")
    finally:
        store.close()
