"""Upscale images (A1111's Extras): validate an UpscaleRequest, upscale every source (gallery ids, uploaded files,
typed paths and folders under the allowed roots) with a resampler or a model from the model cache, optionally
blended with a second upscaler, and save each result into the gallery with the source's prompt and parameters,
A1111's "Postprocess upscale" infotext and its provenance. A source that is missing or unreadable is reported and
the batch goes on; sources are never overwritten.

    choices() -> [(label, name)]        validate(req) -> req        sources(req) -> [SourceRef]
    source_file(ref) -> Path
    upscale(req, cancel, progress, skip) -> UpscaleResult
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from pipelines.tiling import MIN_TILE as SMALLEST_TILE
from pipelines.tiling import TilingCancelled, is_out_of_memory
from pipelines.upscalers import (NONE, RESAMPLERS, UpscalerError, UpscalerSource, join_modes, list_upscalers,
                                 load_upscaler, resample, split_modes, upscale_with_model)
from studio.errors import StudioError, ValidationError, check_range
from studio.generation_service import GenerationRequest, check_denoising_steps
from studio.images import FOLDER_IMAGE_SUFFIXES, load_image
from studio.infotext import build_infotext, parse_infotext, save_png_with_infotext
from studio.stores.gallery_record import ID_RE

MAX_SCALE = 8
MAX_SIDE = 8192  # target width / height
MAX_OUTPUT_PIXELS = 8192 * 8192
MIN_TILE, MAX_TILE, MAX_OVERLAP = 32, 4096, 256
MAX_SOURCES = 10_000
DERIVED_KEYS = ("Prompt", "Negative prompt", "Size-1", "Size-2", "Hires resize-1", "Hires resize-2")


@dataclass
class UpscaleRequest:
    """What to upscale and how. Sources (any mix): `ids` gallery image ids, `images` uploaded files (paths the
    page received, or PIL images), `paths` image files and `folder` a folder (its images, not sub-folders) under
    the allowed roots. Size: `scale` 1..8, or `target_width` / `target_height` (0 = from the scale; one of them
    alone keeps the aspect ratio). `upscaler_2` ("None" for none) is blended in at `upscaler_2_visibility` 0..1.
    `tile_size` 0 chooses the tile from the device's memory. `refine_strength` > 0 then runs img2img over the result
    in overlapping tiles of the refine model's own size (its prompt, model, steps and seed: `refine_*`)."""

    upscaler: str = "Lanczos"
    scale: float = 4.0
    target_width: int = 0
    target_height: int = 0
    upscaler_2: str = NONE
    upscaler_2_visibility: float = 0.0
    tile_size: int = 0
    tile_overlap: int = 32
    ids: list = field(default_factory=list)
    images: list = field(default_factory=list)
    paths: list = field(default_factory=list)
    folder: str = ""
    job_id: str = ""
    # refine with the diffusion model (A1111's SD upscale): img2img over the upscaled picture in tiles of the
    # model's own size; strength 0 = off
    refine_strength: float = 0.0
    refine_prompt: str = ""   # "": the source's prompt
    refine_model: str = ""    # "": the source's model (else the studio's default one)
    refine_steps: int = 20
    refine_seed: int = -1


@dataclass(frozen=True)
class SourceRef:
    kind: str  # "id" or "file"
    value: str

    @property
    def label(self) -> str:
        return self.value if self.kind == "id" else Path(self.value).name


@dataclass
class UpscaledImage:
    id: str
    path: Path
    source: str  # the source's label (its gallery id or file name)
    size: tuple[int, int]
    tile_size: int  # input tile side of the model's last pass (0: a resampler, no tiles)
    infotext: str
    index: int = 0  # the source's place in `sources(req)`


@dataclass
class UpscaleResult:
    images: list[UpscaledImage]
    failures: list[tuple[str, str]]  # (source, why)
    total: int
    stopped: bool
    seconds: float

    @property
    def message(self) -> str:
        tiles = sorted({i.tile_size for i in self.images if i.tile_size})
        text = f"Upscaled {len(self.images)} of {self.total} image(s) in {self.seconds:.1f} s"
        text += f" · tile {', '.join(map(str, tiles))} px" if tiles else ""
        text += " · stopped" if self.stopped else ""
        if self.failures:
            text += f" · {len(self.failures)} failed: " + "; ".join(f"{s}: {why}" for s, why in self.failures[:5])
        return text


@dataclass(frozen=True)
class UpscaleProgress:
    """What a listener hears: source `index` of `total`, and tiles `tiles_done` of `tiles_total` in it."""

    tiles_done: int
    tiles_total: int
    label: str


def refine_in_tiles(generation, image, req, tile: int, cancel=None, tiles=None):
    """img2img of `image` (RGB) with `req` (a GenerationRequest: prompt, model, steps, seed, strength) in tiles of
    `tile` px overlapping by a quarter tile, through pipelines.tiling (the upscalers' ramp blending); a tile whose
    side is not a multiple of 8 (or under 64) runs resized. TilingCancelled when `cancel` stops it."""
    from PIL import Image

    from pipelines.tiling import tiled_upscale
    from pipelines.upscalers import to_image, to_tensor

    def run(batch):
        picture = to_image(batch)
        w, h = picture.size
        size = (max(64, -(-w // 8) * 8), max(64, -(-h // 8) * 8))
        done = generation.img2img_picture(replace(req, init_image=picture.resize(size, Image.LANCZOS),
                                                  width=size[0], height=size[1]), cancel)
        if done is None:
            raise TilingCancelled()
        return to_tensor(done.resize((w, h), Image.LANCZOS) if done.size != (w, h) else done)

    out = tiled_upscale(run, to_tensor(image), 1, tile, max(8, tile // 4), cancel, tiles)
    return to_image(out.image)


def split_ids(value) -> list[str]:
    """Gallery ids from a list or a comma / space separated string."""
    if isinstance(value, str):
        return [i for i in re.split(r"[,\s]+", value) if i]
    return [str(i).strip() for i in value or [] if str(i).strip()]


class UpscaleService:
    """Upscalers from <models>/ESRGAN and the built-in folder, run on the studio device through the model
    cache; outputs saved into the gallery."""

    def __init__(self, cache, device, gallery, paths, upscaler_dir: Path, builtin_dir: Path, data_dir: Path,
                 device_lock: threading.Lock | None = None, free_memory: Callable[[], None] | None = None,
                 generation=None, default_model: str = ""):
        self.cache, self.device, self.gallery, self.paths = cache, device, gallery, paths
        self.generation = generation  # GenerationService: the refine pass (None: not offered)
        self.default_model = default_model  # the refine pass's model for a source whose own model is unknown
        self.upscaler_dir, self.builtin_dir, self.data_dir = Path(upscaler_dir), Path(builtin_dir), Path(data_dir)
        self.device_lock = device_lock or threading.Lock()
        self.free_memory = free_memory

    # ------------------------------------------------------------------ choices
    def upscalers(self) -> list[UpscalerSource]:
        return list_upscalers(self.upscaler_dir, self.builtin_dir)

    def choices(self, second: bool = False) -> list[tuple[str, str]]:
        """(label, name) for every upscaler (the models folder is listed again on every call); `second` adds
        "None" first (for upscaler 2)."""
        found = [(s.label, s.name) for s in self.upscalers()]
        return [(NONE, NONE)] + found if second else found

    def default_upscaler(self) -> str:
        """The first model file in the folder (the person's own upscalers, made for real pictures), else the
        built-in one (made for the built-in model's pictures), else Lanczos."""
        found = self.upscalers()
        for kind in ("model", "builtin"):
            models = [s for s in found if s.kind == kind]
            if models:
                return models[0].name
        return RESAMPLERS[0]

    def source(self, name: str, field: str) -> UpscalerSource:
        """The upscaler called `name`, or a ValidationError on `field` listing the known ones."""
        found = {s.name: s for s in self.upscalers()}
        if name not in found:
            shown = ", ".join(list(found)[:12])
            raise ValidationError(f"{field} {name!r} is not a known upscaler; choose one of: {shown} (model files "
                                  f"go in {self.upscaler_dir})", field)
        return found[name]

    # ------------------------------------------------------------------ validation
    def validate(self, req: UpscaleRequest) -> UpscaleRequest:
        """Check every field; return a normalised copy (ids parsed, paths resolved) or raise ValidationError
        naming the field and its allowed range."""
        self.source(req.upscaler, "upscaler")
        second = req.upscaler_2 or NONE
        if second != NONE:
            self.source(second, "upscaler_2")
        scale = check_range("scale", req.scale, 1, MAX_SCALE, float)
        sizes = {}
        for name in ("target_width", "target_height"):
            value = check_range(name, getattr(req, name) or 0, 0, MAX_SIDE, int)
            if 0 < value < 16:
                raise ValidationError(f"{name} must be 0 (use the scale) or between 16 and {MAX_SIDE}; got {value}",
                                      name)
            sizes[name] = value
        visibility = check_range("upscaler_2_visibility", req.upscaler_2_visibility, 0, 1, float)
        tile = check_range("tile_size", req.tile_size or 0, 0, MAX_TILE, int)
        if 0 < tile < MIN_TILE:
            raise ValidationError(f"tile_size must be 0 (automatic) or between {MIN_TILE} and {MAX_TILE}; got {tile}",
                                  "tile_size")
        overlap = check_range("tile_overlap", req.tile_overlap, 0, MAX_OVERLAP, int)
        if tile and overlap * 2 > tile:
            raise ValidationError(f"tile_overlap must be at most half the tile size ({tile // 2}); got {overlap}",
                                  "tile_overlap")
        ids = split_ids(req.ids)
        for record_id in ids:
            if not ID_RE.fullmatch(record_id):
                raise ValidationError(f"ids: {record_id!r} is not a gallery image id (32 hex characters)", "ids")
        paths = [str(self.paths.resolve(str(p), "paths", kind="file")) for p in req.paths or []]
        folder = str(self.paths.resolve(req.folder, "folder")) if (req.folder or "").strip() else ""
        images = [str(i) for i in req.images or [] if isinstance(i, (str, Path))]
        if len(images) != len(req.images or []):
            raise ValidationError("images must be image files (paths); save an image before queueing it", "images")
        checked = replace(req, scale=scale, upscaler_2=second, upscaler_2_visibility=visibility, tile_size=tile,
                          tile_overlap=overlap, ids=ids, paths=paths, folder=folder, images=images, **sizes,
                          **self._validate_refine(req))
        count = len(self.sources(checked))
        if count == 0:
            raise ValidationError("images: nothing to upscale: give gallery ids, upload images, or name a folder "
                                  "with images", "images")
        if count > MAX_SOURCES:
            raise ValidationError(f"images: {count} sources; at most {MAX_SOURCES} in one batch", "images")
        return checked

    def _validate_refine(self, req: UpscaleRequest) -> dict:
        """The refine fields checked: strength 0..1 (0: off), steps 1..150, seed -1..2^32-1, a known model."""
        strength = check_range("refine_strength", req.refine_strength or 0, 0, 1, float)
        if not strength:
            return {"refine_strength": 0.0}
        if self.generation is None:
            raise ValidationError("refine_strength: refining with a diffusion model is not available here",
                                  "refine_strength")
        model = (req.refine_model or "").strip()
        if model and not self._known_model(model):
            raise ValidationError(f"refine_model {model!r} is not a model the studio has (see the Model list)",
                                  "refine_model")
        prompt = (req.refine_prompt or "").strip()
        if len(prompt) > 4000:
            raise ValidationError(f"refine_prompt is {len(prompt)} characters; at most 4000", "refine_prompt")
        steps = check_range("refine_steps", req.refine_steps, 1, 150, int)
        check_denoising_steps(strength, steps, "refine_strength", "refine_steps")
        return {"refine_strength": strength, "refine_model": model, "refine_prompt": prompt, "refine_steps": steps,
                "refine_seed": check_range("refine_seed", -1 if req.refine_seed is None else req.refine_seed,
                                           -1, 2**32 - 1, int)}

    def _known_model(self, model: str | None) -> str:
        """`model` when the studio can load it, else ""."""
        if not model:
            return ""
        try:
            self.generation.models.native_size(model)
        except Exception:  # noqa: BLE001 - an unknown or removed model
            return ""
        return model

    def sources(self, req: UpscaleRequest) -> list[SourceRef]:
        """Every source of a validated request, in order: ids, uploads, paths, then the folder's images."""
        refs = [SourceRef("id", i) for i in split_ids(req.ids)]
        refs += [SourceRef("file", str(p)) for p in list(req.images) + list(req.paths)]
        if req.folder and Path(req.folder).is_dir():  # a folder gone since validation has nothing to give
            refs += [SourceRef("file", str(p)) for p in sorted(Path(req.folder).iterdir())
                     if p.suffix.lower() in FOLDER_IMAGE_SUFFIXES and p.is_file()]
        return refs

    # ------------------------------------------------------------------ running
    def target_size(self, req: UpscaleRequest, size: tuple[int, int]) -> tuple[int, int]:
        """The output size for a source of `size`: the target (one side alone keeps the aspect), else scaled."""
        w, h = size
        tw, th = req.target_width, req.target_height
        if tw and th:
            out = (tw, th)
        elif tw or th:
            k = tw / w if tw else th / h
            out = (max(1, round(w * k)), max(1, round(h * k)))
        else:
            out = (max(1, round(w * req.scale)), max(1, round(h * req.scale)))
        if out[0] * out[1] > MAX_OUTPUT_PIXELS:
            raise ValidationError(f"the output would be {out[0]}x{out[1]}; at most {MAX_OUTPUT_PIXELS:,} pixels",
                                  "scale")
        return out

    def upscale(self, req: UpscaleRequest, cancel: threading.Event | None = None,
                progress: Callable[[int, int, UpscaleProgress], None] | None = None,
                skip: set[int] | frozenset = frozenset()) -> UpscaleResult:
        """Upscale every source of `req` (source indexes in `skip` are passed over: a resumed job's done ones).
        `progress(index, total, UpscaleProgress)` hears every tile; `cancel` stops between tiles."""
        req = self.validate(req)
        start = time.perf_counter()
        refs = self.sources(req)
        first = self.source(req.upscaler, "upscaler")
        second = self.source(req.upscaler_2, "upscaler_2") if req.upscaler_2 != NONE and \
            req.upscaler_2_visibility > 0 else None
        images, failures, stopped = [], [], False
        ids = [r.value for r in refs if r.kind == "id"]
        with self.gallery.using(ids), self._model(first, "upscaler") as model_1, \
                self._model(second, "upscaler_2") as model_2:
            for index, ref in enumerate(refs):
                if index in skip:
                    continue
                if cancel is not None and cancel.is_set():
                    stopped = True
                    break

                def tiles(done, total, index=index, ref=ref):
                    if progress is not None:
                        progress(index, len(refs), UpscaleProgress(done, total, ref.label))

                tiles(0, 0)  # a new source starts (resamplers report nothing else)
                try:
                    images.append(self._one(req, index, ref, (first, model_1), (second, model_2), cancel,
                                            tiles))
                except TilingCancelled:
                    stopped = True
                    break
                except (StudioError, OSError) as exc:
                    failures.append((ref.label, str(exc)))
        return UpscaleResult(images, failures, len(refs), stopped, time.perf_counter() - start)

    @contextmanager
    def _model(self, source: UpscalerSource | None, field: str):
        """The model for `source` from the cache, pinned while the context lasts (None for a resampler); a bad
        file raises StudioError naming `field` and the file, and nothing is cached."""
        if source is None or source.kind == "resampler":
            yield None
            return
        with ExitStack() as stack:
            try:
                model = stack.enter_context(self.cache.use(source.cache_key(), lambda: load_upscaler(
                    source.path, self.device.device, self.device.dtype_name)))
            except (UpscalerError, OSError) as exc:
                raise StudioError(str(exc), field) from None
            yield model

    def source_file(self, ref: SourceRef) -> Path | None:
        """The file a source is read from (None for an unknown gallery id): for a before/after view."""
        if ref.kind == "file":
            return Path(ref.value)
        record = self.gallery.get(ref.value)
        return self.gallery.path_of(record) if record else None

    def _open(self, ref: SourceRef) -> tuple[object, dict | None, Path]:
        """(the image, its gallery record or None, its file)."""
        if ref.kind == "id":
            record = self.gallery.get(ref.value)
            if record is None:
                raise StudioError("no such image in the gallery", "ids")
            if record.get("trashed"):
                raise StudioError("the image is in the trash", "ids")
            path = self.gallery.path_of(record)
        else:
            record, path = None, Path(ref.value)
        if not path.is_file():
            raise StudioError(f"the file {path.name} is missing", "images")
        return load_image(path, ref.label, mode=None), record, path

    def _run(self, named, image, size, req, cancel, tiles):
        """(image at `size` by one upscaler, tile side used)."""
        source, model = named
        if model is None:
            return resample(image, size, source.name), 0
        try:
            with self.device_lock:
                return upscale_with_model(model, image, size, req.tile_size, req.tile_overlap, cancel, tiles,
                                          self.free_memory)
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            raise StudioError(f"out of device memory even with {SMALLEST_TILE}-pixel tiles; free memory (unload "
                              "models on the Models tab) or use a smaller scale", "tile_size") from None

    def _one(self, req, index, ref, first, second, cancel, tiles) -> UpscaledImage:
        from PIL import Image

        image, record, path = self._open(ref)
        rgb, alpha, mode = split_modes(image)
        size = self.target_size(req, rgb.size)
        out, tile = self._run(first, rgb, size, req, cancel, tiles)
        if second[0] is not None:
            other, tile_2 = self._run(second, rgb, size, req, cancel, tiles)
            out, tile = Image.blend(out, other, req.upscaler_2_visibility), tile or tile_2
        source_text = self._source_text(record, path)
        refined = {}
        if req.refine_strength:
            out, refined = self._refine(out, req, record, parse_infotext(source_text) if source_text else {},
                                        cancel, tiles)
        out = join_modes(out, alpha, mode)
        text, info = self.infotext(req, source_text, image.size, out.size, first[0], second[0], refined)
        return self._save(req, index, ref, out, record, tile, text, info, refined)

    def _refine(self, image, req: UpscaleRequest, record: dict | None, info: dict, cancel, tiles):
        """A1111's SD upscale: img2img over `image` in tiles of the model's own size overlapping by a quarter of
        it, blended with the tiling ramp. Returns (refined image, what was used: model, prompt, seed, tile...)."""
        import random

        base = record or {}
        prompt = req.refine_prompt or base.get("prompt") or info.get("Prompt", "")
        if not prompt.strip():
            raise ValidationError("refine_prompt: the source has no prompt; write one to refine with", "refine_prompt")
        model = req.refine_model or self._known_model(base.get("model")) or self.default_model
        tile = self.generation.models.native_size(model)
        seed = req.refine_seed if req.refine_seed >= 0 else random.randrange(2**32)
        negative = base.get("negative_prompt") or info.get("Negative prompt", "")
        refined = refine_in_tiles(self.generation, image, GenerationRequest(
            prompt=prompt, negative_prompt=negative, model=model, steps=req.refine_steps, seed=seed,
            strength=req.refine_strength), tile, cancel, tiles)
        return refined, {"model": model, "prompt": prompt, "seed": seed, "tile": tile,
                         "strength": req.refine_strength, "steps": req.refine_steps}

    @staticmethod
    def infotext(req: UpscaleRequest, source_text: str, source_size: tuple[int, int], size: tuple[int, int],
                 first: UpscalerSource, second: UpscalerSource | None,
                 refined: dict | None = None) -> tuple[str, dict]:
        """(the source's infotext with A1111's postprocess entries appended, the parsed source fields); a source
        without parameters gets its own size first (so the line reads back as parameters)."""
        info = parse_infotext(source_text) if source_text else {}
        params = {k: v for k, v in info.items() if k not in DERIVED_KEYS}
        if not params:
            params["Size"] = f"{source_size[0]}x{source_size[1]}"
        if req.target_width or req.target_height:
            params["Postprocess upscale to"] = f"{size[0]}x{size[1]}"
        else:
            params["Postprocess upscale by"] = f"{req.scale:g}"
        params["Postprocess upscaler"] = first.label
        if second is not None:
            params["Postprocess upscaler 2"] = second.label
            params["Postprocess upscaler 2 visibility"] = f"{req.upscaler_2_visibility:g}"
        if refined:
            params.update({"SD upscale strength": f"{refined['strength']:g}", "SD upscale model": refined["model"],
                           "SD upscale steps": refined["steps"], "SD upscale seed": refined["seed"],
                           "SD upscale tile": refined["tile"]})
        return build_infotext(info.get("Prompt", ""), info.get("Negative prompt", ""), params), info

    def _source_text(self, record: dict | None, path: Path) -> str:
        if record is not None:
            return (record.get("params") or {}).get("infotext", "")
        from studio.image_metadata import read_image_metadata

        try:
            found = read_image_metadata(path, stealth=False)
        except StudioError:
            return ""
        return found.infotext() if found else ""

    def _save(self, req, index, ref, image, record, tile, text, info, refined=None) -> UpscaledImage:
        record_id = uuid.uuid4().hex
        rel = Path("outputs") / time.strftime("%Y-%m-%d") / f"{time.strftime('%H%M%S')}-upscale-{record_id[:8]}.png"
        path = self.data_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png_with_infotext(image, path, text)  # a new file: the source is never written
        base = record or {}
        upscale = {"upscaler": req.upscaler, "scale": req.scale, "target_width": req.target_width,
                   "target_height": req.target_height, "upscaler_2": req.upscaler_2,
                   "upscaler_2_visibility": req.upscaler_2_visibility, "tile_size": tile,
                   "tile_overlap": req.tile_overlap, "source_index": index, "refine": refined or None}
        params = {**(base.get("params") or {}), "width": image.width, "height": image.height, "infotext": text,
                  "upscale": upscale}
        self.gallery.add({
            "id": record_id, "path": rel.as_posix(), "prompt": base.get("prompt", info.get("Prompt", "")),
            "negative_prompt": base.get("negative_prompt", info.get("Negative prompt", "")),
            "params": params, "model": base.get("model", ""), "created": time.time(), "job_id": req.job_id,
            "source": "upscale", "source_id": ref.value if ref.kind == "id" else "",
            "source_file": "" if ref.kind == "id" else ref.label,
        })
        return UpscaledImage(record_id, path, ref.label, image.size, tile, text, index)
