"""Offline means offline: with --offline nothing in the studio's libraries reaches the network.

huggingface_hub, transformers and diffusers read their offline switches from the environment when they are
imported, so `enforce_offline()` runs before they are (app.py's main, right after parsing the settings). When
they are already imported (a test, a script that built the services itself) it also sets the flags they copied
at import time and drops huggingface_hub's cached HTTP sessions, so the next session it makes refuses every
request (huggingface_hub mounts an offline adapter on sessions created while HF_HUB_OFFLINE is set).
"""

from __future__ import annotations

import os
import sys

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub (and diffusers, transformers through it): no Hub requests
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",  # Gradio's usage analytics
}
_LIBRARIES = ("huggingface_hub", "transformers", "diffusers")


def enforce_offline() -> None:
    """Switch the Hugging Face libraries (and Gradio's analytics) to offline, imported yet or not."""
    os.environ.update(OFFLINE_ENV)
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(_LIBRARIES):
            continue
        for flag in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
            if isinstance(getattr(module, flag, None), bool):
                setattr(module, flag, True)
        if isinstance(getattr(module, "_is_offline_mode", None), bool):  # transformers.utils.hub
            module._is_offline_mode = True
    http = sys.modules.get("huggingface_hub.utils._http")
    if http is not None and hasattr(http, "reset_sessions"):
        http.reset_sessions()


def is_offline() -> bool:
    """Whether huggingface_hub currently refuses network requests."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        return bool(constants.HF_HUB_OFFLINE)
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
