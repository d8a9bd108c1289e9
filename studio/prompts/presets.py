"""Named presets that ship with the studio (a CSV under assets/) plus the user's own (a TinyDB store): style
presets and negative-prompt templates. A user preset with a shipped one's name overrides it; shipped presets
cannot be deleted."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from studio.errors import ValidationError

MAX_NAME = 100
MAX_TEXT = 4000


def read_csv_rows(path: Path, columns: tuple[str, ...]) -> list[dict]:
    """The rows of a shipped CSV as {column: text} (missing file: none)."""
    if not Path(path).is_file():
        return []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return [{c: (row.get(c) or "") for c in columns} for row in csv.DictReader(fh, skipinitialspace=True)
                if (row.get("name") or "").strip() and not row["name"].startswith("#")]


class PresetCollection:
    """Presets with the fields `columns` (the first is "name"); `kind` names them in messages and errors."""

    def __init__(self, shipped: Path, store, columns: tuple[str, ...], kind: str):
        self.columns, self.kind, self.store = columns, kind, store
        self.shipped = {row["name"]: {**row, "source": "shipped"} for row in read_csv_rows(shipped, columns)}

    def list(self) -> list[dict]:
        """Every preset, shipped first (in file order) then the user's (oldest first); `source` says which."""
        user = {doc["name"]: {**{c: doc.get(c, "") for c in self.columns}, "source": "user"}
                for doc in self.store.all()}
        merged = {name: user.pop(name, preset) for name, preset in self.shipped.items()}
        return list(merged.values()) + list(user.values())

    def names(self) -> list[str]:
        return [preset["name"] for preset in self.list()]

    def get(self, name: str) -> dict:
        for preset in self.list():
            if preset["name"] == name:
                return preset
        known = ", ".join(self.names()) or "none"
        raise ValidationError(f"{self.kind} {name!r} does not exist (known: {known})", self.kind)

    def save(self, values: dict) -> dict:
        """Create or replace the user's preset named values["name"]."""
        doc = {c: str(values.get(c) or "") for c in self.columns}
        doc["name"] = doc["name"].strip()
        if not doc["name"] or len(doc["name"]) > MAX_NAME:
            raise ValidationError(f"name must be 1 to {MAX_NAME} characters", "name")
        for column in self.columns[1:]:
            if len(doc[column]) > MAX_TEXT:
                raise ValidationError(f"{column} is {len(doc[column])} characters; at most {MAX_TEXT}", column)
        self.store.upsert("name", doc["name"], {**doc, "updated": time.time()})
        return {**doc, "source": "user"}

    def save_many(self, rows: list[dict]) -> int:
        """Save several presets (an import); returns how many."""
        for row in rows:
            self.save(row)
        return len(rows)

    def delete(self, name: str) -> None:
        if not self.store.remove("name", name):
            why = "ships with the studio and cannot be deleted" if name in self.shipped else "does not exist"
            raise ValidationError(f"{self.kind} {name!r} {why}", self.kind)
