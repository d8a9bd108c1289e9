"""The shipped built-in model: loads offline through the registry and cache, is small, and draws what it is told."""

from __future__ import annotations

import pytest
from PIL import Image

from studio.generation_service import GenerationRequest
from studio.settings import BUILTIN_MODEL_DIR
from tests.conftest import make_settings
from training.evaluator import evaluate

pytestmark = pytest.mark.skipif(not (BUILTIN_MODEL_DIR / "model_index.json").exists(),
                                reason="the built-in model is not installed")

PROMPTS = [("a red circle on a blue background", 1), ("a large yellow square on a black background", 2),
           ("a small white triangle on a green background", 3), ("a blue circle on a white background", 4),
           ("a large green square on a purple background", 5), ("an orange triangle on a blue background", 6)]


def test_weights_are_small():
    size = sum(f.stat().st_size for f in BUILTIN_MODEL_DIR.rglob("*") if f.is_file())
    assert size < 20 * 2**20


def test_default_model_generates_offline_above_a_floor(tmp_path, monkeypatch):
    from studio.services import build_services

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    services = build_services(make_settings(tmp_path, tmp_path / "models", builtin_model_dir=BUILTIN_MODEL_DIR,
                                            model="builtin:shapes"))
    assert services.models.default_model() == "builtin:shapes"
    pairs = []
    for prompt, seed in PROMPTS:
        result = services.generation.generate(GenerationRequest(prompt=prompt, seed=seed, steps=20))
        pairs.append((prompt, Image.open(result.images[0].path)))
    scores = evaluate(pairs)
    assert scores["background"] >= 0.5 and scores["overall"] >= 0.4, scores


def test_live_preview_shows_the_picture_taking_shape_not_noise():
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    from pipelines.generation import PipelineCall, run_pipeline

    pipe = StableDiffusionPipeline.from_pretrained(BUILTIN_MODEL_DIR, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    updates = []
    call = PipelineCall("txt2img", "a red circle on a blue background", "", 20, 5.0, 128, 128, [1], cfg_rescale=0.7)
    final = np.asarray(run_pipeline(pipe, call, "cpu", on_step=updates.append)[0], dtype=float)
    previews = [np.asarray(u.preview, dtype=float) for u in updates if u.preview is not None]
    assert len(previews) == 3  # steps 5, 10 and 15
    roughness = lambda a: np.abs(np.diff(a, axis=0)).mean()  # noise is rough, shapes on plain colour are smooth
    assert roughness(previews[0]) < 2 * roughness(final) + 2
    # halfway the preview already shows the final picture (the noisy latents decoded differ by about 50 and 16)
    assert np.abs(previews[1] - final).mean() < 20 and np.abs(previews[2] - final).mean() < 8
