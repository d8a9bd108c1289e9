"""A1111 sampler names -> diffusers schedulers (built from the model's own scheduler config)."""

from __future__ import annotations

SAMPLERS: dict[str, tuple[str, dict]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
}
DEFAULT_SAMPLER = "DPM++ 2M"


def sampler_names() -> list[str]:
    return list(SAMPLERS)


def make_scheduler(name: str, base_config: dict):
    """A fresh scheduler for one run (schedulers are stateful and not thread-safe)."""
    import diffusers

    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {name!r}")
    cls_name, overrides = SAMPLERS[name]
    cls = getattr(diffusers, cls_name)
    config = dict(base_config)
    config.update(overrides)
    if cls_name == "DPMSolverMultistepScheduler" and config.get("rescale_betas_zero_snr"):
        config["final_sigmas_type"] = "zero"
    return cls.from_config(config)
