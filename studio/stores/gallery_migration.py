"""Move the TinyDB day shards of earlier versions (`<db>/gallery/YYYY-MM-DD.json`) into the SQLite gallery once.

All records go in one transaction, oldest first; the folder is then renamed `gallery.migrated` (kept as a
backup). A stop between the commit and the rename is harmless: ids already present are skipped on the next try.
A shard that does not parse is tried from its `.bak` (the atomic storage's previous version) and else skipped
with a warning, like a record that fails validation.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from studio.stores.gallery_record import check_id, normalise

log = logging.getLogger(__name__)
SHARD_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
MIGRATED_SUFFIX = ".migrated"


def _shard_docs(path: Path) -> list[dict]:
    for candidate in (path, path.with_name(path.name + ".bak")):
        try:
            return list((json.loads(candidate.read_text(encoding="utf-8")).get("_default") or {}).values())
        except (OSError, ValueError, AttributeError):
            continue
    log.warning("gallery migration: %s could not be read; its records are skipped", path)
    return []


def read_shards(folder: Path) -> list[dict]:
    """Every valid record of the day shards in `folder`, oldest first (duplicates and bad records skipped)."""
    records, seen = [], set()
    for path in sorted(p for p in folder.glob("*.json") if SHARD_RE.fullmatch(p.stem)):
        for doc in _shard_docs(path):
            try:
                record = normalise(doc)
                if check_id(record["id"]) in seen:
                    raise ValueError("duplicate id")
            except (TypeError, ValueError, AttributeError) as exc:
                log.warning("gallery migration: skipping a record in %s: %s", path.name, exc)
                continue
            seen.add(record["id"])
            records.append(record)
    records.sort(key=lambda r: r["created"])
    return records


def migrate_tinydb_shards(store, folder: Path) -> int:
    """Copy the shards' records into `store` (a GalleryStore) and rename `folder` aside; returns how many records
    were added (0 when there is nothing to migrate)."""
    if not folder.is_dir() or not any(SHARD_RE.fullmatch(p.stem) for p in folder.glob("*.json")):
        return 0
    records = read_shards(folder)
    present = {r["id"] for r in store.get_many([r["id"] for r in records])}
    new = [r for r in records if r["id"] not in present]
    if new:
        store.add_many(new)
        store.optimize()
    target = folder.with_name(folder.name + MIGRATED_SUFFIX)
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}{MIGRATED_SUFFIX}-{n}")
    folder.rename(target)
    log.info("gallery: %d records moved from TinyDB shards into %s; the shards are kept in %s", len(new),
             store.path, target)
    return len(new)
