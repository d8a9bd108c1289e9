"""The machine's limit beside a time: how many FLOPs a module does per call (torch's FlopCounterMode), this CPU's
matmul peak (a large `torch.mm` timed here, in the same dtype and thread count), and the achieved FLOP rate as a
share of that peak. A share near 1 says the code already runs at what the machine can do; a small one says how
much faster it can still get."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, Self

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

_aten = torch.ops.aten
CPU_ATTENTION = {  # torch's CPU attention kernels, which FlopCounterMode does not count on its own (torch 2.14)
    _aten._scaled_dot_product_flash_attention_for_cpu: flop_counter.sdpa_flop.__wrapped__,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: flop_counter.sdpa_backward_flop.__wrapped__,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of what `fn` runs (matmuls, convolutions, attention: the operations FlopCounterMode counts, and the
    CPU attention kernels)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    return counter.get_total_flops()


def forward_flops(module: Callable[..., Any], *args, **kwargs) -> int:
    """FLOPs of one forward call `module(*args, **kwargs)` (no gradients)."""
    with torch.no_grad():
        return count_flops(lambda: module(*args, **kwargs))


def train_step_flops(module: torch.nn.Module, loss: Callable[[Any], torch.Tensor], *args, **kwargs) -> int:
    """FLOPs of one training step's forward and backward: `loss(module(*args, **kwargs)).backward()`. The gradients
    it leaves on the module are cleared."""
    flops = count_flops(lambda: loss(module(*args, **kwargs)).backward())
    module.zero_grad(set_to_none=True)
    return flops


class CallRecorder:
    """Counts a module's calls and keeps the first call's inputs, to count the FLOPs of exactly that call later:

        with CallRecorder(pipe.unet) as unet_calls:
            pipe(prompt)
        flops = forward_flops(pipe.unet, *unet_calls.args, **unet_calls.kwargs)
    """

    def __init__(self, module: torch.nn.Module):
        self.module, self.calls = module, 0
        self.args: tuple = ()
        self.kwargs: dict = {}

    def _hook(self, module, args, kwargs):
        if not self.calls:
            self.args, self.kwargs = args, kwargs
        self.calls += 1

    def __enter__(self) -> Self:
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` n x n `torch.mm` calls in `dtype` with torch's current thread count
    (measured once per process for each setting)."""
    return _matmul_peak(dtype, n, repeats, torch.get_num_threads())


@functools.cache
def _matmul_peak(dtype: torch.dtype, n: int, repeats: int, threads: int) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up: first-call allocations and kernel choice
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def share_of_peak(flops_per_call: float, calls: float, seconds: float, peak: float) -> str:
    """'0.31 (12.3 of 40.1 GFLOP/s)': the FLOP rate of `calls` calls in `seconds` as a share of `peak` (FLOP/s);
    a share under 0.1 gets a third decimal ('0.012')."""
    rate = flops_per_call * calls / seconds
    share = rate / peak
    return f"{share:.{2 if share >= 0.1 else 3}f} ({rate / 1e9:.1f} of {peak / 1e9:.1f} GFLOP/s)"
