"""Import a folder of images made by other tools (or an older studio) into the gallery.

Every PNG, JPEG and WebP under the folder (subfolders included, symbolic links not followed) is read with
studio.image_metadata by a thread pool sized for the machine, without decoding pixels (only a PNG whose text
holds no generation parameters is decoded, to look for stealth infotext in its pixels), and recorded through
the gallery's `add_many` in chunks of CHUNK records as it goes (the next chunk is read while one is recorded):
a cancelled import keeps what it has recorded, and the thumbnails are made later by the gallery's background
thumbnailer.

Files: the gallery's records point inside the data dir, so each image is hard-linked to
`<data>/imported/<folder name>-<6 hex of the folder's path>/<its path inside the folder>` (instant, no extra
disk space, and deleting or moving the original leaves the gallery's link intact); where a hard link is
impossible (another filesystem, or a file the studio may not link) it is copied there instead.

Records: prompt, negative_prompt, model, created (the file's modification time), job_id (one per import),
source "import", and params: tool, sampler (the studio's name when one matches, else the tool's own),
tool_sampler, steps, cfg_scale, width, height, seed, infotext (the image's A1111 infotext, or one built from
the fields, so sending it to Generate works for every tool), extra (the tool's other fields, whole),
metadata_carrier and source_path. An image without generation parameters is recorded with an empty prompt.

Re-importing: an image's record id is derived from its file name, size and modification time, so importing
the same folder again (or after moving it) adds only the images the gallery has not seen, and a second copy
of a file within the folder (same name, size and time, e.g. a backup made with `cp -p`) is counted, not
recorded twice. A corrupt or
truncated image is skipped and listed in the report; the import goes on.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from studio.errors import CorruptImageError, ValidationError
from studio.image_metadata import IMAGE_SUFFIXES, ImageMetadata, read_image_metadata

IMPORT_DIR = "imported"
GALLERY_DIRS = (IMPORT_DIR, "outputs", "trash")  # folders of the data dir whose images the gallery already holds
CHUNK = 1000  # records per add_many (and per progress report)
RECORD_NAMESPACE = uuid.UUID("6f1d2c3e-9a4b-5c6d-8e7f-a1b2c3d4e5f6")
LINK_FALLBACK_ERRORS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
SLUG_RE = re.compile(r"[^\w.-]+")
FIELD = "import_folder"

Progress = Callable[[tuple[int, int]], None]  # called with (images handled, images found)


@dataclass
class ImportReport:
    """What one import did."""

    folder: str
    found: int = 0  # image files under the folder
    imported: int = 0  # new gallery records
    already_imported: int = 0  # skipped: the gallery holds them from an earlier import
    copies: int = 0  # skipped: the same file (name, size, modification time) was found earlier in the folder
    without_parameters: int = 0  # imported, but no generation parameters were found in them
    linked: int = 0
    copied: int = 0
    tools: Counter = field(default_factory=Counter)  # tool name -> images read
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path inside the folder, why)
    cancelled: bool = False
    seconds: float = 0.0
    job_id: str = ""  # the job_id of every record this import added

    def summary(self, listed: int = 20) -> str:
        """Markdown for the Gallery tab: the counts, then up to `listed` skipped files with the reason."""
        rate = self.imported / self.seconds if self.seconds else 0
        first = (f"{'Cancelled: ' if self.cancelled else ''}Imported **{self.imported:,}** of {self.found:,} "
                 f"images from `{self.folder}` in {self.seconds:.1f} s ({rate:,.0f}/s).")
        paragraphs = [first]
        if self.tools:
            tools = ", ".join(f"{tool} {n:,}" for tool, n in self.tools.most_common())
            paragraphs.append(f"Parameters read: {tools}; without parameters: {self.without_parameters:,}.")
        if self.already_imported or self.copies:
            paragraphs.append(f"Already in the gallery (skipped): {self.already_imported:,}; copies of another "
                              f"image in the folder (skipped): {self.copies:,}.")
        if self.copied:
            paragraphs.append(f"Copied (a hard link was impossible): {self.copied:,}.")
        if self.skipped:
            lines = [f"Skipped {len(self.skipped):,} file(s):"]
            lines += [f"- `{path}`: {why}" for path, why in self.skipped[:listed]]
            if len(self.skipped) > listed:
                lines.append(f"- … and {len(self.skipped) - listed:,} more")
            paragraphs.append("\n".join(lines))
        return "\n\n".join(paragraphs)


def default_workers() -> int:
    """Threads for reading metadata: reading is mostly waiting on the disk, so a few per core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(2, min(16, 2 * cores))


def import_folder(folder: str, gallery, data_dir: Path, paths_guard, progress: Progress | None = None,
                  cancel: threading.Event | None = None, workers: int | None = None) -> ImportReport:
    """Import every image under `folder` (a path the PathGuard `paths_guard` allows) into `gallery` (anything
    with get_many(ids) and add_many(records)), its files placed under `<data_dir>/imported/`. `progress` gets
    (handled, found) after each chunk; setting `cancel` stops after the chunks being read. ValidationError
    naming the field "import_folder" for a folder outside the allowed roots or inside the gallery's own."""
    start = time.perf_counter()
    source = paths_guard.resolve(folder, FIELD)
    data_dir = Path(data_dir).resolve()
    _refuse_gallery_folders(source, data_dir)
    report = ImportReport(str(source), job_id=uuid.uuid4().hex)
    files = _image_files(source, data_dir, report)
    report.found = len(files)
    cancel = cancel or threading.Event()
    if progress:
        progress((0, len(files)))
    place = _Placement(str(source), str(data_dir), f"{IMPORT_DIR}/{folder_key(source)}", report.job_id)

    def finish_chunk(end: int, todo: list, outcomes) -> None:
        _record_chunk(gallery, report, todo, outcomes)
        if progress:
            progress((end, len(files)))

    workers = workers or default_workers()
    with ThreadPoolExecutor(workers, thread_name_prefix="gallery-import") as pool:
        pending = None  # (end, todo, outcomes) of the chunk being read while the one before it is recorded
        for first in range(0, len(files), CHUNK):
            if cancel.is_set():
                report.cancelled = True
                break
            chunk = files[first:first + CHUNK]
            known = {found["id"] for found in gallery.get_many([item[1] for item in chunk])}
            todo = [item for item in chunk if item[1] not in known]
            report.already_imported += len(chunk) - len(todo)
            reading = (first + len(chunk), todo, place.read(pool, workers, todo))
            if pending:
                finish_chunk(*pending)
            pending = reading
        if pending:
            finish_chunk(*pending)
    report.seconds = time.perf_counter() - start
    return report


def _record_chunk(gallery, report: ImportReport, items: list, outcomes) -> None:
    """Add one chunk's records to the gallery (one add_many) and count them in the report."""
    records = []
    for (rel, _, _), outcome in zip(items, outcomes):
        if isinstance(outcome, str):
            report.skipped.append((rel, outcome))
            continue
        record, tool, how = outcome
        records.append(record)
        if tool:
            report.tools[tool] += 1
        report.without_parameters += not tool
        report.linked += how == "linked"
        report.copied += how == "copied"
    if records:
        gallery.add_many(records)
        report.imported += len(records)


def folder_key(source: Path) -> str:
    """The folder under `<data>/imported/` for a source folder: its name and 6 hex of its full path."""
    digest = hashlib.sha1(str(source).encode("utf-8", "surrogateescape")).hexdigest()[:6]
    return f"{SLUG_RE.sub('_', source.name).strip('_.') or 'folder'}-{digest}"


def record_id(name: str, size: int, mtime_ns: int) -> str:
    """The gallery id of an imported image: the same file (name, size, modification time) gives the same id."""
    return uuid.uuid5(RECORD_NAMESPACE, f"{name}\0{size}\0{mtime_ns}").hex


def _refuse_gallery_folders(source: Path, data_dir: Path) -> None:
    for name in GALLERY_DIRS:
        managed = data_dir / name
        if source == managed or source.is_relative_to(managed):
            raise ValidationError(f"{FIELD} {str(source)!r} is inside the gallery's own {name}/ folder: its images "
                                  "are already in the gallery", FIELD)
    if source == data_dir:
        raise ValidationError(f"{FIELD} is the data dir itself: pick a folder inside it or elsewhere", FIELD)


def _image_files(source: Path, data_dir: Path, report: ImportReport) -> list[tuple[str, str, float]]:
    """(path inside `source` in POSIX form, record id, modification time) of every image below it, sorted, the
    first of each id only (the others are counted as copies); the data dir and its gallery folders are not
    walked, and symbolic links are listed as skipped."""
    pruned = {str(data_dir), *(str(data_dir / name) for name in GALLERY_DIRS)}
    found, folders = [], [(str(source), "")]
    while folders:
        folder, prefix = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            report.skipped.append((prefix or ".", f"cannot be listed ({exc.strerror})"))
            continue
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                if entry.path not in pruned:
                    folders.append((entry.path, rel + "/"))
            elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                if entry.is_symlink():
                    report.skipped.append((rel, "a symbolic link (links are not followed)"))
                    continue
                if not rel.isascii() and not _is_utf8(rel):
                    shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    report.skipped.append((shown, "its name is not valid UTF-8 (rename it to import it)"))
                    continue
                info = entry.stat(follow_symlinks=False)
                found.append((rel, record_id(entry.name, info.st_size, info.st_mtime_ns), info.st_mtime))
    unique = {}
    for item in sorted(found):
        unique.setdefault(item[1], item)
    report.copies = len(found) - len(unique)
    return list(unique.values())


def _is_utf8(name: str) -> bool:
    """Whether a file name os.scandir gave is valid UTF-8 (undecodable bytes come as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class _Placement:
    """Reads one source folder's images and places them in the data dir (paths as strings: this runs 100,000
    times per import)."""

    source: str  # the source folder (real path)
    data_dir: str
    target: str  # its folder in the data dir, relative, POSIX: imported/<name>-<hex>
    job_id: str

    def read(self, pool: ThreadPoolExecutor, workers: int, items: list):
        """Start importing `items` on the pool, one task for each of its `workers` threads; returns an iterator
        of their outcomes (see import_one), in order."""
        for folder in {os.path.dirname(rel) for rel, _, _ in items}:
            os.makedirs(os.path.join(self.data_dir, self.target, folder), exist_ok=True)
        size = -(-len(items) // workers) or 1
        batches = [items[i:i + size] for i in range(0, len(items), size)]
        return chain.from_iterable(pool.map(self.import_all, batches))

    def import_all(self, items: list) -> list:
        return [self.import_one(item) for item in items]

    def import_one(self, item: tuple[str, str, float]):
        """(record, tool or "", "linked" / "copied") for one image, or the reason it was skipped."""
        rel, image_id, modified = item
        path = os.path.join(self.source, rel)
        try:
            meta = read_image_metadata(path)
        except CorruptImageError as exc:
            return str(exc).removeprefix(f"{path}: ")
        try:
            placed, how = _place(path, os.path.join(self.data_dir, self.target, rel.replace("\\", "_")), image_id)
        except OSError as exc:
            return f"could not be placed in the gallery ({exc.strerror or exc})"
        stored = placed[len(self.data_dir) + 1:].replace(os.sep, "/")  # relative to the data dir, POSIX
        record = _record(meta, image_id, stored, path, modified, self.job_id)
        return record, meta.tool if meta else "", how


def _place(path: str, dest: str, image_id: str) -> tuple[str, str]:
    """Hard-link (else copy) `path` to `dest`, or to `dest` with the id in its name when another file holds
    `dest`; an earlier import's link to the same file is reused. Returns (where, "linked" / "copied")."""
    stem, suffix = os.path.splitext(dest)
    for candidate in (dest, f"{stem}-{image_id[:8]}{suffix}"):
        try:
            os.link(path, candidate)
            return candidate, "linked"
        except FileExistsError:
            if os.path.samefile(path, candidate):
                return candidate, "linked"
        except OSError as exc:
            if exc.errno not in LINK_FALLBACK_ERRORS:
                raise
            break
    else:  # both names are taken by other files: the one with this image's id is replaced
        return _replace(path, candidate, os.link), "linked"
    free = dest if not os.path.lexists(dest) else f"{stem}-{image_id[:8]}{suffix}"
    return _replace(path, free, shutil.copy2), "copied"


def _replace(path: str, dest: str, put) -> str:
    """`put(path, temp)` then rename the temp file over `dest` (a crash leaves no half-written `dest`)."""
    temp = f"{os.path.dirname(dest)}/.{os.path.basename(dest)}.{uuid.uuid4().hex[:8]}.tmp"
    put(path, temp)
    os.replace(temp, dest)
    return dest


def _record(meta: ImageMetadata | None, image_id: str, rel: str, source: str, modified: float,
            job_id: str) -> dict:
    """The gallery record of one imported image (created = the file's modification time)."""
    params = {"source_path": source}
    if meta is not None:
        params.update(
            tool=meta.tool, sampler=meta.sampler or meta.tool_sampler, tool_sampler=meta.tool_sampler,
            steps=meta.steps, cfg_scale=meta.cfg_scale, width=meta.width, height=meta.height, seed=meta.seed,
            infotext=meta.infotext(), extra=meta.extra, metadata_carrier=meta.carrier)
    return {"id": image_id, "path": rel, "prompt": meta.prompt if meta else "",
            "negative_prompt": meta.negative_prompt if meta else "", "params": params,
            "model": meta.model if meta else "", "created": modified, "job_id": job_id, "source": "import"}
