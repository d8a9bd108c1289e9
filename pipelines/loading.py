"""Load a Stable Diffusion pipeline (the base txt2img one) from a ModelSource; tasks derive theirs from it
(pipelines.tasks)."""

from __future__ import annotations

from typing import Callable

from pipelines.cpu_graphs import speed_up_on_cpu
from pipelines.devices import DeviceChoice
from pipelines.registry import ModelSource
from pipelines.single_file import load_single_file


class ModelLoadError(RuntimeError):
    """A model exists but could not be loaded (corrupt, wrong format, missing files, offline download)."""


def download_progress_class(report: Callable[[int, int], None]):
    """A tqdm class for huggingface_hub downloads that reports (bytes done, bytes total) of all files."""
    from tqdm.auto import tqdm

    class Reporting(tqdm):
        def update(self, n=1):
            out = super().update(n)
            self._bytes_done = getattr(self, "_bytes_done", 0) + (n or 0)
            total = getattr(self, "total", None)
            if getattr(self, "unit", "B") == "B" and total:
                report(int(self._bytes_done), int(total))
            return out

    return Reporting


def fetch_hub_model(repo: str, offline: bool, report: Callable[[int, int], None] | None = None) -> str:
    """Download (or find in the local cache) a Hugging Face repo; returns its local folder."""
    from huggingface_hub import snapshot_download

    kwargs = {"tqdm_class": download_progress_class(report)} if report else {}
    return snapshot_download(repo, local_files_only=offline,
                             allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors"], **kwargs)


def load_pipeline(source: ModelSource, device: DeviceChoice, offline: bool = False,
                  report: Callable[[int, int], None] | None = None):
    """Load the txt2img pipeline of a model onto the chosen device; raise ModelLoadError with the cause.

    `report(done, total)` receives download progress in bytes for Hugging Face ids."""
    import diffusers

    kwargs = {"torch_dtype": device.dtype}
    try:
        if source.kind in ("builtin", "diffusers"):
            pipe = diffusers.DiffusionPipeline.from_pretrained(source.location, local_files_only=True, **kwargs)
        elif source.kind == "single_file":
            pipe = load_single_file(source.location, **kwargs)
        elif source.kind == "hub":
            folder = fetch_hub_model(source.location, offline, report)
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(folder, local_files_only=True, **kwargs)
        else:
            raise ModelLoadError(f"unknown model kind {source.kind!r}")
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"model {source.label!r} could not be loaded: {type(exc).__name__}: {exc}") from exc
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device.device)
    speed_up_on_cpu(pipe, device.device)
    return pipe
