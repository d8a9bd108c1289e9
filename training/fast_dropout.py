"""Dropout for LoRA layers that draws its random mask faster on a CPU than torch's own.

peft's `lora_dropout` zeroes a share of each LoRA layer's input; with LoRA on a UNet's convolutions (LoCon) those
inputs are whole feature maps, and torch's CPU dropout (a float Bernoulli draw per element) costs a sixth of a
training step. Same effect here: each element is kept with probability 1 - p (to 1/65,536) and scaled by 1 / (1 - p),
but from 16 random bits per element, drawn 64 at a time.
"""

from __future__ import annotations

import torch


class FastDropout(torch.nn.Module):
    """`torch.nn.Dropout(p)` with a cheaper mask on the CPU (other devices use torch's own)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return torch.nn.functional.dropout(x, self.p, True)
        n = x.numel()
        bits = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64).view(torch.int16)[:n]
        keep = bits.view(x.shape) >= round(self.p * 65536) - 32768
        return torch.where(keep, x * (1 / (1 - self.p)), 0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: torch.nn.Module) -> None:
    """Swap each peft LoRA layer's `torch.nn.Dropout` for a FastDropout of the same rate."""
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name, drop in drops.items():
                if isinstance(drop, torch.nn.Dropout):
                    drops[name] = FastDropout(drop.p)
