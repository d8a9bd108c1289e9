"""Measure the gallery store at scale (used by `python -m studio.bench`)."""

from __future__ import annotations

import random
import statistics
import time
import uuid
from pathlib import Path

from studio.stores.gallery_store import GalleryStore

WORDS = "red green blue circle square triangle star small large left right top bottom on a the background".split()


def fake_record(created: float, rng: random.Random) -> dict:
    prompt = " ".join(rng.choice(WORDS) for _ in range(12))
    return {"id": uuid.uuid4().hex, "path": f"outputs/x/{uuid.uuid4().hex[:8]}.png", "prompt": prompt,
            "negative_prompt": "blurry", "model": "builtin:shapes", "created": created, "job_id": uuid.uuid4().hex,
            "params": {"steps": 20, "sampler": "DPM++ 2M", "cfg_scale": 7, "seed": rng.randrange(2**32),
                       "width": 128, "height": 128, "infotext": prompt + "\nSteps: 20, Sampler: DPM++ 2M"}}


def bench_gallery(root: Path, n: int = 100_000, days: int = 365) -> dict:
    """Fill a store with n records over `days` days, then time inserts, search and re-opening."""
    rng = random.Random(0)
    store = GalleryStore(root)
    now = time.time()
    start = now - days * 86400
    records = [fake_record(start + i * (days * 86400 / n), rng) for i in range(n)]
    store.add_many(records)
    inserts = []
    for _ in range(100):
        t0 = time.perf_counter()
        store.add(fake_record(time.time(), rng))
        inserts.append(time.perf_counter() - t0)
    searches = []
    for word in ("red circle", "triangle", "zzz-none", "blue"):
        t0 = time.perf_counter()
        store.list(limit=50, query=word)
        searches.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    reopened = GalleryStore(root)
    open_s = time.perf_counter() - t0
    assert reopened.count() == n + 100
    return {"records": reopened.count(), "insert ms (mean of 100, target <= 20)": statistics.mean(inserts) * 1000,
            "search ms (worst of 4, target <= 100)": max(searches) * 1000,
            "open s (target <= 1)": open_s}
