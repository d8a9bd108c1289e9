"""The studio job queue's records: one small TinyDB file (`<data>/db/queue.json`) of versioned JSON documents.

A job is `{"version": 1, "id", "kind", "title", "model", "priority", "owner", "state", "order", "moved", "total",
"done", "payload", "progress", "created", "started", "finished", "error", "passed_over"}`: plain JSON, never pickled
arguments, so a job queued by one release still runs after an upgrade. Documents written by an older release are
brought up to date on open by `MIGRATIONS` (version n -> a function returning the document at version n + 1); a
document from a newer release is left untouched and ignored. The queue's own state (paused, the start-up choice,
measured seconds per image per model) is one document with `"key": "queue"`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

from tinydb import Query

from studio.stores.atomic_storage import JsonStore

log = logging.getLogger(__name__)

VERSION = 1
FINISHED = ("done", "failed", "cancelled")
HISTORY = 50  # finished jobs kept (newest), for the queue view's recent list
PRUNE_SLACK = 20  # finished jobs beyond HISTORY before they are pruned (in one write)


def job_defaults() -> dict:
    """Every field of a version-1 job with its default."""
    return {"version": VERSION, "kind": "", "title": "", "model": "", "priority": "background", "owner": "",
            "state": "pending", "order": 0.0, "moved": False, "total": 1, "done": 0, "payload": {}, "progress": {},
            "created": 0.0, "started": None, "finished": None, "error": "", "passed_over": 0}


def _from_unversioned(doc: dict) -> dict:
    """Version 0 (documents without a `version` field): fill in the fields that came later."""
    return {**job_defaults(), **doc, "version": 1}


MIGRATIONS: Mapping[int, Callable[[dict], dict]] = MappingProxyType({0: _from_unversioned})


class QueueStore(JsonStore):
    """Jobs (versioned) and the queue's state document, every call under the store's lock."""

    def __init__(self, path: Path, version: int = VERSION,
                 migrations: Mapping[int, Callable[[dict], dict]] = MIGRATIONS):
        super().__init__(path)
        self.version, self.migrations = version, migrations
        self._migrate_all()

    # ------------------------------------------------------------------ versions
    def migrate(self, doc: dict) -> dict | None:
        """The document at this store's version, or None when it comes from a newer release."""
        version = int(doc.get("version", 0))
        while version < self.version:
            doc = self.migrations[version](dict(doc))
            version = int(doc["version"])
        return doc if version == self.version else None

    def _migrate_all(self) -> None:
        with self.locked() as db:
            for stored in db.search(lambda d: "id" in d and d.get("version", 0) < self.version):
                db.update(self.migrate(dict(stored)), doc_ids=[stored.doc_id])
                log.info("queue job %s migrated to version %d", stored["id"], self.version)

    # ------------------------------------------------------------------ jobs
    def jobs(self, states: tuple[str, ...] | None = None) -> list[dict]:
        """Jobs of this version (in `states` when given), in insertion order."""
        out = []
        for doc in self.all():
            if "id" not in doc or doc.get("version") != self.version:
                continue
            if states is None or doc["state"] in states:
                out.append(doc)
        return out

    def save_job(self, job: dict) -> None:
        self.upsert("id", job["id"], job)

    def set_fields(self, job_id: str, fields: dict) -> None:
        self.update("id", job_id, fields)

    def set_many(self, changes: dict[str, dict]) -> None:
        """Set fields on several jobs, `{job id: fields}`, in one write."""
        with self.locked() as db:
            db.update_multiple([(dict(fields), Query().id == job_id) for job_id, fields in changes.items()])

    def prune(self, keep: int = HISTORY, slack: int = PRUNE_SLACK) -> None:
        """Once more than `keep + slack` finished jobs are stored, drop all but the newest `keep` (one write)."""
        finished = sorted((j for j in self.jobs(FINISHED)), key=lambda j: j.get("finished") or 0)
        if len(finished) > keep + slack:
            self.remove(Query().id.one_of([j["id"] for j in finished[:len(finished) - keep]]))

    # ------------------------------------------------------------------ the queue's state
    def state(self) -> dict:
        doc = self.get("key", "queue") or {}
        return {"paused": bool(doc.get("paused", False)), "start_state": doc.get("start_state", "as_was"),
                "rates": dict(doc.get("rates") or {})}

    def set_state(self, **fields) -> None:
        self.upsert("key", "queue", {"key": "queue", **self.state(), **fields})
