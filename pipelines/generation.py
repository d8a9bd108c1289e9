"""Run one diffusers pipeline call with progress, live previews and cancel (no UI, no storage)."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

from pipelines.prompt_weighting import encode_weighted_prompt, has_weighting
from pipelines.tasks import PipelineCall, get_task
from pipelines.variation_noise import substituted_noise, variation_noise

# Linear latent -> RGB approximation for SD 1.x/2.x latents (rows: latent channels).
SD_LATENT_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
SDXL_LATENT_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                   (-0.3165, -0.2492, -0.2188))
FULL_DECODE_MAX_PARAMS = 5_000_000  # tiny VAEs decode exactly for previews; large ones use the approximation


@dataclass
class StepUpdate:
    """What a running generation reports after each step."""

    step: int
    total: int
    preview: object | None = None  # PIL image every `preview_every` steps


def predicted_clean(scheduler, latents):
    """The scheduler's latest prediction of the finished latents where it keeps one (DPM-Solver++ and UniPC
    store their denoised estimates), so a preview shows the picture taking shape instead of noise; otherwise
    the current latents."""
    outputs = getattr(scheduler, "model_outputs", None)
    config = getattr(scheduler, "config", {})
    data_prediction = (config.get("algorithm_type") in ("dpmsolver++", "sde-dpmsolver++")
                       or config.get("predict_x0") is True)
    if data_prediction and outputs and outputs[-1] is not None and outputs[-1].shape == latents.shape:
        return outputs[-1]
    return latents


def preview_image(pipe, latents):
    """A cheap RGB preview of the first latent in the batch."""
    import numpy as np
    import torch
    from PIL import Image

    with torch.no_grad():
        vae = pipe.vae
        n_params = sum(p.numel() for p in vae.parameters())
        if n_params <= FULL_DECODE_MAX_PARAMS:
            lat = latents[:1].to(vae.dtype) / vae.config.scaling_factor
            img = vae.decode(lat).sample[0].float().clamp(-1, 1)
        else:
            table = SDXL_LATENT_RGB if getattr(pipe, "text_encoder_2", None) is not None else SD_LATENT_RGB
            weights = torch.tensor(table, dtype=torch.float32, device=latents.device)
            img = torch.einsum("chw,cr->rhw", latents[0].float(), weights).clamp(-1, 1)
    arr = ((img.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).astype(np.uint8)
    return Image.fromarray(arr)


def supports_cfg_rescale(pipe) -> bool:
    """Whether the pipeline takes guidance_rescale (SD txt2img and every SDXL mode; not SD img2img/inpaint)."""
    import inspect

    return "guidance_rescale" in inspect.signature(pipe.__call__).parameters


def _apply_variation(pipe, call: PipelineCall, generators: list, kwargs: dict):
    """Blend each seed's initial noise with its variation seed's: txt2img starts from the blend (`latents`);
    img2img and inpaint get it through the scheduler's add_noise (returned as the context to run inside), and
    inpaint at full strength, which starts from pure noise, through `latents` too."""
    task = get_task(call.task)
    factor = getattr(pipe, "vae_scale_factor", 8)
    shape = (pipe.vae.config.latent_channels, call.height // factor, call.width // factor)
    noise = variation_noise(generators, call.variation_seeds, call.variation_strength, shape).to(pipe.unet.dtype)
    full_strength = call.inputs is None or call.inputs.strength >= 1
    if not task.needs_init_image or (task.needs_mask and full_strength):
        kwargs["latents"] = noise
    return substituted_noise(pipe.scheduler, noise) if task.needs_init_image else nullcontext()


def run_pipeline(pipe, call: PipelineCall, device: str, cancel: threading.Event | None = None,
                 on_step: Callable[[StepUpdate], None] | None = None, preview_every: int = 5) -> list:
    """Run `pipe` once for `call` (one image per seed); returns PIL images, or [] if cancelled mid-run."""
    import torch

    cancel = cancel or threading.Event()
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in call.seeds]
    kwargs = dict(num_inference_steps=call.steps, guidance_scale=call.cfg_scale,
                  num_images_per_prompt=len(call.seeds), generator=generators, output_type="pil")
    if has_weighting(call.prompt, pipe.tokenizer) or has_weighting(call.negative_prompt, pipe.tokenizer):
        kwargs.update(encode_weighted_prompt(pipe, call.prompt, call.negative_prompt, device))
    else:
        kwargs.update(prompt=call.prompt, negative_prompt=call.negative_prompt or None)
    kwargs.update(get_task(call.task).arguments(call))
    if call.cfg_rescale and supports_cfg_rescale(pipe):
        kwargs["guidance_rescale"] = call.cfg_rescale
    noise_swap = nullcontext()
    if call.variation_strength and call.variation_seeds:
        noise_swap = _apply_variation(pipe, call, generators, kwargs)
    state = {"cancelled": False}

    def step_end(p, step_index, timestep, tensors):
        if cancel.is_set():
            p._interrupt = True
            state["cancelled"] = True
        if on_step is not None:
            step = step_index + 1
            total = getattr(p, "_num_timesteps", None) or call.steps
            show = preview_every and (step % preview_every == 0) and step < total and not state["cancelled"]
            preview = preview_image(p, predicted_clean(p.scheduler, tensors["latents"])) if show else None
            on_step(StepUpdate(step, total, preview))
        return {}

    during = get_task(call.task).during
    with torch.inference_mode(), (during(pipe, call) if during else nullcontext()), noise_swap:
        result = pipe(callback_on_step_end=step_end, callback_on_step_end_tensor_inputs=["latents"], **kwargs)
    return [] if state["cancelled"] else list(result.images)
