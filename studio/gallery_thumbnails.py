"""Gallery thumbnails cached on disk: `<data>/cache/thumbs/<first two hex digits>/<id>.webp`, 256 px on the long
side, made once (atomically: temp file + rename), and a background thread that fills the missing ones."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)
THUMB_SIDE = 256
THUMB_QUALITY = 80
BATCH = 64


class Thumbnails:
    """Makes and finds thumbnails; `start()` runs a thread that makes the missing ones, newest images first."""

    def __init__(self, store, data_dir: Path, path_of):
        self.store = store
        self.folder = Path(data_dir) / "cache" / "thumbs"
        self.path_of = path_of  # record -> its image file
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def path(self, record_id: str) -> Path:
        return self.folder / record_id[:2] / f"{record_id}.webp"

    def get(self, record: dict) -> Path:
        """The record's thumbnail, made now if missing. OSError / UnidentifiedImageError if its image is
        unreadable."""
        target = self.path(record["id"])
        if target.exists():
            return target
        with Image.open(self.path_of(record)) as image:
            image.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at a reduced scale
            image.thumbnail((THUMB_SIDE, THUMB_SIDE))
            thumb = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
        thumb.save(temp, "WEBP", quality=THUMB_QUALITY, method=2)
        os.replace(temp, target)
        return target

    def fill(self, limit: int = BATCH) -> int:
        """Make the thumbnails of up to `limit` records not yet marked as having one; returns how many records
        were looked at (0: nothing left). Unreadable or missing images are marked so they are not retried."""
        due = self.store.thumbnails_due(limit)
        done, failed, missing = [], [], []
        for record in due:
            if self._stop.is_set():
                break
            try:
                self.get(record)
                done.append(record["id"])
            except FileNotFoundError:
                missing.append(record["id"])
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                log.warning("thumbnail of %s: %s", record["id"], exc)
                failed.append(record["id"])
        for ids, flags in ((done, {"thumb": 1}), (failed, {"thumb": -1}), (missing, {"thumb": -1, "missing": 1})):
            if ids:
                self.store.set_flags(ids, **flags)
        return len(due)

    def wake(self) -> None:
        """Tell the background thread that new images arrived (e.g. after an import)."""
        self._wake.set()

    def _run(self, idle_s: float) -> None:
        while not self._stop.is_set():
            try:
                if self.fill():
                    continue
            except Exception:  # the thread must outlive one bad batch; the error is logged
                log.exception("thumbnail batch failed")
            self._wake.wait(idle_s)
            self._wake.clear()

    def start(self, idle_s: float = 30.0) -> None:
        """Start the background thread (idempotent); it sleeps `idle_s` or until `wake()` when nothing is due."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(idle_s,), name="gallery-thumbnails", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
            self._thread = None
