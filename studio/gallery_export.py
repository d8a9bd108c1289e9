"""Gallery batch exports: a zip of images (the PNG files as saved, so their A1111 metadata travels with them, and
a `metadata.jsonl` of their records) under `<data>/exports/`, and copies into a folder the PathGuard allows."""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path


def _unique(name: str, taken: set[str], folder: Path | None = None) -> str:
    """`name`, or `name` with -2, -3... before its suffix, not in `taken` (nor in `folder` when given)."""
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in taken or (folder is not None and (folder / candidate).exists()):
        n += 1
        candidate = f"{stem}-{n}{suffix}"
    taken.add(candidate)
    return candidate


def export_zip(items: list[tuple[dict, Path]], folder: Path) -> Path:
    """Write `folder/gallery-<time>.zip` with each (record, file) whose file exists and a metadata.jsonl;
    written to a temp name and renamed when complete. Returns the zip's path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / _unique(time.strftime("gallery-%Y%m%d-%H%M%S.zip"), set(), folder)
    temp = target.with_name(f".{target.name}.tmp")
    names: set[str] = set()
    lines = []
    with zipfile.ZipFile(temp, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for record, path in items:
            if not path.is_file():
                continue
            name = _unique(path.name, names)
            archive.write(path, name)
            lines.append(json.dumps({"file": name, **record}, ensure_ascii=False))
        archive.writestr("metadata.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    os.replace(temp, target)
    return target


def copy_files(paths: list[Path], folder: Path) -> list[Path]:
    """Copy the existing files into `folder` (never overwriting: a clash gets -2, -3...); returns the copies."""
    taken: set[str] = set()
    out = []
    for path in paths:
        if path.is_file():
            copy = folder / _unique(path.name, taken, folder)
            shutil.copy2(path, copy)
            out.append(copy)
    return out
