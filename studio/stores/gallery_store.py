"""Gallery records, sharded one TinyDB file per day, with an in-memory index for listing and prompt search.

One TinyDB file rewrites itself whole on every insert (89 ms per insert at 10k records), so a year of images
must not live in one file: each day has its own small file, and only that file is rewritten on insert.
"""

from __future__ import annotations

import bisect
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from tinydb import TinyDB

from studio.stores.atomic_storage import open_db

ID_RE = re.compile(r"^[0-9a-f]{32}$")
REQUIRED = ("path", "prompt")
OPEN_SHARDS = 8


@dataclass
class IndexEntry:
    shard: str
    doc_id: int
    created: float
    prompt: str  # lower-cased, for search
    model: str


def check_id(record_id: str) -> str:
    if not isinstance(record_id, str) or not ID_RE.match(record_id):
        raise ValueError(f"image id must be 32 hex characters; got {record_id!r}")
    return record_id


class GalleryStore:
    """Thread-safe image records: add, get, update, delete, list/search newest first."""

    def __init__(self, root: Path):
        self.folder = Path(root) / "gallery"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._shards: OrderedDict[str, TinyDB] = OrderedDict()
        self._index: dict[str, IndexEntry] = {}
        self._order: list[tuple[float, str]] = []  # (created, id), ascending
        self._load_index()

    # ------------------------------------------------------------------ shards
    @staticmethod
    def shard_name(created: float) -> str:
        return time.strftime("%Y-%m-%d", time.localtime(created))

    def _shard(self, name: str) -> TinyDB:
        db = self._shards.get(name)
        if db is None:
            db = open_db(self.folder / f"{name}.json")
            self._shards[name] = db
            while len(self._shards) > OPEN_SHARDS:
                self._shards.popitem(last=False)[1].close()
        self._shards.move_to_end(name)
        return db

    def _load_index(self) -> None:
        for path in sorted(self.folder.glob("*.json")):
            name = path.stem
            db = self._shard(name)
            for doc in db.all():
                self._index_doc(name, doc.doc_id, doc)
        self._order.sort()

    def _index_doc(self, shard: str, doc_id: int, doc: dict) -> None:
        entry = IndexEntry(shard, doc_id, float(doc.get("created", 0)), str(doc.get("prompt", "")).lower(),
                           str(doc.get("model", "")))
        self._index[doc["id"]] = entry
        self._order.append((entry.created, doc["id"]))

    # ------------------------------------------------------------------ writes
    def _normalise(self, record: dict) -> dict:
        missing = [k for k in REQUIRED if k not in record]
        if missing:
            raise ValueError(f"gallery record lacks {', '.join(missing)}")
        record = dict(record)
        record["id"] = check_id(record.get("id") or uuid.uuid4().hex)
        record.setdefault("created", time.time())
        record.setdefault("negative_prompt", "")
        record.setdefault("params", {})
        record.setdefault("model", "")
        record.setdefault("job_id", "")
        return record

    def add(self, record: dict) -> str:
        """Insert one record; it is on disk (fsynced) when this returns."""
        record = self._normalise(record)
        with self._lock:
            if record["id"] in self._index:
                raise ValueError(f"image id {record['id']} already exists")
            name = self.shard_name(record["created"])
            doc_id = self._shard(name).insert(record)
            entry = IndexEntry(name, doc_id, record["created"], record["prompt"].lower(), record["model"])
            self._index[record["id"]] = entry
            bisect.insort(self._order, (entry.created, record["id"]))
            return record["id"]

    def add_many(self, records: list[dict]) -> list[str]:
        """Bulk insert: one write per day shard."""
        normalised = [self._normalise(r) for r in records]
        by_shard: dict[str, list[dict]] = {}
        for r in normalised:
            by_shard.setdefault(self.shard_name(r["created"]), []).append(r)
        with self._lock:
            for name, group in by_shard.items():
                ids = self._shard(name).insert_multiple(group)
                for doc_id, r in zip(ids, group):
                    self._index_doc(name, doc_id, r)
            self._order.sort()
        return [r["id"] for r in normalised]

    def update(self, record_id: str, fields: dict) -> dict:
        check_id(record_id)
        fields = {k: v for k, v in fields.items() if k not in ("id", "created")}
        with self._lock:
            entry = self._entry(record_id)
            db = self._shard(entry.shard)
            db.update(fields, doc_ids=[entry.doc_id])
            if "prompt" in fields:
                entry.prompt = str(fields["prompt"]).lower()
            if "model" in fields:
                entry.model = str(fields["model"])
            return dict(db.get(doc_id=entry.doc_id))

    def delete(self, record_id: str) -> dict:
        """Remove a record and return it (the caller moves its file to the trash)."""
        check_id(record_id)
        with self._lock:
            entry = self._entry(record_id)
            db = self._shard(entry.shard)
            record = dict(db.get(doc_id=entry.doc_id))
            db.remove(doc_ids=[entry.doc_id])
            del self._index[record_id]
            pos = bisect.bisect_left(self._order, (entry.created, record_id))
            if pos < len(self._order) and self._order[pos] == (entry.created, record_id):
                self._order.pop(pos)
            return record

    # ------------------------------------------------------------------ reads
    def _entry(self, record_id: str) -> IndexEntry:
        entry = self._index.get(record_id)
        if entry is None:
            raise KeyError(f"no image with id {record_id}")
        return entry

    def get(self, record_id: str) -> dict | None:
        check_id(record_id)
        with self._lock:
            entry = self._index.get(record_id)
            if entry is None:
                return None
            doc = self._shard(entry.shard).get(doc_id=entry.doc_id)
            return dict(doc) if doc else None

    def count(self) -> int:
        with self._lock:
            return len(self._index)

    def list(self, offset: int = 0, limit: int = 50, query: str | None = None,
             model: str | None = None) -> tuple[list[dict], int]:
        """Newest first; `query` is a case-insensitive substring of the prompt. Returns (page, total matches)."""
        needle = (query or "").lower().strip()
        with self._lock:
            matches = []
            for created, record_id in reversed(self._order):
                entry = self._index[record_id]
                if needle and needle not in entry.prompt:
                    continue
                if model and entry.model != model:
                    continue
                matches.append(record_id)
            page = [self.get(i) for i in matches[offset:offset + limit]]
            return [p for p in page if p], len(matches)

    def by_job(self, job_id: str) -> list[dict]:
        with self._lock:
            out = []
            for _, record_id in reversed(self._order):
                record = self.get(record_id)
                if record and record.get("job_id") == job_id:
                    out.append(record)
            return out
