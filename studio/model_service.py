"""Models for the studio: what is installed, which are loaded, and a pinned pipeline for a job."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipelines import model_hashes
from pipelines.devices import DeviceChoice
from pipelines.loading import ModelLoadError, load_pipeline
from pipelines.model_cache import ModelCache
from pipelines.registry import (BUILTIN_ID, DEFAULT_GENERATION, ModelNotFound, ModelRegistry, ModelSource,
                               recommended_settings)
from pipelines.tasks import BASE_TASK, TASKS, derive_pipeline
from studio.errors import StudioError, ValidationError


NATIVE_SIZE = {"builtin": 128, "sd": 512, "sdxl": 1024}


def file_sha256(path: Path, prefix: int = 10) -> str:
    return model_hashes.file_sha256(path)[:prefix]


class ModelService:
    """Resolves model ids, hands out cached pipelines, reports and unloads them."""

    def __init__(self, registry: ModelRegistry, cache: ModelCache, device: DeviceChoice, offline: bool = False,
                 hash_cache: Path | None = None):
        self.registry = registry
        self.cache = cache
        self.device = device
        self.offline = offline
        self.hashes = model_hashes.HashCache(hash_cache)  # None: kept in memory only

    def choices(self) -> list[str]:
        return [m.id for m in self.registry.list_models()]

    def default_model(self, preferred: str = BUILTIN_ID) -> str | None:
        ids = self.choices()
        return preferred if preferred in ids else (ids[0] if ids else None)

    def resolve(self, model_id: str) -> ModelSource:
        try:
            return self.registry.resolve(model_id)
        except (ModelNotFound, ValueError) as exc:
            raise ValidationError(str(exc).strip("'\""), "model") from None

    def recommended(self, model_id: str | None) -> dict:
        """The model's recommended generation settings (cfg_scale, cfg_rescale); the studio's defaults for
        no model."""
        return recommended_settings(self.resolve(model_id)) if model_id else dict(DEFAULT_GENERATION)

    def native_size(self, model_id: str) -> int:
        """The side in pixels the model was trained at (the built-in model 128, SD 512, SDXL 1024)."""
        source = self.resolve(model_id)
        return NATIVE_SIZE["builtin" if source.kind == "builtin" else source.family]

    def lora_names(self) -> list[str]:
        """Every LoRA under the models folder's Lora/, by the name a <lora:name:weight> tag uses."""
        return sorted(self.registry.lora_files())

    def no_model_message(self) -> str:
        return self.registry.no_model_message()

    @contextmanager
    def pipeline(self, model_id: str, task: str = BASE_TASK, report=None) -> Iterator[object]:
        """Yield the model's pipeline for `task` (pipelines.tasks), loading on a miss; pinned in the cache while
        inside.

        `report(done, total)` gets download progress (bytes) when a Hugging Face model is fetched."""
        if task not in TASKS:
            raise ValidationError(f"mode must be one of {', '.join(TASKS)}; got {task!r}", "mode")
        source = self.resolve(model_id)

        def loader():
            return load_pipeline(source, self.device, self.offline, report)

        try:
            with self._use(source.id, task, loader) as pipe:
                self._derive_every_task(source.id, loader)
                yield pipe
        except ModelLoadError as exc:
            raise StudioError(str(exc), "model") from exc

    def _use(self, model_id: str, task: str, loader):
        base_key = (model_id, BASE_TASK)
        if task == BASE_TASK:
            return self.cache.use(base_key, loader)
        return self.cache.use((model_id, task), loader, parent=base_key,
                              derive=lambda base: derive_pipeline(base, task))

    def _derive_every_task(self, model_id: str, loader) -> None:
        """Build every task's view right after a load, so switching mode later is a cache hit."""
        for task in TASKS:
            if (model_id, task) not in self.cache:
                with self._use(model_id, task, loader):
                    pass

    def model_hash(self, model_id: str) -> str:
        """A1111's short model hash (AutoV2) of the model's weights file (the UNet file for diffusers folders),
        computed once per file version and cached by size + mtime (pipelines.model_hashes)."""
        return self._hash_source(self.resolve(model_id))

    def _hash_source(self, source: ModelSource) -> str:
        if source.kind == "hub":
            return hashlib.sha256(source.location.encode()).hexdigest()[:10]
        path = Path(source.location)
        if path.is_dir():
            files = sorted((path / "unet").glob("*.safetensors")) or sorted((path / "unet").glob("*.bin"))
            if not files:
                return "0000000000"
            path = files[0]
        return self.hashes.autov2(path)

    def stats(self):
        return self.cache.stats()

    def unload(self, model_id: str) -> int:
        try:
            return self.cache.unload(model_id)
        except RuntimeError as exc:
            raise StudioError(str(exc), "model") from None
