"""Training run history (one small TinyDB file)."""

from __future__ import annotations

from studio.stores.atomic_storage import JsonStore


class RunsStore(JsonStore):
    """Records of LoRA training runs: id, name, status, config, dataset size, step, final loss, LoRA path."""
