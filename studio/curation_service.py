"""Curation: score images (technical metrics, BRISQUE, prompt adherence, CLIP when present) in parallel workers,
find near-duplicates, give each image a verdict with its reason, keep manual overrides above every automatic
verdict, and learn weights and a threshold from those overrides.

    run(CurationRequest, progress, cancel) -> CurationReport   score a selection (ids, a gallery search, a folder
                                                               inside the allowed roots, or everything)
    override(image_id, verdict, who)                           a person's verdict (kept through re-scoring)
    results(verdict, sort, descending, offset, limit)          a page of the review grid
    preview(policy) / apply(policy)                            what new weights would change; make them current
    suggest_thresholds()                                       weights and threshold fitted to the overrides
    after_generation(ids)                                      the GenerationService hook (auto-curate setting)
    semantic_search(text, limit)                               gallery images by meaning (CLIP embeddings)
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from studio.curation import policy as pol
from studio.curation import ann
from studio.curation.dedup import link_text, near_between, near_pairs
from studio.curation.policy import KEYS, MANUAL_VERDICTS, SPECS, Policy
from studio.curation.scoring import ONE_THREAD, init_worker, score_file
from studio.curation.semantic import ClipScorer
from studio.datasets import write_caption_dataset
from studio.errors import StudioError, ValidationError, check_range
from studio.images import FOLDER_IMAGE_SUFFIXES
from studio.stores.curation_store import SORTS, CurationStore

log = logging.getLogger(__name__)
DEFAULT_WORKERS = 2
INLINE_MAX = 2          # batches this small are scored in the calling thread (no worker start-up)
COMMIT_SECONDS = 300    # a batch stores what it scored this often (a kill loses at most that much scoring; each
                        # store rewrites the shards it touches, about 5 s per 100,000 stored images)
MAX_WEIGHT = 10.0
PAGE_MAX = 500


@dataclass
class CurationRequest:
    """Which images to score, and optionally the weights and threshold for this run (default: the saved policy).

    Exactly what is given is scored: `ids` (gallery image ids), `query` (gallery images whose prompt contains
    it), `folder` (its images, recursively; inside the allowed roots), or `all` (the whole gallery).
    `only_new` skips images already scored; `scored_since` (epoch seconds) skips images scored since then (a
    resumed queue job skips what its interrupted run stored)."""

    ids: list[str] = field(default_factory=list)
    query: str = ""
    folder: str = ""
    all: bool = False
    only_new: bool = False
    scored_since: float = 0.0
    weights: dict[str, float] | None = None
    threshold: float | None = None


@dataclass
class Target:
    id: str
    path: Path
    stored_path: str   # relative to the data dir for gallery images, absolute for folder images
    source: str        # "gallery" | "folder"
    prompt: str = ""
    model: str = ""


@dataclass
class CurationProgress:
    done: int
    total: int
    errors: int
    seconds: float
    last: str = ""

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def message(self) -> str:
        return (f"{self.done}/{self.total} images · {self.rate:.1f} images/s"
                + (f" · {self.errors} unreadable" if self.errors else ""))


@dataclass
class CurationReport:
    total: int
    scored: int
    errors: list[dict]             # [{"id", "image_path", "error"}] (no "path" key: API clients read one as a file)
    verdicts: dict[str, int]       # effective verdicts of the images in this run
    rules: dict[str, int]          # how many of them each rule rejected
    groups: list[dict]             # near-duplicate groups touching this run: {"keep", "members", "distances"}
    seconds: float
    stopped: bool
    records: list[dict] = field(default_factory=list, repr=False)

    @property
    def images_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    @property
    def message(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.verdicts.items() if v) or "nothing"
        text = (f"{'Stopped: ' if self.stopped else ''}{self.total} image(s) in {self.seconds:.1f} s "
                f"({self.images_per_second:.1f}/s): {counts}")
        if self.errors:
            text += f"; {len(self.errors)} could not be scored"
        return text

    def summary(self) -> dict:
        return {"total": self.total, "scored": self.scored, "verdicts": self.verdicts, "rules": self.rules,
                "errors": self.errors, "duplicate_groups": self.groups, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 2), "stopped": self.stopped}


@dataclass
class PolicyPreview:
    """What a policy would do to every scored image (manual verdicts untouched)."""

    changes: dict[str, int]    # "accepted -> rejected": n
    verdicts: dict[str, int]   # automatic verdicts under the policy
    rules: dict[str, int]
    changed: int

    @property
    def message(self) -> str:
        if not self.changed:
            return "No automatic verdict would change."
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(self.changes.items()))
        return f"**{self.changed}** automatic verdict(s) would change ({detail})."


def folder_image_id(path: Path) -> str:
    """A folder image's id: the MD5 of its resolved path (32 hex digits, like a gallery id)."""
    return hashlib.md5(str(Path(path).resolve()).encode()).hexdigest()


@contextmanager
def _one_thread_env():
    """Set the BLAS thread variables while worker processes start (they inherit the environment); restore."""
    saved = {k: os.environ.get(k) for k in ONE_THREAD}
    os.environ.update(ONE_THREAD)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _open_rgb(path: Path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def _stamp(path: Path) -> str:
    """An image file's version for the embedding store: its size and modification time."""
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _counts(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


class CurationService:
    """Scores, verdicts and overrides over a CurationStore; the gallery gives ids, paths and prompts."""

    def __init__(self, store: CurationStore, gallery, data_dir: Path, paths, models_root: Path, settings_store,
                 workers: int = DEFAULT_WORKERS):
        self.store = store
        self.gallery = gallery
        self.data_dir = Path(data_dir)
        self.paths = paths
        self.settings_store = settings_store
        self.workers = workers
        self.clip = ClipScorer(models_root, self.data_dir / "cache" / "clip")
        self._lock = threading.RLock()       # record read-modify-write (runs, overrides, apply)
        self._run_lock = threading.Lock()    # one scoring run at a time
        self._background = ThreadPoolExecutor(1, thread_name_prefix="auto-curate")

    # ------------------------------------------------------------------ settings
    def _setting(self, key: str, default):
        doc = self.settings_store.get("key", key)
        return default if doc is None else doc.get("value", default)

    def _set(self, key: str, value) -> None:
        self.settings_store.upsert("key", key, {"key": key, "value": value})

    def policy(self) -> Policy:
        """The saved weights, rule limits and threshold (defaults until someone applies others)."""
        return Policy.from_dict(self._setting("policy", None))

    @property
    def auto_curate(self) -> bool:
        """Score every newly generated image in the background (the Curate tab's setting)."""
        return bool(self._setting("auto_curate", False))

    def set_auto_curate(self, on: bool) -> None:
        self._set("auto_curate", bool(on))

    def make_policy(self, weights: dict | None = None, threshold: float | None = None,
                    limits: dict | None = None, base: Policy | None = None) -> Policy:
        """A checked policy: the saved one (or `base`) with the given weights (0..10), limits and threshold
        (0..1). ValidationError naming the field."""
        base = base or self.policy()
        new = Policy(dict(base.weights), dict(base.limits), base.threshold, base.dedup_radius, base.dedup_cosine)
        for key, value in (weights or {}).items():
            if key not in SPECS:
                raise ValidationError(f"weights: unknown metric {key!r} (one of {', '.join(KEYS)})", "weights")
            new.weights[key] = check_range(f"weight of {key}", value, 0, MAX_WEIGHT)
        for key, value in (limits or {}).items():
            if key not in SPECS:
                raise ValidationError(f"limits: unknown metric {key!r} (one of {', '.join(KEYS)})", "limits")
            new.limits[key] = None if value is None or value == "" else check_range(f"limit of {key}", value,
                                                                                      -1e6, 1e6)
        if threshold is not None:
            new.threshold = check_range("threshold", threshold, 0, 1)
        return new

    # ------------------------------------------------------------------ selection
    def targets(self, req: CurationRequest) -> list[Target]:
        """The images a request names (validated first: ValidationError naming the field)."""
        ids = [i.strip() for i in (req.ids or []) if str(i).strip()]
        query, folder = (req.query or "").strip(), (req.folder or "").strip()
        if not (ids or query or folder or req.all):
            raise ValidationError("choose images: ids, a gallery search, a folder or all", "selection")
        found: dict[str, Target] = {}
        if folder:
            root = self.paths.resolve(folder, "folder")
            for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in FOLDER_IMAGE_SUFFIXES and p.is_file()):
                image_id = folder_image_id(path)
                found[image_id] = Target(image_id, path, str(path), "folder", self._prompt_of(path))
        records = []
        for image_id in ids:
            try:
                record = self.gallery.get(image_id)
            except ValueError:
                raise ValidationError(f"ids: {image_id!r} is not an image id (32 hex characters)", "ids") from None
            if record is None:
                raise ValidationError(f"ids: no gallery image with id {image_id}", "ids")
            records.append(record)
        if query or req.all:
            offset = 0
            while True:
                page, total = self.gallery.list(offset=offset, limit=1000, query=query or None)
                records += page
                offset += len(page)
                if not page or offset >= total:
                    break
        for r in records:
            found.setdefault(r["id"], Target(r["id"], self.data_dir / r["path"], r["path"], "gallery",
                                             r.get("prompt", ""), r.get("model", "")))
        targets = list(found.values())
        if req.only_new:
            targets = [t for t in targets if not self.store.has(t.id)]
        if req.scored_since:
            recent = self.store.scored_since(req.scored_since)
            targets = [t for t in targets if t.id not in recent]
        return targets

    @staticmethod
    def _prompt_of(path: Path) -> str:
        if path.suffix.lower() != ".png":
            return ""
        try:
            from studio.infotext import parse_infotext, read_png_parameters

            text = read_png_parameters(path)
            return parse_infotext(text).get("prompt", "") if text else ""
        except Exception:  # noqa: BLE001 - an unreadable chunk just means no prompt
            return ""

    # ------------------------------------------------------------------ scoring
    def run(self, req: CurationRequest, progress: Callable[[CurationProgress], None] | None = None,
            cancel: threading.Event | None = None) -> CurationReport:
        """Score the requested images in parallel workers (each image's failure is reported, the batch goes
        on), find near-duplicates, store metrics and automatic verdicts (manual verdicts are kept)."""
        run_policy = self.make_policy(req.weights, req.threshold)
        targets = self.targets(req)
        cancel = cancel or threading.Event()
        with self._run_lock:
            start = time.perf_counter()
            records: list[dict] = []
            results: dict[str, dict] = {}

            def commit(chunk: list[Target]) -> None:
                """Store a chunk as soon as it is scored (a kill keeps it; a resumed job skips it)."""
                self._add_clip(chunk, results)
                records.extend(self._commit(chunk, results, run_policy))

            self._score(targets, progress, cancel, start, results, commit)
            scored = [t for t in targets if t.id in results]
            order = {t.id: n for n, t in enumerate(targets)}
            records.sort(key=lambda r: order[r["id"]])
        errors = [{"id": t.id, "image_path": t.stored_path, "error": results[t.id]["error"]}
                  for t in scored if results[t.id]["error"]]
        values = pol.matrix([r.get("metrics") or {} for r in records if not r.get("error")])
        rules = pol.rule_counts(pol.judge(values, run_policy, False)) if len(values) else {}
        return CurationReport(len(targets), len(scored), errors, _counts(r["verdict"] for r in records), rules,
                              self._groups([r["id"] for r in records]), time.perf_counter() - start,
                              cancel.is_set() and len(scored) < len(targets), records)

    def _score(self, targets: list[Target], progress, cancel: threading.Event, start: float,
               results: dict[str, dict], commit: Callable[[list[Target]], None]) -> None:
        """Score `targets` into `results`, handing what was scored to `commit` every COMMIT_SECONDS and at the
        end."""
        errors = 0
        fresh: list[Target] = []
        last = time.perf_counter()

        def done(target: Target, result: dict) -> None:
            nonlocal errors, last
            results[target.id] = result
            errors += bool(result["error"])
            fresh.append(target)
            if time.perf_counter() - last >= COMMIT_SECONDS:
                commit(fresh[:])
                fresh.clear()
                last = time.perf_counter()
            if progress:
                progress(CurationProgress(len(results), len(targets), errors, time.perf_counter() - start,
                                          target.stored_path))

        if progress:
            progress(CurationProgress(0, len(targets), 0, 0.0))
        if self.workers <= 0 or len(targets) <= INLINE_MAX:
            for t in targets:
                if cancel.is_set():
                    break
                done(t, score_file(str(t.path), t.prompt, t.model))
        else:
            self._score_parallel(targets, cancel, done)
        if fresh:
            commit(fresh)

    def _score_parallel(self, targets: list[Target], cancel: threading.Event, done) -> None:
        """Score in `workers` spawned processes; at most 2 x workers files are in flight, so Stop takes effect
        within a couple of images. When a worker dies (out of memory on a huge file), the images it may have held
        are retried one at a time in a fresh process: the one that kills it again is reported, the rest go on.
        If workers cannot start at all, the rest is scored in this thread."""
        pending = list(reversed(targets))
        context = multiprocessing.get_context("spawn")
        pool = self._pool(self.workers, context)
        running: dict[Future, Target] = {}
        try:
            while (pending or running) and not cancel.is_set():
                while pending and len(running) < 2 * self.workers:
                    t = pending.pop()
                    with _one_thread_env():  # workers start at their first task: one BLAS thread each
                        running[pool.submit(score_file, str(t.path), t.prompt, t.model)] = t
                finished, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                broken = False
                for future in finished:
                    t = running.pop(future)
                    try:
                        done(t, future.result())
                    except BrokenProcessPool:
                        broken = True
                        running[future] = t
                if broken:
                    suspects = list(running.values())
                    running.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    while suspects and not cancel.is_set():
                        result = self._isolated(suspects[0], context)
                        if result is None:  # no worker can start: score the rest here
                            log.warning("curation workers cannot start (a script without `if __name__ == "
                                        "'__main__':`?); scoring in this thread")
                            for t in suspects + pending[::-1]:
                                if cancel.is_set():
                                    break
                                done(t, score_file(str(t.path), t.prompt, t.model))
                            pending.clear()
                            return
                        done(suspects.pop(0), result)
                    pool = self._pool(self.workers, context)
        finally:
            pool.shutdown(wait=not cancel.is_set(), cancel_futures=True)

    @staticmethod
    def _pool(workers: int, context) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker)

    @staticmethod
    def _isolated(t: Target, context) -> dict | None:
        """Score one image alone in a fresh worker: its result, an error if it kills that worker too, or None
        when no worker can start at all."""
        with ProcessPoolExecutor(1, mp_context=context, initializer=init_worker) as alone, _one_thread_env():
            try:
                return alone.submit(score_file, str(t.path), t.prompt, t.model).result()
            except BrokenProcessPool:
                pass
        with ProcessPoolExecutor(1, mp_context=context) as probe:
            try:
                probe.submit(int, "1").result()
            except BrokenProcessPool:
                return None
        return {"metrics": {}, "unavailable": {}, "hashes": None, "size": None, "mode": None,
                "error": "the scoring worker died on this image (out of memory?)", "seconds": 0.0}

    def _add_clip(self, targets: list[Target], results: dict[str, dict]) -> None:
        """CLIP score and aesthetic (main process, torch) when their weights exist; else their reasons."""
        missing = self.clip.unavailable()
        ok = [t for t in targets if t.id in results and not results[t.id]["error"]]
        for t in ok:
            results[t.id]["unavailable"].update(missing)
        if len(missing) == 2 or not ok:
            return
        for start in range(0, len(ok), 16):
            chunk = ok[start:start + 16]
            items = [(t.id, partial(_open_rgb, t.path), t.prompt) for t in chunk]
            for t, extra in zip(chunk, self.clip.score(items, [_stamp(t.path) for t in chunk])):
                results[t.id]["metrics"].update(extra)
                if "clip_score" not in extra and "clip_score" not in missing:
                    results[t.id]["unavailable"]["clip_score"] = "unavailable (the image has no prompt)"

    # ------------------------------------------------------------------ verdicts
    def _commit(self, targets: list[Target], results: dict[str, dict], policy: Policy) -> list[dict]:
        """Store the batch's metrics and hashes, link near-duplicates both ways, then re-judge the batch and its
        neighbours. Returns the batch's records as stored."""
        with self._lock:
            now = time.time()
            old = {r["id"]: r for r in self.store.get_many([t.id for t in targets])}
            batch: dict[str, dict] = {}
            for t in targets:
                res, prev = results[t.id], old.get(t.id, {})
                batch[t.id] = {
                    "id": t.id, "path": t.stored_path, "source": t.source, "prompt": t.prompt, "model": t.model,
                    "metrics": res["metrics"], "unavailable": res["unavailable"], "error": res["error"],
                    "size": res["size"], "mode": res["mode"], "hashes": res["hashes"], "score": prev.get("score"),
                    "auto": prev.get("auto"), "manual": prev.get("manual"), "verdict": prev.get("verdict"),
                    "duplicate_of": prev.get("duplicate_of"), "near": {}, "scored_at": now,
                }
            touched = self._link_neighbours(batch, old, policy.dedup_radius, policy.dedup_cosine)
            self.store.put_many(list(batch.values()) + list(touched.values()))
            self._rejudge(set(batch) | set(touched), policy)
            stored = self.store.get_many(list(batch))
            self._to_gallery(stored)
            return stored

    def _to_gallery(self, records: list[dict]) -> None:
        """Copy the verdicts and scores of gallery images into the gallery's index (its verdict/score filters)."""
        items = [(r["id"], r.get("verdict"), {"score": r.get("score"), **(r.get("metrics") or {})})
                 for r in records if r.get("source") == "gallery"]
        if items and self.gallery is not None:
            self.gallery.set_curations(items)

    def _link_neighbours(self, batch: dict[str, dict], old: dict[str, dict], radius: int,
                         cosine: float = 1.0) -> dict[str, dict]:
        """Fill the batch records' "near" and update their neighbours' (removing stale links of re-scored
        images): hash pairs within `radius`, and where CLIP embeddings exist, pairs at cosine >= `cosine`.
        Returns the changed records outside the batch."""
        touched: dict[str, dict] = {}

        def other(image_id: str) -> dict:
            if image_id not in touched:
                touched[image_id] = self.store.get(image_id)
            return touched[image_id]

        for image_id, prev in old.items():
            for n in (prev.get("near") or {}):
                if n not in batch and self.store.has(n):
                    other(n).get("near", {}).pop(image_id, None)
        hashed = [i for i, r in batch.items() if r["hashes"]]
        if hashed:
            q = np.array([(int(batch[i]["hashes"][0], 16), int(batch[i]["hashes"][1], 16)) for i in hashed],
                         dtype=np.uint64)
            for a, b, d in near_pairs(q, radius):
                batch[hashed[a]]["near"][hashed[b]] = int(d)
                batch[hashed[b]]["near"][hashed[a]] = int(d)
            cols = self.store.columns()
            keep = [j for j, i in enumerate(cols["ids"]) if cols["hashed"][j] and i not in batch]
            if keep:
                base_ids = [cols["ids"][j] for j in keep]
                for a, b, d in near_between(q, cols["hashes"][keep], radius):
                    mine, theirs = hashed[a], base_ids[b]
                    batch[mine]["near"][theirs] = int(d)
                    other(theirs).setdefault("near", {})[mine] = int(d)
        for a, b, c in self._embedding_pairs(list(batch), cosine):
            link = round(float(c), 4)
            batch[a]["near"].setdefault(b, link)
            if b in batch:
                batch[b]["near"].setdefault(a, link)
            else:
                other(b).setdefault("near", {}).setdefault(a, link)
        return {k: v for k, v in touched.items() if v is not None}

    def _embedding_pairs(self, ids: list[str], threshold: float) -> list[tuple[str, str, float]]:
        """(batch id, other id, cosine) of every pair at cosine >= threshold among the batch's stored CLIP
        embeddings and against every other scored image's (an approximate nearest-neighbour index when many)."""
        store = self.clip.embeddings()
        if store is None or threshold > 1:
            return []
        mine, vectors = store.get_many(ids)
        if not mine:
            return []
        out = [(mine[int(a)], mine[int(b)], c) for a, b, c in ann.near_pairs(vectors, threshold)]
        batch, scored = set(mine), set(self.store.columns()["ids"])
        for block_ids, block in store.blocks():
            rows = [k for k, i in enumerate(block_ids) if i not in batch and i in scored]
            if rows:
                for a, b, c in ann.near_between(vectors, block[rows], threshold):
                    out.append((mine[int(a)], block_ids[rows[int(b)]], c))
        return [(a, b, c) for a, b, c in out if a != b]

    def _auto(self, policy: Policy, ids: set[str] | None, reasons: bool = True) -> dict[str, tuple]:
        """Automatic (verdict, reason, score, duplicate_of) under `policy` of `ids` (None: every image);
        `reasons=False` leaves the reason strings out (None), for previews over many images."""
        cols = self.store.columns()
        near = self.store.near()
        all_ids = cols["ids"]
        row = {i: n for n, i in enumerate(all_ids)}
        verdicts = pol.judge(cols["values"], policy, reasons=False)
        empty = np.isnan(cols["values"]).all(axis=1)
        chosen = range(len(all_ids)) if ids is None else [row[i] for i in ids if i in row]
        chosen = list(chosen)
        detail = pol.judge(cols["values"][chosen], policy, reasons=True) if chosen and reasons else None
        out = {}

        def accepted(n: int) -> bool:
            return not empty[n] and not verdicts.rejected[n]

        for k, n in enumerate(chosen):
            image_id, score = all_ids[n], verdicts.scores[n]
            score = None if np.isnan(score) else round(float(score), 4)
            if empty[n]:
                out[image_id] = ("error", None, None, None)
                continue
            if verdicts.rejected[n]:
                out[image_id] = ("rejected", detail.reasons[k] if detail else None, score, None)
                continue
            rank = (verdicts.scores[n], image_id)
            better = [(verdicts.scores[row[m]], m, d) for m, d in near.get(image_id, {}).items()
                      if m in row and accepted(row[m]) and (verdicts.scores[row[m]], m) > rank]
            if better:
                best_score, best, d = max(better)
                out[image_id] = ("duplicate", f"duplicate of {best[:8]} ({link_text(d)}, score {best_score:.2f} "
                                 f">= {verdicts.scores[n]:.2f})", score, best)
            else:
                out[image_id] = ("accepted", detail.reasons[k] if detail else None, score, None)
        return out

    def _rejudge(self, ids: set[str] | None, policy: Policy) -> int:
        """Recompute the automatic verdicts of `ids` (None: all) and their neighbours; write the records that
        change, with a history entry for every automatic verdict change. Returns how many images' verdicts changed
        (those with a manual verdict keep it, so they do not count)."""
        with self._lock:
            if ids is not None:
                near = self.store.near()
                ids = set(ids) | {n for i in ids for n in near.get(i, {})}
            auto = self._auto(policy, ids)
            changed, history, n_changed = [], [], 0
            now = time.time()
            records = {r["id"]: r for r in self.store.get_many(list(auto))}
            for image_id, (verdict, reason, score, dup_of) in auto.items():
                record = records[image_id]
                if verdict == "error":
                    reason = record.get("error") or "nothing could be measured"
                new_auto = {"verdict": verdict, "reason": reason}
                if record.get("auto") == new_auto and record.get("score") == score \
                        and record.get("duplicate_of") == dup_of:
                    continue
                if (record.get("auto") or {}).get("verdict") != verdict:
                    n_changed += not record.get("manual")
                    history.append({"image_id": image_id, "verdict": verdict, "reason": reason, "by": "auto",
                                    "at": now, "score": score})
                manual = record.get("manual")
                record.update(auto=new_auto, score=score, duplicate_of=dup_of,
                              verdict=manual["verdict"] if manual else verdict)
                changed.append(record)
            if changed:
                self.store.put_many(changed, history)
                self._to_gallery(changed)
            return n_changed

    # ------------------------------------------------------------------ people
    def override(self, image_id: str, verdict: str, who: str = "") -> dict:
        """A person's verdict ("accepted", "rejected", "featured"; "auto" gives the image back to the automatic
        verdict), stored with who and when; automatic re-scoring never replaces it. Returns the record."""
        verdict = (verdict or "").strip().lower()
        if verdict not in MANUAL_VERDICTS + ("auto",):
            raise ValidationError(f"verdict must be one of {', '.join(MANUAL_VERDICTS)} or auto; got {verdict!r}",
                                  "verdict")
        try:
            self.store.has(image_id) or self.gallery.get(image_id)
        except ValueError:
            raise ValidationError(f"image_id must be 32 hex characters; got {image_id!r}", "image_id") from None
        who = (who or "").strip() or "unknown"
        with self._lock:
            record = self.store.get(image_id)
            if record is None:
                g = self.gallery.get(image_id)
                if g is None:
                    raise ValidationError(f"image_id: no image with id {image_id}", "image_id")
                record = {"id": image_id, "path": g["path"], "source": "gallery", "prompt": g.get("prompt", ""),
                          "model": g.get("model", ""), "metrics": {}, "unavailable": {}, "error": None,
                          "hashes": None, "score": None, "auto": None, "manual": None, "verdict": None,
                          "duplicate_of": None, "near": {}, "scored_at": 0}
            now = time.time()
            if verdict == "auto":
                record["manual"] = None
                auto = record.get("auto") or {}
                record["verdict"] = auto.get("verdict")
                entry = {"verdict": record["verdict"], "reason": "back to the automatic verdict"}
            else:
                record["manual"] = {"verdict": verdict, "who": who, "when": now}
                record["verdict"] = verdict
                entry = {"verdict": verdict, "reason": f"set by {who}"}
            self.store.put_many([record], [{"image_id": image_id, **entry, "by": who, "at": now,
                                            "score": record.get("score")}])
            self._to_gallery([record])
            return record

    def record(self, image_id: str) -> dict | None:
        return self.store.get(image_id)

    def history(self, image_id: str) -> list[dict]:
        return self.store.history(image_id)

    def results(self, verdict: str | None = None, sort: str = "newest", descending: bool = True, offset: int = 0,
                limit: int = 48) -> dict:
        """A page of the review grid: {"total", "items": [record + "file" (absolute path)]}."""
        if sort not in SORTS:
            raise ValidationError(f"sort must be one of {', '.join(SORTS)}; got {sort!r}", "sort")
        limit = check_range("limit", limit, 0, PAGE_MAX, int)
        try:
            ids, total = self.store.query(verdict, sort, descending, offset, limit)
        except ValueError as exc:
            raise ValidationError(str(exc), "verdict") from None
        items = []
        for record in self.store.get_many(ids):
            record["file"] = str(self.file_of(record))
            items.append(record)
        return {"total": total, "items": items}

    def file_of(self, record: dict) -> Path:
        path = Path(record["path"])
        return path if record.get("source") == "folder" else self.data_dir / path

    # ------------------------------------------------------------------ policies
    def preview(self, policy: Policy) -> PolicyPreview:
        """How many automatic verdicts `policy` would change, by transition (manual verdicts are not touched)."""
        cols = self.store.columns()
        auto = self._auto(policy, None, reasons=False) if len(cols["ids"]) else {}
        changes: dict[str, int] = {}
        for image_id, current, manual in zip(cols["ids"], cols["verdict"], cols["manual"]):
            if manual or image_id not in auto:
                continue
            new = auto[image_id][0]
            if new != current:
                key = f"{current or 'unscored'} -> {new}"
                changes[key] = changes.get(key, 0) + 1
        values = cols["values"][~np.isnan(cols["values"]).all(axis=1)]
        rules = pol.rule_counts(pol.judge(values, policy, False)) if len(values) else {}
        return PolicyPreview(changes, _counts(v[0] for v in auto.values()), rules, sum(changes.values()))

    def apply(self, policy: Policy) -> int:
        """Save `policy` and re-judge every scored image with it (manual verdicts stay). Returns how many
        images' verdicts changed."""
        with self._lock:
            self._set("policy", policy.to_dict())
            return self._rejudge(None, policy)

    def suggest_thresholds(self) -> pol.Suggestion:
        """Weights and threshold fitted to the manual verdicts (>= 20 needed); nothing is applied."""
        cols = self.store.columns()
        rows, wanted = [], []
        for n, image_id in enumerate(cols["ids"]):
            if cols["manual"][n] and not np.isnan(cols["values"][n]).all():
                verdict = cols["verdict"][n]
                rows.append(n)
                wanted.append(verdict in ("accepted", "featured"))
        try:
            return pol.suggest(cols["values"][rows], np.array(wanted, bool), self.policy())
        except ValueError as exc:
            raise StudioError(str(exc), "overrides") from None

    def distributions(self) -> dict:
        """Every scored image's metrics and combined score, for the histograms: {"ids", "values", "score"}."""
        cols = self.store.columns()
        keep = ~np.isnan(cols["values"]).all(axis=1)
        return {"ids": [i for i, k in zip(cols["ids"], keep) if k], "values": cols["values"][keep],
                "score": cols["score"][keep]}

    # ------------------------------------------------------------------ search by meaning
    def semantic_search(self, text: str, limit: int = 100) -> list[tuple[dict, str, float]]:
        """The gallery images (trash left out) whose stored CLIP image embeddings best match `text`, encoded by
        the same open_clip model: [(record, path, cosine)], best first, ties newest first. Only images curated
        while the CLIP weights were present have embeddings. ValidationError ("meaning") without a model."""
        store = self.clip.embeddings()
        if store is None:
            raise ValidationError("search by meaning needs an open_clip model in "
                                  f"{self.clip.models_root / 'CLIP'}/<name>/", "meaning")
        text = (text or "").strip()
        if not text:
            raise ValidationError("meaning: type what to look for, e.g. a red car at night", "meaning")
        limit = check_range("limit", limit, 1, PAGE_MAX, int)
        query, want = self.clip.encode_text([text])[0], limit
        while True:  # ask for more while folder images and trashed ones crowd the gallery's out
            hits = store.top(query, want)
            records = {r["id"]: r for r in self.gallery.get_many([i for i, _ in hits]) if not r.get("trashed")}
            found = [(records[i], s) for i, s in hits if i in records]
            if len(found) >= limit or len(hits) < want:
                break
            want *= 4
        found.sort(key=lambda rs: (-rs[1], -rs[0].get("created", 0)))
        return [(r, str(self.gallery.path_of(r)), s) for r, s in found[:limit]]

    # ------------------------------------------------------------------ groups, datasets, hooks
    def _groups(self, ids: list[str]) -> list[dict]:
        """Near-duplicate groups (connected through near links) that include any of `ids`."""
        near = self.store.near()
        seen, groups = set(), []
        for start in ids:
            if start in seen or start not in near:
                continue
            members, stack = [], [start]
            while stack:
                x = stack.pop()
                if x in seen:
                    continue
                seen.add(x)
                members.append(x)
                stack += [m for m in near.get(x, {}) if m not in seen]
            records = {r["id"]: r for r in self.store.get_many(members)}
            keep = max(members, key=lambda m: ((records.get(m) or {}).get("verdict") not in ("duplicate",
                                                                                              "rejected", "error"),
                                               (records.get(m) or {}).get("score") or -1, m))
            groups.append({"keep": keep, "members": sorted(members),
                           "verdicts": {m: (records.get(m) or {}).get("verdict") for m in sorted(members)}})
        return groups

    def accepted_records(self) -> list[dict]:
        """Every featured, then accepted image's record, best score first (duplicates and rejected left out).
        StudioError when there is none."""
        ids = []
        for verdict in ("featured", "accepted"):
            found, _ = self.store.query(verdict, "score", True, 0, 10**9)
            ids += found
        if not ids:
            raise StudioError("no accepted images to send: accept some first", "verdict")
        return self.store.get_many(ids)

    def export_accepted(self) -> tuple[Path, int]:
        """Copy every accepted or featured image with its prompt as a `.txt` caption into
        `<data>/datasets/curated-<time>/`, for the Train tab's folder input. Returns (folder, n)."""
        images = [(r["id"], self.file_of(r), r.get("prompt", "")) for r in self.accepted_records()]
        return write_caption_dataset(self.data_dir, "curated", images)

    def accepted_gallery_ids(self) -> tuple[list[str], int]:
        """The gallery ids of the accepted and featured images (for the Upscale tab), best first, and how many
        accepted images were left out because they were scored in a folder outside the gallery."""
        records = self.accepted_records()
        ids = [r["id"] for r in records if r.get("source") == "gallery"]
        return ids, len(records) - len(ids)

    def after_generation(self, image_ids: list[str]) -> Future | None:
        """GenerationService hook: score the new images in the background when auto-curate is on."""
        if not image_ids or not self.auto_curate:
            return None

        def work():
            try:
                return self.run(CurationRequest(ids=list(image_ids)))
            except Exception:  # noqa: BLE001 - a failed auto-curation must never disturb generation
                log.exception("auto-curation of %d image(s) failed", len(image_ids))
        return self._background.submit(work)

    def close(self) -> None:
        self._background.shutdown(wait=True)
