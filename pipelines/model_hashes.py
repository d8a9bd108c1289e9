"""Model hashes as A1111 computes them, computed once per file version.

A1111 writes "Model hash: <AutoV2>" into the infotext: the first 10 hex digits of the SHA-256 of the whole
weights file. Hashing a multi-GB file takes seconds, so, as A1111 does with its cache.json, the full digest is
kept per file path together with the file's size and modification time (ns) in one JSON file, written
atomically (temp file + os.replace), and only recomputed when the size or the mtime change.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

AUTOV2_LENGTH = 10
CACHE_VERSION = 1


def file_sha256(path: Path) -> str:
    """The full SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """SHA-256 of weights files, cached by (size, mtime_ns) in `cache_file` (None: in memory only);
    thread-safe."""

    def __init__(self, cache_file: Path | None):
        self.cache_file = Path(cache_file) if cache_file else None
        self._lock = threading.Lock()
        self._entries: dict | None = None
        self.computed = 0  # digests computed by this instance (not taken from the cache)

    def sha256(self, path: Path) -> str:
        """The file's full SHA-256, from the cache when the file is unchanged since it was hashed."""
        key = str(Path(path).resolve())
        stat = os.stat(key)
        stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        with self._lock:
            entry = self._load().get(key)
        if entry and all(entry.get(k) == v for k, v in stamp.items()) and entry.get("sha256"):
            return entry["sha256"]
        digest = file_sha256(Path(key))
        with self._lock:
            self.computed += 1
            self._load()[key] = {**stamp, "sha256": digest}
            self._save()
        return digest

    def autov2(self, path: Path) -> str:
        """A1111's short model hash ("AutoV2"): the first 10 hex digits of the file's SHA-256."""
        return self.sha256(path)[:AUTOV2_LENGTH]

    def _load(self) -> dict:
        if self._entries is None and self.cache_file is None:
            self._entries = {}
        if self._entries is None:
            try:
                data = json.loads(self.cache_file.read_text(encoding="utf-8"))
                files = data.get("files") if data.get("version") == CACHE_VERSION else None
                self._entries = files if isinstance(files, dict) else {}
            except (OSError, ValueError, AttributeError):
                self._entries = {}  # missing or corrupt: rebuilt as files are hashed
        return self._entries

    def _save(self) -> None:
        if self.cache_file is None:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"version": CACHE_VERSION, "files": self._entries}, indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=self.cache_file.name + ".", suffix=".tmp", dir=self.cache_file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.cache_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
