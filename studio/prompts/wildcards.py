"""Wildcard files (Dynamic Prompts style): `__color__` picks a line of `color.txt`, `__animals/cats__` a line of
`animals/cats.txt`, looked up in the user's folder first, then the shipped one. Files are read once and cached
until their modification time or size changes, so a 5,000-line file costs one read."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from studio.errors import ValidationError
from studio.settings import PROJECT_ROOT

SHIPPED_WILDCARDS = PROJECT_ROOT / "assets" / "wildcards"
USER_WILDCARDS = "wildcards"  # under the data dir
NAME_RE = re.compile(r"[\w\- ]+(?:/[\w\- ]+)*")


def wildcard_folders(data_dir: Path) -> list[Path]:
    """Where wildcards are looked up, first match wins: `<data>/wildcards`, then the shipped examples."""
    return [Path(data_dir) / USER_WILDCARDS, SHIPPED_WILDCARDS]


def parse_options(text: str) -> list[str]:
    """One option per line; blank lines and `#` comments are skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class Wildcards:
    """The wildcard files of a list of folders, with a cache keyed by (path, mtime, size)."""

    def __init__(self, folders: list[Path]):
        self.folders = [Path(f) for f in folders]
        self._cache: dict[Path, tuple[tuple[int, int], list[str]]] = {}
        self._lock = threading.Lock()

    def path_of(self, name: str) -> Path:
        """The file of wildcard `name`; a ValidationError names the wildcard and every place it looked."""
        name = name.strip()
        if not NAME_RE.fullmatch(name):
            raise ValidationError(f"wildcard __{name}__ is not a valid name (letters, digits, _ - and / between "
                                  "folders)", "wildcard")
        for folder in self.folders:
            path = folder / f"{name}.txt"
            if path.is_file():
                return path
        places = ", ".join(str(folder / f"{name}.txt") for folder in self.folders)
        raise ValidationError(f"wildcard __{name}__ not found: looked for {places}", "wildcard")

    def options(self, name: str) -> list[str]:
        """The options of wildcard `name` (read once per change of its file)."""
        path = self.path_of(name)
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        options = parse_options(path.read_text(encoding="utf-8", errors="replace"))
        if not options:
            raise ValidationError(f"wildcard __{name}__ ({path}) has no options: write one per line", "wildcard")
        with self._lock:
            self._cache[path] = (stamp, options)
        return options

    def save(self, name: str, text: str) -> Path:
        """Write the user's wildcard `name` (one option per line) into the first folder; returns its path."""
        from studio.stores.atomic_storage import atomic_write_text

        name = (name or "").strip().strip("_")
        if not NAME_RE.fullmatch(name):
            raise ValidationError(f"wildcard name must be letters, digits, _ - and / between folders; got {name!r}",
                                  "wildcard")
        options = parse_options(text or "")
        if not options:
            raise ValidationError(f"wildcard __{name}__ needs at least one option (one per line)", "options")
        path = self.folders[0] / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "\n".join(options) + "\n", keep_backup=False)
        return path

    def names(self) -> list[str]:
        """Every wildcard name the folders hold (nested ones as `folder/name`), sorted."""
        found = set()
        for folder in self.folders:
            if folder.is_dir():
                found |= {p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.txt")}
        return sorted(found)
