"""Measure the gallery store at scale (used by `python -m bench`)."""

from __future__ import annotations

import random
import statistics
import time
import uuid
from pathlib import Path

from studio.stores.gallery_store import GalleryStore

WORDS = ("red green blue circle square triangle star small large left right top bottom on a the background"
         .split())


def fake_record(created: float, rng: random.Random) -> dict:
    """A record shaped like the ones generation saves (prompt, params with infotext, ...)."""
    prompt = " ".join(rng.choice(WORDS) for _ in range(12))
    return {"id": uuid.uuid4().hex, "path": f"outputs/x/{uuid.uuid4().hex[:8]}.png", "prompt": prompt,
            "negative_prompt": "blurry", "model": "builtin:shapes", "created": created,
            "job_id": uuid.uuid4().hex,
            "params": {"steps": 20, "sampler": "DPM++ 2M", "cfg_scale": 7, "seed": rng.randrange(2**32),
                       "width": 128, "height": 128, "infotext": prompt + "\nSteps: 20, Sampler: DPM++ 2M"}}


def bench_gallery(tmp_dir: Path, n: int = 100_000, days: int = 365) -> dict:
    """Fill a store under `tmp_dir` with n records over `days` days (bulk, one write per shard), then measure:
    the mean of 100 single inserts at size n, the slowest of a few searches/listings, and re-opening.
    """
    rng = random.Random(0)
    store = GalleryStore(Path(tmp_dir))
    start = time.time() - days * 86400
    t0 = time.perf_counter()
    store.add_many([fake_record(start + i * (days * 86400 / n), rng) for i in range(n)])
    fill_s = time.perf_counter() - t0
    inserts = []
    for _ in range(100):
        record = fake_record(time.time(), rng)
        t0 = time.perf_counter()
        store.add(record)
        inserts.append(time.perf_counter() - t0)
    searches = []
    for kwargs in ({}, {"query": "red circle"}, {"query": "TRIANGLE", "offset": 500}, {"query": "zzz-none"},
                   {"query": "blue", "model": "builtin:shapes"}, {"offset": n // 2}):
        t0 = time.perf_counter()
        store.list(limit=50, **kwargs)
        searches.append(time.perf_counter() - t0)
    store.close()
    t0 = time.perf_counter()
    reopened = GalleryStore(Path(tmp_dir))
    open_s = time.perf_counter() - t0
    assert reopened.count() == n + 100
    return {"records": reopened.count(), "bulk fill s": fill_s,
            "insert ms (mean of last 100, target <= 20)": statistics.mean(inserts) * 1000,
            "search ms (slowest of 6 list/search pages, target <= 100)": max(searches) * 1000,
            "open s (target <= 1)": open_s}
