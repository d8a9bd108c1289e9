"""The gallery as the tabs see it: pages of saved images (only those whose file exists) and their parameters,
over the sharded GalleryStore."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class GalleryPage:
    items: list[tuple[dict, str]]  # (record, absolute path of its image)
    total: int
    page: int
    pages: int


class GalleryService:
    """Lists, searches and reads gallery records; the store keeps them, the data dir holds their files."""

    def __init__(self, store, data_dir: Path):
        self.store = store
        self.data_dir = Path(data_dir)

    def add(self, record: dict) -> str:
        return self.store.add(record)

    def get(self, record_id: str) -> dict | None:
        return self.store.get(record_id)

    def list(self, offset: int = 0, limit: int = 50, query: str | None = None, model: str | None = None):
        """(records, total) newest first, filtered by a prompt search and a model."""
        return self.store.list(offset=offset, limit=limit, query=query, model=model)

    def path_of(self, record: dict) -> Path:
        return self.data_dir / record["path"]

    def page(self, query: str | None, page: int, size: int) -> GalleryPage:
        """Page `page` (from 1) of the images whose prompt matches `query`, newest first."""
        page = max(1, int(page or 1))
        records, total = self.store.list(offset=(page - 1) * size, limit=size, query=(query or "").strip() or None)
        items = [(r, str(self.path_of(r))) for r in records if self.path_of(r).exists()]
        return GalleryPage(items, total, page, max(1, -(-total // size)))

    def infotext(self, record_id: str) -> str:
        """The A1111 infotext saved with an image ("" for an unknown id)."""
        record = self.store.get(record_id)
        return (record or {}).get("params", {}).get("infotext", "")
