"""Load a Stable Diffusion pipeline from a ModelSource and derive img2img / inpaint pipelines from it."""

from __future__ import annotations

from pipelines.devices import DeviceChoice
from pipelines.registry import ModelSource

PIPELINE_KINDS = ("txt2img", "img2img", "inpaint")


class ModelLoadError(RuntimeError):
    """A model exists but could not be loaded (corrupt, wrong format, missing files, offline download)."""


def load_pipeline(source: ModelSource, device: DeviceChoice, offline: bool = False):
    """Load the txt2img pipeline of a model onto the chosen device; raise ModelLoadError with the cause."""
    import diffusers

    kwargs = {"torch_dtype": device.dtype}
    try:
        if source.kind in ("builtin", "diffusers"):
            pipe = diffusers.DiffusionPipeline.from_pretrained(source.location, local_files_only=True, **kwargs)
        elif source.kind == "single_file":
            cls = (diffusers.StableDiffusionXLPipeline if source.family == "sdxl"
                   else diffusers.StableDiffusionPipeline)
            pipe = cls.from_single_file(source.location, local_files_only=offline, **kwargs)
        elif source.kind == "hub":
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
                source.location, local_files_only=offline, **kwargs)
        else:
            raise ModelLoadError(f"unknown model kind {source.kind!r}")
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"model {source.label!r} could not be loaded: {type(exc).__name__}: {exc}") from exc
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device.device)


def derive_pipeline(base, kind: str):
    """Build the img2img or inpaint pipeline sharing the base pipeline's weights (no reload)."""
    import diffusers

    if kind == "txt2img":
        return base
    cls = {"img2img": diffusers.AutoPipelineForImage2Image, "inpaint": diffusers.AutoPipelineForInpainting}[kind]
    pipe = cls.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe
