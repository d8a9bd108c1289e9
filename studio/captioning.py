"""Auto-captioning of training images with a local image-to-text model (BLIP, GIT, ...) from models/Caption/.

A model is a transformers folder (config.json + processor files) placed under `<models>/Caption/<name>/`; it
loads with no network and stays in the studio's model cache like every other model.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from pipelines.devices import DeviceChoice
from pipelines.model_cache import ModelCache
from studio.errors import StudioError, ValidationError

CAPTION_DIR = "Caption"


class CaptionService:
    """Lists the installed captioning models and captions dataset items with one of them."""

    def __init__(self, folder: Path, cache: ModelCache, device: DeviceChoice, device_lock: threading.Lock,
                 max_new_tokens: int = 40):
        self.folder = Path(folder)
        self.cache = cache
        self.device = device
        self.device_lock = device_lock
        self.max_new_tokens = max_new_tokens

    def models(self) -> list[str]:
        """Names of installed captioning models (sub-folders holding a config.json)."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if (p / "config.json").is_file())

    def _load(self, name: str):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = self.folder / name
        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise StudioError(f"captioning model {name!r} could not be loaded: {exc}", "caption_model") from exc
        return processor, model.to(self.device.device).eval()

    def caption(self, items: list, name: str, overwrite: bool = False, batch_size: int = 8) -> list:
        """Return `items` (anything with .path and .caption) with captions written by model `name`; items that
        already have a caption keep it unless `overwrite`."""
        import torch
        from PIL import Image

        if not items:
            raise ValidationError("dataset is empty: add images before auto-captioning", "dataset")
        installed = self.models()
        if name not in installed:
            allowed = ", ".join(installed) if installed else f"none installed: put one in {self.folder}"
            raise ValidationError(f"captioning model must be one of: {allowed}; got {name!r}", "caption_model")
        todo = [i for i, item in enumerate(items) if overwrite or not item.caption.strip()]
        out = list(items)
        with self.cache.use((f"caption:{name}", "caption"), lambda: self._load(name)) as (processor, model):
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                images = [Image.open(items[i].path).convert("RGB") for i in chunk]
                inputs = processor(images=images, return_tensors="pt").to(self.device.device)
                with self.device_lock, torch.no_grad():
                    ids = model.generate(**inputs, max_new_tokens=self.max_new_tokens)
                for i, text in zip(chunk, processor.batch_decode(ids, skip_special_tokens=True)):
                    out[i] = replace(items[i], caption=text.strip())
        return out
