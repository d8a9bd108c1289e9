"""TinyDB storage that never leaves a half-written file, and a locked JSON store on top of it.

Writes go temp file -> flush -> fsync -> os.replace -> fsync(dir), keeping the previous good file as `.bak`.
A corrupt file at start-up is moved aside (`.corrupt-<time>`) and the store recovers from `.bak`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tinydb import Query, TinyDB
from tinydb.storages import Storage

log = logging.getLogger(__name__)
_MISSING = object()


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rotate_backup(path: Path) -> None:
    """Make `<name>.bak` the current content of `path` (hard link, or a copy where links are unsupported)."""
    bak = path.with_name(path.name + ".bak")
    bak_tmp = path.with_name(f".{path.name}.bak.tmp")
    bak_tmp.unlink(missing_ok=True)
    try:
        os.link(path, bak_tmp)
    except OSError:
        shutil.copyfile(path, bak_tmp)
    os.replace(bak_tmp, bak)


def atomic_write_text(path: Path, text: str, keep_backup: bool = True) -> None:
    """Replace `path` with `text` so that a crash leaves either the old or the new file, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    if keep_backup and path.exists():
        _rotate_backup(path)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _move_aside(path: Path) -> Path:
    """Rename a damaged file to `<name>.corrupt-<timestamp>` (never overwriting an earlier one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    os.replace(path, aside)
    return aside


def _parse(path: Path) -> dict:
    """Read a TinyDB JSON file; raise ValueError if it is empty, truncated or not a dict of tables."""
    data = json.loads(path.read_text(encoding="utf-8"))  # "" (truncated to nothing) fails here too
    if not isinstance(data, dict) or not all(isinstance(t, dict) for t in data.values()):
        raise ValueError("not a TinyDB document (expected an object of tables)")
    return data


class AtomicJSONStorage(Storage):
    """TinyDB storage with crash-safe writes, a `.bak` of the previous version and recovery at start-up.

    The data is held in memory after the first read; every `write` replaces the file atomically and durably.
    """

    def __init__(self, path, **_):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.with_name(f".{self.path.name}.tmp").unlink(missing_ok=True)  # left by a crash mid-write
        self._cache = self._load_or_recover()

    def _load_or_recover(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            return _parse(self.path)
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            aside = _move_aside(self.path)
            bak = self.path.with_name(self.path.name + ".bak")
            data = None
            if bak.exists():
                try:
                    data = _parse(bak)
                except (ValueError, UnicodeDecodeError):
                    log.warning("%s is corrupt too; kept it as %s", bak, _move_aside(bak).name)
            log.warning("%s is corrupt (%s); kept it as %s and %s", self.path, exc, aside.name,
                        f"recovered from {bak.name}" if data is not None else "started empty")
            if data is not None:
                atomic_write_text(self.path, json.dumps(data, separators=(",", ":")), keep_backup=False)
            return data

    def read(self):
        return self._cache

    def write(self, data) -> None:
        try:
            atomic_write_text(self.path, json.dumps(data, separators=(",", ":")))
        except BaseException:
            # TinyDB edited the cached dict in place before calling us: go back to what the disk holds.
            self._cache = _parse(self.path) if self.path.exists() else None
            raise
        self._cache = data

    def close(self) -> None:
        pass


def open_db(path: Path) -> TinyDB:
    """Open a TinyDB file through `AtomicJSONStorage` (not thread-safe: guard it with one lock)."""
    return TinyDB(path, storage=AtomicJSONStorage)


class JsonStore:
    """A small TinyDB-backed store (settings, presets, schedules, training runs); every call holds one RLock.

    Conditions are either `key, value` (field equality) or one TinyDB query, e.g. `Query().step > 10`.
    Documents go in and come out as deep copies, so callers never share objects with the cache.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.RLock()
        self._db = open_db(self.path)

    @staticmethod
    def _cond(key, value):
        return key if value is _MISSING else Query()[key] == value

    @contextmanager
    def locked(self) -> Iterator[TinyDB]:
        """Hold the lock and use the TinyDB directly, for several operations that must not interleave."""
        with self.lock:
            yield self._db

    def insert(self, doc: dict) -> int:
        """Add one document; it is durable on disk when this returns. Returns TinyDB's doc id."""
        with self.lock:
            return self._db.insert(copy.deepcopy(doc))

    def all(self) -> list[dict]:
        """Every document, in insertion order."""
        with self.lock:
            return [copy.deepcopy(dict(d)) for d in self._db.all()]

    def search(self, key, value: Any = _MISSING) -> list[dict]:
        """Documents matching `key == value` (or a TinyDB query)."""
        with self.lock:
            return [copy.deepcopy(dict(d)) for d in self._db.search(self._cond(key, value))]

    def get(self, key, value: Any = _MISSING) -> dict | None:
        """The first matching document, or None."""
        found = self.search(key, value)
        return found[0] if found else None

    def update(self, key, value: Any, fields: dict | None = None) -> int:
        """Set `fields` on matching documents: `update(key, value, fields)` or `update(query, fields)`."""
        if fields is None:
            key, value, fields = key, _MISSING, value
        with self.lock:
            return len(self._db.update(copy.deepcopy(fields), self._cond(key, value)))

    def upsert(self, key, value: Any, doc: dict) -> None:
        """Set `doc`'s fields where `key == value`, or insert `doc` if nothing matches (one write)."""
        with self.lock:
            self._db.upsert(copy.deepcopy(doc), self._cond(key, value))

    def remove(self, key, value: Any = _MISSING) -> int:
        """Delete matching documents; returns how many."""
        with self.lock:
            return len(self._db.remove(self._cond(key, value)))

    def update_where(self, key: str, value, fields: dict) -> int:
        """Alias of `update(key, value, fields)`."""
        return self.update(key, value, fields)

    def remove_where(self, key: str, value) -> int:
        """Alias of `remove(key, value)`."""
        return self.remove(key, value)

    def close(self) -> None:
        with self.lock:
            self._db.close()
