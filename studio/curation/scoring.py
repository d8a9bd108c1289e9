"""Score one image file: what the curation service's parallel workers run (plain arguments in, a JSON-ready dict
out, no torch). Every failure of one file is reported in its result, never raised."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from studio.curation.brisque_metric import brisque_score
from studio.curation.dedup import image_hashes
from studio.curation.metrics import MAX_PIXELS, ImageProblem, prepare, technical_metrics
from studio.curation.semantic import adherence


ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def init_worker() -> None:
    """In each scoring process: one thread for OpenCV too (the workers are the parallelism; nested thread pools
    only fight over the same cores). The BLAS variables are set in ONE_THREAD before the process starts."""
    import cv2

    cv2.setNumThreads(1)


def open_checked(path: Path) -> Image.Image:
    """Open and fully decode an image; refuse enormous ones before decoding (ImageProblem)."""
    img = Image.open(path)
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise ImageProblem(f"too large to score: {w}x{h} (at most {MAX_PIXELS // 1_000_000} megapixels)")
    img.load()
    return img


def score_file(path: str, prompt: str = "", model: str = "") -> dict:
    """{"metrics": {key: value}, "unavailable": {key: reason}, "hashes": [pHash, dHash] | None,
    "size": [w, h], "mode": str, "error": str | None, "seconds": float, "cpu_seconds": float} for one image."""
    start, cpu = time.perf_counter(), time.process_time()
    out: dict = {"metrics": {}, "unavailable": {}, "hashes": None, "size": None, "mode": None, "error": None}
    file = Path(path)
    try:
        if not file.is_file():
            raise FileNotFoundError(f"file missing: {file}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: the size is checked above
            img = open_checked(file)
        out["size"], out["mode"] = list(img.size), img.mode
        prep = prepare(img)
        out["metrics"].update(technical_metrics(prep))
        try:
            out["metrics"]["brisque"] = brisque_score(prep.rgb)
        except Exception as exc:  # noqa: BLE001 - a BRISQUE fit that fails is one unavailable metric
            out["unavailable"]["brisque"] = f"unavailable (BRISQUE failed: {type(exc).__name__}: {exc})"
        rgb8 = Image.fromarray((np.clip(prep.rgb, 0, 1) * 255).round().astype(np.uint8))
        value, reason = adherence(prompt, rgb8, model)
        if value is None:
            out["unavailable"]["adherence"] = f"unavailable ({reason})"
        else:
            out["metrics"]["adherence"] = value
        out["hashes"] = list(image_hashes(rgb8))
    except FileNotFoundError as exc:
        out["error"] = str(exc) if str(exc).startswith("file missing") else f"file missing: {file}"
    except ImageProblem as exc:
        out["error"] = str(exc)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # PIL: UnidentifiedImageError (not an image), "image file is truncated", broken chunks, bad modes
        out["error"] = f"unreadable image: {type(exc).__name__}: {exc}"
    except MemoryError:
        out["error"] = "unreadable image: out of memory while decoding"
    out["metrics"] = {k: float(v) for k, v in out["metrics"].items() if np.isfinite(v)}
    out["seconds"] = time.perf_counter() - start
    out["cpu_seconds"] = time.process_time() - cpu
    return out
