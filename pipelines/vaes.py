"""VAE files (an A1111 models folder's VAE/, or `<checkpoint>.vae.safetensors` beside a checkpoint) loaded offline
as a replacement for a pipeline's own VAE.

A VAE file holds an AutoencoderKL's weights under diffusers names (`encoder.down_blocks.0.resnets.0.…`) or the
original LDM names (`encoder.down.0.block.0.…`, bare or under `first_stage_model.` / `vae.`); diffusers'
`AutoencoderKL.from_single_file` reads both. Given `config=` a local folder it never reaches for the Hub, so the
pipeline's own VAE config is written to a temporary folder and passed: the replacement gets the model's
scaling factor and architecture, as A1111 does. `.pt` / `.ckpt` files are read with
`torch.load(weights_only=True)` only (a pickle needing more is refused). The latent channel count is read from
the file first: a VAE whose latents the UNet does not work in (a 16-channel SD 3 / Flux VAE on a 4-channel SD
model) is refused naming both.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipelines.tensor_files import PICKLED_EXT, read_tensor_file

DECODER_IN = "decoder.conv_in.weight"  # (channels, latent channels, 3, 3) in both key layouts
FAMILY_BY_LATENTS = {4: "SD 1.x/2.x/SDXL", 16: "SD 3/Flux"}


class VaeError(ValueError):
    """A VAE file that cannot be used: unreadable, not a VAE, a refused pickle, or the wrong latent size."""


def read_vae_state(path: Path) -> dict:
    """The file's tensors (a pickled checkpoint's `state_dict` when it nests one); VaeError when unreadable."""
    import torch

    path = Path(path)
    data = read_tensor_file(path, f"VAE {path.name}", VaeError)
    if path.suffix.lower() in PICKLED_EXT:
        data = data.get("state_dict", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise VaeError(f"VAE {path.name} holds a {type(data).__name__}, not a state dict of tensors")
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    return data


def latent_channels(state: dict, name: str) -> int:
    """The latent channels a VAE decodes, from its decoder's first convolution."""
    key = next((k for k in state if k == DECODER_IN or k.endswith("." + DECODER_IN)), None)
    if key is None:
        sample = ", ".join(list(state)[:3]) or "no tensors"
        raise VaeError(f"VAE {name!r} holds no VAE decoder ({DECODER_IN}); found {len(state)} tensors like {sample}")
    return int(state[key].shape[1])


def _label(channels: int) -> str:
    family = FAMILY_BY_LATENTS.get(channels)
    return f"{channels} latent channels" + (f" ({family})" if family else "")


def load_vae_file(path: Path, like, unet_latents: int, name: str = "", model: str = ""):
    """Load the VAE at `path` with the configuration, dtype and device of `like` (the pipeline's own VAE);
    `unet_latents` is the number of latent channels the model's UNet produces (its out_channels)."""
    from diffusers import AutoencoderKL

    path = Path(path)
    name = name or path.name
    state = read_vae_state(path)
    channels = latent_channels(state, name)
    if channels != unet_latents:
        model_text = f"the model {model!r}" if model else "the model"
        raise VaeError(f"VAE {name!r} has {_label(channels)}; {model_text} works in {_label(unet_latents)}")
    param = next(like.parameters())
    with tempfile.TemporaryDirectory(prefix="vae-config-") as folder:
        like.save_config(folder)
        try:
            vae = AutoencoderKL.from_single_file(state, config=folder, local_files_only=True,
                                                 torch_dtype=param.dtype)
        except Exception as exc:
            model_text = f"the model {model!r}" if model else "the model"
            cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise VaeError(f"VAE {name!r} does not fit the VAE configuration of {model_text}: {cause}") from exc
    vae.eval().requires_grad_(False)
    return vae.to(param.device)
