"""One guard for every server-side path a person types: it must resolve (symlinks included) inside the
allowed roots (the data dir, the models dir, and folders the owner lists with --allow-dir)."""

from __future__ import annotations

import os
from pathlib import Path

from studio.errors import ValidationError


class PathGuard:
    """Resolves typed paths and refuses any that lead outside its roots."""

    def __init__(self, roots):
        self.roots = tuple(dict.fromkeys(Path(r).resolve() for r in roots))

    def describe_roots(self) -> str:
        return ", ".join(str(r) for r in self.roots)

    def resolve(self, text: str, field: str, kind: str = "folder") -> Path:
        """The real path of `text` (a folder when kind="folder", a file when kind="file"), or ValidationError
        naming `field` and the allowed roots. Relative paths are read against the data dir (the first root)."""
        raw = (text or "").strip()
        if not raw or "\x00" in raw:
            raise ValidationError(f"{field} is empty: type a {kind} inside {self.describe_roots()}", field)
        path = Path(os.path.expanduser(raw))
        if not path.is_absolute():
            path = self.roots[0] / path
        real = path.resolve()
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            raise ValidationError(f"{field} {raw!r} is outside the folders the studio may read: "
                                  f"{self.describe_roots()} (start it with --allow-dir FOLDER to add one)", field)
        exists = real.is_dir() if kind == "folder" else real.is_file()
        if not exists:
            raise ValidationError(f"{field} {raw!r} is not a {kind} inside {self.describe_roots()}", field)
        return real
