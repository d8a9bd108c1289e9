"""Curation benchmark: scoring throughput, de-duplication speed, and quality on real photos against the plain
baselines.

Real photos: the sample photographs scikit-image ships (astronaut, camera, coffee, chelsea, rocket, coins, moon,
page, text, grass, gravel, brick, retina, hubble_deep_field, immunohistochemistry, cell) and matplotlib's
grace_hopper.jpg, each at most 512 px. `cell` is a fluorescence micrograph, blurry as captured (soft edges at
every scale: its own sharpness is below most blurred copies of the photos), so it is no "sharp original" for the
blur AUC: the target line leaves it out, the next line counts it anyway, and its own verdict is printed. scikit-learn's two sample photos are not used (scikit-learn is not installed).

    * blur: originals vs Gaussian blur sigma 2 and 5 and 15 px motion blur (directions 0, 30, ..., 150 degrees):
      ROC AUC of the studio's sharpness vs the Laplacian variance alone;
    * degraded vs original: the above plus JPEG quality 5 and Gaussian noise sigma 25: AUC of the combined score
      (default policy) vs BRISQUE alone; and the same on degradations the defaults were not tuned on (sigma 3,
      9 px motion, JPEG quality 15, noise sigma 12);
    * near-duplicates: JPEG q70, 95% centre crop, +8% brightness, 2-degree rotation of each photo: recall of the
      studio's rule (pHash + dHash <= radius) and of pHash <= 8 alone, with their precision over every pair of
      different photos' images.
"""

from __future__ import annotations

import io
import itertools
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from bench.common import line

PHOTO_NAMES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "grass",
               "gravel", "brick", "retina", "hubble_deep_field", "immunohistochemistry", "cell")
MICROGRAPH = "cell"


def photos(limit: int | None = None) -> dict[str, Image.Image]:
    import matplotlib
    import skimage.data

    out = {}
    for name in PHOTO_NAMES[:limit]:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        img.thumbnail((512, 512), Image.LANCZOS)
        out[name] = img
    if limit is None:
        img = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
        img.thumbnail((512, 512), Image.LANCZOS)
        out["grace_hopper"] = img
    return out


def motion_blur(img: Image.Image, length: int, angle: float) -> Image.Image:
    import cv2

    k = np.zeros((length, length), np.float32)
    k[length // 2, :] = 1
    rot = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), angle, 1)
    k = cv2.warpAffine(k, rot, (length, length))
    k /= k.sum()
    return Image.fromarray(cv2.filter2D(np.asarray(img), -1, k, borderType=cv2.BORDER_REFLECT))


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def noisy(img: Image.Image, sigma: float, seed: int) -> Image.Image:
    a = np.asarray(img, np.float32) + np.random.default_rng(seed).normal(0, sigma, np.asarray(img).shape)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def degradations(img: Image.Image, i: int, heldout: bool = False) -> dict[str, Image.Image]:
    angle = 30 * (i % 6)
    if heldout:
        return {"gauss3": img.filter(ImageFilter.GaussianBlur(3)), "motion9": motion_blur(img, 9, angle + 15),
                "jpeg15": jpeg(img, 15), "noise12": noisy(img, 12, 100 + i)}
    return {"gauss2": img.filter(ImageFilter.GaussianBlur(2)), "gauss5": img.filter(ImageFilter.GaussianBlur(5)),
            "motion15": motion_blur(img, 15, angle), "jpeg5": jpeg(img, 5), "noise25": noisy(img, 25, i)}


def near_copies(img: Image.Image) -> dict[str, Image.Image]:
    w, h = img.size
    cw, ch = round(w * 0.95), round(h * 0.95)
    x, y = (w - cw) // 2, (h - ch) // 2
    return {"jpeg70": jpeg(img, 70), "crop95": img.crop((x, y, x + cw, y + ch)),
            "bright8": ImageEnhance.Brightness(img).enhance(1.08), "rot2": img.rotate(2, Image.BICUBIC)}


def auc(positive, negative) -> float:
    """ROC AUC: the chance a positive outscores a negative (ties count half)."""
    p, n = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def _service(tmp: Path, workers: int):
    from studio.curation_service import CurationService
    from studio.paths import PathGuard
    from studio.stores.atomic_storage import JsonStore
    from studio.stores.curation_store import CurationStore

    return CurationService(CurationStore(tmp / "db"), None, tmp, PathGuard([tmp]), tmp / "models",
                           JsonStore(tmp / "db" / "settings.json"), workers=workers)


def _score_folder(tmp: Path, images: dict[str, Image.Image], workers: int = 2,
                  stamps: list | None = None) -> tuple[dict[str, dict], float]:
    """Score a folder of `images` through the curation service; `stamps` gets (seconds, images done)."""
    from studio.curation_service import CurationRequest

    folder = tmp / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        img.save(folder / f"{name}.png")
    service = _service(tmp, workers)
    t0 = time.perf_counter()
    progress = None if stamps is None else (lambda p: stamps.append((time.perf_counter() - t0, p.done)))
    report = service.run(CurationRequest(folder=str(folder)), progress=progress)
    seconds = time.perf_counter() - t0
    service.close()
    return {Path(r["path"]).stem: r for r in report.records}, seconds


def bench_throughput(tmp: Path, n: int) -> None:
    """images/s of the technical metrics + BRISQUE + hashes at 512x512, in 2 workers and in one process."""
    from studio.curation.scoring import score_file

    base = list(photos(6).values())
    images = {}
    for i in range(n):
        img = base[i % len(base)]
        side = min(img.size)
        off = (i * 7) % max(1, img.width - side + 1)
        images[f"img{i:04d}"] = img.crop((off, 0, off + side, side)).resize((512, 512), Image.BICUBIC)
    stamps: list = []
    records, seconds = _score_folder(tmp / "throughput", images, workers=2, stamps=stamps)
    assert len(records) == n
    first = next(t for t, done in stamps if done >= 1)
    steady = (n - 1) / max(1e-9, next(t for t, done in stamps if done == n) - first)
    one = sorted((tmp / "throughput" / "images").glob("*.png"))[: max(4, n // 4)]
    score_file(str(one[0]))  # warm the process (imports, BRISQUE model)
    t0 = time.perf_counter()
    cpu = [score_file(str(path))["cpu_seconds"] for path in one]
    single = len(one) / (time.perf_counter() - t0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    line("scoring 512x512, 2 workers (target >= 20/s)",
         f"{steady:.1f} images/s once started; {n / seconds:.1f}/s for {n} images incl. start-up ({first:.1f} s)")
    line("scoring 512x512, one process", f"{single:.1f} images/s; CPU time {1000 * np.mean(cpu):.0f} ms an image "
                                         f"(2 idle cores: {2 / np.mean(cpu):.0f}/s); load average {load:.1f}")


def bench_dedup(n: int) -> None:
    """Grouping n hashes (random, with a near copy planted for every tenth)."""
    from studio.curation.dedup import group_duplicates
    from studio.curation.policy import Policy

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(n, 2), dtype=np.uint64)
    copies = np.arange(0, n - 1, 10)
    flips = np.uint64(1) << rng.integers(0, 63, size=(len(copies), 2)).astype(np.uint64)
    hashes[copies + 1] = hashes[copies] ^ flips
    t0 = time.perf_counter()
    groups = group_duplicates(hashes, rng.random(n), Policy().dedup_radius)
    seconds = time.perf_counter() - t0
    line(f"de-dup of {n:,} hashes (target < 1 s)", f"{seconds:.2f} s, {len(groups)} groups")


def bench_review_index(tmp: Path, rows: int, stored: int) -> None:
    """The review grid's query (filter by verdict, sort by a metric, page 11) on an index of `rows` images
    filled directly (no files), and opening a store of `stored` real records."""
    import uuid

    from studio.curation.policy import KEYS
    from studio.stores.curation_store import CurationStore

    rng = np.random.default_rng(0)
    store = CurationStore(tmp / "db")
    records = [{"id": uuid.uuid4().hex, "path": f"outputs/x/{i}.png", "source": "gallery", "prompt": "a red circle",
                "model": "builtin:shapes", "metrics": {k: float(v) for k, v in zip(KEYS[:9], rng.random(9))},
                "unavailable": {}, "error": None, "hashes": ["%016x" % i, "%016x" % i], "score": float(rng.random()),
                "auto": {"verdict": "accepted", "reason": "score 0.78 >= 0.50"}, "manual": None,
                "verdict": ("accepted", "rejected", "duplicate")[i % 3], "duplicate_of": None, "near": {},
                "scored_at": 1.7e9 + i} for i in range(stored)]
    store.put_many(records)
    opened = []
    for _ in range(2):  # every shard read (and the snapshot written), then from the snapshot
        t0 = time.perf_counter()
        CurationStore(tmp / "db").wait_ready()
        opened.append(time.perf_counter() - t0)
    cols = store._cols  # the index alone, grown to `rows` with random values
    while len(cols.score) < rows:
        cols._grow()
    cols.values[:rows] = rng.random((rows, len(KEYS)))
    cols.score[:rows], cols.verdict[:rows] = rng.random(rows), rng.integers(1, 5, rows)
    cols.when[:rows] = np.arange(rows)
    store._ids += [f"{i:032x}" for i in range(cols.n, rows)]
    cols.n = rows
    times = []
    for args in (("rejected", "sharpness", False), (None, "score", True), ("accepted", "brisque", True)):
        t0 = time.perf_counter()
        store.query(*args, offset=480, limit=48)
        times.append(time.perf_counter() - t0)
    line(f"review grid page at {rows:,} images (target <= 100 ms)", f"{1000 * max(times):.0f} ms (slowest of 3 "
                                                                     "filter/sort queries)")
    line(f"curation store open, {stored:,} records", f"{opened[1]:.2f} s from its index snapshot; {opened[0]:.2f} s "
         "reading every shard (in the background either way: the app starts at once)")


def _quality(records: dict[str, dict], names: list[str]) -> None:
    from studio.curation.policy import Policy, judge, matrix

    def metric(key: str, kind: str, subset=names):
        return [records[f"{n}__{kind}"]["metrics"].get(key, np.nan) for n in subset]

    blur_kinds = ["gauss2", "gauss5", "motion15"]
    sharp = [n for n in names if n != MICROGRAPH]
    for label, subset in (("blur AUC, originals sharp as captured (target > 0.99)", sharp),
                          (f"blur AUC counting {MICROGRAPH} as sharp", names)):
        if not subset or (subset is names and MICROGRAPH not in names):
            continue
        ours = auc(metric("sharpness", "orig", subset), [v for k in blur_kinds for v in metric("sharpness", k, subset)])
        lap = auc(metric("laplacian_var", "orig", subset),
                  [v for k in blur_kinds for v in metric("laplacian_var", k, subset)])
        line(label, f"{ours:.4f} (Laplacian variance alone: {lap:.4f})")
    if MICROGRAPH in names:
        own = metric("sharpness", "orig", [MICROGRAPH])[0]
        line(f"  {MICROGRAPH} (a micrograph, blurry as captured)",
             f"sharpness {own:.2f} against the floor {Policy().limits['sharpness']}: "
             f"{'rejected as blurry' if own < Policy().limits['sharpness'] else 'kept'}")
    motion_ours = auc(metric("sharpness", "orig", sharp), metric("sharpness", "motion15", sharp))
    motion_lap = auc(metric("laplacian_var", "orig", sharp), metric("laplacian_var", "motion15", sharp))
    line("  of which 15 px motion blur", f"{motion_ours:.4f} (Laplacian variance alone: {motion_lap:.4f})")
    policy = Policy()

    def combined(kind: str) -> list[float]:
        values = matrix([records[f"{n}__{kind}"]["metrics"] for n in names])
        return list(judge(values, policy, False).scores)

    for label, kinds in (("degraded vs original AUC (target > 0.98)", ["gauss2", "gauss5", "motion15", "jpeg5",
                                                                       "noise25"]),
                         ("  on untuned degradations", ["gauss3", "motion9", "jpeg15", "noise12"])):
        ours = auc(combined("orig"), [v for k in kinds for v in combined(k)])
        brisque = auc([-v for v in metric("brisque", "orig")], [-v for k in kinds for v in metric("brisque", k)])
        per = ", ".join(f"{k} {auc(combined('orig'), combined(k)):.3f}" for k in kinds)
        line(label, f"{ours:.4f} (BRISQUE alone: {brisque:.4f}); {per}")
    floor = policy.limits["sharpness"]
    caught = {k: np.mean(np.array(metric("sharpness", k)) < floor) for k in blur_kinds}
    kept = np.mean(np.array(metric("sharpness", "orig")) >= floor)
    line(f"sharpness floor {floor}: originals kept / blurred caught",
         f"{kept:.0%} / " + ", ".join(f"{k} {v:.0%}" for k, v in caught.items()))


def _near_duplicates(records: dict[str, dict], names: list[str]) -> None:
    from studio.curation.dedup import distance
    from studio.curation.policy import Policy

    radius = Policy().dedup_radius
    kinds = ["orig", "jpeg70", "crop95", "bright8", "rot2"]
    keys = [(n, k) for n in names for k in kinds]
    hashes = {key: tuple(records[f"{key[0]}__{key[1]}"]["hashes"]) for key in keys}

    def phash(a, b):
        return (int(hashes[a][0], 16) ^ int(hashes[b][0], 16)).bit_count()

    rules = {"studio (pHash + dHash <= %d)" % radius: lambda a, b: distance(hashes[a], hashes[b]) <= radius,
             "pHash <= 8 alone": lambda a, b: phash(a, b) <= 8}
    for label, rule in rules.items():
        found = [rule((n, "orig"), (n, k)) for n in names for k in kinds[1:]]
        per = {k: np.mean([rule((n, "orig"), (n, k)) for n in names]) for k in kinds[1:]}
        false = sum(rule(a, b) for a, b in itertools.combinations(keys, 2) if a[0] != b[0])
        pairs = sum(rule(a, b) for a, b in itertools.combinations(keys, 2) if a[0] == b[0]) + false
        precision = 1.0 if not pairs else 1 - false / pairs
        line(f"near-duplicate recall, {label}",
             f"{np.mean(found):.3f} at precision {precision:.3f} (" + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
             + ")")
    closest = min(distance(hashes[a], hashes[b]) for a, b in itertools.combinations(keys, 2) if a[0] != b[0])
    line("  closest different photos (pHash + dHash)", f"{closest} bits (radius {radius})")


def bench_embeddings(tmp: Path, n: int, dim: int = 512, planted: int = 1000) -> None:
    """Near-duplicate grouping on n random-ish unit vectors (crowded into a cone like CLIP's, `planted` near copies
    at cosine ~0.97) through the LSH index, its recall of the planted pairs; and a search by meaning (one query
    against the float16 store, exact)."""
    from studio.curation import ann
    from studio.curation.embedding_store import EmbeddingStore
    from studio.curation.policy import Policy

    rng = np.random.default_rng(0)

    def unit(k: int) -> np.ndarray:
        x = rng.standard_normal((k, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    x = 0.6 * unit(1) + 0.8 * unit(n)
    src, dst = rng.choice(n // 2, planted, replace=False), n // 2 + rng.choice(n - n // 2, planted, replace=False)
    x[dst] = x[src] + 0.25 * unit(planted)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    threshold = Policy().dedup_cosine
    t0 = time.perf_counter()
    pairs = ann.near_pairs(x, threshold)
    seconds = time.perf_counter() - t0
    found = {(int(a), int(b)) for a, b, _ in pairs}
    recall = np.mean([(int(a), int(b)) in found for a, b in zip(src, dst)])
    line(f"embedding near-dups, {n:,} x {dim}-d (LSH)", f"{seconds:.2f} s, recall of {planted} planted pairs "
         f"{recall:.3f} at cosine >= {threshold}, {len(pairs)} pairs (all exact-checked)")
    store = EmbeddingStore(tmp / "embeddings")
    store.put_many([f"{k:032x}" for k in range(n)], x)
    store.top(unit(1)[0], 100)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        store.top(unit(1)[0], 100)
        times.append(time.perf_counter() - t0)
    line(f"search by meaning, {n:,} embeddings (target < 100 ms)", f"{1000 * np.median(times):.0f} ms "
         f"(median of 5; exact cosine over the float16 store)")
    store.close()


def bench_curation(tmp: Path, quick: bool = False, throughput_images: int | None = None,
                   dedup_hashes: int = 10_000, photo_limit: int | None = None, review_rows: int | None = None,
                   stored_records: int | None = None) -> None:
    """The whole section; `quick` shrinks the throughput set and the review index, the arguments set each size."""
    print(f"Curation ({'quick' if quick else 'full'})", flush=True)
    bench_throughput(tmp / "t", throughput_images or (24 if quick else 120))
    bench_dedup(dedup_hashes)
    bench_embeddings(tmp / "e", 20_000 if quick else 100_000)
    bench_review_index(tmp / "r", review_rows or (100_000 if quick else 1_000_000),
                       stored_records or (2_000 if quick else 1_000_000))
    base = photos(photo_limit)
    images = {}
    for i, (name, img) in enumerate(base.items()):
        images[f"{name}__orig"] = img
        for kind, out in {**degradations(img, i), **degradations(img, i, heldout=True), **near_copies(img)}.items():
            images[f"{name}__{kind}"] = out
    records, seconds = _score_folder(tmp / "q", images)
    line("real photos scored", f"{len(base)} photos, {len(images)} images in {seconds:.1f} s")
    _quality(records, list(base))
    _near_duplicates(records, list(base))
