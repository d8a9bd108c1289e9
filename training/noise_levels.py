"""Which noise levels a diffusion training step trains on."""

from __future__ import annotations


def sample_timesteps(n: int, total: int, high_noise_share: float = 0.0, device=None):
    """`n` uniform timesteps in [0, total), except that a `high_noise_share` of them come from the noisiest 40%,
    where the layout (where objects stand, how many there are, their outline) is decided."""
    import torch

    t = torch.randint(0, total, (n,))
    if high_noise_share > 0:
        high = torch.rand(n) < high_noise_share
        t = torch.where(high, torch.randint(int(total * 0.6), total, (n,)), t)
    return t.to(device) if device is not None else t
