"""What the benchmark's sections share: the printed result line and the studio's services on a temporary folder."""

from __future__ import annotations

from pathlib import Path

from studio.settings import Settings


def line(name: str, value: str) -> None:
    print(f"  {name:<44} {value}", flush=True)


def services(tmp: Path):
    from studio.services import build_services

    settings = Settings(data_dir=tmp / "data", models_dir=tmp / "models", offline=True, device="cpu",
                        dtype="float32")
    return build_services(settings)
