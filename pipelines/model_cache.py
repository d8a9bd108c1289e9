"""One LRU cache for every model the studio runs, with a memory budget, pinning and statistics.

Keys are ``(model_id, kind)``. An entry may be *derived* from a parent entry (img2img and inpaint pipelines
are built from the txt2img one with ``from_pipe`` and share its weights): a derived entry costs only the bytes
it does not share, pins its parent while in use, and goes when its parent is evicted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator

log = logging.getLogger(__name__)

CacheKey = tuple[str, str]


def tensor_storages(obj: Any) -> dict[int, int]:
    """data_ptr -> bytes for every tensor (parameters and buffers) reachable from a model or pipeline."""
    import torch

    found: dict[int, int] = {}

    def visit(value):
        if isinstance(value, torch.Tensor):
            found[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
        elif isinstance(value, torch.nn.Module):
            for t in list(value.parameters()) + list(value.buffers()):
                visit(t)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)

    components = getattr(obj, "components", None)
    visit(components if isinstance(components, dict) else obj)
    return found


@dataclass
class CacheEntry:
    key: CacheKey
    value: Any
    bytes: int
    parent: CacheKey | None
    load_seconds: float
    pins: int = 0
    hits: int = 0
    last_used: float = field(default_factory=time.time)


@dataclass
class CacheStats:
    hits: int
    misses: int
    loads: int
    evictions: int
    load_seconds: float
    used_bytes: int
    budget_bytes: int
    entries: list[dict]


class ModelCache:
    """Thread-safe LRU of loaded models. Use ``with cache.use(key, loader) as model:``."""

    def __init__(self, budget_bytes: int, on_evict: Callable[[], None] | None = None):
        self.budget_bytes = int(budget_bytes)
        self._on_evict = on_evict
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[CacheKey, threading.Lock] = {}
        self._hits = self._misses = self._loads = self._evictions = 0
        self._load_seconds = 0.0

    # ------------------------------------------------------------------ access
    @contextmanager
    def use(self, key: CacheKey, loader: Callable[[], Any], parent: CacheKey | None = None,
            derive: Callable[[Any], Any] | None = None) -> Iterator[Any]:
        """Yield the cached model for `key`, loading it (or deriving it from `parent`) on a miss; pinned inside."""
        entry = self._acquire(key, loader, parent, derive)
        try:
            yield entry.value
        finally:
            self._release(entry)

    def _acquire(self, key, loader, parent, derive) -> CacheEntry:
        with self._lock:
            entry = self._hit(key)
            if entry:
                return entry
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one loader per key; other keys stay available meanwhile
            with self._lock:
                entry = self._hit(key)
                if entry:
                    return entry
                self._misses += 1
            if parent is not None:
                with self.use(parent, loader) as base:
                    start = time.perf_counter()
                    value = derive(base)
                    return self._insert(key, value, parent, time.perf_counter() - start)
            start = time.perf_counter()
            value = loader()
            return self._insert(key, value, None, time.perf_counter() - start)

    def _hit(self, key) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._hits += 1
        entry.hits += 1
        self._pin(entry)
        return entry

    def _pin(self, entry: CacheEntry) -> None:
        entry.pins += 1
        entry.last_used = time.time()
        self._entries.move_to_end(entry.key)
        if entry.parent in self._entries:
            self._pin(self._entries[entry.parent])

    def _release(self, entry: CacheEntry) -> None:
        with self._lock:
            entry.pins -= 1
            if entry.parent in self._entries:
                self._release(self._entries[entry.parent])
            self._evict_to_budget()

    def _insert(self, key, value, parent, seconds) -> CacheEntry:
        with self._lock:
            storages = tensor_storages(value)
            if parent is not None and parent in self._entries:
                shared = tensor_storages(self._entries[parent].value)
                storages = {ptr: n for ptr, n in storages.items() if ptr not in shared}
            entry = CacheEntry(key, value, sum(storages.values()), parent, seconds)
            self._entries[key] = entry
            self._loads += 1
            self._load_seconds += seconds
            self._pin(entry)
            self._evict_to_budget()
            return entry

    # ------------------------------------------------------------------ eviction
    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.bytes for e in self._entries.values())

    def _evict_to_budget(self) -> None:
        while self.used_bytes() > self.budget_bytes:
            victim = next((e for e in self._entries.values() if e.pins == 0 and not self._children(e.key)), None)
            victim = victim or next((e for e in self._entries.values() if self._evictable(e)), None)
            if victim is None:
                log.warning("model cache over budget (%d > %d bytes) with every entry in use",
                            self.used_bytes(), self.budget_bytes)
                return
            self._drop(victim.key)

    def _children(self, key) -> list[CacheKey]:
        return [k for k, e in self._entries.items() if e.parent == key]

    def _evictable(self, entry: CacheEntry) -> bool:
        return entry.pins == 0 and all(self._evictable(self._entries[c]) for c in self._children(entry.key))

    def _drop(self, key) -> None:
        for child in self._children(key):
            self._drop(child)
        entry = self._entries.pop(key)
        entry.value = None
        self._evictions += 1
        if self._on_evict:
            self._on_evict()

    def unload(self, model_id: str) -> int:
        """Drop every unpinned entry of a model; returns how many went. Pinned ones raise RuntimeError."""
        with self._lock:
            keys = [k for k in self._entries if k[0] == model_id]
            if any(self._entries[k].pins for k in keys):
                raise RuntimeError(f"model {model_id} is in use; try again when the current job ends")
            for k in keys:
                if k in self._entries:
                    self._drop(k)
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            for model_id in {k[0] for k in self._entries}:
                self.unload(model_id)

    def set_budget(self, budget_bytes: int) -> None:
        with self._lock:
            self.budget_bytes = int(budget_bytes)
            self._evict_to_budget()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def stats(self) -> CacheStats:
        with self._lock:
            entries = [
                {"model": e.key[0], "kind": e.key[1], "bytes": e.bytes, "pinned": e.pins > 0, "hits": e.hits,
                 "load_seconds": round(e.load_seconds, 3), "shared_with": e.parent[1] if e.parent else ""}
                for e in reversed(self._entries.values())
            ]
            return CacheStats(self._hits, self._misses, self._loads, self._evictions, self._load_seconds,
                              self.used_bytes(), self.budget_bytes, entries)
