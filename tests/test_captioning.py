"""Auto-captioning: a local BLIP folder under models/Caption is found, loaded once (cached) and captions images."""

from __future__ import annotations

import pytest
from PIL import Image

from studio.captioning import CAPTION_DIR
from studio.errors import ValidationError
from studio.training_service import DatasetItem
from tests.tiny_models import tiny_blip_captioner


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, colour in enumerate(("red", "blue", "green")):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (64, 48), colour).save(path)
        paths.append(str(path))
    return paths


def test_no_model_installed_is_reported_by_name(services, images):
    assert services.captions.models() == []
    with pytest.raises(ValidationError) as err:
        services.captions.caption([DatasetItem(images[0], "")], "blip")
    assert err.value.field == "caption_model" and "none installed" in str(err.value)


def test_local_blip_captions_only_missing_captions_unless_overwrite(services, images):
    tiny_blip_captioner(services.settings.models_root / CAPTION_DIR / "tiny-blip")
    assert services.captions.models() == ["tiny-blip"]
    items = [DatasetItem(images[0], ""), DatasetItem(images[1], "kept caption"), DatasetItem(images[2], " ")]
    out = services.captions.caption(items, "tiny-blip")
    assert out[1].caption == "kept caption"
    assert out[0].caption and out[2].caption and out[0].path == images[0]
    loads = services.models.stats().loads
    again = services.captions.caption(items, "tiny-blip", overwrite=True)
    assert again[1].caption != "kept caption" and again[0].caption == out[0].caption  # deterministic model
    assert services.models.stats().loads == loads  # second call is a cache hit
