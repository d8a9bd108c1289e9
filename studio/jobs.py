"""Cancel tokens for running jobs, keyed by the browser session that started them."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class JobRegistry:
    """Tracks the cancel event of each running job so a Stop click can end it within one step."""

    def __init__(self):
        self._lock = threading.Lock()
        self._jobs: dict[str, set[threading.Event]] = {}

    @contextmanager
    def track(self, owner: str) -> Iterator[threading.Event]:
        event = threading.Event()
        with self._lock:
            self._jobs.setdefault(owner, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                self._jobs.get(owner, set()).discard(event)

    def cancel(self, owner: str) -> int:
        """Signal every job of `owner`; returns how many were running."""
        with self._lock:
            events = list(self._jobs.get(owner, ()))
        for event in events:
            event.set()
        return len(events)
