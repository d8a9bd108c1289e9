"""TinyDB storage that never leaves a half-written file, and a locked JSON store on top of it.

Writes go temp file -> flush -> fsync -> os.replace -> fsync(dir), keeping the previous good file as `.bak`.
A corrupt file at start-up is moved aside (`.corrupt-<time>`) and the store recovers from `.bak`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from tinydb import Query, TinyDB
from tinydb.storages import Storage

log = logging.getLogger(__name__)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str, keep_backup: bool = True) -> None:
    """Replace `path` with `text` so that a crash leaves either the old or the new file, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    if keep_backup and path.exists():
        bak = path.with_name(path.name + ".bak")
        bak_tmp = path.with_name(f".{path.name}.bak.tmp")
        try:
            if bak_tmp.exists():
                bak_tmp.unlink()
            os.link(path, bak_tmp)
            os.replace(bak_tmp, bak)
        except OSError:
            pass
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class AtomicJSONStorage(Storage):
    """TinyDB storage with atomic writes and recovery from a corrupt file."""

    def __init__(self, path, **_):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cache = self._load_or_recover()

    def _parse(self, path: Path):
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None

    def _load_or_recover(self):
        if not self.path.exists():
            return None
        try:
            return self._parse(self.path)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.path, aside)
            bak = self.path.with_name(self.path.name + ".bak")
            log.warning("%s is corrupt (%s); kept it as %s and recovered from %s", self.path, exc, aside.name,
                        bak.name if bak.exists() else "nothing (starting empty)")
            if bak.exists():
                try:
                    data = self._parse(bak)
                    atomic_write_text(self.path, json.dumps(data), keep_backup=False)
                    return data
                except (json.JSONDecodeError, UnicodeDecodeError):
                    log.warning("%s is corrupt too; starting empty", bak)
            return None

    def read(self):
        return self._cache

    def write(self, data) -> None:
        atomic_write_text(self.path, json.dumps(data, separators=(",", ":")))
        self._cache = data

    def close(self) -> None:
        pass


def open_db(path: Path) -> TinyDB:
    return TinyDB(path, storage=AtomicJSONStorage)


class JsonStore:
    """A small TinyDB-backed store; every call holds one lock (TinyDB is not thread-safe)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = open_db(self.path)
        self._lock = threading.RLock()

    def insert(self, doc: dict) -> int:
        with self._lock:
            return self._db.insert(doc)

    def all(self) -> list[dict]:
        with self._lock:
            return [dict(d) for d in self._db.all()]

    def search(self, key: str, value) -> list[dict]:
        with self._lock:
            return [dict(d) for d in self._db.search(Query()[key] == value)]

    def get(self, key: str, value) -> dict | None:
        found = self.search(key, value)
        return found[0] if found else None

    def update_where(self, key: str, value, fields: dict) -> int:
        with self._lock:
            return len(self._db.update(fields, Query()[key] == value))

    def remove_where(self, key: str, value) -> int:
        with self._lock:
            return len(self._db.remove(Query()[key] == value))

    def close(self) -> None:
        with self._lock:
            self._db.close()
