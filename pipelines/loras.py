"""Load a LoRA file into a pipeline as a named adapter, offline (no hub lookup for a local file)."""

from __future__ import annotations

from pathlib import Path


def load_lora_file(pipe, path, adapter_name: str) -> None:
    """Load the LoRA `.safetensors` at `path` into `pipe` as adapter `adapter_name`.

    The folder and file name are passed apart: given a bare file path in offline mode (HF_HUB_OFFLINE=1),
    diffusers asks for a `weight_name` instead of reading the file."""
    path = Path(path)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
