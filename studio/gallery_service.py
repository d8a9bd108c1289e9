"""The gallery as the tabs see it: searches and pages of saved images, cached thumbnails, ratings and favourites,
albums, the trash (with reconciliation of interrupted moves at start), batch exports, Curate's verdicts and scores,
and statistics, over the SQLite GalleryStore.

    search(GalleryQuery) -> GalleryPage        ids_matching(GalleryQuery) -> ids (select all)
    facets() -> {field: values}                stats() -> dict
    thumbnail(record) -> Path                  start_thumbnailer() / stop_thumbnailer()
    rate(ids, stars) / set_favourite(ids, on)  set_curation(id, verdict, scores)
    trash(ids) / restore(ids) / empty_trash(older_than_days) / reconcile()      using(ids) (a job's images)
    albums() / create_album / rename_album / delete_album / add_to_album / remove_from_album
    export_zip(ids) -> Path                    copy_to_folder(ids, folder) -> how many
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import UnidentifiedImageError

from studio import gallery_export
from studio.curation.policy import VERDICTS
from studio.errors import ValidationError, check_range
from studio.gallery_stats import top_words
from studio.gallery_thumbnails import Thumbnails
from studio.gallery_trash import RETENTION_DAYS, Trash
from studio.stores.gallery_query import SCORE_NAME_RE, GalleryQuery, validate
from studio.stores.gallery_record import check_id

__all__ = ["GalleryPage", "GalleryQuery", "GalleryService"]
log = logging.getLogger(__name__)
COUNT_CAP = 10_000        # totals stop counting here ("10,000+"): counting every match of a common word is slow
SELECT_MAX = 100_000      # ids_matching (select all) returns at most this many
BATCH_MAX = 100_000       # ids per batch action
ALBUM_NAME_MAX = 100
WORD_SAMPLE = 20_000      # newest prompts read for the top words
ALBUM_NAME_RE = re.compile(r"[^\x00-\x1f\x7f]+")


@dataclass
class GalleryPage:
    items: list[tuple[dict, str]]  # (record, absolute path of its image)
    total: int                     # matches, or COUNT_CAP when capped
    page: int
    pages: int
    capped: bool = False           # total is a lower bound: show "10,000+"

    @property
    def total_text(self) -> str:
        return f"{self.total:,}+" if self.capped else f"{self.total:,}"


class GalleryService:
    """Lists, searches, organises and exports gallery records; the store keeps them, the data dir holds their
    files. `paths` (a PathGuard) checks the folders copy_to_folder writes to. Interrupted trash moves are
    reconciled and trash older than 30 days is purged when the service starts."""

    def __init__(self, store, data_dir: Path, paths=None):
        self.store = store
        self.data_dir = Path(data_dir)
        self.paths = paths
        self.thumbnails = Thumbnails(store, self.data_dir, self.path_of)
        self.bin = Trash(store, self.data_dir)
        self._in_use: Counter[str] = Counter()
        self._in_use_lock = threading.Lock()
        self.reconcile()
        self.bin.purge_older_than(RETENTION_DAYS)

    # ------------------------------------------------------------------ records
    def add(self, record: dict) -> str:
        return self.store.add(record)

    def add_many(self, records: list[dict]) -> list[str]:
        """Bulk insert (imports); the background thumbnailer is told new images arrived."""
        ids = self.store.add_many(records)
        self.thumbnails.wake()
        return ids

    def get(self, record_id: str) -> dict | None:
        return self.store.get(record_id)

    def get_many(self, ids: list[str]) -> list[dict]:
        return self.store.get_many(ids)

    def list(self, offset: int = 0, limit: int = 50, query: str | None = None, model: str | None = None):
        """(records, total) newest first, filtered by a prompt search and a model."""
        return self.store.list(offset=offset, limit=limit, query=query, model=model)

    def path_of(self, record: dict) -> Path:
        """The image file of a record (under the trash while it is trashed)."""
        rel = self.bin.trash_path(record["path"]) if record.get("trashed") else record["path"]
        return self.data_dir / rel

    def infotext(self, record_id: str) -> str:
        """The A1111 infotext saved with an image ("" for an unknown id)."""
        record = self.store.get(record_id)
        return (record or {}).get("params", {}).get("infotext", "")

    # ------------------------------------------------------------------ search
    def page(self, query: str | None, page: int, size: int) -> GalleryPage:
        """Page `page` (from 1) of the images whose prompt matches `query`, newest first (existing files only)."""
        found = self.search(GalleryQuery(text=(query or "").strip(), page=max(1, int(page or 1)), page_size=size))
        found.items = [(r, p) for r, p in found.items if Path(p).exists()]
        return found

    def search(self, q: GalleryQuery) -> GalleryPage:
        """One page of the images matching `q` (ValidationError names a bad field)."""
        q = self._checked(q)
        records, total, capped = self.store.search(q, (q.page - 1) * q.page_size, q.page_size, COUNT_CAP)
        return GalleryPage([(r, str(self.path_of(r))) for r in records], total, q.page,
                           max(1, -(-total // q.page_size)), capped)

    def ids_matching(self, q: GalleryQuery, limit: int = SELECT_MAX) -> list[str]:
        """The ids of every image matching `q` in its order, at most `limit` (select all)."""
        return self.store.ids(self._checked(q), check_range("limit", limit, 1, SELECT_MAX, int))

    def _checked(self, q: GalleryQuery) -> GalleryQuery:
        if not isinstance(q, GalleryQuery):
            raise ValidationError("query must be a GalleryQuery", "query")
        q = validate(q)
        if q.album and q.album not in self.store.albums():
            raise ValidationError(f"album: no album named {q.album!r}", "album")
        return q

    def facets(self) -> dict[str, list[str]]:
        """Values for the filter lists: models, loras, controlnets, samplers, sizes, albums, verdicts,
        score_names."""
        return self.store.facets()

    # ------------------------------------------------------------------ thumbnails
    def thumbnail(self, record: dict) -> Path:
        """The record's cached thumbnail (256 px WebP), made now if missing; the image's own path when its file
        is missing or unreadable (the grid then shows it as broken, nothing raises)."""
        try:
            return self.thumbnails.get(record)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            log.warning("no thumbnail for %s: %s", record.get("id"), exc)
            return self.path_of(record)

    def start_thumbnailer(self, idle_s: float = 30.0) -> None:
        """Make missing thumbnails in a background thread (newest first); `thumbnails.wake()` after an import."""
        self.thumbnails.start(idle_s)

    def stop_thumbnailer(self) -> None:
        self.thumbnails.stop()

    # ------------------------------------------------------------------ marks
    @staticmethod
    def _ids(ids) -> list[str]:
        if isinstance(ids, str) or not isinstance(ids, (list, tuple, set)):
            raise ValidationError("ids must be a list of image ids", "ids")
        if len(ids) > BATCH_MAX:
            raise ValidationError(f"ids: at most {BATCH_MAX:,} images at once; got {len(ids):,}", "ids")
        try:
            return list(dict.fromkeys(check_id(i) for i in ids))
        except ValueError as exc:
            raise ValidationError(f"ids: {exc}", "ids") from None

    def rate(self, ids, stars: int) -> int:
        """Give the images 0-5 stars; returns how many images were rated."""
        stars = check_range("stars", stars, 0, 5, int)
        return self.store.set_flags(self._ids(ids), rating=stars)

    def set_favourite(self, ids, favourite: bool) -> int:
        if not isinstance(favourite, bool):
            raise ValidationError(f"favourite must be true or false; got {favourite!r}", "favourite")
        return self.store.set_flags(self._ids(ids), favourite=int(favourite))

    def set_curation(self, record_id: str, verdict: str | None, scores: dict[str, float]) -> None:
        """Record Curate's verdict and scores of one image (an id outside the gallery is ignored)."""
        self.set_curations([(record_id, verdict, scores)])

    def set_curations(self, items: list[tuple[str, str | None, dict[str, float]]]) -> None:
        """set_curation for many images in one transaction; non-finite scores are left out."""
        checked = []
        for record_id, verdict, scores in items:
            verdict = verdict or ""
            if verdict and verdict not in VERDICTS:
                raise ValidationError(f"verdict must be one of {', '.join(VERDICTS)}; got {verdict!r}", "verdict")
            bad = [name for name in scores if not SCORE_NAME_RE.fullmatch(str(name))]
            if bad:
                raise ValidationError(f"scores: {bad[0]!r} is not a score name (letters, digits, _ . -)", "scores")
            clean = {n: float(v) for n, v in scores.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
            checked.append((self._ids([record_id])[0], verdict, clean))
        self.store.set_curation(checked)

    # ------------------------------------------------------------------ in use, trash
    @contextmanager
    def using(self, ids):
        """Mark images as used by a running job for the duration: they cannot be trashed meanwhile."""
        ids = self._ids(ids)
        with self._in_use_lock:
            self._in_use.update(ids)
        try:
            yield ids
        finally:
            with self._in_use_lock:
                self._in_use.subtract(ids)
                self._in_use = +self._in_use

    def _records(self, ids) -> list[dict]:
        return self.store.get_many(self._ids(ids))

    def trash(self, ids) -> int:
        """Move images to the trash (files under <data>/trash/, records marked); returns how many moved.
        ValidationError if one is in use by a running job (nothing is moved then)."""
        ids = self._ids(ids)
        with self._in_use_lock:
            busy = [i for i in ids if self._in_use.get(i)]
        if busy:
            raise ValidationError(f"ids: image {busy[0]} is in use by a running job; trash it when the job ends",
                                  "ids")
        return self.bin.trash(self.store.get_many(ids))

    def restore(self, ids) -> int:
        """Move trashed images back to where they were; returns how many."""
        return self.bin.restore(self._records(ids))

    def empty_trash(self, older_than_days: float | None = None) -> int:
        """Delete for good (files and records) what has been in the trash longer than `older_than_days`
        (None: everything in it); returns how many."""
        if older_than_days is not None:
            older_than_days = check_range("older_than_days", older_than_days, 0, 36500)
        return self.bin.purge_older_than(older_than_days)

    def reconcile(self) -> dict[str, int]:
        """Finish or roll back file moves a stopped process left half done (reads only the journal)."""
        return self.bin.reconcile()

    # ------------------------------------------------------------------ albums
    @staticmethod
    def _album_name(name, field: str = "name") -> str:
        name = name.strip() if isinstance(name, str) else name
        if not isinstance(name, str) or not 1 <= len(name) <= ALBUM_NAME_MAX or not ALBUM_NAME_RE.fullmatch(name):
            raise ValidationError(f"{field}: an album name is 1 to {ALBUM_NAME_MAX} printable characters; "
                                  f"got {name!r}", field)
        return name

    def _album_call(self, call, *args, field: str = "album"):
        try:
            return call(*args)
        except KeyError as exc:
            raise ValidationError(f"{field}: no album named {exc.args[0]!r}", field) from None
        except ValueError as exc:
            raise ValidationError(f"{field}: {exc}", field) from None

    def albums(self) -> list[str]:
        return self.store.albums()

    def create_album(self, name: str) -> str:
        name = self._album_name(name)
        self._album_call(self.store.create_album, name, field="name")
        return name

    def rename_album(self, old: str, new: str) -> str:
        new = self._album_name(new, "new")
        self._album_call(self.store.rename_album, self._album_name(old, "album"), new)
        return new

    def delete_album(self, name: str) -> None:
        """Remove an album; its images stay in the gallery."""
        self._album_call(self.store.delete_album, self._album_name(name, "album"))

    def add_to_album(self, ids, name: str) -> int:
        return self._album_call(self.store.add_to_album, self._ids(ids), self._album_name(name, "album"))

    def remove_from_album(self, ids, name: str) -> int:
        return self._album_call(self.store.remove_from_album, self._ids(ids), self._album_name(name, "album"))

    # ------------------------------------------------------------------ batch exports
    def export_zip(self, ids) -> Path:
        """A zip of the images (PNGs with their metadata, and metadata.jsonl) under <data>/exports/."""
        records = self._records(ids)
        if not records:
            raise ValidationError("ids: choose at least one image to export", "ids")
        return gallery_export.export_zip([(r, self.path_of(r)) for r in records], self.data_dir / "exports")

    def copy_to_folder(self, ids, folder: str) -> int:
        """Copy the images into `folder`, which must be inside the allowed roots (PathGuard); never overwrites
        (a clash gets -2, -3... before the suffix). Returns how many were copied."""
        if self.paths is None:
            raise ValidationError("folder: copying out is not available here", "folder")
        target = self.paths.resolve(folder, "folder")
        return len(gallery_export.copy_files([self.path_of(r) for r in self._records(ids)], target))

    # ------------------------------------------------------------------ statistics
    def stats(self, top: int = 10) -> dict:
        """Images per day [(day, n)], top models / LoRAs [(name, n)], top prompt words over the newest
        WORD_SAMPLE prompts [(word, n)], favourites and their rate, storage per folder [(folder, bytes)] and
        the trash's (images, bytes)."""
        store = self.store
        images = store.count()
        favourites = store.favourite_count()
        trash_images, trash_bytes = store.trash_usage()
        return {
            "images": images,
            "per_day": [(day, n) for day, n, _ in store.facet_counts("day", by_count=False)],
            "top_models": [(m, n) for m, n, _ in store.facet_counts("model", top)],
            "top_loras": [(m, n) for m, n, _ in store.facet_counts("lora", top)],
            "top_words": top_words(store.recent_prompts(WORD_SAMPLE), top),
            "favourites": favourites,
            "favourite_rate": favourites / images if images else 0.0,
            "storage": [(folder, size) for folder, _, size in store.facet_counts("folder", by_count=False)],
            "trash": (trash_images, trash_bytes),
        }
