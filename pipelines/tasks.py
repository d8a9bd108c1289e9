"""The generation tasks the studio runs, declared once: how each task's pipeline comes from the cached base
pipeline, and what one typed call of it passes to diffusers.

Adding a task (ControlNet, upscale, ...) is one `Task` here, one service method and one tab: the model cache,
the generation runner and the mode lists read `TASKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class ImageInputs:
    """What img2img and inpaint start from: an init image, for inpaint a mask (white = repaint), a strength."""

    init_image: object
    mask_image: object | None = None
    strength: float = 0.75


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


@dataclass(frozen=True)
class Task:
    """One task: `derive(base)` builds its pipeline from the txt2img one (sharing its weights; None = the base
    itself), `arguments(call)` the pipeline keyword arguments that only this task passes."""

    name: str
    arguments: Callable[[PipelineCall], dict]
    derive: Callable[[object], object] | None = None
    needs_init_image: bool = False
    needs_mask: bool = False


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


def get_task(name: str) -> Task:
    """The task called `name`; a KeyError names the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"task must be one of {', '.join(TASKS)}; got {name!r}") from None


def derive_pipeline(base, name: str):
    """The pipeline of task `name` built from the base (txt2img) pipeline, sharing its weights."""
    task = get_task(name)
    return base if task.derive is None else task.derive(base)
