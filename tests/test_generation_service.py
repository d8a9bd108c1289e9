"""GenerationService on a tiny diffusers model: every mode and sampler, seeds, stop, saving, validation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from pipelines.samplers import make_scheduler, sampler_names
from studio.errors import ValidationError
from studio.generation_service import GenerationRequest
from studio.infotext import parse_infotext, read_png_parameters
from tests.conftest import TINY_MODEL_ID


def request(**kw) -> GenerationRequest:
    base = dict(prompt="a red circle", model=TINY_MODEL_ID, steps=2, width=64, height=64, seed=7, sampler="Euler")
    base.update(kw)
    return GenerationRequest(**base)


@pytest.mark.parametrize("sampler", sampler_names())
def test_every_sampler_makes_an_image(services, sampler):
    result = services.generation.generate(request(sampler=sampler, cfg_scale=1.5 if sampler == "LCM" else 7))
    assert len(result.images) == 1
    assert Image.open(result.images[0].path).size == (64, 64)


def test_studio_matches_raw_diffusers_to_float_rounding(services, tiny_models_dir):
    import torch
    from diffusers import StableDiffusionPipeline

    result = services.generation.generate(request(seed=123, steps=3))
    raw = StableDiffusionPipeline.from_pretrained(tiny_models_dir / "Stable-diffusion" / "tiny-sd",
                                                  safety_checker=None, requires_safety_checker=False)
    raw.scheduler = make_scheduler("Euler", dict(raw.scheduler.config))
    expected = raw("a red circle", num_inference_steps=3, guidance_scale=7.0, width=64, height=64,
                   generator=torch.Generator("cpu").manual_seed(123)).images[0]
    # the studio's channels-last UNet may round a last bit differently on some CPUs (AVX-512 kernels): at most one
    # level in a few pixels, never a different image
    diff = np.abs(np.asarray(Image.open(result.images[0].path), dtype=int) - np.asarray(expected, dtype=int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.001, (diff.max(), (diff > 0).mean())


def test_modes_share_weights_without_reloading(services):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    services.generation.generate(request())
    services.generation.generate(request(mode="img2img", init_image=init, strength=0.6))
    services.generation.generate(request(mode="inpaint", init_image=init, mask_image=mask, strength=0.9))
    stats = services.models.stats()
    kinds = {e["kind"]: e for e in stats.entries}
    assert set(kinds) == {"txt2img", "img2img", "inpaint"}
    assert kinds["img2img"]["bytes"] == 0 and kinds["inpaint"]["bytes"] == 0
    base_loads = [e for e in stats.entries if e["kind"] == "txt2img"]
    assert len(base_loads) == 1 and stats.misses == 3 and stats.hits == 4  # 2 derivations read the base, 2 switches


def test_batches_seeds_and_saved_metadata(services):
    result = services.generation.generate(request(batch_count=2, batch_size=2, seed=40))
    assert [img.seed for img in result.images] == [40, 41, 42, 43]
    info = parse_infotext(read_png_parameters(result.images[2].path))
    assert info["Seed"] == "42" and info["Steps"] == "2" and info["Sampler"] == "Euler"
    assert info["Size"] == "64x64" and info["Model"] == "tiny-sd" and len(info["Model hash"]) == 10
    records, total = services.gallery.list()
    assert total == 4 and {r["job_id"] for r in records} == {result.job_id}
    assert all((services.settings.data_dir / r["path"]).exists() for r in records)


def test_random_seed_is_reported(services):
    result = services.generation.generate(request(seed=-1))
    assert 0 <= result.images[0].seed < 2**32
    again = services.generation.generate(request(seed=result.images[0].seed))
    assert np.array_equal(np.asarray(Image.open(again.images[0].path)), np.asarray(Image.open(result.images[0].path)))


def test_stop_keeps_finished_images_and_ends_within_a_step(services):
    cancel = threading.Event()
    steps_seen = []

    def on_progress(index, total, update):
        steps_seen.append((index, update.step))
        if index == 1 and update.step == 1:
            cancel.set()

    result = services.generation.generate(request(batch_count=3, steps=5), cancel, on_progress)
    assert result.stopped and len(result.images) == 1
    assert max(step for index, step in steps_seen if index == 1) <= 2
    assert not any(index == 2 for index, _ in steps_seen)


def test_img2img_records_denoising_strength(services):
    init = Image.new("RGB", (80, 80), (0, 0, 200))
    result = services.generation.generate(request(mode="img2img", init_image=init, strength=0.5))
    info = parse_infotext(read_png_parameters(result.images[0].path))
    assert info["Denoising strength"] == "0.5"
    assert Image.open(result.images[0].path).size == (64, 64)


BAD = [
    ({"width": 100}, "width"), ({"width": 4096}, "width"), ({"height": 32}, "height"),
    ({"steps": 0}, "steps"), ({"steps": 151}, "steps"), ({"cfg_scale": 31}, "cfg_scale"),
    ({"cfg_scale": float("nan")}, "cfg_scale"), ({"batch_size": 99}, "batch_size"),
    ({"batch_count": 0}, "batch_count"), ({"prompt": ""}, "prompt"), ({"prompt": "x" * 10_000}, "prompt"),
    ({"sampler": "Nope"}, "sampler"), ({"seed": -5}, "seed"), ({"mode": "video"}, "mode"),
    ({"model": "local:../../etc/passwd"}, "model"), ({"model": "no/such-model"}, "model"),
    ({"model": "local:missing"}, "model"), ({"mode": "img2img"}, "init_image"),
    ({"mode": "img2img", "init_image": b"not an image"}, "init_image"),
    ({"mode": "img2img", "init_image": Image.new("RGB", (64, 64)), "steps": 4, "strength": 0.2}, "strength"),
    ({"mode": "inpaint", "init_image": Image.new("RGB", (64, 64)), "mask_image": Image.new("L", (32, 32), 255)},
     "mask_image"),
]


@pytest.mark.parametrize("overrides,field", BAD)
def test_bad_input_names_the_field(services, overrides, field, tmp_path):
    if overrides.get("init_image") == b"not an image":
        bad = tmp_path / "fake.png"
        bad.write_bytes(b"not an image")
        overrides = dict(overrides, init_image=str(bad))
    with pytest.raises(ValidationError) as err:
        services.generation.validate(request(**overrides))
    assert err.value.field == field
    assert field.split("_")[0] in str(err.value).lower()


def test_model_recommended_cfg_and_rescale(tmp_path, tiny_models_dir):
    """A model folder's generation_defaults.json fills a request that names no CFG; rescale reaches the pipeline
    and the infotext in txt2img, and is dropped (and not claimed) where SD img2img has none."""
    from tests.conftest import services_with_recommended

    services = services_with_recommended(tmp_path, tiny_models_dir,
                                         {"cfg_scale": 4.5, "cfg_rescale": 0.7, "unknown": 1})
    try:
        assert services.models.recommended(TINY_MODEL_ID) == {"cfg_scale": 4.5, "cfg_rescale": 0.7}
        checked = services.generation.validate(request())
        assert (checked.cfg_scale, checked.cfg_rescale) == (4.5, 0.7)
        plain = services.generation.generate(request(cfg_rescale=0.0))
        rescaled = services.generation.generate(request())
        info = parse_infotext(read_png_parameters(rescaled.images[0].path))
        assert info["CFG scale"] == "4.5" and info["CFG rescale"] == "0.7"
        assert not np.array_equal(np.asarray(Image.open(plain.images[0].path)),
                                  np.asarray(Image.open(rescaled.images[0].path)))
        img2img = services.generation.generate(request(mode="img2img", init_image=Image.new("RGB", (64, 64))))
        assert "CFG rescale" not in parse_infotext(read_png_parameters(img2img.images[0].path))
        with pytest.raises(ValidationError) as err:
            services.generation.validate(request(cfg_rescale=1.5))
        assert err.value.field == "cfg_rescale" and "between 0 and 1" in str(err.value)
    finally:
        services.training.shutdown()


def test_warm_up_loads_the_model_and_saves_nothing(services):
    assert services.generation.warm_up(TINY_MODEL_ID) > 0
    assert [e["kind"] for e in services.models.stats().entries if e["kind"] == "txt2img"] == ["txt2img"]
    assert services.gallery.list()[1] == 0, "a warm-up image is never saved"
    loads = services.models.stats().loads
    with services.models.pipeline(TINY_MODEL_ID, "txt2img") as pipe:
        unet, decoder = pipe.unet.forward.graphs, pipe.vae.decoder.forward.graphs
    assert len(unet) == 1 and len(decoder) == 1, "the warm-up froze the graphs for the default size"
    served = unet.served, decoder.served
    services.generation.generate(GenerationRequest(prompt="a red circle", model=TINY_MODEL_ID, steps=4))  # defaults
    assert services.models.stats().loads == loads, "the first real image finds the model loaded"
    assert (unet.served, decoder.served) == (served[0] + 4, served[1] + 1), "its every call runs a frozen graph"


def test_a_failing_background_warm_up_only_logs(services, monkeypatch, caplog):
    from app import warm_up_in_background

    def broken(model_id):
        raise RuntimeError("weights unreadable")

    monkeypatch.setattr(services.generation, "warm_up", broken)
    warm_up_in_background(services).join(timeout=60)
    assert f"warming up {services.settings.model} failed: weights unreadable" in caplog.text


def test_txt2img_on_an_inpainting_model_inpaints_a_neutral_image_everywhere(tmp_path, services):
    """A 9-channel UNet (an inpainting checkpoint) cannot run plain txt2img: as A1111 does, the studio inpaints a
    grey image with a full mask at strength 1, and the infotext still says txt2img."""
    from studio.services import build_services
    from tests.conftest import make_settings
    from tests.tiny_models import tiny_sd_pipeline, tiny_unet

    pipe = tiny_sd_pipeline(tmp_path / "tok")
    pipe.unet = tiny_unet(in_channels=9, cross_attention_dim=32, norm_num_groups=2, attention_head_dim=2)
    pipe.register_modules(unet=pipe.unet)
    models = tmp_path / "models"
    pipe.save_pretrained(models / "Stable-diffusion" / "tiny-inpainting")
    built = build_services(make_settings(tmp_path, models, model="local:tiny-inpainting"))
    try:
        assert built.models.is_inpainting_model("local:tiny-inpainting") is True
        assert services.models.is_inpainting_model(TINY_MODEL_ID) is False
        req = GenerationRequest(prompt="a red circle", model="local:tiny-inpainting", steps=2, width=64, height=64,
                                seed=3, sampler="Euler")
        checked = built.generation.validate(req)
        assert (checked.mode, checked.strength, checked.shown_mode) == ("inpaint", 1.0, "txt2img")
        assert checked.mask_image.getextrema() == (255, 255) and checked.init_image.getpixel((0, 0)) == (127, 127, 127)
        result = built.generation.generate(req)
        info = parse_infotext(result.images[0].infotext)
        assert result.images[0].image.size == (64, 64)
        assert "Denoising strength" not in info and "Mode" not in info and info["Seed"] == "3"
    finally:
        built.training.shutdown()
