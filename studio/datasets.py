"""Training datasets made from studio images: copies with their prompts as `.txt` captions, in a new folder under
`<data>/datasets/` that the Train tab's folder input reads (Curate's accepted images, a Gallery selection)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path


def caption_from_prompt(prompt: str) -> str:
    """A dataset caption from a prompt: `<lora:...>` tags removed."""
    return re.sub(r"\s{2,}", " ", re.sub(r"<[^<>]*>", " ", prompt or "")).strip(" ,")


def write_caption_dataset(data_dir: Path, prefix: str, images: list[tuple[str, Path, str]]) -> tuple[Path, int]:
    """Copy each (name, image file, prompt) into `<data_dir>/datasets/<prefix>-<time>/` as `<name><ext>` with its
    caption in `<name>.txt`; missing files are skipped. Returns (folder, images copied)."""
    folder = Path(data_dir) / "datasets" / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, src, prompt in images:
        src = Path(src)
        if not src.is_file():
            continue
        shutil.copy2(src, folder / f"{name}{src.suffix.lower()}")
        caption = caption_from_prompt(prompt)
        if caption:
            (folder / f"{name}.txt").write_text(caption, encoding="utf-8")
        n += 1
    return folder, n
