"""Upscalers: the plain resamplers (no model), every model file in <models>/ESRGAN, and the built-in one.

    list_upscalers(upscaler_dir, builtin_dir) -> [UpscalerSource]
    load_upscaler(path, device, dtype_name) -> LoadedUpscaler        (through spandrel's ModelLoader only)
    upscale_with_model(model, image, size, ...) -> (image, tile side)
    resample(image, size, name) / split_modes(image) / join_modes(rgb, alpha, mode)

Model files are read by spandrel's ModelLoader: .safetensors as tensors, .pth/.pt through its unpickler, which
admits only tensors and ordered dicts. TorchScript .pt archives (which hold code) are refused before it sees
them, and the loader's registry holds spandrel's own architectures only (never spandrel_extra_arches, whose
architectures are non-commercial). Only image-to-image models (super-resolution or restoration, 1 or 3 channels)
are accepted.
"""

from __future__ import annotations

import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipelines.tiling import choose_tile_size, tiled_upscale

RESAMPLERS = ("Lanczos", "Bicubic", "Nearest")
NONE = "None"
MODEL_SUFFIXES = (".safetensors", ".pth", ".pt")
BUILTIN_UPSCALER_ID = "builtin:upscaler"
CPU_TILE_BUDGET = 512 * 1024**2  # bytes of activations a tile may take on the CPU
GPU_BUDGET_SHARE = 0.5  # share of the free device memory a tile may take
ACTIVATIONS_LIVE = 4  # feature maps alive at once in a conv net, in the bytes-per-pixel estimate
MAX_PASSES = 3  # model passes to reach a scale above the model's own (A1111 stops at 3 too)
PURPOSES = ("SR", "Restoration")


class UpscalerError(ValueError):
    """A model file that cannot serve as an upscaler; the message names the file."""


@dataclass(frozen=True)
class UpscalerSource:
    """One choice: `name` is what a request names (a resampler, a path relative to the ESRGAN folder, or the
    built-in id); `path` is the model file (None for a resampler)."""

    name: str
    kind: str  # "resampler", "model" or "builtin"
    path: Path | None = None

    @property
    def label(self) -> str:
        if self.kind == "resampler":
            return f"{self.name} (no model)"
        return "Built-in 4x (for the built-in model's pictures)" if self.kind == "builtin" else self.name

    def cache_key(self) -> tuple[str, str]:
        """(model id, kind) in the model cache; the kind carries the file's size and time, so a file replaced
        under the same name is loaded again."""
        stat = self.path.stat()
        return f"upscaler:{self.name}", f"upscaler:{stat.st_size}:{stat.st_mtime_ns}"


def builtin_file(builtin_dir: Path) -> Path | None:
    """The built-in upscaler's weights (the first .safetensors in its folder), None while it is not there."""
    found = sorted(Path(builtin_dir).glob("*.safetensors")) if Path(builtin_dir).is_dir() else []
    return found[0] if found else None


def list_upscalers(upscaler_dir: Path, builtin_dir: Path) -> list[UpscalerSource]:
    """The resamplers, the built-in upscaler when its weights exist, then every model file under
    `upscaler_dir` (sub-folders too), sorted by name."""
    found = [UpscalerSource(name, "resampler") for name in RESAMPLERS]
    builtin = builtin_file(builtin_dir)
    if builtin is not None:
        found.append(UpscalerSource(BUILTIN_UPSCALER_ID, "builtin", builtin))
    root = Path(upscaler_dir)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in MODEL_SUFFIXES and p.is_file())
        found += [UpscalerSource(p.relative_to(root).as_posix(), "model", p) for p in files]
    return found


# ---------------------------------------------------------------------- loading
def spandrel_registry():
    """spandrel's own architectures only, whatever else has been added to its main registry."""
    from spandrel import MAIN_REGISTRY, ArchRegistry

    registry = ArchRegistry()
    registry.add(*[a for a in MAIN_REGISTRY.architectures()
                   if type(a.architecture).__module__.startswith("spandrel.")])
    return registry


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (it carries code, which torch.jit.load would run)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


@dataclass
class LoadedUpscaler:
    """A loaded image-to-image model on its device; call it on a BCHW 0..1 CPU float tensor (one tile)."""

    descriptor: object  # spandrel ImageModelDescriptor
    device: str
    dtype_name: str

    @property
    def components(self) -> dict:
        return {"model": self.descriptor.model}  # what the model cache counts

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return self.descriptor.architecture.name

    @property
    def tiling_advised(self) -> bool:
        from spandrel import ModelTiling

        return self.descriptor.tiling == ModelTiling.SUPPORTED

    def bytes_per_input_pixel(self) -> float:
        """An upper estimate of the memory one input pixel takes: the widest convolution's feature maps, a few
        alive at once, at input and at output resolution."""
        import torch

        widest = max((max(m.in_channels, m.out_channels) for m in self.descriptor.model.modules()
                      if isinstance(m, torch.nn.Conv2d)), default=64)
        element = torch.finfo(getattr(torch, self.dtype_name)).bits // 8
        return element * widest * (ACTIVATIONS_LIVE + self.scale ** 2)

    def __call__(self, tile):
        import torch

        x = tile.to(self.device, getattr(torch, self.dtype_name))
        if self.descriptor.input_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        out = self.descriptor(x)
        if out.shape[1] == 1:
            out = out.expand(-1, 3, -1, -1)
        return out.float().cpu()


def model_dtype(descriptor, device: str, dtype_name: str) -> str:
    """fp16 (or bf16) on a GPU when the device runs in it and the model supports it; fp32 otherwise."""
    if device == "cpu":
        return "float32"
    if dtype_name == "float16" and descriptor.supports_half:
        return "float16"
    if dtype_name == "bfloat16" and descriptor.supports_bfloat16:
        return "bfloat16"
    return "float32"


def load_upscaler(path: Path, device: str = "cpu", dtype_name: str = "float32") -> LoadedUpscaler:
    """Load a model file as an upscaler on `device`, or raise UpscalerError naming the file."""
    import torch
    from spandrel import ImageModelDescriptor, ModelLoader

    path = Path(path)
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise UpscalerError(f"{path.name}: not a model file ({', '.join(MODEL_SUFFIXES)})")
    if path.suffix.lower() == ".pt" and is_torchscript(path):
        raise UpscalerError(f"{path.name}: a TorchScript archive holds code and is not loaded; "
                            "convert it to .safetensors")
    try:
        with warnings.catch_warnings():  # the loader tries a .pt as TorchScript first (refused above): deprecated
            warnings.simplefilter("ignore", FutureWarning)
            descriptor = ModelLoader("cpu", spandrel_registry()).load_from_file(path)
    except Exception as exc:  # noqa: BLE001 - any failure to read the file is the file's fault
        kind = type(exc).__name__
        reason = "unknown architecture (not a model spandrel knows)" if kind == "UnsupportedModelError" else \
            f"unreadable ({kind}: {str(exc)[:200]})"
        raise UpscalerError(f"{path.name}: {reason}") from None
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose not in PURPOSES:
        raise UpscalerError(f"{path.name}: a {descriptor.architecture.name} model ({descriptor.purpose}) is not an "
                            "image upscaler")
    if descriptor.input_channels not in (1, 3) or descriptor.output_channels not in (1, 3):
        raise UpscalerError(f"{path.name}: takes {descriptor.input_channels} channel(s) and gives "
                            f"{descriptor.output_channels}; only grey (1) or RGB (3) models are used")
    dtype = model_dtype(descriptor, device, dtype_name)
    descriptor.to(torch.device(device)).to(getattr(torch, dtype)).eval()
    return LoadedUpscaler(descriptor, device, dtype)


# ---------------------------------------------------------------------- running
def tile_budget(device: str) -> int:
    """Bytes a tile may take: a share of the free GPU memory, or CPU_TILE_BUDGET."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * GPU_BUDGET_SHARE)
    return CPU_TILE_BUDGET


def to_tensor(image):
    """An RGB PIL image as a 1x3xHxW float tensor in 0..1."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def to_image(tensor):
    """A 1x3xHxW 0..1 tensor as an RGB PIL image."""
    import numpy as np
    from PIL import Image

    array = (tensor[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


def upscale_with_model(model: LoadedUpscaler, image, size: tuple[int, int], tile_size: int = 0,
                       overlap: int = 32, cancel: threading.Event | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       free_memory: Callable[[], None] | None = None):
    """An RGB image upscaled by `model` to exactly `size`: model passes (at most MAX_PASSES, one for a 1x model)
    until it reaches `size`, then Lanczos to the exact size. `tile_size` 0 picks the tile from the device's
    memory (the whole image for a model that advises against tiling). Returns (image, tile side used)."""
    import torch
    from PIL import Image

    current, passes, used = image, 0, 0
    while passes == 0 or (model.scale > 1 and passes < MAX_PASSES
                          and (current.width < size[0] or current.height < size[1])):
        tile = tile_size or (choose_tile_size(tile_budget(model.device), model.bytes_per_input_pixel(),
                                              current.width, current.height)
                             if model.tiling_advised else max(current.size))
        with torch.inference_mode():
            done = tiled_upscale(model, to_tensor(current), model.scale, tile, overlap, cancel, progress,
                                 free_memory)
        current, used, passes = to_image(done.image), done.tile_size, passes + 1
    if current.size != tuple(size):
        current = current.resize(size, Image.LANCZOS)
    return current, used


def resample(image, size: tuple[int, int], name: str):
    """`image` resized to `size` by a plain resampler (Lanczos, Bicubic or Nearest)."""
    from PIL import Image

    return image.resize(size, {"Lanczos": Image.LANCZOS, "Bicubic": Image.BICUBIC, "Nearest": Image.NEAREST}[name])


# ---------------------------------------------------------------------- image modes
def split_modes(image):
    """(RGB image, alpha or None, the mode to give back): grey stays grey, alpha is kept, palettes and CMYK
    become RGB, and 16-bit or 32-bit grey is scaled into 8 bits (not clipped)."""
    import numpy as np
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((array.clip(0, top) / top * 255).round().astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        grey = image.mode == "LA"
        return image.convert("RGB"), image.getchannel("A"), "LA" if grey else "RGBA"
    if image.mode in ("L", "1"):
        return image.convert("RGB"), None, "L"
    return image.convert("RGB"), None, "RGB"


def join_modes(rgb, alpha, mode: str):
    """The inverse of split_modes at the new size: alpha resized with Lanczos and put back, grey made grey."""
    from PIL import Image

    base = rgb.convert("L") if mode in ("L", "LA") else rgb
    if alpha is None:
        return base
    base = base.copy()
    base.putalpha(alpha.resize(rgb.size, Image.LANCZOS))
    return base
