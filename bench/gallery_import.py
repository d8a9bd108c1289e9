"""Measure importing a folder of other tools' PNGs into the gallery (studio.gallery_import).

    python -m bench.gallery_import [--images N]     (also a section of `python -m bench`)

Writes N small PNGs with A1111 infotext (32x32 noise, a `parameters` chunk with its own prompt and seed) in
folders of 1,000, kept between runs under the temp dir (writing 100,000 takes a while), then imports them into
a fresh SQLite gallery and imports them again (nothing new: every image is skipped as already imported).
Prints the import rate and the time for 100,000 (measured at N = 100,000, else extrapolated).
"""

from __future__ import annotations

import argparse
import random
import struct
import tempfile
import time
import zlib
from pathlib import Path

from bench.common import line
from bench.store import WORDS

FOLDER_SIZE = 1000
SIDE = 32
TARGET_N = 100_000
CACHE = Path(tempfile.gettempdir()) / "studio-bench-import-v1"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(infotext: str, pixels: bytes) -> bytes:
    """A SIDE x SIDE RGB PNG carrying `infotext` in a `parameters` tEXt chunk before its image data (as A1111
    writes it); `pixels` is the compressed image data."""
    header = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"tEXt", b"parameters\0" + infotext.encode("latin-1"))
            + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b""))


def image_folder(n: int, cache: Path = CACHE) -> Path:
    """A folder of n A1111 PNGs under `cache` (written once per n)."""
    folder = cache / str(n)
    if (folder / ".complete").exists():
        return folder
    rng = random.Random(n)
    rows = b"".join(b"\0" + rng.randbytes(SIDE * 3) for _ in range(SIDE))
    pixels = zlib.compress(rows, 6)
    for i in range(n):
        sub = folder / f"{i // FOLDER_SIZE:04d}"
        if i % FOLDER_SIZE == 0:
            sub.mkdir(parents=True, exist_ok=True)
        prompt = " ".join(rng.choice(WORDS) for _ in range(12))
        seed = rng.randrange(2**32)
        text = (f"{prompt}\nNegative prompt: blurry, lowres\nSteps: {rng.choice((20, 25, 30))}, Sampler: DPM++ 2M, "
                f"Schedule type: Karras, CFG scale: 7, Seed: {seed}, Size: 512x512, Model hash: 6ce0161689, "
                f"Model: v1-5-pruned-emaonly, Version: v1.10.1")
        (sub / f"{i:06d}-{seed}.png").write_bytes(png_bytes(text, pixels))
    (folder / ".complete").touch()
    return folder


def bench_gallery_import(tmp: Path, n: int = TARGET_N, cache: Path = CACHE) -> dict:
    """Import n A1111 PNGs (cached under `cache`) into a fresh gallery under `tmp`, then again."""
    from studio.gallery_import import default_workers, import_folder
    from studio.paths import PathGuard
    from studio.stores.gallery_store import GalleryStore

    print(f"Gallery import ({n:,} A1111 PNGs, {default_workers()} reader threads)", flush=True)
    t0 = time.perf_counter()
    folder = image_folder(n, cache)
    prepared_s = time.perf_counter() - t0
    data = Path(tmp) / "data"
    data.mkdir(parents=True)
    store = GalleryStore(data / "db", data)
    guard = PathGuard([data, folder])
    first = import_folder(str(folder), store, data, guard)
    again = import_folder(str(folder), store, data, guard)
    assert first.imported == n and not first.skipped, first.summary()
    assert again.imported == 0 and again.already_imported == n, again.summary()
    assert store.count() == n
    store.close()
    rate = n / first.seconds
    label = "measured" if n == TARGET_N else "extrapolated"
    numbers = {"images written / found in cache (s)": prepared_s, "import s": first.seconds,
               "import rate (images/s)": rate,
               f"import of 100,000 s ({label}; target <= 60)": TARGET_N / rate,
               "re-import s (all skipped as already imported)": again.seconds,
               "hard-linked / copied": f"{first.linked:,} / {first.copied:,}"}
    for key, value in numbers.items():
        line(key, f"{value:,.2f}" if isinstance(value, float) else str(value))
    return numbers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gallery_import", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=TARGET_N, help="how many PNGs to import (default 100,000)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bench_gallery_import(Path(tmp), args.images)


if __name__ == "__main__":
    main()
