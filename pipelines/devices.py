"""Pick the torch device and dtype: CUDA fp16, Apple MPS fp16, else CPU fp32; both can be overridden."""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class DeviceChoice:
    device: str
    dtype_name: str

    @property
    def dtype(self):
        import torch

        return getattr(torch, self.dtype_name)


def choose_device(device: str = "auto", dtype: str = "auto") -> DeviceChoice:
    """Resolve "auto" to the best available device and its usual dtype."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "float16"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DeviceChoice(device, DTYPES[dtype])


def free_device_memory() -> None:
    """Release cached allocator memory after a model is dropped."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch, "mps", None) and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        torch.mps.empty_cache()
