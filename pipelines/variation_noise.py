"""Variation seeds (A1111's "Variation seed" + "Variation seed strength"): the initial noise of an image is the
spherical interpolation (slerp) between the noise of its seed and the noise of its variation seed, so a small
strength gives a near copy of the seed's image and 1 gives the variation seed's own.

txt2img pipelines take the blended noise as their starting `latents`; img2img and inpaint draw their own noise
and hand it to `scheduler.add_noise`, so there the blend replaces that noise for the length of one call."""

from __future__ import annotations

from contextlib import contextmanager

PARALLEL_DOT = 0.9995  # nearly the same direction: a plain lerp is exact enough and avoids dividing by ~0


def slerp(strength: float, low, high):
    """Spherical interpolation per batch item, from `low` (strength 0) to `high` (strength 1)."""
    import torch

    flat_low, flat_high = low.reshape(low.shape[0], -1), high.reshape(high.shape[0], -1)
    dot = (flat_low / flat_low.norm(dim=1, keepdim=True) * flat_high / flat_high.norm(dim=1, keepdim=True)).sum(1)
    if dot.min() > PARALLEL_DOT:
        return torch.lerp(low, high, strength)
    omega = torch.acos(dot.clamp(-1, 1))
    sin = torch.sin(omega)
    a = (torch.sin((1.0 - strength) * omega) / sin).reshape(-1, *[1] * (low.dim() - 1))
    b = (torch.sin(strength * omega) / sin).reshape(-1, *[1] * (low.dim() - 1))
    return a * low + b * high


def variation_noise(generators: list, variation_seeds: list[int], strength: float, shape: tuple[int, ...]):
    """The blended initial noise of a batch, shape (len(generators), *shape), float32 on the CPU. Each seed's noise
    is drawn from its own generator (advancing it, so the sampler's later noise follows as without a variation);
    each variation seed's from a fresh CPU generator."""
    import torch

    images = []
    for generator, variation_seed in zip(generators, variation_seeds):
        base = torch.randn((1, *shape), generator=generator, dtype=torch.float32)
        other = torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(int(variation_seed)),
                            dtype=torch.float32)
        images.append(slerp(float(strength), base, other))
    return torch.cat(images)


@contextmanager
def substituted_noise(scheduler, noise):
    """While inside, `scheduler.add_noise` blends `noise` into the samples whatever noise the pipeline passes."""
    original = scheduler.add_noise

    def add_noise(original_samples, _noise, timesteps):
        return original(original_samples, noise.to(original_samples.device, original_samples.dtype), timesteps)

    scheduler.add_noise = add_noise
    try:
        yield
    finally:
        del scheduler.add_noise  # the class's own method again
