"""Shared fixtures: a tiny diffusers model installed in an A1111-style models folder, and built services."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from studio.settings import BUILTIN_MODEL_DIR, Settings

TINY_MODEL_ID = "local:tiny-sd"


def pytest_collection_modifyitems(config, items):
    weights_dir = Path.home() / ".cache" / "huggingface" / "hub"
    has_weights = weights_dir.exists() and any(weights_dir.glob("models--*"))
    for item in items:
        if "weights" in item.keywords and not has_weights:
            item.add_marker(pytest.mark.skip(reason="needs downloaded model weights"))


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A models folder holding one tiny SD pipeline saved as a diffusers folder."""
    from tests.tiny_models import tiny_sd_pipeline

    root = tmp_path_factory.mktemp("models")
    pipe = tiny_sd_pipeline(root / "tok")
    pipe.save_pretrained(root / "Stable-diffusion" / "tiny-sd")
    return root


def make_settings(tmp_path: Path, models_dir: Path, **overrides) -> Settings:
    values = dict(data_dir=tmp_path / "data", models_dir=models_dir, builtin_model_dir=tmp_path / "no-builtin",
                  model=TINY_MODEL_ID, offline=True, device="cpu", dtype="float32")
    values.update(overrides)
    return Settings(**values)


def services_with_recommended(tmp_path: Path, tiny_models_dir: Path, defaults: dict):
    """Services over a copy of the tiny model whose folder recommends `defaults` (generation_defaults.json);
    the caller shuts their training down."""
    import json
    import shutil

    from studio.services import build_services

    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "Stable-diffusion" / "tiny-sd", models / "Stable-diffusion" / "tiny-sd")
    (models / "Stable-diffusion" / "tiny-sd" / "generation_defaults.json").write_text(json.dumps(defaults))
    return build_services(make_settings(tmp_path, models))


@pytest.fixture
def services(tmp_path, tiny_models_dir):
    from studio.services import build_services

    built = build_services(make_settings(tmp_path, tiny_models_dir))
    yield built
    built.training.shutdown()


@pytest.fixture(scope="session")
def builtin_available() -> bool:
    return (BUILTIN_MODEL_DIR / "model_index.json").exists()


def wait_for(predicate, timeout: float = 30.0, every: float = 0.02):
    """Poll `predicate` until it gives something truthy (returned) or `timeout` seconds pass (AssertionError)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def served(tmp_path_factory, tiny_models_dir):
    """The real app on the tiny model, served on 127.0.0.1: (url, services)."""
    from app import create_app, launch_kwargs

    tmp = tmp_path_factory.mktemp("app")
    settings = make_settings(tmp, tiny_models_dir, port=free_port())
    demo, services = create_app(settings)
    kwargs = launch_kwargs(settings)
    kwargs.update(prevent_thread_lock=True, quiet=True, inbrowser=False)
    demo.launch(**kwargs)
    yield f"http://127.0.0.1:{settings.port}/", services
    services.schedules.shutdown(wait=False)
    services.training.shutdown()
    demo.close()
