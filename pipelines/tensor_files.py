"""Read a weights file as tensors, safely: `.safetensors` directly, pickles (`.pt`, `.pth`, `.ckpt`, `.bin`) only
through `torch.load(weights_only=True)` (a pickle that needs more than plain tensors and values is refused)."""

from __future__ import annotations

from pathlib import Path

PICKLED_EXT = (".pt", ".pth", ".ckpt", ".bin")


def read_tensor_file(path, what: str, error: type[Exception] = ValueError):
    """The file's contents (a dict for safetensors; whatever plain data a pickle holds); `error(message)` names
    `what` (e.g. "VAE x.pt") when the file is unreadable or a refused pickle."""
    import torch

    path = Path(path)
    if path.suffix.lower() in PICKLED_EXT:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for anything beyond plain tensors and values
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise error(f"{what} is a pickle that holds more than plain tensors; it is refused (only "
                        f"torch.load(weights_only=True) is used): convert it to .safetensors "
                        f"({type(exc).__name__}: {first})") from exc
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise error(f"{what} is not a readable .safetensors file (truncated or another format): {exc}") from exc
