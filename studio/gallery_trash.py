"""The gallery's trash: files move under `<data>/trash/<their path>` and records are marked, through an intent
journal in the database so a file op and a record op never end apart.

Each batch: (1) journal the intended moves (one transaction), (2) move the files, (3) apply the ops to the records
and drop the journal entries (one transaction). `reconcile()` at start finishes or rolls back whatever a killed
process left between (1) and (3), looking only at the journal (cheap at any gallery size).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)
RETENTION_DAYS = 30
DAY_S = 86400


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:  # another file system: copy then delete (reconcile handles a stop in between)
        shutil.copy2(src, dst)
        src.unlink()


class Trash:
    """Trash, restore and purge gallery images of a GalleryStore whose paths are relative to `data_dir`."""

    def __init__(self, store, data_dir: Path):
        self.store = store
        self.data_dir = Path(data_dir)
        self.folder = self.data_dir / "trash"

    def trash_path(self, rel: str) -> str:
        """Where an image at `rel` (relative to the data dir) lies while in the trash (also relative)."""
        return f"trash/{rel}"

    def _run(self, op: str, moves: list[tuple[str, str, str]]) -> int:
        journal = self.store.begin_moves(op, moves)
        moved, skipped = [], []
        for entry, (_, src, dst) in zip(journal, moves):
            source = self.data_dir / src
            try:
                if op == "purge":
                    source.unlink(missing_ok=True)
                elif source.exists():
                    _move(source, self.data_dir / dst)
                moved.append(entry)
            except OSError as exc:
                log.warning("gallery %s of %s failed: %s", op, src, exc)
                skipped.append(entry)
        self.finish(moved)
        if skipped:
            self.store.abandon_moves(skipped)
        return len(moved)

    def finish(self, journal_ids: list[int]) -> None:
        """Step (3): the records follow the moved files."""
        if journal_ids:
            self.store.finish_moves(journal_ids)

    def trash(self, records: list[dict]) -> int:
        """Move the images (records outside the trash) to the trash; returns how many moved."""
        return self._run("trash", [(r["id"], r["path"], self.trash_path(r["path"])) for r in records
                                   if not r["trashed"]])

    def restore(self, records: list[dict]) -> int:
        """Move trashed images back to where they were; returns how many."""
        return self._run("restore", [(r["id"], self.trash_path(r["path"]), r["path"]) for r in records
                                     if r["trashed"]])

    def purge(self, records: list[dict]) -> int:
        """Delete trashed images' files and records for good; returns how many."""
        return self._run("purge", [(r["id"], self.trash_path(r["path"]), "") for r in records if r["trashed"]])

    def purge_older_than(self, days: float | None) -> int:
        """Purge what has been in the trash longer than `days` (None: everything), in batches."""
        cutoff = time.time() - days * DAY_S if days is not None else float("inf")
        total = 0
        while batch := self.store.trashed_before(cutoff, 1000):
            total += self.purge(batch)
        return total

    def reconcile(self) -> dict[str, int]:
        """Finish or roll back the journalled moves of a process that stopped half way. A move whose file
        reached its destination is finished; one whose file is still at its source is rolled back; a copy that
        stopped half way (both exist) keeps the source; a file found at neither end flags its record missing.
        Returns counts {"finished", "rolled_back", "missing"}."""
        finished, rolled_back, lost = [], [], []
        for move in self.store.pending_moves():
            src, dst = self.data_dir / move["src"], self.data_dir / move["dst"] if move["dst"] else None
            if move["op"] == "purge":
                src.unlink(missing_ok=True)
                finished.append(move["id"])
            elif src.exists():
                if dst is not None and dst.exists():
                    dst.unlink()
                rolled_back.append(move["id"])
            else:  # the file reached its destination (or is gone either way: the record is flagged missing)
                finished.append(move["id"])
                if dst is not None and not dst.exists():
                    lost.append(move["image"])
        self.finish(finished)
        if lost:
            self.store.set_flags(lost, missing=1)
        if rolled_back:
            self.store.abandon_moves(rolled_back)
        if finished or rolled_back:
            log.warning("gallery: reconciled %d interrupted file moves (%d finished, %d rolled back)",
                        len(finished) + len(rolled_back), len(finished), len(rolled_back))
        return {"finished": len(finished), "rolled_back": len(rolled_back), "missing": len(lost)}
