"""Saved prompts: name, prompt, negative prompt, tags, favourite; every edit keeps the earlier version, and any
version can be compared with another (a line diff) or restored (which is itself a new version)."""

from __future__ import annotations

import difflib
import time
import uuid

from studio.errors import ValidationError, check_range

MAX_NAME = 100
MAX_TEXT = 4000
VERSIONED = ("name", "prompt", "negative_prompt", "tags")


def clean_tags(tags) -> list[str]:
    """Tags from a list or a comma-separated text: trimmed, lower case, unique, in order."""
    items = tags.split(",") if isinstance(tags, str) else list(tags or [])
    out = []
    for tag in (str(t).strip().lower() for t in items):
        if tag and tag not in out:
            out.append(tag)
    return out


def _matches(doc: dict, words: list[str], tag: str, favourites_only: bool) -> bool:
    if favourites_only and not doc.get("favourite"):
        return False
    if tag and tag not in doc["tags"]:
        return False
    text = " ".join([doc["name"], doc["prompt"], doc["negative_prompt"], *doc["tags"]]).lower()
    return all(word in text for word in words)


class SavedPrompts:
    """Saved prompts in one small TinyDB store (`<data>/db/prompts.json`)."""

    def __init__(self, store):
        self.store = store

    def save(self, name: str, prompt: str, negative_prompt: str = "", tags=(), prompt_id: str = "",
             favourite: bool | None = None) -> dict:
        """Create a prompt (no id) or edit one: the edited fields become a new version, the old ones stay."""
        doc = self._checked(name, prompt, negative_prompt, tags)
        now = time.time()
        with self.store.lock:
            if not prompt_id:
                doc.update(id=uuid.uuid4().hex[:12], favourite=bool(favourite), created=now, updated=now,
                           versions=[{**doc, "saved": now}])
                self.store.insert(doc)
                return doc
            old = self.get(prompt_id)
            if all(old[k] == doc[k] for k in VERSIONED) and favourite in (None, old["favourite"]):
                return old
            versions = old["versions"] + ([{**doc, "saved": now}] if any(old[k] != doc[k] for k in VERSIONED)
                                          else [])
            fields = {**doc, "updated": now, "versions": versions,
                      "favourite": old["favourite"] if favourite is None else bool(favourite)}
            self.store.update("id", prompt_id, fields)
            return {**old, **fields}

    def get(self, prompt_id: str) -> dict:
        doc = self.store.get("id", prompt_id) if prompt_id else None
        if doc is None:
            raise ValidationError(f"prompt_id: no saved prompt with id {prompt_id!r}", "prompt_id")
        return doc

    def list(self, query: str = "", tag: str = "", favourites_only: bool = False) -> list[dict]:
        """Saved prompts matching every word of `query` (name, prompt, negative, tags), a tag and the favourite
        filter; favourites first, then the most recently edited."""
        words = (query or "").lower().split()
        found = [d for d in self.store.all() if _matches(d, words, (tag or "").strip().lower(), favourites_only)]
        return sorted(found, key=lambda d: (not d.get("favourite"), -d["updated"]))

    def set_favourite(self, prompt_id: str, favourite: bool) -> dict:
        self.get(prompt_id)
        self.store.update("id", prompt_id, {"favourite": bool(favourite)})
        return self.get(prompt_id)

    def delete(self, prompt_id: str) -> None:
        if not self.store.remove("id", prompt_id):
            raise ValidationError(f"prompt_id: no saved prompt with id {prompt_id!r}", "prompt_id")

    def tags(self) -> list[str]:
        return sorted({tag for doc in self.store.all() for tag in doc["tags"]})

    # ------------------------------------------------------------------ versions
    def versions(self, prompt_id: str) -> list[dict]:
        """Every version, oldest first, numbered from 1 (the last one is the current text)."""
        return [{**v, "version": n} for n, v in enumerate(self.get(prompt_id)["versions"], 1)]

    def version(self, prompt_id: str, number: int) -> dict:
        versions = self.versions(prompt_id)
        number = check_range("version", number, 1, len(versions), int)
        return versions[number - 1]

    def compare(self, prompt_id: str, old: int, new: int) -> str:
        """A unified diff from version `old` to version `new` (name, prompt, negative prompt and tags)."""
        a, b = self.version(prompt_id, old), self.version(prompt_id, new)

        def lines(v: dict) -> list[str]:
            return [f"name: {v['name']}", *[f"prompt: {x}" for x in v["prompt"].splitlines() or [""]],
                    *[f"negative: {x}" for x in v["negative_prompt"].splitlines() or [""]],
                    f"tags: {', '.join(v['tags'])}"]

        diff = difflib.unified_diff(lines(a), lines(b), f"version {old}", f"version {new}", lineterm="")
        return "\n".join(diff) or "The two versions are the same."

    def restore(self, prompt_id: str, number: int) -> dict:
        """Make version `number` the current text again (as a new version; nothing is lost)."""
        v = self.version(prompt_id, number)
        return self.save(v["name"], v["prompt"], v["negative_prompt"], v["tags"], prompt_id)

    @staticmethod
    def _checked(name: str, prompt: str, negative_prompt: str, tags) -> dict:
        name, prompt, negative_prompt = (name or "").strip(), (prompt or "").strip(), (negative_prompt or "").strip()
        if not name or len(name) > MAX_NAME:
            raise ValidationError(f"name must be 1 to {MAX_NAME} characters", "name")
        if not prompt:
            raise ValidationError(f"prompt must not be empty (1 to {MAX_TEXT} characters)", "prompt")
        for field, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if len(text) > MAX_TEXT:
                raise ValidationError(f"{field} is {len(text)} characters; at most {MAX_TEXT}", field)
        return {"name": name, "prompt": prompt, "negative_prompt": negative_prompt, "tags": clean_tags(tags)}
