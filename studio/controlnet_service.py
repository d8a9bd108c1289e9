"""ControlNet: validate up to three units (image, preprocessor, model, weights), preview their maps, and generate
through GenerationService (the same batching, previews, Stop, saving and infotext), with each unit recorded in
the infotext as A1111's ControlNet extension writes it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from pipelines.controlnets import (BUILTIN_CONTROLNET_DIR, BUILTIN_CONTROLNET_ID, CONTROL_MODES, ControlNetError,
                                   ControlNetNotFound, ControlNetSource, base_shape, check_fits, controlnet_shape,
                                   list_controlnets, resolve_controlnet)
from pipelines.preprocessors import PREPROCESSORS, PreprocessorError, Preprocessors
from pipelines.tasks import ControlInputs, ControlUnitInputs, PipelineCall, controlnet_task
from studio.errors import ValidationError, check_range
from studio.generation_service import GenerationRequest, GenerationResult, GenerationService
from studio.images import load_image
from studio.infotext import controlnet_unit_text

MAX_UNITS = 3
RESIZE_MODES = ("Crop and Resize", "Just Resize", "Resize and Fill")  # A1111's names
MAX_WEIGHT = 2.0


@dataclass
class ControlUnit:
    """One ControlNet unit as the tab (or a script) sets it. `model` "" picks the default ControlNet for the
    base model; thresholds None take the preprocessor's defaults."""

    image: object = None
    preprocessor: str = "canny"
    model: str = ""
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = CONTROL_MODES[0]
    resolution: int = 512
    threshold_a: float | None = None
    threshold_b: float | None = None
    resize_mode: str = RESIZE_MODES[0]
    pixel_perfect: bool = False  # processor resolution from the generation size (A1111's Pixel Perfect)
    enabled: bool = True


@dataclass
class ControlNetRequest(GenerationRequest):
    """A generation request (txt2img, img2img or inpaint) with 1..3 ControlNet units (ControlUnit or dicts)."""

    units: list = field(default_factory=list)
    source: str = "controlnet"


@dataclass
class MapPreview:
    image: object  # the map as the ControlNet sees it: RGB at the generation size
    seconds: float
    cached: bool
    note: str = ""
    resolution: int = 512  # the processor resolution used


def pixel_perfect_resolution(size: tuple[int, int], width: int, height: int, resize_mode: str) -> int:
    """A1111's Pixel Perfect: the processor resolution at which the image's short side lands on the generation
    size after resizing (so one map pixel is one image pixel), within 64..2048."""
    k_w, k_h = width / size[0], height / size[1]
    k = min(k_w, k_h) if resize_mode == "Resize and Fill" else max(k_w, k_h)
    return max(64, min(2048, round(k * min(size))))


def fit_map(image, width: int, height: int, mode: str):
    """A map brought to width x height as A1111 does: stretched (Just Resize), scaled to cover and centre-cropped
    (Crop and Resize), or scaled to fit and padded with black (Resize and Fill)."""
    from PIL import Image

    if image.size == (width, height):
        return image
    if mode == "Just Resize":
        return image.resize((width, height), Image.BILINEAR)
    cover = mode == "Crop and Resize"
    k = (max if cover else min)(width / image.width, height / image.height)
    scaled = image.resize((max(1, round(image.width * k)), max(1, round(image.height * k))), Image.BILINEAR)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return canvas


@dataclass
class ControlPlan:
    """A validated request's ControlNet part: what GenerationService.generate needs to run it (the pipeline, the
    call's control inputs, the infotext of every unit) and the notes for the user."""

    mode: str
    sources: list[ControlNetSource]
    units: list[ControlUnit]
    maps: list
    notes: list[str] = field(default_factory=list)

    def pipeline(self, models, model_id: str, report=None):
        return models.controlnet_pipeline(model_id, self.mode, self.sources, report)

    def adapt(self, call: PipelineCall) -> PipelineCall:
        units = [ControlUnitInputs(m, u.weight, u.guidance_start, u.guidance_end, u.control_mode)
                 for u, m in zip(self.units, self.maps)]
        return replace(call, task=controlnet_task(self.mode), control=ControlInputs(units))

    def infotext_params(self) -> dict:
        return {f"ControlNet {i}": controlnet_unit_text({
            "Module": u.preprocessor, "Model": s.label, "Weight": u.weight, "Resize Mode": u.resize_mode,
            "Low Vram": False, "Processor Res": u.resolution, "Threshold A": u.threshold_a,
            "Threshold B": u.threshold_b, "Guidance Start": u.guidance_start, "Guidance End": u.guidance_end,
            "Pixel Perfect": u.pixel_perfect, "Control Mode": u.control_mode,
        }) for i, (u, s) in enumerate(zip(self.units, self.sources))}


class ControlNetService:
    """ControlNet units on top of GenerationService: choices for the UI, map previews, validation, generation."""

    def __init__(self, generation: GenerationService, preprocessors: Preprocessors, controlnet_dir: Path,
                 builtin_dir: Path = BUILTIN_CONTROLNET_DIR, offline: bool = False):
        self.generation = generation
        self.models = generation.models
        self.preprocessors = preprocessors
        self.controlnet_dir = Path(controlnet_dir)
        self.builtin_dir = Path(builtin_dir)
        self.offline = offline

    # ------------------------------------------------------------------ choices for the UI
    def preprocessor_choices(self) -> list[tuple[str, str]]:
        """(label, name) for every preprocessor; unavailable ones say why in their label."""
        return [(name if why is None else f"{name} — unavailable ({why})", name)
                for name, why in self.preprocessors.status().items()]

    @staticmethod
    def thresholds(name: str) -> list[dict | None]:
        """The preprocessor's threshold A and B (label, minimum, maximum, default, step), None where unused."""
        spec = PREPROCESSORS.get(name)
        if spec is None:
            return [None, None]
        return [None if t is None else {"label": t.label, "minimum": t.minimum, "maximum": t.maximum,
                                        "value": t.default, "step": t.step}
                for t in (spec.threshold_a, spec.threshold_b)]

    def controlnets(self) -> list[ControlNetSource]:
        return list_controlnets(self.controlnet_dir, self.builtin_dir)

    def controlnet_choices(self) -> list[tuple[str, str]]:
        """(label, id) for every ControlNet; the built-in one is listed as not trained yet while its folder is
        missing, pickled files as refused."""
        found = self.controlnets()
        choices = []
        if not any(s.id == BUILTIN_CONTROLNET_ID for s in found):
            choices.append(("built-in (not trained yet)", BUILTIN_CONTROLNET_ID))
        for source in found:
            label = source.label
            if source.kind == "builtin":
                label = "built-in (shapes world: outlines and scribbles)"
            elif source.kind == "pickled":
                label += " (pickled: refused, convert to .safetensors)"
            choices.append((label, source.id))
        return choices

    def default_controlnet(self, model_id: str | None) -> str:
        """The built-in ControlNet for the built-in model, else the first installed one made for the model's
        family, else ""."""
        base = None
        if model_id:
            try:
                base = base_shape(self.models.resolve(model_id))
            except ValidationError:
                base = None
        for source in self.controlnets():
            if source.kind == "pickled":
                continue
            try:
                shape = controlnet_shape(source)
            except ControlNetError:
                continue
            if base is None or shape is None or shape.fits(base):
                return source.id
        return ""

    # ------------------------------------------------------------------ maps
    def _control_image(self, value, field_name: str):
        image = load_image(value, field_name)
        low_high = image.getextrema()
        if all(low == high for low, high in low_high):
            raise ValidationError(f"{field_name} is empty (one flat colour): draw on the canvas or upload a "
                                  "picture", field_name)
        return image

    def _map(self, unit: ControlUnit, n: int, width: int, height: int) -> MapPreview:
        """The unit's processed map fitted to width x height, with a note when the image had another size."""
        name = f"unit {n}"
        image = self._control_image(unit.image, f"{name} image")
        resolution = (pixel_perfect_resolution(image.size, width, height, unit.resize_mode) if unit.pixel_perfect
                      else unit.resolution)
        try:
            processed = self.preprocessors.run(unit.preprocessor, image, resolution, unit.threshold_a,
                                               unit.threshold_b)
        except PreprocessorError as exc:
            raise ValidationError(f"{name}: {exc}", f"{name} preprocessor") from None
        if processed.image.convert("L").getextrema()[1] == 0:
            raise ValidationError(f"{name}: the {unit.preprocessor} map is empty (nothing found in the image); "
                                  "change the thresholds or pick another preprocessor", f"{name} preprocessor")
        fitted = fit_map(processed.image, width, height, unit.resize_mode)
        note = ""
        if image.size != (width, height):
            note = (f"{name}: control image {image.width}x{image.height} fitted to {width}x{height} "
                    f"({unit.resize_mode})")
        return MapPreview(fitted, processed.seconds, processed.cached, note, resolution)

    def preview(self, unit: ControlUnit | dict, width: int = 512, height: int = 512, n: int = 1) -> MapPreview:
        """The map unit `n` would give the ControlNet at width x height (cached and timed)."""
        unit = self._check_unit(unit, n)
        width = check_range("width", width, 64, 2048, int)
        height = check_range("height", height, 64, 2048, int)
        return self._map(unit, n, width, height)

    # ------------------------------------------------------------------ validation
    def _check_unit(self, unit: ControlUnit | dict, n: int) -> ControlUnit:
        name = f"unit {n}"
        if isinstance(unit, dict):
            unknown = set(unit) - {f.name for f in ControlUnit.__dataclass_fields__.values()}
            if unknown:
                raise ValidationError(f"{name}: unknown setting(s) {', '.join(sorted(unknown))}", name)
            unit = ControlUnit(**unit)
        if unit.preprocessor not in PREPROCESSORS:
            raise ValidationError(f"{name} preprocessor must be one of {', '.join(PREPROCESSORS)}; got "
                                  f"{unit.preprocessor!r}", f"{name} preprocessor")
        try:
            resolution, a, b = self.preprocessors.check(unit.preprocessor, unit.resolution, unit.threshold_a,
                                                        unit.threshold_b)
        except PreprocessorError as exc:
            raise ValidationError(f"{name}: {exc}", f"{name} preprocessor") from None
        weight = check_range(f"{name} weight", unit.weight, 0, MAX_WEIGHT, float)
        start = check_range(f"{name} guidance start", unit.guidance_start, 0, 1, float)
        end = check_range(f"{name} guidance end", unit.guidance_end, 0, 1, float)
        if start >= end:
            raise ValidationError(f"{name} guidance start ({start:g}) must be below guidance end ({end:g}); both "
                                  "in 0..1", f"{name} guidance start")
        if unit.control_mode not in CONTROL_MODES:
            raise ValidationError(f"{name} control mode must be one of {', '.join(CONTROL_MODES)}; got "
                                  f"{unit.control_mode!r}", f"{name} control mode")
        if unit.resize_mode not in RESIZE_MODES:
            raise ValidationError(f"{name} resize mode must be one of {', '.join(RESIZE_MODES)}; got "
                                  f"{unit.resize_mode!r}", f"{name} resize mode")
        return replace(unit, resolution=resolution, threshold_a=a, threshold_b=b, weight=weight,
                       guidance_start=start, guidance_end=end)

    def _source(self, unit: ControlUnit, n: int, model_id: str) -> tuple[ControlUnit, ControlNetSource]:
        """The unit's ControlNet resolved and checked against the base model (without loading either)."""
        name = f"unit {n} model"
        cn_id = unit.model or self.default_controlnet(model_id)
        if not cn_id:
            raise ValidationError(f"{name}: no ControlNet fits model {model_id!r}; put one under "
                                  f"{self.controlnet_dir}", name)
        try:
            source = resolve_controlnet(cn_id, self.controlnet_dir, self.builtin_dir, self.offline)
            model = self.models.resolve(model_id)
            check_fits(controlnet_shape(source), base_shape(model), source.label, model.label)
        except (ControlNetNotFound, ControlNetError) as exc:
            raise ValidationError(f"{name}: {exc}", name) from None
        return replace(unit, model=source.id), source

    def validate(self, req: ControlNetRequest) -> tuple[GenerationRequest, ControlPlan]:
        """The request's generation fields checked by GenerationService, then every enabled unit: image
        (readable, not an empty canvas), preprocessor (known, available, thresholds in range), ControlNet (found,
        not pickled, made for this model's family), weight 0..2, guidance start < end in 0..1, control and resize
        mode; at most 3 units. Returns the checked request and the plan with every map made."""
        units = [u for u in (req.units or []) if (u.get("enabled", True) if isinstance(u, dict) else u.enabled)]
        if not units:
            raise ValidationError("units: enable at least one ControlNet unit and give it a control image", "units")
        if len(units) > MAX_UNITS:
            raise ValidationError(f"units: at most {MAX_UNITS} ControlNet units; got {len(units)}", "units")
        checked = [self._check_unit(u, n) for n, u in enumerate(units, 1)]
        req = self.generation.validate(replace(req, units=checked))
        resolved = [self._source(u, n, req.model) for n, u in enumerate(checked, 1)]
        checked, sources = [u for u, _ in resolved], [s for _, s in resolved]
        previews = [self._map(u, n, req.width, req.height) for n, u in enumerate(checked, 1)]
        checked = [replace(u, resolution=p.resolution) for u, p in zip(checked, previews)]
        plan = ControlPlan(req.mode, sources, checked, [p.image for p in previews],
                           [p.note for p in previews if p.note])
        return replace(req, units=checked), plan

    # ------------------------------------------------------------------ running
    def generate(self, req: ControlNetRequest, cancel=None, on_progress=None,
                 preview_every: int = 5, **resume) -> GenerationResult:
        """Validate, then generate through GenerationService with the units' ControlNets; the result's notes say
        which control images were fitted to the generation size. `resume`: GenerationService.generate's `skip`
        and `on_saved`."""
        req, plan = self.validate(req)
        result = self.generation.generate(req, cancel, on_progress, preview_every, control=plan, **resume)
        result.notes = plan.notes
        return result

    def parameters_of(self, image_path) -> dict:
        """The generation fields and ControlNet units (field "controlnet", a list of unit settings) an image
        carries; a unit's model is matched to an installed ControlNet by id, name or file name, else kept."""
        fields = self.generation.parameters_of(image_path)
        installed = self.controlnets()
        for unit in fields.get("controlnet", []):
            name = unit.get("model", "")
            match = next((s.id for s in installed if name in (s.id, s.label, Path(s.label).stem)), None)
            if match:
                unit["model"] = match
        return fields

