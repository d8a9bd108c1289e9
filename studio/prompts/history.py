"""Prompt history: every distinct (prompt, negative prompt) the studio generated with, newest first, with how
often and when it was last used; bounded to the newest MAX_ENTRIES so its one small store stays small."""

from __future__ import annotations

import hashlib
import time

from tinydb import Query

from studio.errors import ValidationError, check_range

MAX_ENTRIES = 5000
RECORDED_SOURCES = ("generate", "controlnet", "prompts")  # scheduled runs would drown a person's own prompts


def entry_key(prompt: str, negative_prompt: str) -> str:
    return hashlib.sha1(f"{prompt}\n\x00{negative_prompt}".encode("utf-8")).hexdigest()[:16]


class PromptHistory:
    """History entries in `<data>/db/prompt_history.json`: {key, prompt, negative_prompt, count, first, last}."""

    def __init__(self, store, max_entries: int = MAX_ENTRIES, clock=time.time):
        self.store, self.max_entries, self.clock = store, max_entries, clock

    def record(self, prompt: str, negative_prompt: str = "") -> None:
        """Note one use of a prompt (a repeat moves it to the top); the oldest entries beyond the bound go."""
        prompt, negative_prompt = (prompt or "").strip(), (negative_prompt or "").strip()
        if not prompt:
            return
        key, now = entry_key(prompt, negative_prompt), self.clock()
        with self.store.locked() as db:
            found = db.get(Query().key == key)
            if found:
                db.update({"count": found["count"] + 1, "last": now}, doc_ids=[found.doc_id])
            else:
                db.insert({"key": key, "prompt": prompt, "negative_prompt": negative_prompt, "count": 1,
                           "first": now, "last": now})
            if len(db) > self.max_entries:
                oldest = sorted(db.all(), key=lambda d: d["last"])[:len(db) - self.max_entries]
                db.remove(doc_ids=[d.doc_id for d in oldest])

    def record_images(self, records: list[dict]) -> None:
        """The GenerationService.after_save side: record each new image's prompt once (gallery records)."""
        seen = set()
        for record in records:
            if not record or record.get("source") not in RECORDED_SOURCES:
                continue
            pair = (record.get("prompt", ""), record.get("negative_prompt", ""))
            if pair not in seen:
                seen.add(pair)
                self.record(*pair)

    def search(self, query: str = "", limit: int = 100) -> list[dict]:
        """Entries whose prompt or negative prompt holds every word of `query`, newest first."""
        limit = check_range("limit", limit, 1, MAX_ENTRIES, int)
        words = (query or "").lower().split()
        found = [d for d in self.store.all()
                 if all(w in f"{d['prompt']} {d['negative_prompt']}".lower() for w in words)]
        return sorted(found, key=lambda d: -d["last"])[:limit]

    def get(self, key: str) -> dict:
        doc = self.store.get("key", key)
        if doc is None:
            raise ValidationError(f"history_key: no history entry {key!r}", "history_key")
        return doc

    def clear(self) -> int:
        with self.store.locked() as db:
            n = len(db)
            db.truncate()
            return n
