"""Curation records (metrics, combined score, automatic and manual verdicts, hashes) keyed by image id, with a
columnar in-memory index so the review grid filters and sorts by any metric in milliseconds, and the TinyDB
history of every verdict change.

Records live in 256 JSON shards (`db/curation/<first two hex digits of the id>.json`, written atomically by
AtomicJSONStorage with a `.bak`), so a verdict rewrites about 1/256 of the data. At open every shard is read once
into the index: numpy columns of every metric, the score, the verdict, whether it is manual, the time and the
perceptual hashes. A record is

    {"id", "path", "source" ("gallery" | "folder"), "prompt", "model", "metrics": {key: value},
     "unavailable": {key: reason}, "error": str | None, "score": float | None, "hashes": [pHash, dHash] | None,
     "auto": {"verdict", "reason"}, "manual": {"verdict", "who", "when"} | None, "duplicate_of": id | None,
     "near": {id: summed hash distance (int), or cosine (float) where only CLIP embeddings link them},
     "verdict": the manual verdict if any, else the automatic one, "scored_at": epoch seconds}

The index loads in a background thread, so the app starts at once; the first call that needs it waits. A
snapshot of the index (`db/curation/index.npz`: the columns, ids and near links, with each shard's stamp) makes
that load a file read plus the shards written since it was taken; it is rewritten after a load that had to read
SNAPSHOT_STALE_SHARDS or more shards (reading every shard: 2.3 s per 100,000 records here). The history (`db/curation_history.json`, TinyDB) gets one document per verdict
change: image id, verdict, reason, by ("auto" or who), at.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from studio.curation.policy import KEYS
from studio.stores.atomic_storage import AtomicJSONStorage, JsonStore
from studio.stores.gallery_record import ID_RE
from studio.stores.gallery_record import check_id as check_image_id

TABLE = "curation"
CODES = {None: 0, "accepted": 1, "featured": 2, "rejected": 3, "duplicate": 4, "error": 5}
NAMES = {v: k for k, v in CODES.items()}
OPEN_SHARDS = 16
SNAPSHOT = "index.npz"
SNAPSHOT_VERSION = 1
SNAPSHOT_STALE_SHARDS = 8  # a load that reads this many shards writes a new snapshot
COLUMNS = ("values", "score", "verdict", "manual", "when", "hashes", "hashed")
SORTS = ("newest", "score") + KEYS


class _Columns:
    """Growable numpy columns, one row per record."""

    def __init__(self, capacity: int = 1024):
        self.n = 0
        self.values = np.full((capacity, len(KEYS)), np.nan, np.float32)
        self.score = np.full(capacity, np.nan, np.float32)
        self.verdict = np.zeros(capacity, np.int8)
        self.manual = np.zeros(capacity, bool)
        self.when = np.zeros(capacity, np.float64)
        self.hashes = np.zeros((capacity, 2), np.uint64)
        self.hashed = np.zeros(capacity, bool)

    def _grow(self) -> None:
        for name in COLUMNS:
            old = getattr(self, name)
            fill = np.nan if old.dtype.kind == "f" and name != "when" else 0
            new = np.full((old.shape[0] * 2, *old.shape[1:]), fill, old.dtype)
            new[:self.n] = old[:self.n]
            setattr(self, name, new)

    def add(self) -> int:
        if self.n == len(self.score):
            self._grow()
        self.n += 1
        return self.n - 1

    def set(self, row: int, record: dict) -> None:
        metrics = record.get("metrics") or {}
        self.values[row] = [metrics.get(k, np.nan) for k in KEYS]
        score = record.get("score")
        self.score[row] = np.nan if score is None else score
        self.verdict[row] = CODES.get(record.get("verdict"), 0)
        self.manual[row] = bool(record.get("manual"))
        self.when[row] = float(record.get("scored_at") or 0)
        hashes = record.get("hashes")
        self.hashed[row] = bool(hashes)
        self.hashes[row] = (int(hashes[0], 16), int(hashes[1], 16)) if hashes else (0, 0)


def _stamp(path: Path) -> list:
    """What changes whenever a shard is rewritten (atomic replace: a new inode, size and time)."""
    st = path.stat()
    return [st.st_mtime_ns, st.st_size, st.st_ino]


class CurationStore:
    """Thread-safe curation records under `root/curation/` and the verdict history `root/curation_history.json`.
    Every write is durable (fsynced, atomically replaced) when the call returns. One instance per root."""

    def __init__(self, root: Path):
        self.folder = Path(root) / "curation"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.history_store = JsonStore(Path(root) / "curation_history.json")
        self._lock = threading.RLock()
        self._shards: OrderedDict[str, tuple[AtomicJSONStorage, dict]] = OrderedDict()
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._near: dict[str, dict[str, int]] = {}  # near-duplicates (id -> distance) of the images that have any
        self._cols = _Columns()
        self._ready = threading.Event()  # the index loads in the background: the app starts without waiting
        self._load_error: BaseException | None = None
        threading.Thread(target=self._load_in_background, name="curation-index", daemon=True).start()

    def _load_in_background(self) -> None:
        try:
            with self._lock:
                self._load_index()
        except BaseException as exc:  # re-raised by the first call that needs the index
            self._load_error = exc
        finally:
            self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the index is loaded (every read and write does); re-raise a failed load."""
        done = self._ready.wait(timeout)
        if self._load_error is not None:
            raise self._load_error
        return done

    # ------------------------------------------------------------------ shards
    def _shard(self, name: str) -> dict:
        entry = self._shards.get(name)
        if entry is None:
            storage = AtomicJSONStorage(self.folder / f"{name}.json")
            data = storage.read() or {}
            data.setdefault(TABLE, {})
            entry = self._shards[name] = (storage, data)
            while len(self._shards) > OPEN_SHARDS:
                self._shards.popitem(last=False)
        self._shards.move_to_end(name)
        return entry[1]

    def _load_index(self) -> None:
        """The snapshot (when it matches the shards on disk), then every shard written since it was taken."""
        stamps = {path.stem: _stamp(path) for path in sorted(self.folder.glob("[0-9a-f][0-9a-f].json"))}
        taken = self._read_snapshot(stamps)
        stale = [name for name, stamp in stamps.items() if taken.get(name) != stamp]
        for name in stale:
            for image_id, record in self._shard(name)[TABLE].items():
                if ID_RE.fullmatch(image_id) and isinstance(record, dict):
                    self._index(image_id, record)
        if len(stale) >= min(SNAPSHOT_STALE_SHARDS, len(stamps)) and stale:
            self._write_snapshot(stamps)

    def _read_snapshot(self, stamps: dict[str, list]) -> dict[str, list]:
        """Load the index from the snapshot; returns the shard stamps it was taken at ({} when there is none, it
        is unreadable, or a shard it covers is gone: then every shard is read)."""
        path = self.folder / SNAPSHOT
        try:
            with np.load(path, allow_pickle=False) as snap:
                meta = json.loads(str(snap["meta"]))
                if meta.get("version") != SNAPSHOT_VERSION or meta.get("keys") != list(KEYS):
                    return {}
                if any(name not in stamps for name in meta["stamps"]):
                    return {}
                n = len(snap["ids"])
                cols = _Columns(max(1024, n))
                for name in COLUMNS:
                    getattr(cols, name)[:n] = snap[name]
                hexed = snap["ids"].tobytes().hex()
                ids = [hexed[i:i + 32] for i in range(0, len(hexed), 32)]
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
            return {}
        cols.n = n
        self._cols, self._ids = cols, ids
        self._row = {image_id: row for row, image_id in enumerate(ids)}
        self._near = meta["near"]
        return meta["stamps"]

    def _write_snapshot(self, stamps: dict[str, list]) -> None:
        """Write the index with the shard stamps it matches (temp file, fsync, rename)."""
        n, c = self._cols.n, self._cols
        meta = {"version": SNAPSHOT_VERSION, "keys": list(KEYS), "stamps": stamps, "near": self._near}
        ids = np.frombuffer(b"".join(bytes.fromhex(i) for i in self._ids), np.uint8).reshape(n, 16)
        tmp = self.folder / (SNAPSHOT + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), ids=ids,
                     **{name: getattr(c, name)[:n] for name in COLUMNS})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.folder / SNAPSHOT)

    def _index(self, image_id: str, record: dict) -> None:
        row = self._row.get(image_id)
        if row is None:
            row = self._row[image_id] = self._cols.add()
            self._ids.append(image_id)
        self._cols.set(row, record)
        if record.get("near"):
            self._near[image_id] = dict(record["near"])
        else:
            self._near.pop(image_id, None)

    # ------------------------------------------------------------------ writes
    def put_many(self, records: list[dict], history: list[dict] = ()) -> None:
        """Insert or replace whole records (one atomic write per shard touched), then append `history`."""
        self.wait_ready()
        by_shard: dict[str, list[dict]] = {}
        for record in records:
            check_image_id(record.get("id"))
            by_shard.setdefault(record["id"][:2], []).append(json.loads(json.dumps(record, allow_nan=False)))
        with self._lock:
            for name, group in by_shard.items():
                data = self._shard(name)
                for record in group:
                    data[TABLE][record["id"]] = record
                self._shards[name][0].write(data)
                for record in group:
                    self._index(record["id"], record)
            if history:
                with self.history_store.locked() as db:
                    db.insert_multiple([dict(h) for h in history])

    # ------------------------------------------------------------------ reads
    def get(self, image_id: str) -> dict | None:
        """The record of one image, or None."""
        self.wait_ready()
        check_image_id(image_id)
        with self._lock:
            if image_id not in self._row:
                return None
            return json.loads(json.dumps(self._shard(image_id[:2])[TABLE][image_id]))

    def get_many(self, ids) -> list[dict]:
        """The records of `ids` that exist, in that order (each shard read once, whatever the order)."""
        self.wait_ready()  # before the lock, which the loading thread holds
        ids = [check_image_id(i) for i in ids]
        with self._lock:
            by_shard: dict[str, list[str]] = {}
            for image_id in ids:
                if image_id in self._row:
                    by_shard.setdefault(image_id[:2], []).append(image_id)
            found = {}
            for name, group in by_shard.items():
                table = self._shard(name)[TABLE]
                found.update((i, json.loads(json.dumps(table[i]))) for i in group)
            return [found[i] for i in ids if i in found]

    def count(self) -> int:
        self.wait_ready()
        with self._lock:
            return len(self._ids)

    def has(self, image_id: str) -> bool:
        self.wait_ready()
        with self._lock:
            return image_id in self._row

    def scored_since(self, when: float) -> set[str]:
        """The ids of the images scored at or after `when` (epoch seconds)."""
        self.wait_ready()
        with self._lock:
            n = self._cols.n
            return {self._ids[int(r)] for r in np.flatnonzero(self._cols.when[:n] >= when)}

    def near(self) -> dict[str, dict[str, int]]:
        """Every image's near-duplicates (id -> summed hash distance), for those that have any."""
        self.wait_ready()
        with self._lock:
            return {k: dict(v) for k, v in self._near.items()}

    def history(self, image_id: str) -> list[dict]:
        """Every verdict change of one image, oldest first."""
        return sorted(self.history_store.search("image_id", image_id), key=lambda h: h.get("at", 0))

    def columns(self) -> dict:
        """Copies of the index columns: ids, values (n, len(KEYS)), score, verdict (names), manual, hashes,
        hashed."""
        self.wait_ready()
        with self._lock:
            n = self._cols.n
            c = self._cols
            return {"ids": list(self._ids), "values": c.values[:n].astype(np.float64), "score": c.score[:n].copy(),
                    "verdict": [NAMES[int(v)] for v in c.verdict[:n]], "manual": c.manual[:n].copy(),
                    "hashes": c.hashes[:n].copy(), "hashed": c.hashed[:n].copy()}

    def query(self, verdict: str | None = None, sort: str = "newest", descending: bool = True, offset: int = 0,
              limit: int = 48) -> tuple[list[str], int]:
        """A page of image ids filtered by verdict ("manual" = every manual verdict) and sorted by "newest",
        "score" or any metric (unavailable values last). Returns (ids, total matches)."""
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}; got {sort!r}")
        self.wait_ready()
        offset, limit = max(0, int(offset)), max(0, int(limit))
        with self._lock:
            n = self._cols.n
            c = self._cols
            if verdict in (None, "", "all"):
                rows = np.arange(n)
            elif verdict == "manual":
                rows = np.flatnonzero(c.manual[:n])
            elif verdict in CODES:
                rows = np.flatnonzero(c.verdict[:n] == CODES[verdict])
            else:
                raise ValueError(f"verdict filter must be all, manual or one of {', '.join(filter(None, CODES))}")
            if sort == "newest":
                key = c.when[:n][rows]
            elif sort == "score":
                key = c.score[:n][rows].astype(np.float64)
            else:
                key = c.values[:n, KEYS.index(sort)][rows].astype(np.float64)
            key = -key if descending else key
            key = np.where(np.isnan(key), np.inf, key)  # unavailable last either way
            total, end = len(rows), min(len(rows), offset + limit)
            if offset >= total:
                return [], total
            if end < total:  # only the first `end` need sorting
                part = np.argpartition(key, end - 1)[:end]
                order = part[np.lexsort((rows[part], key[part]))]
            else:
                order = np.lexsort((rows, key))
            return [self._ids[int(r)] for r in rows[order[offset:end]]], total
