"""Contact sheets: a run's images as one labelled grid (seed, verdict, score), saved as a JPEG beside the run
report (`<data>/reports/<run id>.jpg`). Accepted images are framed in green, rejected ones dimmed."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

REPORTS_DIR = "reports"
THUMB = 160
MAX_COLUMNS = 6
LABEL_HEIGHT = 34
PAD = 6
BACKGROUND = (32, 32, 36)
TEXT = (235, 235, 235)
FRAMES = {"accepted": (70, 190, 90), "featured": (230, 190, 40)}
DIMMED = ("rejected", "duplicate")


@dataclass
class Tile:
    path: Path
    seed: int
    verdict: str | None = None
    score: float | None = None

    @property
    def label(self) -> str:
        parts = [f"seed {self.seed}"]
        if self.verdict:
            parts.append(self.verdict)
        if self.score is not None:
            parts.append(f"{self.score:.2f}")
        return " · ".join(parts)


def _font(size: int):
    try:
        return ImageFont.load_default(size)
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _thumb(tile: Tile, size: int) -> Image.Image:
    with Image.open(tile.path) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size))
    if tile.verdict in DIMMED:
        img = ImageEnhance.Brightness(img).enhance(0.45)
    return img


def contact_sheet(tiles: list[Tile], title: str = "", thumb: int = THUMB,
                  max_columns: int = MAX_COLUMNS) -> Image.Image:
    """One RGB image: a title line, then the tiles in rows of up to `max_columns`, each labelled below."""
    if not tiles:
        raise ValueError("a contact sheet needs at least one image")
    columns = len(tiles) if len(tiles) <= 3 else min(max_columns, math.ceil(math.sqrt(len(tiles))))
    rows = math.ceil(len(tiles) / columns)
    cell_w, cell_h = thumb + 2 * PAD, thumb + LABEL_HEIGHT + 2 * PAD
    header = 28 if title else 0
    sheet = Image.new("RGB", (max(columns * cell_w, 240), header + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, 6), title, fill=TEXT, font=_font(16))
    font = _font(12)
    for n, tile in enumerate(tiles):
        x, y = (n % columns) * cell_w + PAD, header + (n // columns) * cell_h + PAD
        img = _thumb(tile, thumb)
        ox, oy = x + (thumb - img.width) // 2, y + (thumb - img.height) // 2
        sheet.paste(img, (ox, oy))
        if tile.verdict in FRAMES:
            draw.rectangle((ox - 3, oy - 3, ox + img.width + 2, oy + img.height + 2), outline=FRAMES[tile.verdict],
                           width=3)
        draw.text((x, y + thumb + 6), tile.label, fill=TEXT, font=font)
    return sheet


def save_sheet(sheet: Image.Image, path: Path) -> Path:
    """Write the sheet as a JPEG (temp file + rename, so a reader never sees half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sheet.save(tmp, format="JPEG", quality=88)
    os.replace(tmp, path)
    return path


def run_tiles(run: dict, data_dir: Path, score_of=None) -> list[Tile]:
    """The tiles of a run report's images that are still on disk (a discarded one is looked up in the trash);
    `score_of(image_id)` gives the curation score when there is one."""
    tiles = []
    for item in run.get("done") or []:
        path = Path(data_dir) / item["path"]  # an absolute path stays itself
        if not path.exists():  # a discarded image lies in the gallery's trash, under its path in the data dir
            inside = path.relative_to(data_dir) if path.is_relative_to(data_dir) else Path(path.name)
            path = Path(data_dir) / "trash" / inside
            if not path.exists():
                continue
        image_id = item.get("image_id")
        tiles.append(Tile(path, item["seed"], (run.get("verdicts") or {}).get(image_id),
                          score_of(image_id) if score_of and image_id else None))
    return tiles


def sheet_path(data_dir: Path, run_id: str) -> Path:
    return Path(data_dir) / REPORTS_DIR / f"{run_id}.jpg"
