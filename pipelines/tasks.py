"""The generation tasks the studio runs, declared once: how each task's pipeline comes from the cached base
pipeline, and what one typed call of it passes to diffusers.

Adding a task (ControlNet, upscale, ...) is one `Task` here, one service method and one tab: the model cache,
the generation runner and the mode lists read `TASKS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class ImageInputs:
    """What img2img and inpaint start from: an init image, for inpaint a mask (white = repaint), a strength."""

    init_image: object
    mask_image: object | None = None
    strength: float = 0.75


@dataclass
class ControlUnitInputs:
    """One ControlNet unit of a call: its map (already at the generation size), conditioning scale, the share of
    the steps it acts on (guidance start/end, 0..1) and A1111's control mode (pipelines.controlnets)."""

    image: object
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = "Balanced"


@dataclass
class ControlInputs:
    """What a ControlNet task adds: one unit per ControlNet of the pipeline, in order."""

    units: list[ControlUnitInputs] = field(default_factory=list)


@dataclass
class PipelineCall:
    """Everything one pipeline call needs, already validated; `inputs` holds what the task adds."""

    task: str
    prompt: str
    negative_prompt: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    seeds: list[int]
    cfg_rescale: float = 0.0  # guidance_rescale (for zero-terminal-SNR models); only where the pipeline has it
    inputs: ImageInputs | None = None
    control: ControlInputs | None = None  # ControlNet tasks only
    variation_seeds: list[int] | None = None  # one per seed: A1111's variation seed (pipelines.variation_noise)
    variation_strength: float = 0.0  # 0: each seed's own noise; 1: the variation seed's


@dataclass(frozen=True)
class Task:
    """One task: `derive(base)` builds its pipeline from the txt2img one (sharing its weights; None = the base
    itself), `arguments(call)` the pipeline keyword arguments that only this task passes; `during(pipe, call)`,
    when set, is a context manager the call runs inside (ControlNet's control modes)."""

    name: str
    arguments: Callable[[PipelineCall], dict]
    derive: Callable[[object], object] | None = None
    needs_init_image: bool = False
    needs_mask: bool = False
    during: Callable[[object, PipelineCall], object] | None = None


def _size(call: PipelineCall) -> dict:
    return {"width": call.width, "height": call.height}


def _image_inputs(call: PipelineCall, with_mask: bool = False) -> dict:
    inputs = call.inputs
    if inputs is None or inputs.init_image is None or (with_mask and inputs.mask_image is None):
        needed = "an init image and a mask" if with_mask else "an init image"
        raise ValueError(f"task {call.task} needs {needed}")
    out = {"image": inputs.init_image, "strength": inputs.strength}
    if with_mask:
        out.update(mask_image=inputs.mask_image, **_size(call))
    return out


def _from_pipe(auto_class_name: str) -> Callable[[object], object]:
    """derive(base) through a diffusers Auto pipeline's `from_pipe`: no weight is copied or loaded."""
    def derive(base):
        import diffusers

        pipe = getattr(diffusers, auto_class_name).from_pipe(base)
        pipe.set_progress_bar_config(disable=True)
        return pipe
    return derive


TXT2IMG = Task("txt2img", _size)
IMG2IMG = Task("img2img", _image_inputs, _from_pipe("AutoPipelineForImage2Image"), needs_init_image=True)
INPAINT = Task("inpaint", lambda call: _image_inputs(call, with_mask=True), _from_pipe("AutoPipelineForInpainting"),
               needs_init_image=True, needs_mask=True)

TASKS: dict[str, Task] = {task.name: task for task in (TXT2IMG, IMG2IMG, INPAINT)}
BASE_TASK = TXT2IMG.name


# ---------------------------------------------------------------------- ControlNet: one task per plain task
CONTROLNET_PREFIX = "controlnet-"
CONTROLNET_PIPELINES = {  # (base family, plain task) -> diffusers pipeline class
    ("sd", "txt2img"): "StableDiffusionControlNetPipeline",
    ("sd", "img2img"): "StableDiffusionControlNetImg2ImgPipeline",
    ("sd", "inpaint"): "StableDiffusionControlNetInpaintPipeline",
    ("sdxl", "txt2img"): "StableDiffusionXLControlNetPipeline",
    ("sdxl", "img2img"): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("sdxl", "inpaint"): "StableDiffusionXLControlNetInpaintPipeline",
}


def _control_arguments(plain: Task) -> Callable[[PipelineCall], dict]:
    """The plain task's arguments plus the control maps, scales and guidance windows (lists for several units;
    txt2img takes the map as `image`, img2img and inpaint as `control_image`)."""
    def arguments(call: PipelineCall) -> dict:
        units = call.control.units if call.control else []
        if not units:
            raise ValueError(f"task {call.task} needs at least one control unit")
        out = plain.arguments(call)
        one = len(units) == 1
        pick = (lambda values: values[0]) if one else list
        out["image" if plain is TXT2IMG else "control_image"] = pick([u.image for u in units])
        out.update(controlnet_conditioning_scale=pick([float(u.scale) for u in units]),
                   control_guidance_start=pick([float(u.start) for u in units]),
                   control_guidance_end=pick([float(u.end) for u in units]))
        return out
    return arguments


def _control_modes(pipe, call: PipelineCall):
    from pipelines.controlnets import control_modes

    return control_modes(pipe, [u.mode for u in call.control.units])


CONTROLNET_TASKS: dict[str, Task] = {
    CONTROLNET_PREFIX + t.name: Task(CONTROLNET_PREFIX + t.name, _control_arguments(t), None, t.needs_init_image,
                                     t.needs_mask, _control_modes)
    for t in (TXT2IMG, IMG2IMG, INPAINT)
}


def controlnet_task(mode: str) -> str:
    """The ControlNet task of a plain task ("txt2img" -> "controlnet-txt2img")."""
    get_task(mode)
    return CONTROLNET_PREFIX + mode


def base_family(base) -> str:
    """"sdxl" for an SDXL pipeline (two text encoders), else "sd"."""
    return "sdxl" if getattr(base, "text_encoder_2", None) is not None else "sd"


def derive_controlnet_pipeline(base, mode: str, controlnets: list):
    """The ControlNet pipeline of plain task `mode` built from the base (txt2img) pipeline with `from_pipe`:
    it shares every weight of the base; `controlnets` (1..3 ControlNetModel, loaded apart) are added, several
    through diffusers' MultiControlNetModel."""
    import diffusers

    name = CONTROLNET_PIPELINES[(base_family(base), get_task(mode).name)]
    nets = controlnets[0] if len(controlnets) == 1 else diffusers.MultiControlNetModel(list(controlnets))
    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)  # from_pipe's same-dtype .to() warns per module on every job otherwise
    try:
        pipe = getattr(diffusers, name).from_pipe(base, controlnet=nets)
    finally:
        log.setLevel(level)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def get_task(name: str) -> Task:
    """The task called `name` (a plain one or its ControlNet one); a KeyError names the known ones."""
    try:
        return TASKS[name] if name in TASKS else CONTROLNET_TASKS[name]
    except KeyError:
        raise KeyError(f"task must be one of {', '.join(TASKS)} (or {CONTROLNET_PREFIX}<task>); got {name!r}") \
            from None


def derive_pipeline(base, name: str):
    """The pipeline of task `name` built from the base (txt2img) pipeline, sharing its weights."""
    task = get_task(name)
    return base if task.derive is None else task.derive(base)
