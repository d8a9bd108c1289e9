"""The studio job queue: every job that runs a model (a person's batch from Generate or ControlNet, a scheduled
run) waits here and runs one at a time on one worker thread, in an order a person can see and change.

    submit(kind, spec, priority, owner, cancel, listener) -> job id      a job waits its turn
    interactive(kind, request) -> run(cancel, on_progress)                a tab's `run` for stream_generation
    run_here(kind, spec) -> result                                        run in the calling thread (scripts, tests)
    list() / history()                       pending and running jobs with position and ETA; finished ones
    move(id, where) / cancel(id) / pause() / resume() / set_start_state(state)
    start() / shutdown()

Jobs are versioned JSON in a QueueStore (studio.stores.queue_store): after a crash or a restart, pending jobs run
and a running one continues where its runner's stored progress says (a generation resumes at its next image with
the same seeds). A kind's runner gets the job's JSON payload and a `JobContext`.

Order (the worker's policy):
1. A person's jobs (priority "interactive") go before background jobs (scheduled runs); a running background batch
   calls `JobContext.between_images()` after each image, which runs the waiting interactive jobs right there, so a
   person waits at most one image of a batch.
2. Otherwise jobs run in queue order (what `move` changes).
3. Grouping by model: when the next job needs another model than the one the last job used, the worker may take,
   from the next GROUP_WINDOW jobs of the same priority, the first one on the loaded model instead, so the model
   is not reloaded in between. It never passes over a job a person moved, nor one already passed over
   MAX_PASS_OVERS times: no job waits more than MAX_PASS_OVERS extra jobs because of grouping.

Pause: no job starts; a running batch stops between two images and waits; a running person's job finishes.
Start state (stored): "run", "paused" or "as_was" (the queue is paused at start if it was paused when it stopped).
ETA: measured seconds per image per model (a moving average, stored), times the images each job has left.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from studio.errors import StudioError, ValidationError
from studio.stores.queue_store import FINISHED, job_defaults

log = logging.getLogger(__name__)

PRIORITIES = ("interactive", "background")
START_STATES = ("run", "paused", "as_was")
MOVES = ("top", "up", "down", "bottom")
GROUP_WINDOW = 4
MAX_PASS_OVERS = 3
RATE_WEIGHT = 0.3  # weight of the newest measurement in the seconds-per-image average
RATE_WRITE_CHANGE = 0.1  # rates are stored again when one moved by more than this share
WAIT_POLL_SECONDS = 0.25  # how often a person's waiting (not yet running) job looks at its Stop button
WAITING_INDEX = -2  # the image index that reports a job's place in the queue to a progress listener


@dataclass(frozen=True)
class Waiting:
    """A pending job's place: its position (1 = next), whether the queue is paused, and the seconds until it
    starts (from measured rates; None when unknown)."""

    position: int
    paused: bool
    starts_in: float | None


class Interrupted(Exception):
    """Raised by a runner stopped by the queue's shutdown: the job stays in the queue and resumes at next start."""


@dataclass
class JobSpec:
    """What a job is: its JSON payload (the runner's input), a title, the model it loads and its image count."""

    payload: dict
    title: str
    model: str = ""
    total: int = 1


@dataclass
class JobKind:
    """How to run one kind of job. `run(payload, ctx)` does the work (its return value reaches a waiting caller);
    `encode(request, job_id)` turns a typed request into a JobSpec (for `submit_request`/`interactive`);
    `cancelled(payload)` is what a waiting caller gets when the job is cancelled before it started."""

    run: Callable[[dict, "JobContext"], Any]
    encode: Callable[[Any, str], JobSpec] | None = None
    cancelled: Callable[[dict], Any] | None = None
    finished: Callable[[dict], None] | None = None  # clean-up after the job ends (e.g. its input files)
    made: Callable[[dict], int] | None = None  # images its own durable records hold (shown after a restart)


@dataclass
class _Live:
    """In-memory companions of a job in this process: its cancel event, progress listener and outcome."""

    cancel: threading.Event = field(default_factory=threading.Event)
    listener: Callable | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    waiter: bool = False        # a caller will collect the outcome with `wait`
    stored: threading.Event | None = None  # set once `submit` has written the job (None: read from the store)
    interrupted: bool = False   # stopped by the queue's shutdown: the job resumes at next start
    result: Any = None
    error: BaseException | None = None


class JobContext:
    """What a runner gets: the job, `cancel` (Stop or queue_cancel; also set by shutdown), `progress` (the live
    listener of a waiting page, or None), `image_done(progress)` to record an image and the runner's resume state,
    and `between_images()` for batches."""

    def __init__(self, queue: "JobQueue", job: dict, live: _Live):
        self._queue, self.job, self._live = queue, job, live
        self.cancel = live.cancel
        self.progress = live.listener
        self.resumed = job["done"] > 0 or bool(job["progress"])
        self._last = time.perf_counter()

    @property
    def interrupted(self) -> bool:
        """The queue is shutting down (the job resumes at next start)."""
        return self._queue.stopping

    def image_done(self, progress: dict | None = None, done: int | None = None, total: int | None = None,
                   durable: bool = True) -> None:
        """Record one more image (or `done` of `total`) and the runner's resume state; `durable` writes it to the
        store at once (a runner whose images carry their own durable record, e.g. the gallery's, passes False
        and reconciles when it resumes; the state is written with the job's end either way)."""
        now = time.perf_counter()
        self._queue._image_done(self.job, now - self._last, progress, done, total, durable)
        self._last = now

    def between_images(self) -> bool:
        """Call between two images of a batch, holding no device lock: waiting interactive jobs run now and a
        paused queue waits here. Returns False when the batch must stop (cancelled, or the app shuts down)."""
        self._queue._yield_turn(self.job)
        self._last = time.perf_counter()
        return not (self.cancel.is_set() or self._queue.stopping)


def _rate_key(job: dict) -> str:
    """What a job's seconds per image are measured for: its model, or its kind when it loads none (curation)."""
    return job["model"] or job["kind"]


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, StudioError):
        return f"{exc.field}: {exc}" if exc.field and not str(exc).startswith(exc.field) else str(exc)
    return f"{type(exc).__name__}: {exc}"


class JobQueue:
    """One worker, one job at a time; see the module docstring for the order and the policies."""

    def __init__(self, store, clock: Callable[[], float] = time.time, group_by_model: bool = True,
                 start_state: str | None = None):
        self.store, self.clock, self.group_by_model = store, clock, group_by_model
        self._kinds: dict[str, JobKind] = {}
        self._cond = threading.Condition()
        self._live: dict[str, _Live] = {}
        self._inline: set[str] = set()   # jobs run by `run_here`, never taken by the worker
        self._running: list[dict] = []   # the job holding the turn, then any job it yielded to
        self._busy = False
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._loaded_model = ""
        state = store.state()
        self._rates: dict[str, float] = state["rates"]
        self._stored_rates = dict(self._rates)
        self._jobs: dict[str, dict] = {}
        for job in store.jobs(("pending", "running")):  # a job that was running continues from its progress
            self._jobs[job["id"]] = {**job, "state": "pending"}
        chosen = start_state or state["start_state"]
        self._paused = state["paused"] if chosen == "as_was" else chosen == "paused"
        if self._paused != state["paused"]:
            store.set_state(paused=self._paused)  # "as it was" at the next start means as it is now

    # ------------------------------------------------------------------ kinds and submitting
    def register(self, kind: str, job_kind: JobKind) -> None:
        self._kinds[kind] = job_kind
        if job_kind.made is not None:  # jobs read from the store show what their runs already made
            for job in self._jobs.values():
                if job["kind"] == kind:
                    job["done"] = max(job["done"], job_kind.made(job["payload"]))

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def submit(self, kind: str, spec: JobSpec, priority: str = "background", owner: str = "",
               cancel: threading.Event | None = None, listener: Callable | None = None,
               job_id: str | None = None, inline: bool = False) -> str:
        """Queue a job; returns its id. `cancel`/`listener` tie it to a waiting page (Stop, live progress)."""
        if kind not in self._kinds:
            raise ValidationError(f"kind must be one of {', '.join(sorted(self._kinds))}; got {kind!r}", "kind")
        if priority not in PRIORITIES:
            raise ValidationError(f"priority must be one of {', '.join(PRIORITIES)}; got {priority!r}", "priority")
        job_id = job_id or uuid.uuid4().hex
        with self._cond:
            order = max((j["order"] for j in self._jobs.values()), default=0.0) + 1
            job = {**job_defaults(), "id": job_id, "kind": kind, "title": spec.title[:200],
                   "model": spec.model, "priority": priority, "owner": owner, "order": order,
                   "total": max(1, int(spec.total)), "payload": spec.payload, "created": self.clock()}
            record = dict(job)
            self._jobs[job_id] = job
            live = _Live(cancel or threading.Event(), listener, stored=threading.Event(),
                         waiter=inline or cancel is not None or listener is not None)
            self._live[job_id] = live
            if inline:
                self._inline.add(job_id)
            self._cond.notify_all()
        self.store.save_job(record)  # durable when submit returns; the worker may already have started it
        live.stored.set()
        return job_id

    def _spec(self, kind: str, request, job_id: str) -> JobSpec:
        encode = self._kinds[kind].encode if kind in self._kinds else None
        if encode is None:
            raise ValidationError(f"kind: {kind!r} jobs cannot be made from a request", "kind")
        return encode(request, job_id)

    def submit_request(self, kind: str, request, priority: str = "background", owner: str = "", **live) -> str:
        """Queue a typed request (e.g. a validated GenerationRequest) as a job of `kind`."""
        job_id = uuid.uuid4().hex
        return self.submit(kind, self._spec(kind, request, job_id), priority, owner, job_id=job_id, **live)

    def interactive(self, kind: str, request, owner: str = "") -> Callable:
        """A `run(cancel, on_progress)` for stream_generation: queue the request as a person's job, wait for it
        (Stop cancels it, queued or running) and return its result."""
        def run(cancel: threading.Event, on_progress: Callable | None = None):
            job_id = self.submit_request(kind, request, "interactive", owner, cancel=cancel, listener=on_progress)
            waiting = (lambda w: on_progress(WAITING_INDEX, w.position, w)) if on_progress is not None else None
            return self.wait(job_id, cancel, waiting)
        return run

    def wait(self, job_id: str, cancel: threading.Event | None = None,
             on_waiting: Callable[["Waiting"], None] | None = None):
        """Block until the job ends; return its result or raise its error. A set `cancel` removes it while it
        waits (a running job sees the same event). `on_waiting` hears the job's place in the queue whenever it
        changes while the job is pending."""
        live = self._live.get(job_id)
        if live is None:
            raise ValidationError(f"job_id: no job {job_id!r} waits in this process", "job_id")
        told = None
        while not live.finished.wait(WAIT_POLL_SECONDS):
            if cancel is not None and cancel.is_set():
                self.cancel(job_id)
            if on_waiting is not None:
                place = self.waiting(job_id)
                if place is not None and place != told:
                    told = place
                    on_waiting(place)
        self._live.pop(job_id, None)
        if live.error is not None:
            raise live.error
        return live.result

    def run_here(self, kind: str, spec: JobSpec, priority: str = "background"):
        """Queue a job and run it in the calling thread once it has the turn (after the running job, and after
        any waiting interactive job when the worker runs to take it); returns its result. A BaseException (e.g.
        KeyboardInterrupt) leaves the job pending in the store, so the next start resumes it, as after a kill."""
        job_id = self.submit(kind, spec, priority, inline=True)
        job = self._jobs[job_id]
        with self._cond:
            while job["state"] == "pending" and (self._busy or self._paused or (
                    self._worker is not None and self._next(interactive_only=True)[0] is not None)):
                self._cond.wait()
            mine = job["state"] == "pending"
            self._busy = self._busy or mine
        try:
            if mine:
                self._execute(job)
        finally:
            with self._cond:
                self._busy = self._busy and not mine
                self._inline.discard(job_id)
                self._cond.notify_all()
        return self.wait(job_id)

    # ------------------------------------------------------------------ the worker
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._worker is not None and self._worker.is_alive():
            return
        self._stopping.clear()
        self._worker = threading.Thread(target=self._work, name="studio-queue", daemon=True)
        self._worker.start()

    def shutdown(self, wait: bool = True, timeout: float = 60.0) -> None:
        """Stop the worker: a running job is interrupted (it resumes at the next start)."""
        if self._worker is None:
            return
        with self._cond:
            self._stopping.set()
            for job in self._running:
                self._live[job["id"]].interrupted = True
                self._live[job["id"]].cancel.set()
            self._cond.notify_all()
        if wait:
            self._worker.join(timeout)
        self._worker = None

    def _work(self) -> None:
        while True:
            with self._cond:
                job = None
                while not self._stopping.is_set():
                    if not self._busy and not self._paused:
                        job = self._pick()
                        if job is not None:
                            self._busy = True
                            break
                    self._cond.wait()
                if job is None:
                    return
            try:
                self._execute(job)
            except Exception:  # noqa: BLE001 - the worker outlives any job
                log.exception("queue job %s", job["id"])
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _order(self, interactive_only: bool = False) -> list[dict]:
        """Pending jobs the worker may take, in run order (interactive first, then queue order)."""
        jobs = [j for j in self._jobs.values() if j["state"] == "pending" and j["id"] not in self._inline]
        if interactive_only:
            jobs = [j for j in jobs if j["priority"] == "interactive"]
        return sorted(jobs, key=lambda j: (PRIORITIES.index(j["priority"]), j["order"]))

    def _next(self, interactive_only: bool = False) -> tuple[dict | None, dict | None]:
        """(the next job by the policy in the module docstring, the job it passes over for model grouping)."""
        order = self._order(interactive_only)
        if not order:
            return None, None
        head = order[0]
        if (not self.group_by_model or not self._loaded_model or head["model"] == self._loaded_model
                or head["moved"] or head["passed_over"] >= MAX_PASS_OVERS):
            return head, None
        same = [j for j in order[1:GROUP_WINDOW + 1] if j["priority"] == head["priority"]]
        match = next((j for j in same if j["model"] == self._loaded_model), None)
        return (head, None) if match is None else (match, head)

    def _pick(self, interactive_only: bool = False) -> dict | None:
        """Take the next job, counting a pass-over on the job grouping skips."""
        job, passed = self._next(interactive_only)
        if passed is not None:
            passed["passed_over"] += 1
            self.store.set_fields(passed["id"], {"passed_over": passed["passed_over"]})
        return job

    def _execute(self, job: dict) -> None:
        """Run one job (the caller holds the turn) and record how it ended."""
        kind = self._kinds.get(job["kind"])
        live = self._live.setdefault(job["id"], _Live())
        job.update(state="running", started=job["started"] or self.clock())  # stored as pending: resumes if killed
        with self._cond:
            self._running.append(job)
        self._loaded_model = job["model"] or self._loaded_model
        state, error = "done", ""
        try:
            if kind is None:
                raise ValidationError(f"kind: no runner for {job['kind']!r} jobs in this version", "kind")
            if live.cancel.is_set():
                live.result = kind.cancelled(job["payload"]) if kind.cancelled else None
                state = "cancelled"
            else:
                live.result = kind.run(job["payload"], JobContext(self, job, live))
                state = "cancelled" if live.cancel.is_set() else "done"
        except Interrupted:
            state = "pending"
        except Exception as exc:  # noqa: BLE001 - recorded on the job, raised in the waiting caller
            live.error, state, error = exc, "failed", _error_text(exc)
            log.warning("queue job %s (%s) failed: %s", job["id"], job["kind"], error)
        finally:
            with self._cond:
                self._running.remove(job)
        self._finish(job, "pending" if live.interrupted else state, error, kind)

    def _finish(self, job: dict, state: str, error: str = "", kind: JobKind | None = None) -> None:
        """Record how a job ended. A waiting page gets its result first; the record is written right after (a
        kill in between leaves the job pending, and its runner finds its work done when it runs again)."""
        live = self._written(job)
        if state == "pending":  # interrupted by the shutdown: resumes at the next start
            job["state"] = "pending"
            self.store.set_fields(job["id"], {"state": "pending", "done": job["done"], "progress": job["progress"]})
            return
        job.update(state=state, error=error, finished=self.clock())
        with self._cond:
            self._jobs.pop(job["id"], None)
            self._cond.notify_all()
        if live is not None:
            live.finished.set()
            if not live.waiter:
                self._live.pop(job["id"], None)
        self.store.set_fields(job["id"], {key: job[key] for key in ("state", "error", "started", "finished", "done",
                                                                    "total", "progress")})
        self._store_rates()
        self.store.prune()
        if kind is not None and kind.finished is not None:
            try:
                kind.finished(job["payload"])
            except Exception:  # noqa: BLE001 - clean-up never fails a finished job
                log.exception("clean-up of queue job %s", job["id"])

    def _written(self, job: dict) -> _Live | None:
        """Wait until `submit` has written the job (it may start before), so no later write is overtaken."""
        live = self._live.get(job["id"])
        if live is not None and live.stored is not None:
            live.stored.wait()
        return live

    # ------------------------------------------------------------------ inside a job
    def _image_done(self, job: dict, seconds: float, progress: dict | None, done: int | None,
                    total: int | None, durable: bool) -> None:
        job["done"] = job["done"] + 1 if done is None else done
        if total is not None:
            job["total"] = max(1, total)
        if progress is not None:
            job["progress"] = progress
        if durable:
            self._written(job)
            self.store.set_fields(job["id"], {"done": job["done"], "total": job["total"],
                                              "progress": job["progress"]})
        if seconds > 0:
            key, old = _rate_key(job), self._rates.get(_rate_key(job))
            self._rates[key] = seconds if old is None else old + RATE_WEIGHT * (seconds - old)

    def _store_rates(self) -> None:
        """Write the measured rates when one moved by more than RATE_WRITE_CHANGE since the last write."""
        if any(abs(rate - self._stored_rates.get(model, 0)) > RATE_WRITE_CHANGE * rate
               for model, rate in self._rates.items()):
            self.store.set_state(rates=self._rates)
            self._stored_rates = dict(self._rates)

    def _yield_turn(self, outer: dict) -> None:
        """Wait here while the queue is paused; then run the waiting interactive jobs in this thread (the turn's
        holder) when `outer` is a background job."""
        cancel = self._live[outer["id"]].cancel
        while True:
            with self._cond:
                while self._paused and not (self._stopping.is_set() or cancel.is_set()):
                    self._cond.wait()
                if self._stopping.is_set() or cancel.is_set() or outer["priority"] != "background":
                    return
                nxt = self._pick(interactive_only=True)
                if nxt is None:
                    return
            self._execute(nxt)
            self._loaded_model = outer["model"] or self._loaded_model

    # ------------------------------------------------------------------ the person's controls
    def _pending(self, job_id: str) -> dict:
        job = self._jobs.get(job_id)
        if job is None or job["state"] != "pending":
            raise ValidationError(f"job_id: no pending job {job_id!r} in the queue", "job_id")
        return job

    def move(self, job_id: str, where: str | int) -> list[dict]:
        """Move a pending job: "top", "up", "down", "bottom", or a 1-based position among the jobs of its
        priority. Interactive jobs always stay ahead of background ones. Returns the new list."""
        with self._cond:
            job = self._pending(job_id)
            peers = [j for j in self._order() if j["priority"] == job["priority"]]
            index = peers.index(job)
            if isinstance(where, str) and where.strip().lstrip("-").isdigit():
                where = int(where)
            if isinstance(where, int):
                target = where - 1
                if not 0 <= target < len(peers):
                    raise ValidationError(f"position must be between 1 and {len(peers)}; got {where}", "position")
            elif where in MOVES:
                target = {"top": 0, "up": max(0, index - 1), "down": min(len(peers) - 1, index + 1),
                          "bottom": len(peers) - 1}[where]
            else:
                raise ValidationError(f"where must be one of {', '.join(MOVES)} or a position; got {where!r}",
                                      "where")
            peers.insert(target, peers.pop(index))
            changes = {job_id: {"moved": True}}
            for peer, order in zip(peers, sorted(j["order"] for j in peers)):
                if peer["order"] != order:
                    peer["order"] = order
                    changes.setdefault(peer["id"], {})["order"] = order
            job["moved"] = True
            self.store.set_many(changes)
        return self.list()

    def cancel(self, job_id: str) -> dict:
        """Cancel a job: a pending one leaves the queue now, a running one stops within one step."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise ValidationError(f"job_id: no pending or running job {job_id!r}", "job_id")
            live = self._live.setdefault(job_id, _Live())
            live.cancel.set()
            running = job["state"] == "running"
            self._cond.notify_all()
        if not running:
            kind = self._kinds.get(job["kind"])
            live.result = kind.cancelled(job["payload"]) if kind and kind.cancelled else None
            self._finish(job, "cancelled", "", kind)
        return {"id": job_id, "state": "stopping" if running else "cancelled"}

    def pause(self) -> dict:
        with self._cond:
            self._paused = True
            self.store.set_state(paused=True)
        return self.status()

    def resume(self) -> dict:
        with self._cond:
            self._paused = False
            self.store.set_state(paused=False)
            self._cond.notify_all()
        return self.status()

    def set_start_state(self, state: str) -> dict:
        if state not in START_STATES:
            raise ValidationError(f"start_state must be one of {', '.join(START_STATES)}; got {state!r}",
                                  "start_state")
        self.store.set_state(start_state=state)
        return self.status()

    # ------------------------------------------------------------------ views
    def rate(self, model: str) -> float | None:
        """Measured seconds per image on `model` (the mean over models when it has none yet)."""
        rates = dict(self._rates)  # a copy: the worker adds models as it measures them
        if model in rates:
            return rates[model]
        return sum(rates.values()) / len(rates) if rates else None

    def waiting(self, job_id: str) -> "Waiting | None":
        """Where a pending job stands (None once it runs or has ended)."""
        rows = self.list()
        row = next((r for r in rows if r["id"] == job_id), None)
        if row is None or row["state"] != "pending":
            return None
        ahead = [r for r in rows if r["position"] < row["position"]]
        known = all(r["eta_seconds"] is not None for r in ahead)
        start = max((r["eta_seconds"] for r in ahead), default=0.0) if known else None
        return Waiting(row["position"], self.status()["paused"], start)

    def status(self) -> dict:
        with self._cond:
            return {"paused": self._paused, "start_state": self.store.state()["start_state"],
                    "running": len(self._running), "pending": len(self._order()) + len(self._inline)}

    def list(self) -> list[dict]:
        """Running jobs (outermost first), then pending ones in run order, each with its position (0 = running)
        and ETA: seconds until it finishes, from the measured seconds per image (None when nothing is measured)."""
        with self._cond:
            running = [dict(j, state="running" if n == len(self._running) - 1 else "yielding")
                       for n, j in enumerate(self._running)][::-1]
            inline = [self._jobs[i] for i in self._inline if self._jobs.get(i, {}).get("state") == "pending"]
            pending = [dict(j) for j in self._order() + inline]
        rows, clock, known = [], 0.0, True
        for n, job in enumerate(running + pending):
            rate = self.rate(_rate_key(job))
            known = known and rate is not None
            clock += (rate or 0) * max(0, job["total"] - job["done"])
            rows.append({"id": job["id"], "kind": job["kind"], "title": job["title"], "model": job["model"],
                         "priority": job["priority"], "owner": job["owner"], "state": job["state"],
                         "done": job["done"], "total": job["total"], "position": max(0, n - len(running) + 1),
                         "eta_seconds": round(clock, 1) if known else None, "created": job["created"],
                         "started": job["started"], "moved": job["moved"]})
        return rows

    def jobs(self, kind: str | None = None, states: tuple[str, ...] = ("pending", "running")) -> list[dict]:
        """Copies of this process's jobs of `kind` in `states` (pending and running by default)."""
        with self._cond:
            return [dict(j) for j in self._jobs.values() if (kind is None or j["kind"] == kind)
                    and j["state"] in states]

    def history(self, limit: int = 20) -> list[dict]:
        """Finished jobs, newest first."""
        done = sorted(self.store.jobs(FINISHED), key=lambda j: j.get("finished") or 0, reverse=True)
        return done[:max(0, int(limit))]
