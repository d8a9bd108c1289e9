"""Generate images: validate a request, run it on the shared device queue, save PNGs with infotext, record them."""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from pipelines.cpu_graphs import warm_up_steps
from pipelines.embeddings import (EmbeddingError, TextualInversion, added_embeddings, check_widths, mentioned,
                                  read_textual_inversion, sidecar_inversions, use_trigger_tokens)
from pipelines.generation import StepUpdate, run_pipeline, supports_cfg_rescale
from pipelines.loras import LoraError, check_lora_format, inspect_lora, load_lora_file
from pipelines.prompt_weighting import extract_lora_tags
from pipelines.registry import EMBEDDINGS_DIR, LORA_DIR, LYCORIS_DIR
from pipelines.samplers import DEFAULT_SAMPLER, SAMPLERS, make_scheduler
from pipelines.tasks import TASKS, ImageInputs, PipelineCall
from studio.errors import CorruptImageError, ValidationError, check_range
from studio.image_metadata import TOOLS, read_image_metadata
from studio.images import load_image
from studio.infotext import build_infotext, controlnet_units_from_infotext, parse_infotext, save_png_with_infotext
from studio.model_service import ModelService

MODES = tuple(TASKS)  # txt2img, img2img, inpaint: one per task runner
MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**32 - 1
TI_HASH_LENGTH = 12  # A1111's short hash of an embedding file in "TI hashes" (sha256[:12])


def check_denoising_steps(strength: float, steps: int, strength_field: str = "strength",
                          steps_field: str = "steps") -> None:
    """img2img runs the last `strength` share of the steps: refuse a pair that makes no step at all (diffusers
    would fail on an empty schedule), naming `strength_field`."""
    if int(steps * strength) < 1:
        raise ValidationError(f"{strength_field} x {steps_field} must reach 1 step (img2img runs that share of the "
                              f"steps); got {strength:g} x {steps} = {steps * strength:g}: raise either",
                              strength_field)


@dataclass
class GenerationRequest:
    """Everything the Generate tab (or a schedule) asks for."""

    prompt: str
    negative_prompt: str = ""
    model: str = "builtin:shapes"
    mode: str = "txt2img"
    sampler: str = DEFAULT_SAMPLER
    steps: int = 20
    cfg_scale: float | None = None  # None: the model's recommended value (7 unless it names one)
    cfg_rescale: float | None = None  # guidance rescale 0..1; None: the model's recommended value (0 unless named)
    width: int = 128
    height: int = 128
    seed: int = -1
    batch_count: int = 1
    batch_size: int = 1
    init_image: object | None = None
    mask_image: object | None = None
    strength: float = 0.75
    loras: list = field(default_factory=list)  # [(name, weight)] besides <lora:name:w> tags in the prompt
    vae: str = ""  # "": the model's own; "auto": <checkpoint>.vae.safetensors beside it; or a name under VAE/
    job_id: str = ""
    source: str = "generate"
    shown_mode: str = ""  # the mode asked for when the studio runs it as another (txt2img on an inpainting model)
    variation_seed: int = -1  # A1111's variation seed (-1: random); used when variation_strength > 0
    variation_strength: float = 0.0  # 0..1: how far each image's noise moves toward its variation seed's


@dataclass
class SavedImage:
    id: str
    path: Path
    seed: int
    infotext: str
    image: object = field(repr=False, default=None)
    variation_seed: int | None = None


@dataclass
class GenerationResult:
    images: list[SavedImage]
    requested: int
    stopped: bool
    job_id: str
    seconds: float
    notes: list[str] = field(default_factory=list)  # what was adjusted on the way (e.g. a resized control image)

    @property
    def message(self) -> str:
        done = len(self.images)
        if self.stopped:
            text = f"Stopped: kept {done} of {self.requested} images."
        else:
            text = f"{done} image{'s' if done != 1 else ''} in {self.seconds:.1f} s"
        return "; ".join([text, *self.notes])


# (image index, images requested, step update); index -1 = model download, step/total in bytes
ProgressFn = Callable[[int, int, StepUpdate], None]


class GenerationService:
    """txt2img / img2img / inpaint on any registered model, one job at a time on the device."""

    def __init__(self, models: ModelService, gallery, data_dir: Path, device_lock: threading.Lock,
                 max_batch_size: int = 8, max_batch_count: int = 16):
        self.models = models
        self.gallery = gallery
        self.data_dir = Path(data_dir)
        self.device_lock = device_lock
        self.max_batch_size = max_batch_size
        self.max_batch_count = max_batch_count
        self.after_save: list[Callable[[list[str]], object]] = []  # called with each job's new image ids

    # ------------------------------------------------------------------ choices for the UI
    @staticmethod
    def modes() -> list[str]:
        return list(MODES)

    @staticmethod
    def samplers() -> list[str]:
        return list(SAMPLERS)

    @staticmethod
    def default_sampler() -> str:
        return DEFAULT_SAMPLER

    def parameters_of(self, image_path) -> dict:
        """The generation fields an image carries, whichever supported tool made it (studio.image_metadata), for
        the PNG info of Generate and ControlNet: prompt, negative_prompt, sampler (only a studio one), steps,
        cfg_scale, cfg_rescale, width, height, seed, model, and from A1111 infotext its ControlNet units; "tool"
        names the tool read and "message" says so (and what could not be filled)."""
        try:
            found = read_image_metadata(image_path) if image_path else None
        except CorruptImageError as exc:
            raise ValidationError(f"png_info: {exc}", "png_info") from None
        if found is None:
            raise ValidationError(f"png_info: this image carries no generation parameters (read: {', '.join(TOOLS)}"
                                  " metadata)", "png_info")
        fields, notes = found.form_fields(), []
        if found.tool_sampler and "sampler" not in fields:
            notes.append(f"sampler {found.tool_sampler!r} has no match here")
        if not 0 <= fields.get("seed", 0) <= MAX_SEED:
            notes.append(f"seed {fields.pop('seed')} is outside 0..{MAX_SEED}")
        if found.raw_is_infotext:
            units = controlnet_units_from_infotext(parse_infotext(found.raw))
            if units:
                fields["controlnet"] = units  # ControlNet units, as A1111's extension records them
        kept = f" ({'; '.join(notes)}: those fields keep their values)" if notes else ""
        fields.update(tool=found.tool, message=f"Parameters read from {found.description}{kept}.")
        return fields

    @staticmethod
    def infotext_of(image_path) -> str:
        """The A1111 infotext an image carries (one built from other tools' metadata), or "" when it carries none
        or cannot be read."""
        try:
            found = read_image_metadata(image_path, stealth=False) if image_path else None
        except CorruptImageError:
            return ""
        return found.infotext() if found else ""

    # ------------------------------------------------------------------ validation
    def validate(self, req: GenerationRequest) -> GenerationRequest:
        """Check every field and return a normalised copy; raise ValidationError naming the field."""
        prompt = (req.prompt or "").strip()
        if not prompt:
            raise ValidationError("prompt must not be empty (1 to 4000 characters)", "prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValidationError(f"prompt is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}", "prompt")
        negative = (req.negative_prompt or "").strip()
        if len(negative) > MAX_PROMPT_CHARS:
            raise ValidationError(f"negative prompt is {len(negative)} characters; at most {MAX_PROMPT_CHARS}",
                                  "negative_prompt")
        if req.mode not in MODES:
            raise ValidationError(f"mode must be one of {', '.join(MODES)}; got {req.mode!r}", "mode")
        if req.sampler not in SAMPLERS:
            raise ValidationError(f"sampler must be one of {', '.join(SAMPLERS)}; got {req.sampler!r}", "sampler")
        width = check_range("width", req.width, 64, 2048, int)
        height = check_range("height", req.height, 64, 2048, int)
        for name, value in (("width", width), ("height", height)):
            if value % 8:
                raise ValidationError(f"{name} must be a multiple of 8 between 64 and 2048; got {value}", name)
        recommended = self.models.recommended(req.model)  # resolves the model: unknown ones are refused here
        out = replace(
            req, prompt=prompt, negative_prompt=negative, width=width, height=height,
            steps=check_range("steps", req.steps, 1, 150, int),
            cfg_scale=check_range("cfg_scale", recommended["cfg_scale"] if req.cfg_scale is None else req.cfg_scale,
                                  0, 30, float),
            cfg_rescale=check_range("cfg_rescale", recommended["cfg_rescale"] if req.cfg_rescale is None
                                    else req.cfg_rescale, 0, 1, float),
            seed=check_range("seed", -1 if req.seed is None else req.seed, -1, MAX_SEED, int),
            batch_count=check_range("batch_count", req.batch_count, 1, self.max_batch_count, int),
            batch_size=check_range("batch_size", req.batch_size, 1, self.max_batch_size, int),
            strength=check_range("strength", req.strength, 0.01, 1.0, float),
            variation_seed=check_range("variation_seed", -1 if req.variation_seed is None else req.variation_seed,
                                       -1, MAX_SEED, int),
            variation_strength=check_range("variation_strength", req.variation_strength or 0, 0, 1, float),
            vae=self.models.check_vae(req.vae),
        )
        out = replace(out, loras=self._resolve_loras(out))
        self._embeddings(out)  # every embedding the prompts mention is readable
        if out.mode == "txt2img" and self.models.is_inpainting_model(out.model):
            out = self._as_full_inpaint(out)
        task = TASKS[out.mode]
        if task.needs_init_image:
            check_denoising_steps(out.strength, out.steps)
            init = load_image(out.init_image, "init_image")
            out = replace(out, init_image=init.resize((width, height)) if init.size != (width, height) else init)
            if task.needs_mask:
                mask = load_image(out.mask_image, "mask_image", mode="L")
                if mask.size != init.size:
                    raise ValidationError(f"mask_image is {mask.width}x{mask.height} but init_image is "
                                          f"{init.width}x{init.height}; they must match", "mask_image")
                if mask.getextrema()[1] == 0:
                    raise ValidationError("mask_image is empty: paint the area to change", "mask_image")
                out = replace(out, mask_image=mask.resize((width, height)) if mask.size != (width, height) else mask)
        return out

    @staticmethod
    def _as_full_inpaint(req: GenerationRequest) -> GenerationRequest:
        """txt2img on an inpainting model (a 9-channel UNet), as A1111 runs it: inpaint a neutral grey image
        everywhere at full strength; the infotext still says txt2img."""
        from PIL import Image

        size = (req.width, req.height)
        return replace(req, mode="inpaint", init_image=Image.new("RGB", size, (127, 127, 127)),
                       mask_image=Image.new("L", size, 255), strength=1.0, shown_mode="txt2img")

    def _resolve_loras(self, req: GenerationRequest) -> list[tuple[str, float, str]]:
        """(name, weight, file) for every LoRA named in the prompt tags or the request."""
        _, tags = extract_lora_tags(req.prompt)
        available = self.models.registry.lora_files()
        chosen = {x[0]: x[1] for x in req.loras}
        chosen.update(dict(tags))  # idempotent: validating twice gives the same list
        out = []
        root = self.models.registry.models_dir
        for name, weight in chosen.items():
            if name not in available:
                known = ", ".join(sorted(available)) or "none installed"
                raise ValidationError(f"lora {name!r} is not under {root / LORA_DIR} or {root / LYCORIS_DIR} "
                                      f"(available: {known})", "lora")
            weight = check_range(f"lora weight of {name}", weight, -4, 4, float)
            try:
                check_lora_format(inspect_lora(available[name]), name)  # LoHa, LoKr, ...: refused before loading
            except LoraError as exc:
                raise ValidationError(str(exc), "lora") from None
            out.append((name, weight, str(available[name])))
        return out

    def _apply_loras(self, pipe, req: GenerationRequest) -> None:
        """Load the request's LoRAs as adapters lora0, lora1, ...; one made for another base model (or that
        fails to load) raises ValidationError naming both, and leaves no adapter of its own behind."""
        if not req.loras:
            return
        names = [f"lora{i}" for i in range(len(req.loras))]
        model = self.models.resolve(req.model).label
        for adapter, (name, _, path) in zip(names, req.loras):
            try:
                load_lora_file(pipe, path, adapter, name=name, model=model)
            except LoraError as exc:
                raise ValidationError(str(exc), "lora") from None
        pipe.set_adapters(names, [w for _, w, _ in req.loras])

    def _embeddings(self, req: GenerationRequest) -> list[TextualInversion]:
        """The textual inversions under embeddings/ that the prompt or negative prompt mention by name, read."""
        available = self.models.registry.embedding_files()
        prompt, _ = extract_lora_tags(req.prompt)
        found = []
        for name in mentioned([prompt, req.negative_prompt], available):
            try:
                found.append(read_textual_inversion(available[name], name))
            except EmbeddingError as exc:
                raise ValidationError(f"{exc} (under {self.models.registry.models_dir / EMBEDDINGS_DIR})",
                                      "prompt") from None
        return found

    def _ti_hashes(self, inversions: list[TextualInversion]) -> str:
        """A1111's "TI hashes" value: `name: <sha256[:12]>, ...` for the embeddings files a job used."""
        return ", ".join(f"{ti.word}: {self.models.hashes.sha256(ti.path)[:TI_HASH_LENGTH]}" for ti in inversions)

    # ------------------------------------------------------------------ running
    @staticmethod
    def _fit_to(pipe, req: GenerationRequest) -> GenerationRequest:
        """The request as this pipeline can run it: SD img2img/inpaint have no guidance rescale."""
        if req.cfg_rescale and not supports_cfg_rescale(pipe):
            return replace(req, cfg_rescale=0.0)
        return req

    @staticmethod
    def _call(req: GenerationRequest, prompt: str, negative: str, seeds: list[int],
              variation_seeds: list[int] | None = None) -> PipelineCall:
        """One pipeline call of a validated request (prompts already rewritten for LoRA tags and triggers)."""
        inputs = (ImageInputs(req.init_image, req.mask_image, req.strength) if TASKS[req.mode].needs_init_image
                  else None)
        return PipelineCall(req.mode, prompt, negative, req.steps, req.cfg_scale, req.width, req.height, seeds,
                            req.cfg_rescale, inputs, variation_seeds=variation_seeds,
                            variation_strength=req.variation_strength if variation_seeds else 0.0)

    @staticmethod
    def _batch_seeds(req: GenerationRequest, base_seed: int, base_variation: int, batch: int):
        """(seeds, variation seeds or None) of one batch, as A1111 numbers them: without a variation the seed
        counts up per image; with one the seed stays and the variation seed counts up."""
        first = batch * req.batch_size
        if not req.variation_strength:
            return [(base_seed + first + i) % (MAX_SEED + 1) for i in range(req.batch_size)], None
        return ([base_seed] * req.batch_size,
                [(base_variation + first + i) % (MAX_SEED + 1) for i in range(req.batch_size)])

    def warm_up(self, model_id: str) -> float:
        """Load the model and run it at its default size, saving nothing, until loading, first-call set-up and
        any frozen CPU graphs for that size are done, so the first image a person asks for waits for none of
        them; returns the seconds it took."""
        start = time.perf_counter()
        req = self.validate(GenerationRequest(prompt="warm-up", model=model_id, steps=1, seed=0))
        with self.device_lock, self.models.pipeline(req.model, req.mode) as pipe:
            req = self._fit_to(pipe, req)
            for steps in warm_up_steps(pipe):
                run_pipeline(pipe, self._call(replace(req, steps=steps), req.prompt, "", [0]),
                             self.models.device.device)
        return time.perf_counter() - start

    def generate(self, req: GenerationRequest, cancel: threading.Event | None = None,
                 on_progress: ProgressFn | None = None, preview_every: int = 5, control=None, skip: int = 0,
                 on_saved: Callable[[int, SavedImage], object] | None = None, save: bool = True) -> GenerationResult:
        """Validate, then run batch_count batches of batch_size images; Stop keeps finished batches.

        `control` (studio.controlnet_service.ControlPlan) runs the job on a ControlNet pipeline: it gives the
        pipeline, adds its units to every call and its "ControlNet N" entries to the infotext. `skip` starts at
        image `skip` (an interrupted run of the same job made the ones before, same seeds); `on_saved(index,
        image)` is called as each image is saved (the studio queue records its progress). `save` False keeps the
        pictures in memory only (no file, no gallery record, no after-save hooks): see `img2img_picture`."""
        req = self.validate(req)
        cancel = cancel or threading.Event()
        job_id = req.job_id or uuid.uuid4().hex
        base_seed = req.seed if req.seed >= 0 else random.randrange(MAX_SEED)
        base_variation = req.variation_seed if req.variation_seed >= 0 else random.randrange(MAX_SEED)
        total = req.batch_count * req.batch_size
        saved: list[SavedImage] = []
        start = time.perf_counter()
        model_hash = self.models.model_hash(req.model)
        def download(done: int, size: int) -> None:
            if on_progress:
                on_progress(-1, total, StepUpdate(done, size))

        inversions = self._embeddings(req)
        extras = {"TI hashes": self._ti_hashes(inversions) or None}
        if control is not None:
            extras["controlnet"] = control.infotext_params()
        pipeline = (self.models.pipeline(req.model, req.mode, download) if control is None
                    else control.pipeline(self.models, req.model, download))
        with self.device_lock, pipeline as pipe, \
                self.models.vae_override(req.model, req.vae) as vae:
            original_scheduler, original_vae = pipe.scheduler, pipe.vae
            req = self._fit_to(pipe, req)
            prompt, _ = extract_lora_tags(req.prompt)
            try:
                if vae is not None:  # swapped in for this job only; the finally puts the model's own back
                    vae_name, vae_path, pipe.vae = vae
                    extras.update({"VAE hash": self.models.hashes.autov2(vae_path), "VAE": vae_name})
                self._apply_loras(pipe, req)
                triggers = sidecar_inversions([path for _, _, path in req.loras])
                for inversion in inversions:
                    try:
                        check_widths(pipe, inversion)
                    except EmbeddingError as exc:
                        raise ValidationError(str(exc), "prompt") from None
                with added_embeddings(pipe, triggers + inversions) as words:
                    prompt, negative = (use_trigger_tokens(text, words) for text in (prompt, req.negative_prompt))
                    for batch in range(req.batch_count):
                        if cancel.is_set():
                            break
                        seeds, variation_seeds = self._batch_seeds(req, base_seed, base_variation, batch)
                        indices = [batch * req.batch_size + i for i in range(req.batch_size) if
                                   batch * req.batch_size + i >= skip]
                        if not indices:
                            continue
                        kept = slice(req.batch_size - len(indices), None)  # a half-made batch: its remaining images
                        seeds, variation_seeds = seeds[kept], variation_seeds and variation_seeds[kept]
                        pipe.scheduler = make_scheduler(req.sampler, dict(original_scheduler.config))
                        call = self._call(req, prompt, negative, seeds, variation_seeds)
                        call = call if control is None else control.adapt(call)
                        first = indices[0]

                        def step(update: StepUpdate, first=first):
                            on_progress(first, total, update)

                        images = run_pipeline(pipe, call, self.models.device.device, cancel,
                                              step if on_progress else None, preview_every)
                        for image, seed, variation, index in zip(images, seeds,
                                                                 variation_seeds or [None] * len(seeds), indices):
                            extra = {**extras, "Variation seed": variation}
                            saved.append(self._save(req, image, seed, model_hash, job_id, extra) if save else
                                         SavedImage("", None, seed, self.infotext(req, seed, model_hash, extra),
                                                    image, variation))
                            if on_saved is not None:
                                on_saved(index, saved[-1])
            finally:
                pipe.scheduler, pipe.vae = original_scheduler, original_vae
                if req.loras:
                    pipe.unload_lora_weights()
        for hook in self.after_save if save else ():  # e.g. auto-curation, which runs in the background
            hook([image.id for image in saved])
        return GenerationResult(saved, total, cancel.is_set() and len(saved) < total - skip, job_id,
                                time.perf_counter() - start)

    def img2img_picture(self, req: GenerationRequest, cancel: threading.Event | None = None):
        """img2img of `req.init_image` at the request's size, one picture returned as a PIL image and not saved
        (a pass over the tiles of an upscaled picture); None when `cancel` stopped it."""
        result = self.generate(replace(req, mode="img2img", batch_count=1, batch_size=1), cancel, save=False)
        return result.images[0].image if result.images else None

    def infotext(self, req: GenerationRequest, seed: int, model_hash: str, extras: dict | None = None) -> str:
        """A1111 infotext; `extras` adds a job's "VAE hash" / "VAE" (after the model, as A1111 orders them) and
        "TI hashes" (last); None values are left out."""
        extras = extras or {}
        params = {"Steps": req.steps, "Sampler": req.sampler, "CFG scale": req.cfg_scale, "Seed": seed,
                  "Size": f"{req.width}x{req.height}", "Model hash": model_hash,
                  "Model": self.models.resolve(req.model).label,
                  "VAE hash": extras.get("VAE hash"), "VAE": extras.get("VAE")}
        if req.variation_strength and extras.get("Variation seed") is not None:  # A1111 writes them after VAE
            params.update({"Variation seed": extras["Variation seed"],
                           "Variation seed strength": req.variation_strength})
        if req.cfg_rescale:
            params["CFG rescale"] = req.cfg_rescale
        mode = req.shown_mode or req.mode
        if mode != "txt2img":
            params["Denoising strength"] = req.strength
        if mode == "inpaint":
            params["Mode"] = "inpaint"
        if req.loras:
            params["Lora weights"] = ", ".join(f"{name}: {weight:g}" for name, weight, _ in req.loras)
        params.update(extras.get("controlnet") or {})  # "ControlNet 0": "Module: canny, Model: ..., ..."
        params["TI hashes"] = extras.get("TI hashes")
        return build_infotext(req.prompt, req.negative_prompt, params)

    def _save(self, req: GenerationRequest, image, seed: int, model_hash: str, job_id: str,
              extras: dict | None = None) -> SavedImage:
        record_id = uuid.uuid4().hex
        day = time.strftime("%Y-%m-%d")
        rel = Path("outputs") / day / f"{time.strftime('%H%M%S')}-{seed}-{record_id[:8]}.png"
        path = self.data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.infotext(req, seed, model_hash, extras)
        save_png_with_infotext(image, path, text)
        self.gallery.add({
            "id": record_id, "path": rel.as_posix(), "prompt": req.prompt, "negative_prompt": req.negative_prompt,
            "params": {"mode": req.mode, "sampler": req.sampler, "steps": req.steps, "cfg_scale": req.cfg_scale,
                       "cfg_rescale": req.cfg_rescale, "width": req.width, "height": req.height, "seed": seed,
                       "strength": req.strength,
                       "model_hash": model_hash, "infotext": text},
            "model": req.model, "created": time.time(), "job_id": job_id, "source": req.source,
        })
        return SavedImage(record_id, path, seed, text, image, (extras or {}).get("Variation seed"))
