"""Studio settings: one frozen dataclass built from the command line (no work at import time)."""

from __future__ import annotations

import argparse
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_MODEL_DIR = PROJECT_ROOT / "assets" / "builtin-shapes"
BUILTIN_UPSCALER_DIR = PROJECT_ROOT / "assets" / "builtin-upscaler"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = PROJECT_ROOT / "data"
    models_dir: Path | None = None  # defaults to <data_dir>/models
    builtin_model_dir: Path = BUILTIN_MODEL_DIR
    builtin_upscaler_dir: Path = BUILTIN_UPSCALER_DIR  # the built-in upscaler's .safetensors, when trained
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    auth: tuple[str, str] | None = None
    offline: bool = False
    model: str = "builtin:shapes"
    device: str = "auto"
    dtype: str = "auto"
    cache_budget_bytes: int = 8 * 1024**3
    queue_max_size: int = 64
    gpu_concurrency: int = 1
    max_file_size: str = "25mb"
    max_batch_size: int = 8
    max_batch_count: int = 16
    inbrowser: bool = False
    warm_up: bool = True  # load and run the selected model in the background at start (GenerationService.warm_up)
    allowed_dirs: tuple[Path, ...] = ()  # folders beyond the data and models dirs that typed paths may name
    queue_start: str | None = None  # the job queue at start: run, paused, as_was; None: the Queue tab's choice
    extra: dict = field(default_factory=dict)

    @property
    def models_root(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def path_roots(self) -> tuple[Path, ...]:
        """Where a path typed into the studio may lead: the data dir, the models dir, --allow-dir folders."""
        return (self.data_dir, self.models_root, *self.allowed_dirs)

    def with_generated_auth(self) -> tuple["Settings", str | None]:
        """Sharing without auth is refused: when --share has no --auth, make a random password."""
        if self.share and self.auth is None:
            password = secrets.token_urlsafe(12)
            return replace(self, auth=("studio", password)), password
        return self, None


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("--auth must be user:password")
    return user, password


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(prog="app.py", description="AI Artist Studio")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="temporary public link (needs --auth or prints a password)")
    p.add_argument("--auth", type=parse_auth, default=None, help="user:password")
    p.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / "data")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="A1111-style models folder (Stable-diffusion/, Lora/, ControlNet/, ESRGAN/)")
    p.add_argument("--model", default="builtin:shapes", help="model selected at start")
    p.add_argument("--offline", action="store_true", help="never download (Hugging Face ids are refused)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16")
    p.add_argument("--cache-gb", type=float, default=8.0, help="model cache budget in GiB")
    p.add_argument("--inbrowser", action="store_true", help="open a browser tab on start")
    p.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                   help="do not load the selected model in the background at start")
    p.add_argument("--allow-dir", dest="allowed_dirs", type=Path, action="append", default=[],
                   help="a folder whose images typed paths may name (dataset folders); repeat for several")
    p.add_argument("--queue-start", choices=("run", "paused", "as_was"), default=None,
                   help="the job queue at start (default: the choice stored from the Queue tab, as_was at first)")
    a = p.parse_args(argv)
    return Settings(
        data_dir=a.data_dir.resolve(), models_dir=a.models_dir.resolve() if a.models_dir else None,
        host=a.host, port=a.port, share=a.share, auth=a.auth, offline=a.offline, model=a.model,
        device=a.device, dtype=a.dtype, cache_budget_bytes=int(a.cache_gb * 1024**3), inbrowser=a.inbrowser,
        warm_up=a.warm_up, allowed_dirs=tuple(d.resolve() for d in a.allowed_dirs), queue_start=a.queue_start,
    )
