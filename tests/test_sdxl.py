"""An SDXL model (tiny, from configs) in a models folder: listed as SDXL, every mode, weighted prompts."""

from __future__ import annotations

import pytest
from PIL import Image

from studio.generation_service import GenerationRequest
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def sdxl_services(tmp_path_factory):
    from studio.services import build_services
    from tests.tiny_models import tiny_sdxl_pipeline

    root = tmp_path_factory.mktemp("sdxl")
    tiny_sdxl_pipeline(root / "tok").save_pretrained(root / "models" / "Stable-diffusion" / "tiny-xl")
    services = build_services(make_settings(root, root / "models", model="local:tiny-xl"))
    yield services
    services.training.shutdown()


def test_sdxl_is_detected_and_generates_in_every_mode(sdxl_services):
    assert sdxl_services.models.resolve("local:tiny-xl").family == "sdxl"
    base = dict(model="local:tiny-xl", steps=2, width=64, height=64, seed=1, sampler="Euler")
    init = Image.new("RGB", (64, 64), (10, 200, 10))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    for extra in ({}, {"mode": "img2img", "init_image": init},
                  {"mode": "inpaint", "init_image": init, "mask_image": mask},
                  {"prompt": "a (red:1.3) circle BREAK on blue"}):
        req = GenerationRequest(**{"prompt": "a red circle", **base, **extra})
        result = sdxl_services.generation.generate(req)
        assert Image.open(result.images[0].path).size == (64, 64)
    assert sum(1 for e in sdxl_services.models.stats().entries if e["kind"] == "txt2img") == 1
