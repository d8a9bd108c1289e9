"""Models for the studio: what is installed, which are loaded, and a pinned pipeline for a job."""

from __future__ import annotations

import hashlib
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from pipelines import model_hashes
from pipelines.controlnets import ControlNetError, ControlNetSource, check_fits, load_controlnet, shape_of_config
from pipelines.devices import DeviceChoice
from pipelines.loading import ModelLoadError, load_pipeline
from pipelines.model_cache import ModelCache
from pipelines.registry import (BUILTIN_ID, DEFAULT_GENERATION, VAE_DIR, ModelNotFound, ModelRegistry, ModelSource,
                               recommended_settings)
from pipelines.tasks import BASE_TASK, TASKS, derive_controlnet_pipeline, derive_pipeline
from pipelines.vaes import VaeError, load_vae_file
from studio.errors import StudioError, ValidationError


NATIVE_SIZE = {"builtin": 128, "sd": 512, "sdxl": 1024}
OWN_VAE, AUTO_VAE = "", "auto"  # GenerationRequest.vae: the model's own VAE; A1111's automatic pick-up


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

    def is_inpainting_model(self, model_id: str) -> bool:
        """Whether the model's UNet takes the masked image too (9 input channels: an inpainting checkpoint),
        read from its config or the file's header, without loading it."""
        import json

        from pipelines.single_file import read_header, unet_shape

        source = self.resolve(model_id)
        if source.kind == "single_file":
            return unet_shape(read_header(Path(source.location)))[0] == 9
        config = Path(source.location) / "unet" / "config.json"
        if source.kind in ("builtin", "diffusers") and config.is_file():
            return json.loads(config.read_text()).get("in_channels") == 9
        return False

    def lora_names(self) -> list[str]:
        """Every LoRA under the models folder's Lora/ and LyCORIS/, by the name a <lora:name:weight> tag uses."""
        return sorted(self.registry.lora_files())

    def embedding_names(self) -> list[str]:
        """Every textual inversion under the models folder's embeddings/, by the word a prompt uses."""
        return sorted(self.registry.embedding_files())

    # ------------------------------------------------------------------ VAE overrides
    def vae_names(self) -> list[str]:
        """Every VAE under the models folder's VAE/, by the name GenerationRequest.vae uses (its file name)."""
        return sorted(self.registry.vae_files())

    def vae_choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a VAE picker: the model's own, automatic, then every file under VAE/."""
        return ([("Model's own", OWN_VAE), ("Automatic: <checkpoint>.vae.safetensors beside it, else own", AUTO_VAE)]
                + [(name, name) for name in self.vae_names()])

    def check_vae(self, vae: str | None) -> str:
        """`vae` normalised, or ValidationError naming the allowed values."""
        vae = (vae or "").strip()
        if vae in (OWN_VAE, AUTO_VAE) or vae in self.registry.vae_files():
            return vae
        known = ", ".join(self.vae_names()) or "none installed"
        raise ValidationError(f"vae must be '' (the model's own), 'auto' or a file under "
                              f"{self.registry.models_dir / VAE_DIR} ({known}); got {vae!r}", "vae")

    def vae_file(self, model_id: str, vae: str | None) -> tuple[str, Path] | None:
        """(name recorded in the infotext, file) of the VAE a job on `model_id` uses instead of the model's own,
        or None for the model's own. "auto" picks `<checkpoint>.vae.safetensors` (.vae.pt, .vae.ckpt) beside a
        single-file checkpoint, as A1111 does."""
        vae = self.check_vae(vae)
        if vae == OWN_VAE:
            return None
        if vae == AUTO_VAE:
            source = self.resolve(model_id)
            beside = self.registry.vae_beside(Path(source.location)) if source.kind == "single_file" else None
            return (beside.name, beside) if beside else None
        return vae, self.registry.vae_files()[vae]

    @contextmanager
    def vae_override(self, model_id: str, vae: str | None) -> Iterator[tuple[str, Path, object] | None]:
        """Yield (name, file, loaded VAE) for the VAE a job uses instead of the model's own, or None for the
        model's own. The VAE is loaded with the model's VAE configuration and cached as an entry of its own,
        derived from the model's pipeline (key: model id, "vae:<file under the models folder>"), so it goes when
        the model is unloaded; pinned inside. A VAE that does not fit the model raises ValidationError."""
        found = self.vae_file(model_id, vae)
        if found is None:
            yield None
            return
        name, path = found
        source = self.resolve(model_id)
        try:
            where = path.resolve().relative_to(self.registry.models_dir.resolve()).as_posix()
        except ValueError:
            where = str(path)

        def derive(base):
            try:
                return load_vae_file(path, base.vae, base.unet.config.out_channels, name, source.label)
            except VaeError as exc:
                raise ValidationError(str(exc), "vae") from None

        def loader():
            return load_pipeline(source, self.device, self.offline)

        try:
            with self.cache.use((source.id, f"vae:{where}"), loader, parent=(source.id, BASE_TASK),
                                derive=derive) as module:
                yield name, path, module
        except ModelLoadError as exc:
            raise StudioError(str(exc), "model") from exc

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

    @contextmanager
    def controlnet_pipeline(self, model_id: str, mode: str, controlnets: list[ControlNetSource],
                            report=None) -> Iterator[object]:
        """Yield the ControlNet pipeline of `mode` (txt2img, img2img, inpaint) on the model with `controlnets`
        (1..3, one per unit, in order). It is derived for the job from the cached base pipeline with `from_pipe`,
        so it shares every weight of the model; each ControlNet is a cache entry of its own (key
        ("controlnet:<id>", "controlnet")), so adding one loads only that ControlNet. All pinned inside. A
        ControlNet made for another base raises ValidationError naming both."""
        with self.pipeline(model_id, BASE_TASK, report) as base, ExitStack() as stack:
            label, config = self.resolve(model_id).label, base.unet.config
            nets = []
            for source in controlnets:
                def loader(source=source):
                    return load_controlnet(source, config, self.device.device, self.device.dtype, self.offline,
                                           report)

                try:
                    net = stack.enter_context(self.cache.use((f"controlnet:{source.id}", "controlnet"), loader))
                    check_fits(shape_of_config(net.config), shape_of_config(config), source.label, label)
                except ControlNetError as exc:
                    raise ValidationError(str(exc), "controlnet") from None
                nets.append(net)
            yield derive_controlnet_pipeline(base, mode, nets)

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
