"""Gallery records, sharded one TinyDB file per day, with an in-memory index for listing and prompt search.

One TinyDB file rewrites itself whole on every insert (89 ms per insert at 10k records), so a year of images
must not live in one file: each (local) day has its own small file `gallery/YYYY-MM-DD.json`, and only that
file is rewritten on insert. At open every shard is read once to build the index (id -> shard, newest-first
order, lower-cased prompts); only the most recently used shards stay in memory after that.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path, PurePosixPath, PureWindowsPath

from tinydb import TinyDB

from studio.stores.atomic_storage import open_db

log = logging.getLogger(__name__)
ID_RE = re.compile(r"[0-9a-f]{32}")
SHARD_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
REQUIRED = ("path", "prompt")
STR_FIELDS = ("path", "prompt", "negative_prompt", "model", "job_id")
OPEN_SHARDS = 16  # shards kept parsed in memory (least recently used are dropped)


class _Entry:
    """What the index keeps per record: where it lives and what list/search filter on."""

    __slots__ = ("shard", "doc_id", "created", "prompt", "model", "job_id")

    def __init__(self, shard: str, doc_id: int, doc: dict):
        self.shard, self.doc_id, self.created = shard, doc_id, float(doc["created"])
        self.prompt = doc["prompt"].lower()
        self.model, self.job_id = doc.get("model", ""), doc.get("job_id", "")


def check_id(record_id) -> str:
    """Return `record_id` if it is 32 lower-case hex characters (a uuid4().hex), else raise ValueError."""
    if not isinstance(record_id, str) or not ID_RE.fullmatch(record_id):
        raise ValueError(f"image id must be 32 hex characters; got {record_id!r}")
    return record_id


def check_path(path) -> str:
    """Return `path` if it is a relative POSIX path inside the data dir (no '..', no drive, no backslash)."""
    if (not isinstance(path, str) or not path or "\\" in path or "\0" in path or PureWindowsPath(path).drive
            or PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts):
        raise ValueError(f"image path must be relative to the data dir, in POSIX form; got {path!r}")
    return path


def _validate(fields: dict) -> dict:
    """Type-check the known fields present in `fields`; return a JSON round-tripped (deep) copy."""
    for key in STR_FIELDS:
        if key in fields and not isinstance(fields[key], str):
            raise ValueError(f"gallery field {key!r} must be a string")
    if "path" in fields:
        check_path(fields["path"])
    if "id" in fields:
        check_id(fields["id"])
    if "params" in fields and not isinstance(fields["params"], dict):
        raise ValueError("gallery field 'params' must be a dict")
    created = fields.get("created", 0.0)
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
        raise ValueError("gallery field 'created' must be a finite epoch time")
    try:
        return json.loads(json.dumps(fields, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gallery record is not plain JSON: {exc}") from None


class GalleryStore:
    """Thread-safe image records under `root/gallery/`: add, get, update, delete, list/search newest first.

    Every write is durable (fsynced, atomically replaced) when the call returns. Use one instance per root.
    """

    def __init__(self, root: Path):
        self.folder = Path(root) / "gallery"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._shards: OrderedDict[str, TinyDB] = OrderedDict()
        self._index: dict[str, _Entry] = {}
        self._order: list[tuple[float, str]] = []  # (created, id), ascending; read it reversed
        self._load_index()

    # ------------------------------------------------------------------ shards and index
    @staticmethod
    def shard_name(created: float) -> str:
        """The shard (local calendar day) a record created at `created` belongs to."""
        return time.strftime("%Y-%m-%d", time.localtime(created))

    def _shard(self, name: str) -> TinyDB:
        db = self._shards.get(name)
        if db is None:
            db = self._shards[name] = open_db(self.folder / f"{name}.json")
            while len(self._shards) > OPEN_SHARDS:
                self._shards.popitem(last=False)[1].close()
        self._shards.move_to_end(name)
        return db

    def _load_index(self) -> None:
        names = sorted(p.stem for p in self.folder.glob("*.json") if SHARD_RE.fullmatch(p.stem))
        for name in names:
            raw = (self._shard(name).storage.read() or {}).get("_default", {})
            for doc_id, doc in raw.items():
                try:
                    record_id = check_id(doc["id"])
                    if record_id in self._index:
                        raise ValueError("duplicate id")
                    self._index[record_id] = entry = _Entry(name, int(doc_id), doc)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    log.warning("skipping bad gallery record %s in %s.json: %s", doc_id, name, exc)
                    continue
                self._order.append((entry.created, record_id))
        self._order.sort()

    def _entry(self, record_id: str) -> _Entry:
        entry = self._index.get(check_id(record_id))
        if entry is None:
            raise KeyError(f"no image with id {record_id}")
        return entry

    def _load(self, entry: _Entry) -> dict:
        doc = self._shard(entry.shard).get(doc_id=entry.doc_id)
        return json.loads(json.dumps(doc))  # a deep copy: callers never touch the cache

    # ------------------------------------------------------------------ writes
    @staticmethod
    def _normalise(record: dict) -> dict:
        missing = [k for k in REQUIRED if k not in record]
        if missing:
            raise ValueError(f"gallery record lacks {', '.join(missing)}")
        record = {"negative_prompt": "", "params": {}, "model": "", "job_id": "", **record}
        if not record.get("id"):
            record["id"] = uuid.uuid4().hex
        record.setdefault("created", time.time())
        return _validate(record)

    def add(self, record: dict) -> str:
        """Validate and insert one record (an id is generated if absent); durable when this returns."""
        record = self._normalise(record)
        with self._lock:
            if record["id"] in self._index:
                raise ValueError(f"image id {record['id']} already exists")
            name = self.shard_name(record["created"])
            doc_id = self._shard(name).insert(record)
            self._index[record["id"]] = entry = _Entry(name, doc_id, record)
            bisect.insort(self._order, (entry.created, record["id"]))
            return record["id"]

    def add_many(self, records: list[dict]) -> list[str]:
        """Bulk insert (imports, benchmarks): one write per day shard. Returns the ids in input order."""
        normalised = [self._normalise(r) for r in records]
        ids = [r["id"] for r in normalised]
        with self._lock:
            if len(set(ids)) != len(ids) or any(i in self._index for i in ids):
                raise ValueError("duplicate image id in add_many")
            by_shard: dict[str, list[dict]] = {}
            for r in normalised:
                by_shard.setdefault(self.shard_name(r["created"]), []).append(r)
            for name, group in by_shard.items():
                for doc_id, r in zip(self._shard(name).insert_multiple(group), group):
                    self._index[r["id"]] = entry = _Entry(name, doc_id, r)
                    self._order.append((entry.created, r["id"]))
            self._order.sort()
        return ids

    def update(self, record_id: str, fields: dict) -> dict:
        """Set `fields` (verdicts, tags, favourite...) on a record; returns the updated record.

        `id` and `created` cannot change (they fix the shard); KeyError if there is no such record.
        """
        fields = _validate(dict(fields))
        with self._lock:
            entry = self._entry(record_id)
            db = self._shard(entry.shard)
            current = db.get(doc_id=entry.doc_id)
            for key in ("id", "created"):
                if key in fields and fields[key] != current.get(key):
                    raise ValueError(f"gallery field {key!r} cannot change")
            db.update(fields, doc_ids=[entry.doc_id])
            entry.prompt = fields.get("prompt", current["prompt"]).lower()
            entry.model, entry.job_id = fields.get("model", entry.model), fields.get("job_id", entry.job_id)
            return self._load(entry)

    def delete(self, record_id: str) -> dict:
        """Remove a record and return it (the caller moves its file to the trash). KeyError if absent."""
        with self._lock:
            entry = self._entry(record_id)
            record = self._load(entry)
            self._shard(entry.shard).remove(doc_ids=[entry.doc_id])
            del self._index[record_id]
            pos = bisect.bisect_left(self._order, (entry.created, record_id))
            if pos < len(self._order) and self._order[pos] == (entry.created, record_id):
                self._order.pop(pos)
            return record

    # ------------------------------------------------------------------ reads
    def get(self, record_id: str) -> dict | None:
        """The record with this id, or None. ValueError if the id is malformed."""
        check_id(record_id)
        with self._lock:
            entry = self._index.get(record_id)
            return self._load(entry) if entry else None

    def count(self) -> int:
        """How many records the gallery holds."""
        with self._lock:
            return len(self._index)

    def list(self, offset: int = 0, limit: int = 50, query: str | None = None,
             model: str | None = None) -> tuple[list[dict], int]:
        """Newest first; `query`: case-insensitive substring of the prompt. Returns (page, total matches)."""
        offset, limit = max(0, int(offset)), max(0, int(limit))
        needle = (query or "").strip().lower()
        with self._lock:
            if not needle and not model:
                n = len(self._order)
                ids = [i for _, i in reversed(self._order[max(0, n - offset - limit):max(0, n - offset)])]
                total = n
            else:
                ids, total = [], 0
                for _, record_id in reversed(self._order):
                    entry = self._index[record_id]
                    if (needle and needle not in entry.prompt) or (model and entry.model != model):
                        continue
                    if offset <= total < offset + limit:
                        ids.append(record_id)
                    total += 1
            return [self._load(self._index[i]) for i in ids], total

    def by_job(self, job_id: str) -> list[dict]:
        """Every record made by one job, newest first."""
        with self._lock:
            ids = [i for _, i in reversed(self._order) if self._index[i].job_id == job_id]
            return [self._load(self._index[i]) for i in ids]

    def close(self) -> None:
        """Drop the parsed shards (everything is already on disk)."""
        with self._lock:
            while self._shards:
                self._shards.popitem()[1].close()
