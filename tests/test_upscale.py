"""Upscaling: tiny real spandrel models (Compact and ESRGAN with random weights) written as .safetensors / .pth into a
models folder; tiling (seams, out-of-memory halving, cancel), the model cache, refused files, request validation,
gallery records with infotext, image modes, the queue job kind and the benchmark section."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.tiling import TilingCancelled, choose_tile_size, measure_seam, tiled_upscale
from pipelines.upscalers import BUILTIN_UPSCALER_ID, list_upscalers, load_upscaler
from studio.errors import StudioError, ValidationError
from studio.infotext import parse_infotext, read_png_parameters, save_png_with_infotext
from studio.upscale_jobs import UpscaleJobs
from studio.upscale_service import UpscaleRequest
from tests.conftest import make_settings


def compact(scale: int = 2, num_conv: int = 2, seed: int = 0):
    """A tiny RealESRGAN Compact net (receptive radius num_conv + 2 input pixels) with random weights."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=num_conv, upscale=scale).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.2)
    return net


def esrgan(scale: int = 4):
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(1)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale).eval()


def save_model(net, path):
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    else:
        torch.save(net.state_dict(), path)
    return path


def clamped(net):
    return lambda x: net(x).clamp(0, 1)


@pytest.fixture
def studio(tmp_path):
    """Services on an empty models folder, with a 2x Compact (.safetensors) and a 4x ESRGAN (.pth) in ESRGAN/."""
    from studio.services import build_services

    settings = make_settings(tmp_path, tmp_path / "models", builtin_upscaler_dir=tmp_path / "builtin-upscaler")
    services = build_services(settings)
    save_model(compact(), settings.models_root / "ESRGAN" / "compact-2x.safetensors")
    save_model(esrgan(), settings.models_root / "ESRGAN" / "esrgan-4x.pth")
    yield services
    services.queue.shutdown(wait=False)
    services.training.shutdown()


def gallery_image(services, size=(24, 16), mode="RGB", prompt="a red circle"):
    """A PNG with infotext saved under the data dir and recorded in the gallery; returns its id."""
    import uuid

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    rel = f"outputs/src-{uuid.uuid4().hex[:6]}.png"
    path = services.settings.data_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"{prompt}\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 24x16"
    save_png_with_infotext(image, path, text)
    return services.gallery.add({"path": rel, "prompt": prompt, "negative_prompt": "blurry", "model": "m",
                                 "params": {"seed": 42, "steps": 20, "infotext": text}})


# ---------------------------------------------------------------------- tiling
def test_tiled_output_equals_untiled_for_a_small_receptive_field_and_the_seam_is_measured():
    net = clamped(compact(num_conv=2))  # receptive radius 4 px: an overlap of 16 keeps 4 px of context
    image = torch.rand(1, 3, 40, 56)
    with torch.inference_mode():
        done = tiled_upscale(net, image, 2, 32, 16)
        assert done.image.shape == (1, 3, 80, 112) and done.tiles == 6 and done.halvings == 0
        assert (done.image - net(image)).abs().max() < 1e-4
        seam = measure_seam(net, image, 2, 32, 16)
        hard = measure_seam(net, image, 2, 32, 0)  # no overlap: the cut edges show
    assert seam.max_abs < 1e-4 and seam.ratio == pytest.approx(1, abs=1e-3)
    assert hard.max_abs > 100 * seam.max_abs and abs(hard.ratio - 1) > 0.05  # the cut edges show


def test_out_of_memory_halves_the_tile_and_resumes_at_the_current_row():
    net = clamped(compact(num_conv=0))  # receptive radius 2 px
    image = torch.rand(1, 3, 64, 64)
    calls = []

    def tight(tile):
        calls.append(tile.shape[-1])
        if len(calls) > 3 and tile.shape[-1] > 16:  # the first row fits, then memory runs short
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return net(tile)

    freed, seen = [], []
    with torch.inference_mode():
        done = tiled_upscale(tight, image, 2, 32, 8, progress=lambda d, t: seen.append((d, t)),
                             free_memory=lambda: freed.append(1))
        expected = net(image)
    assert done.halvings == 1 and done.tile_size == 16 and freed == [1]
    assert calls[:4] == [32, 32, 32, 32] and set(calls[4:]) == {16}  # row 1 kept, never run again
    assert (done.image - expected).abs().max() < 1e-4
    assert seen[-1][0] == seen[-1][1] == done.tiles


def test_out_of_memory_at_the_smallest_tile_is_raised():
    def never(tile):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        tiled_upscale(never, torch.rand(1, 3, 32, 32), 2, 32, 4)


def test_cancel_stops_between_tiles():
    net, cancel, calls = clamped(compact()), threading.Event(), []

    def counted(tile):
        calls.append(1)
        return net(tile)

    with torch.inference_mode(), pytest.raises(TilingCancelled):
        tiled_upscale(counted, torch.rand(1, 3, 64, 64), 2, 32, 8,
                      progress=lambda done, total: cancel.set() if done == 2 else None, cancel=cancel)
    assert len(calls) == 2


def test_tile_size_comes_from_the_budget():
    assert choose_tile_size(10**9, 100, 64, 48) == 64  # the whole image fits
    side = choose_tile_size(2**20, 100, 4096, 4096)
    assert side % 8 == 0 and side * side * 100 <= 2**20 < (side + 8) ** 2 * 100
    assert choose_tile_size(1, 100, 4096, 4096) == 16  # never below the minimum


# ---------------------------------------------------------------------- listing and loading
def test_models_are_listed_with_their_scale_and_the_builtin_one_only_when_present(tmp_path):
    root, builtin = tmp_path / "ESRGAN", tmp_path / "builtin"
    save_model(compact(scale=2), root / "compact.safetensors")
    save_model(esrgan(scale=4), root / "sub" / "rrdb.pth")
    save_model(compact(scale=1), root / "restore-1x.pt")
    names = [s.name for s in list_upscalers(root, builtin)]
    assert names == ["Lanczos", "Bicubic", "Nearest", "compact.safetensors", "restore-1x.pt", "sub/rrdb.pth"]
    save_model(compact(scale=4), builtin / "upscaler.safetensors")
    found = {s.name: s for s in list_upscalers(root, builtin)}
    assert found[BUILTIN_UPSCALER_ID].kind == "builtin" and found["Lanczos"].label == "Lanczos (no model)"
    scales = {name: load_upscaler(found[name].path).scale for name in
              ("compact.safetensors", "sub/rrdb.pth", "restore-1x.pt", BUILTIN_UPSCALER_ID)}
    assert scales == {"compact.safetensors": 2, "sub/rrdb.pth": 4, "restore-1x.pt": 1, BUILTIN_UPSCALER_ID: 4}
    model = load_upscaler(found["sub/rrdb.pth"].path)
    assert model.architecture == "ESRGAN" and model.dtype_name == "float32"
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


class NotATensor:
    pass


def test_bad_files_give_a_studio_error_naming_the_file_and_nothing_is_cached(studio):
    folder = studio.settings.models_root / "ESRGAN"
    good = (folder / "compact-2x.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    torch.save({"body.0.weight": torch.zeros(1), "payload": NotATensor()}, folder / "pickled.pth")
    torch.save({"unet.conv_in.weight": torch.zeros(4, 4, 3, 3)}, folder / "not-an-upscaler.pth")
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 3, 1)), folder / "scripted.pt")
    from spandrel.architectures.Compact import Compact

    save_model(Compact(num_in_ch=4, num_out_ch=4, num_feat=8, num_conv=1, upscale=2), folder / "four.safetensors")
    source = gallery_image(studio)
    before = studio.models.cache.stats()
    for name, why in (("truncated.safetensors", "unreadable"), ("pickled.pth", "forbidden"),
                      ("not-an-upscaler.pth", "unknown architecture"), ("scripted.pt", "TorchScript"),
                      ("four.safetensors", "only grey")):
        with pytest.raises(StudioError, match=why) as error:
            studio.upscale.upscale(UpscaleRequest(upscaler=name, scale=2, ids=[source]))
        assert error.value.field == "upscaler" and name in str(error.value)
    with pytest.raises(StudioError, match="truncated.safetensors") as error:
        studio.upscale.upscale(UpscaleRequest(upscaler_2="truncated.safetensors", upscaler_2_visibility=0.5,
                                              scale=2, ids=[source]))
    assert error.value.field == "upscaler_2"
    after = studio.models.cache.stats()
    assert after.loads == before.loads and after.entries == before.entries
    assert len(studio.gallery.list()[0]) == 1  # the source only: nothing saved


def test_a_second_upscale_with_the_same_model_loads_nothing(studio):
    source = gallery_image(studio)
    req = UpscaleRequest(upscaler="compact-2x.safetensors", scale=2, ids=[source])
    studio.upscale.upscale(req)
    loads = studio.models.cache.stats().loads
    studio.upscale.upscale(req)
    stats = studio.models.cache.stats()
    assert loads == 1 and stats.loads == 1 and stats.hits >= 1
    assert any(e["model"] == "upscaler:compact-2x.safetensors" and e["bytes"] > 0 for e in stats.entries)


# ---------------------------------------------------------------------- the service
@pytest.mark.parametrize("change, field, words", [
    ({"scale": 9}, "scale", "between 1 and 8"),
    ({"scale": "big"}, "scale", "between 1 and 8"),
    ({"upscaler": "missing.pth"}, "upscaler", "not a known upscaler"),
    ({"upscaler_2": "nope"}, "upscaler_2", "not a known upscaler"),
    ({"upscaler_2_visibility": 1.5}, "upscaler_2_visibility", "between 0 and 1"),
    ({"tile_size": 8}, "tile_size", "between 32 and 4096"),
    ({"tile_size": 64, "tile_overlap": 40}, "tile_overlap", "at most half"),
    ({"tile_overlap": -1}, "tile_overlap", "between 0 and 256"),
    ({"target_width": 8}, "target_width", "between 16 and 8192"),
    ({"target_height": 10**6}, "target_height", "between 0 and 8192"),
    ({"ids": ["../etc"]}, "ids", "not a gallery image id"),
    ({"folder": "/etc"}, "folder", "outside the folders"),
    ({"paths": ["/etc/passwd"]}, "paths", "outside the folders"),
    ({"ids": []}, "images", "nothing to upscale"),
])
def test_request_validation_names_the_field_and_its_range(studio, change, field, words):
    req = UpscaleRequest(**{"ids": ["0" * 32], **change})
    with pytest.raises(ValidationError, match=words) as error:
        studio.upscale.validate(req)
    assert error.value.field == field


def test_gallery_ids_become_new_records_with_infotext_and_provenance(studio):
    source = gallery_image(studio)
    source_file = studio.gallery.path_of(studio.gallery.get(source))
    digest = hashlib.sha256(source_file.read_bytes()).hexdigest()
    result = studio.upscale.upscale(UpscaleRequest(upscaler="compact-2x.safetensors", scale=2, ids=[source],
                                                   upscaler_2="Lanczos", upscaler_2_visibility=0.25))
    assert not result.failures and len(result.images) == 1 and "tile" in result.message
    saved = result.images[0]
    record = studio.gallery.get(saved.id)
    assert record["source"] == "upscale" and record["source_id"] == source
    assert record["prompt"] == "a red circle" and record["negative_prompt"] == "blurry" and record["model"] == "m"
    assert record["params"]["seed"] == 42 and record["params"]["upscale"]["upscaler"] == "compact-2x.safetensors"
    text = read_png_parameters(saved.path)
    assert text == record["params"]["infotext"] == saved.infotext
    assert text.startswith("a red circle\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a")
    assert text.endswith("Postprocess upscale by: 2, Postprocess upscaler: compact-2x.safetensors, "
                         "Postprocess upscaler 2: Lanczos (no model), Postprocess upscaler 2 visibility: 0.25")
    assert Image.open(saved.path).size == (48, 32) and saved.path != source_file
    assert hashlib.sha256(source_file.read_bytes()).hexdigest() == digest  # the source is untouched


def test_model_passes_and_target_sizes(studio):
    source = gallery_image(studio, size=(20, 12))
    up = studio.upscale
    four = up.upscale(UpscaleRequest(upscaler="compact-2x.safetensors", scale=4, ids=[source])).images[0]
    assert four.size == (80, 48)  # two passes of the 2x model
    exact = up.upscale(UpscaleRequest(upscaler="esrgan-4x.pth", target_width=50, target_height=30,
                                      ids=[source])).images[0]
    assert exact.size == (50, 30) and "Postprocess upscale to: 50x30" in exact.infotext
    wide = up.upscale(UpscaleRequest(upscaler="Bicubic", target_width=60, ids=[source])).images[0]
    assert wide.size == (60, 36)


def test_image_modes_and_a_bad_source_in_a_batch(studio, tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((16, 16), 90, np.uint8), "L").save(grey)
    rgba = tmp_path / "rgba.png"
    pixels = np.zeros((16, 16, 4), np.uint8)
    pixels[..., 0], pixels[..., 3] = 200, 255
    pixels[:, :8, 3] = 0
    Image.fromarray(pixels, "RGBA").save(rgba)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(deep)  # 16-bit grey
    broken = tmp_path / "broken.png"
    broken.write_bytes(grey.read_bytes()[:40])
    result = studio.upscale.upscale(UpscaleRequest(
        upscaler="compact-2x.safetensors", scale=2,
        images=[str(grey), str(rgba), str(deep), str(broken), str(tmp_path / "gone.png")]))
    assert [f[0] for f in result.failures] == ["broken.png", "gone.png"]
    out = {i.source: Image.open(i.path) for i in result.images}
    assert out["grey.png"].mode == "L" and out["grey.png"].size == (32, 32)
    info = parse_infotext(read_png_parameters(out["grey.png"].filename))  # no parameters in: they read back
    assert info["Prompt"] == "" and info["Size"] == "16x16" and info["Postprocess upscaler"] == "compact-2x.safetensors"
    assert out["rgba.png"].mode == "RGBA"
    alpha = np.asarray(out["rgba.png"].getchannel("A"))
    assert alpha[:, :12].max() < 30 and alpha[:, 20:].min() > 225
    level = np.asarray(out["deep.png"]).astype(float).mean()
    assert out["deep.png"].mode == "L" and abs(level - 40000 / 65535 * 255) < 40  # scaled, not clipped to white
    plain = studio.upscale.upscale(UpscaleRequest(upscaler="Lanczos", scale=2, images=[str(deep)])).images[0]
    assert np.asarray(Image.open(plain.path)).mean() == pytest.approx(40000 / 65535 * 255, abs=1)


def test_the_upscale_job_round_trips_through_json_and_runs_in_the_queue(studio, tmp_path):
    upload = tmp_path / "upload.png"
    Image.new("RGB", (16, 16), (10, 200, 30)).save(upload)
    source = gallery_image(studio)
    req = studio.upscale.validate(UpscaleRequest(upscaler="Nearest", scale=2, ids=[source], images=[str(upload)]))
    jobs = UpscaleJobs(studio.upscale, tmp_path / "queue")
    spec = jobs.encode(req, "job1")
    payload = json.loads(json.dumps(spec.payload))
    assert payload["version"] == 1 and spec.total == 2 and payload["job_id"] == "job1"
    again = jobs.request(payload)
    assert again.ids == [source] and again.images[0].startswith(str(tmp_path / "queue" / "job1"))
    assert again.upscaler == "Nearest" and again.scale == 2

    studio.queue.start()
    result = studio.queue.interactive("upscale", req, "me")(threading.Event())
    assert len(result.images) == 2 and not result.failures
    records = [studio.gallery.get(i.id) for i in result.images]
    assert records[0]["job_id"] and records[0]["job_id"] == records[1]["job_id"]
    assert {r["params"]["upscale"]["source_index"] for r in records} == {0, 1}


def test_a_resumed_job_skips_the_sources_it_already_upscaled(studio):
    ids = [gallery_image(studio), gallery_image(studio)]
    req = UpscaleRequest(upscaler="Lanczos", scale=2, ids=ids, job_id="a" * 32)
    first = studio.upscale.upscale(req, skip={1})
    assert [i.index for i in first.images] == [0]
    jobs = UpscaleJobs(studio.upscale, studio.settings.data_dir / "queue")
    assert jobs.done_indexes({"job_id": "a" * 32}) == {0}


def test_the_upscale_tab_sends_ids_and_its_api_returns_the_saved_images(studio):
    import gradio as gr

    from studio.ui import upscale_tab

    with gr.Blocks():
        with gr.Tabs():
            tab = upscale_tab.create_tab(studio)
    assert tab.title == "Upscale" and tab.components["ids"].elem_id == "upscale-ids" and not tab.on_load
    req = upscale_tab.request_from_form({"ids": f"{'1' * 32}, {'2' * 32}", "image": "a.png", "folder": "x",
                                         "upscaler": "Lanczos", "scale": 2})
    assert req.ids == ["1" * 32, "2" * 32] and req.images == [] and req.folder == ""
    studio.queue.start()
    source = gallery_image(studio)
    out = tab.api["upscale"](ids=source, upscaler="compact-2x.safetensors", scale=2)
    assert len(out["images"]) == 1 and out["images"][0]["width"] == 48 and not out["failures"]
    with pytest.raises(gr.Error, match="scale must be between 1 and 8"):
        tab.api["upscale"](ids=source, scale=20)


def test_the_benchmark_section_prints_its_numbers(tmp_path, capsys):
    from bench.upscale import bench_upscale

    bench_upscale(tmp_path / "up", size=32, repeats=1)
    out = capsys.readouterr().out
    for name in ("cold load", "cache hit", "tiled", "seam", "images/s", "tile size from budget",
                 "built-in upscaler, 16 held-out scenes (clean)", "(softened)"):
        assert name in out, out


# ---------------------------------------------------------------------- refine with the diffusion model
def test_refine_runs_img2img_over_the_upscaled_image_and_saves_only_the_result(services):
    from studio.gallery_service import GalleryQuery
    from tests.conftest import TINY_MODEL_ID

    source = gallery_image(services, size=(40, 32))
    req = UpscaleRequest(upscaler="Lanczos", scale=2, ids=[source], refine_strength=0.5, refine_model=TINY_MODEL_ID,
                         refine_steps=2, refine_seed=5)
    before = services.gallery.search(GalleryQuery(page_size=100)).total
    first = services.upscale.upscale(req)
    again = services.upscale.upscale(req)
    plain = services.upscale.upscale(UpscaleRequest(upscaler="Lanczos", scale=2, ids=[source]))
    assert services.gallery.search(GalleryQuery(page_size=100)).total == before + 3, "no record per tile"
    pixels = [np.asarray(Image.open(r.images[0].path), dtype=int) for r in (first, again, plain)]
    assert pixels[0].shape == (64, 80, 3)
    assert (pixels[0] == pixels[1]).all(), "the same seed refines the same way"
    assert np.abs(pixels[0] - pixels[2]).mean() > 5, "the refine pass changed the picture"
    info = parse_infotext(first.images[0].infotext)
    assert info["SD upscale strength"] == "0.5" and info["SD upscale model"] == TINY_MODEL_ID
    assert info["SD upscale seed"] == "5" and info["Prompt"] == "a red circle"
    assert services.gallery.get(first.images[0].id)["params"]["upscale"]["refine"]["tile"] == 512


def test_refine_tiles_overlap_and_cover_the_image(services):
    from studio.generation_service import GenerationRequest
    from studio.upscale_service import refine_in_tiles
    from tests.conftest import TINY_MODEL_ID

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    seen = []
    out = refine_in_tiles(services.generation, image, GenerationRequest(
        prompt="a square", model=TINY_MODEL_ID, steps=4, seed=1, strength=0.3), 64, None,
        lambda done, total: seen.append((done, total)))
    assert out.size == image.size and seen[-1] == (6, 6), seen  # 3 x 2 tiles of 64 px overlapping by 16
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TilingCancelled):
        refine_in_tiles(services.generation, image, GenerationRequest(prompt="a square", model=TINY_MODEL_ID,
                                                                      steps=4, strength=0.3), 64, cancel)


@pytest.mark.parametrize("change, field", [
    (dict(refine_strength=1.5), "refine_strength"),
    (dict(refine_strength=0.3, refine_model="no-such-model"), "refine_model"),
    (dict(refine_strength=0.3, refine_steps=0), "refine_steps"),
    (dict(refine_strength=0.3, refine_seed=-2), "refine_seed"),
    (dict(refine_strength=0.3, refine_steps=3, refine_model="local:tiny-sd"), "refine_strength"),  # 0.9: no step
])
def test_refine_settings_are_checked_naming_the_field(services, change, field):
    source = gallery_image(services)
    with pytest.raises(ValidationError) as error:
        services.upscale.validate(UpscaleRequest(ids=[source], **change))
    assert error.value.field == field


def test_a_source_without_a_prompt_is_reported_and_the_batch_goes_on(services):
    from tests.conftest import TINY_MODEL_ID

    bare, named = gallery_image(services, prompt=""), gallery_image(services, size=(32, 32))
    result = services.upscale.upscale(UpscaleRequest(upscaler="Lanczos", scale=2, ids=[bare, named],
                                                     refine_strength=0.5, refine_model=TINY_MODEL_ID, refine_steps=2))
    assert [i.source for i in result.images] == [named]
    assert result.failures and "refine_prompt" in result.failures[0][1]


def test_the_default_upscaler_is_a_persons_own_model_then_the_built_in_one_then_lanczos(studio):
    from pathlib import Path

    upscale = studio.upscale
    assert upscale.default_upscaler() == "compact-2x.safetensors"
    save_model(compact(scale=4), Path(studio.settings.builtin_upscaler_dir) / "builtin.safetensors")
    assert upscale.default_upscaler() == "compact-2x.safetensors", "made for real pictures: first"
    for path in (studio.settings.models_root / "ESRGAN").iterdir():
        path.unlink()
    assert upscale.default_upscaler() == BUILTIN_UPSCALER_ID
    assert dict((name, label) for label, name in upscale.choices())[BUILTIN_UPSCALER_ID].startswith("Built-in 4x")
    for path in Path(studio.settings.builtin_upscaler_dir).iterdir():
        path.unlink()
    assert upscale.default_upscaler() == "Lanczos"
