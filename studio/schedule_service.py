"""Schedules: the autonomous artist. A schedule (cron or interval) runs a batch of generations from prompt
templates through the same device lock as the UI, optionally curates it, records a run report with a contact
sheet (studio.run_report), e-mails it when asked (studio.notify_email) and posts a webhook summary.

    save(ScheduleRequest) -> dict          validate and (re)schedule; `id` set = edit
    run_now(id) -> run id                  queue a run at once (through the scheduler's worker)
    run_once(id, trigger) -> run dict      run in the calling thread (tests, scripts)
    pause(id) / resume(id) / delete(id)
    list() / runs(schedule_id, limit)      schedules with their next run; run reports, newest first
    next_runs(cron, interval, start)       the next fire times (the tab's "next 5 runs" preview)
    start() / shutdown()                   the app starts the scheduler; rebuilds schedules, handles missed runs
                                           and resumes interrupted ones

Storage: `<data>/db/schedules.json` and `<data>/db/schedule_runs.json`, versioned JSON documents (never pickled
arguments): `{"version": 1, ...}`.

Missed-run policy (MISFIRE_GRACE_SECONDS, 15 min): a run that comes due while the app is down, or that starts late
on a busy machine, runs once (coalesced) if it is at most 15 minutes late; a later one is recorded as "missed".

Resume: a run's pending images (prompt + seed each) are written before the first image is generated and ticked
off as each is saved; at start an unfinished run continues with the images still pending, same seeds.

Queue (`use_queue`, as the app builds it): a due run is queued on the studio job queue (studio.job_queue) with
everyone's jobs; a person's job waits at most one of its images; a schedule whose previous run still waits there is
not queued twice (coalesced), and two schedules due together run one after the other, both recorded.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from studio.errors import StudioError, ValidationError, check_range
from studio.notify_email import WHEN as EMAIL_ON
from studio.prompts.templates import TemplateExpander
from studio.prompts.wildcards import Wildcards, wildcard_folders
from studio.run_report import finish_report

log = logging.getLogger(__name__)

VERSION = 1
MISFIRE_GRACE_SECONDS = 15 * 60
WEBHOOK_TIMEOUT = 5.0
CRON_FIELDS = ("minute", "hour", "day", "month", "day_of_week")
WEBHOOK_FORMATS = ("json", "discord", "slack")
NOTIFY_ON = ("both", "success", "failure")
MAX_IMAGES = 500
ACCEPTED = ("accepted", "featured")
YIELD_SECONDS = 0.05  # a pause between a run's images, so a person's job waiting on the device lock goes next


@dataclass
class ScheduleRequest:
    """One schedule. `cron` (5 crontab fields, e.g. `0 9 * * mon-fri`) or `interval_minutes`; prompts are templates
    (one per line in the tab): `{name}` draws from `variables[name]`, `{a|b|c}` picks one of the choices."""

    name: str
    cron: str = ""
    interval_minutes: float = 0
    model: str = "builtin:shapes"
    prompts: list[str] = field(default_factory=list)
    variables: dict[str, list[str]] = field(default_factory=dict)
    negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)  # style presets of the prompt library, applied in order
    negative_template: str = ""  # a negative-prompt template of the prompt library ("" none)
    images: int = 4
    seed: int = -1               # -1: random seeds every run; otherwise seed, seed+1, ... every run
    sampler: str = ""            # "": the studio's default sampler
    steps: int = 20
    width: int = 128
    height: int = 128
    curate: bool = False
    keep_only_accepted: bool = False
    upscale_top: int = 0         # after curation, upscale the K best-scored accepted images (0: none)
    upscaler: str = ""           # the Upscale tab's upscaler for them ("": its default, the built-in one if present)
    upscale_scale: float = 2.0
    min_free_gb: float = 0       # skip when the data folder's disk has less free
    skip_while_training: bool = True
    allowed_hours: str = ""      # "" any time; "9-17" or "22-6,12-13" (local hours, end excluded)
    time_budget_minutes: float = 0  # 0: no limit; otherwise stop generating after this long ("partial")
    webhook_url: str = ""
    webhook_format: str = "json"  # json (full summary) | discord ({"content"}) | slack ({"text"})
    notify_on: str = "both"       # success | failure | both
    email_on: str = "off"         # off | success | failure | both: e-mail the report (SMTP settings: notify_email)
    id: str = ""                  # empty: a new schedule

    @classmethod
    def from_dict(cls, data: dict) -> "ScheduleRequest":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------------- pure helpers
def parse_cron(expression: str, tz) -> CronTrigger:
    """A CronTrigger from 5 crontab fields; a ValidationError names the offending field."""
    parts = (expression or "").split()
    if len(parts) != 5:
        raise ValidationError(f"cron must have 5 fields (minute hour day month day_of_week); got {len(parts)} in "
                              f"{expression!r}", "cron")
    for name, value in zip(CRON_FIELDS, parts):
        try:
            CronTrigger(**{name: value}, timezone=tz)
        except ValueError as exc:
            raise ValidationError(f"cron field {name} ({value!r}) is invalid: {exc}", "cron") from None
    try:
        return CronTrigger.from_crontab(expression, timezone=tz)
    except ValueError as exc:
        raise ValidationError(f"cron {expression!r} is invalid: {exc}", "cron") from None


def parse_hours(text: str) -> list[tuple[int, int]]:
    """"9-17,22-6" -> [(9, 17), (22, 6)]; raise ValidationError naming allowed_hours."""
    spans = []
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d{1,2})-(\d{1,2})", part)
        if not m or not all(0 <= int(g) <= 24 for g in m.groups()) or m.group(1) == m.group(2):
            raise ValidationError(f"allowed_hours must look like 9-17 or 22-6,12-13 (hours 0-24); got {part!r}",
                                  "allowed_hours")
        spans.append((int(m.group(1)), int(m.group(2))))
    return spans


def hour_allowed(spans: list[tuple[int, int]], hour: int) -> bool:
    if not spans:
        return True
    return any((a <= hour < b) if a < b else (hour >= a or hour < b) for a, b in spans)


def human_time(when: datetime, now: datetime) -> str:
    delta = (when - now).total_seconds()
    if delta < 90:
        rel = f"in {max(0, int(delta))} s"
    elif delta < 5400:
        rel = f"in {delta / 60:.0f} min"
    elif delta < 2 * 86400:
        rel = f"in {delta / 3600:.1f} h"
    else:
        rel = f"in {delta / 86400:.1f} days"
    return f"{when.strftime('%a %Y-%m-%d %H:%M')} ({rel})"


class _Stopped(Exception):
    """The app is shutting down mid-run: leave the run pending for resume."""


# ---------------------------------------------------------------------- the service
class ScheduleService:
    def __init__(self, store, runs_store, generation, curation, gallery, data_dir: Path,
                 training=None, timezone=None, clock: Callable[[], float] = time.time, email=None, prompts=None,
                 upscale=None):
        self.store, self.runs_store = store, runs_store
        self.upscale = upscale  # UpscaleService: upscales a run's best accepted images (None: not offered)
        self.prompts = prompts  # the prompt library: style presets and negative templates (None: not offered)
        self.generation, self.curation, self.gallery, self.training = generation, curation, gallery, training
        self.data_dir = Path(data_dir)
        # {a|b} {name} __wildcard__: the prompt library's expander (one wildcard cache), or one of its own
        self.templates = prompts.templates if prompts is not None else TemplateExpander(
            Wildcards(wildcard_folders(self.data_dir)))
        self.clock = clock
        if timezone is None:
            from tzlocal import get_localzone
            timezone = get_localzone()
        self.tz = timezone
        self.scheduler = BackgroundScheduler(
            timezone=timezone, executors={"default": ThreadPoolExecutor(2)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": MISFIRE_GRACE_SECONDS})
        self.scheduler.add_listener(self._on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        self._run_lock = threading.Lock()   # one run at a time; a second due run waits its turn
        self._stopping = threading.Event()
        self._started = False
        self.after_image: Callable[[dict], None] | None = None  # called after each saved image (tests)
        self.queue = None  # the studio JobQueue once `use_queue` is called; without one, runs use the run lock
        self.email = email  # EmailNotifier: runs whose schedule asks for it are e-mailed

    # ------------------------------------------------------------------ time
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), self.tz)

    # ------------------------------------------------------------------ validation
    def trigger_of(self, cron: str, interval_minutes) -> CronTrigger | IntervalTrigger:
        cron = (cron or "").strip()
        if cron:
            return parse_cron(cron, self.tz)
        minutes = check_range("interval_minutes", interval_minutes or 0, 0.01, 525600, float)
        return IntervalTrigger(seconds=minutes * 60, timezone=self.tz)

    def validate(self, req: ScheduleRequest) -> ScheduleRequest:
        name = (req.name or "").strip()
        if not name or len(name) > 100:
            raise ValidationError("name must be 1 to 100 characters", "name")
        if not (req.cron or "").strip() and not req.interval_minutes:
            raise ValidationError("cron or interval_minutes must be given (e.g. cron `0 9 * * *` or 60 minutes)",
                                  "cron")
        self.trigger_of(req.cron, req.interval_minutes)
        prompts = [p.strip() for p in (req.prompts or []) if p and p.strip()]
        if not prompts:
            raise ValidationError("prompts must hold at least one template", "prompts")
        variables = {}
        for key, values in (req.variables or {}).items():
            key = str(key).strip()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValidationError(f"variables: {key!r} is not a name (letters, digits, _)", "variables")
            values = [str(v).strip() for v in values if str(v).strip()]
            if not values:
                raise ValidationError(f"variables: {key} has no values", "variables")
            variables[key] = values
        for template in prompts:
            self.templates.check(template, variables, "prompts")
        url = (req.webhook_url or "").strip()
        if url:
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValidationError(f"webhook_url must be an http:// or https:// URL; got {url!r}", "webhook_url")
        if req.webhook_format not in WEBHOOK_FORMATS:
            raise ValidationError(f"webhook_format must be one of {', '.join(WEBHOOK_FORMATS)}", "webhook_format")
        if req.notify_on not in NOTIFY_ON:
            raise ValidationError(f"notify_on must be one of {', '.join(NOTIFY_ON)}", "notify_on")
        if req.email_on not in EMAIL_ON:
            raise ValidationError(f"email_on must be one of {', '.join(EMAIL_ON)}", "email_on")
        parse_hours(req.allowed_hours)
        styles = [str(n) for n in (req.styles or []) if str(n).strip()]
        if (styles or req.negative_template) and self.prompts is None:
            raise ValidationError("styles: the prompt library is not available here", "styles")
        for style in styles:
            self.prompts.styles.get(style)  # a ValidationError names an unknown one
        if req.negative_template:
            self.prompts.negatives.get(req.negative_template)
        out = ScheduleRequest(**{**asdict(req), "name": name, "styles": styles, "cron": (req.cron or "").strip(),
                                 "prompts": prompts, "variables": variables, "webhook_url": url,
                                 "sampler": req.sampler or self.generation.default_sampler(),
                                 "images": check_range("images", req.images, 1, MAX_IMAGES, int),
                                 "seed": check_range("seed", -1 if req.seed is None else req.seed, -1, 2**32 - 1, int),
                                 "interval_minutes": float(req.interval_minutes or 0),
                                 "min_free_gb": check_range("min_free_gb", req.min_free_gb or 0, 0, 1e6, float),
                                 "time_budget_minutes": check_range("time_budget_minutes", req.time_budget_minutes or 0,
                                                                    0, 10080, float),
                                 "curate": bool(req.curate), "keep_only_accepted": bool(req.keep_only_accepted),
                                 "skip_while_training": bool(req.skip_while_training)})
        if out.keep_only_accepted and not out.curate:
            raise ValidationError("keep_only_accepted needs curate on", "keep_only_accepted")
        out = self._validate_upscale(out)
        # model, sampler, steps, size: the Generate tab's own checks (an unknown model is refused here)
        self.generation.validate(self._generation_request(out, self.templates.expand(prompts[0], 0, variables,
                                                                                      "prompts"), 0))
        return out

    def _validate_upscale(self, req: ScheduleRequest) -> ScheduleRequest:
        """Upscale top K: K in 0..images, needs curation (the best by its score), a known upscaler and a scale the
        Upscale tab takes."""
        top = check_range("upscale_top", req.upscale_top or 0, 0, req.images, int)
        if not top:
            return ScheduleRequest(**{**asdict(req), "upscale_top": 0})
        if not req.curate:
            raise ValidationError("upscale_top needs curate on (the best images by their curation score)",
                                  "upscale_top")
        if self.upscale is None:
            raise ValidationError("upscale_top: upscaling is not available here", "upscale_top")
        from studio.upscale_service import MAX_SCALE

        upscaler = self.upscale.source(req.upscaler or self.upscale.default_upscaler(), "upscaler").name
        scale = check_range("upscale_scale", req.upscale_scale, 1, MAX_SCALE, float)
        return ScheduleRequest(**{**asdict(req), "upscale_top": top, "upscaler": upscaler, "upscale_scale": scale})

    def _upscale_best(self, run: dict, req: ScheduleRequest, scores: dict[str, float], cancel) -> None:
        """Upscale the run's `upscale_top` best-scored accepted images still in the gallery; their new ids go in
        run["upscaled"], failures in its errors (the run itself still succeeds)."""
        from studio.upscale_service import UpscaleRequest

        best = sorted((i for i in run["accepted"] if i not in run["discarded"]),
                      key=lambda i: -(scores.get(i) or 0))[:req.upscale_top]
        if not best:
            return
        try:
            result = self.upscale.upscale(UpscaleRequest(upscaler=req.upscaler, scale=req.upscale_scale, ids=best,
                                                         job_id=run["id"]), cancel=cancel)
        except StudioError as exc:
            run["errors"].append(f"upscale: {exc}")
            return
        run["upscaled"] = [image.id for image in result.images]
        run["errors"] += [f"upscale: {source}: {why}" for source, why in result.failures]

    def _generation_request(self, req: ScheduleRequest, prompt: str, seed: int, run_id: str = ""):
        from studio.generation_service import GenerationRequest

        negative = req.negative_prompt
        if self.prompts is not None and (req.styles or req.negative_template):
            prompt, negative = self.prompts.prepare(prompt, negative, req.styles, req.negative_template)
        return GenerationRequest(prompt=prompt, negative_prompt=negative, model=req.model,
                                 sampler=req.sampler, steps=req.steps, width=req.width, height=req.height, seed=seed,
                                 job_id=run_id, source="schedule")

    # ------------------------------------------------------------------ schedules
    def _job_id(self, schedule_id: str) -> str:
        return f"schedule:{schedule_id}"

    def _doc(self, schedule_id: str) -> dict:
        doc = self.store.get("id", schedule_id) if schedule_id else None
        if doc is None:
            raise ValidationError(f"schedule_id: no schedule with id {schedule_id!r}", "schedule_id")
        return doc

    def get(self, schedule_id: str) -> ScheduleRequest:
        return ScheduleRequest.from_dict({**self._doc(schedule_id)["request"], "id": schedule_id})

    def save(self, req: ScheduleRequest) -> dict:
        """Validate and store a schedule (a new one, or `req.id`'s edit) and (re)schedule it."""
        req = self.validate(req)
        now = self.clock()
        if req.id:
            old = self._doc(req.id)
            doc = {**old, "request": {**asdict(req), "id": ""}, "updated": now}
        else:
            req.id = uuid.uuid4().hex[:12]
            doc = {"version": VERSION, "id": req.id, "request": {**asdict(req), "id": ""}, "paused": False,
                   "created": now, "updated": now, "next_run": None}
        self.store.upsert("id", req.id, doc)
        self._schedule(doc)
        return self._view(self._doc(req.id))

    def _schedule(self, doc: dict) -> None:
        if not self._started:
            return
        req = ScheduleRequest.from_dict(doc["request"])
        job = self.scheduler.add_job(self._start_run, self.trigger_of(req.cron, req.interval_minutes),
                                     args=[doc["id"]], id=self._job_id(doc["id"]), name=req.name,
                                     replace_existing=True)
        if doc.get("paused"):
            job.pause()
            next_run = None
        else:
            next_run = job.next_run_time.timestamp() if job.next_run_time else None
        self.store.update("id", doc["id"], {"next_run": next_run})

    def pause(self, schedule_id: str) -> dict:
        self._doc(schedule_id)
        self.store.update("id", schedule_id, {"paused": True, "next_run": None})
        if self._started and self.scheduler.get_job(self._job_id(schedule_id)):
            self.scheduler.pause_job(self._job_id(schedule_id))
        return self._view(self._doc(schedule_id))

    def resume(self, schedule_id: str) -> dict:
        doc = self._doc(schedule_id)
        doc["paused"] = False
        self.store.update("id", schedule_id, {"paused": False})
        self._schedule(doc)
        return self._view(self._doc(schedule_id))

    def delete(self, schedule_id: str) -> int:
        """Remove a schedule (its run reports stay); returns 1."""
        self._doc(schedule_id)
        if self._started and self.scheduler.get_job(self._job_id(schedule_id)):
            self.scheduler.remove_job(self._job_id(schedule_id))
        return self.store.remove("id", schedule_id)

    def _view(self, doc: dict) -> dict:
        req = doc["request"]
        job = self.scheduler.get_job(self._job_id(doc["id"])) if self._started else None
        next_time = job.next_run_time if job is not None else None
        last = self.runs(doc["id"], limit=1)
        return {"id": doc["id"], "name": req["name"],
                "when": f"cron {req['cron']}" if req["cron"] else f"every {req['interval_minutes']:g} min",
                "status": "paused" if doc.get("paused") else ("scheduled" if self._started else "stopped"),
                "next_run": next_time.isoformat() if next_time else None,
                "next_run_text": human_time(next_time, self.now()) if next_time else "",
                "last_run_status": last[0]["status"] if last else "", "request": req}

    def list(self) -> list[dict]:
        return [self._view(doc) for doc in self.store.all()]

    def next_runs(self, cron: str = "", interval_minutes: float = 0, count: int = 5,
                  start: datetime | None = None) -> list[datetime]:
        """The next `count` fire times after `start` (default now) for a cron expression or an interval."""
        trigger = self.trigger_of(cron, interval_minutes)
        now = start or self.now()
        if isinstance(trigger, IntervalTrigger):
            trigger = IntervalTrigger(seconds=trigger.interval.total_seconds(), start_date=now, timezone=self.tz)
        out, previous, now = [], None, now + timedelta(microseconds=1)  # strictly after `start`
        while len(out) < count:
            nxt = trigger.get_next_fire_time(previous, now)
            if nxt is None:
                break
            out.append(nxt)
            previous, now = nxt, nxt + timedelta(microseconds=1)
        return out

    def preview_text(self, cron: str = "", interval_minutes: float = 0) -> str:
        try:
            times = self.next_runs(cron, interval_minutes)
        except StudioError as exc:
            return f"**{exc.field}:** {exc}"
        now = self.now()
        return "**Next runs:**\n" + "\n".join(f"- {human_time(t, now)}" for t in times)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the scheduler, rebuild every schedule, apply the missed-run policy and resume interrupted runs."""
        if self._started:
            return
        self._stopping.clear()
        self.scheduler.start()
        self._started = True
        now = self.clock()
        for doc in self.store.all():
            due = doc.get("next_run")
            self._schedule(doc)
            if doc.get("paused") or not due or due > now:
                continue
            late = now - due
            if late <= MISFIRE_GRACE_SECONDS:
                self._submit(doc["id"], "late start")
            else:
                self._record_missed(doc, due, f"the app was down: due {late / 60:.0f} min ago (grace "
                                              f"{MISFIRE_GRACE_SECONDS // 60} min)")
        if self.queue is not None:
            self._requeue_unfinished()
            self.queue.start()
            return
        for run in self.runs_store.search("status", "running"):
            self.scheduler.add_job(self._resume, args=[run["id"]], id=f"resume:{run['id']}",
                                   replace_existing=True)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the scheduler; a run in progress stops after its current image and resumes at the next start."""
        if not self._started:
            return
        self._stopping.set()
        if self.queue is not None:
            self.queue.shutdown(wait=wait)
        self.scheduler.shutdown(wait=wait)
        self._started = False

    def _submit(self, schedule_id: str, trigger: str, run_id: str | None = None) -> None:
        self.scheduler.add_job(self._start_run, args=[schedule_id, trigger, run_id],
                               id=f"now:{schedule_id}:{uuid.uuid4().hex[:6]}", replace_existing=True)

    def run_now(self, schedule_id: str) -> str:
        """Queue a run of the schedule at once; returns the run id (its report fills in as it goes)."""
        doc = self._doc(schedule_id)
        run = self._new_run(doc, "manual", status="queued")
        if self.queue is not None:  # the queue's worker runs it (started with the scheduler)
            self._start_run(schedule_id, "manual", run["id"])
        elif self._started:
            self._submit(schedule_id, "manual", run["id"])
        else:  # the scheduler is not running (a script, a test): run in a thread of its own
            threading.Thread(target=self._fire, args=[schedule_id, "manual", run["id"]], daemon=True,
                             name=f"schedule-{schedule_id}").start()
        return run["id"]

    def run_once(self, schedule_id: str, trigger: str = "manual") -> dict:
        """Run the schedule now in this thread (on the studio queue's turn when there is one); returns the run
        report."""
        doc = self.store.get("id", schedule_id)
        if self.queue is None or doc is None:
            return self._fire(schedule_id, trigger)
        run = self._new_run(doc, trigger, status="queued")
        return self.queue.run_here("schedule", self._queue_spec(doc["request"], schedule_id, trigger, run["id"]))

    # ------------------------------------------------------------------ the studio queue
    def use_queue(self, queue) -> None:
        """Run schedules through the studio queue (studio.job_queue.JobQueue), with everyone's jobs: a person's
        job goes first and waits at most one image of a run; the queue's worker starts and stops with the
        scheduler."""
        from studio.job_queue import JobKind

        self.queue = queue
        queue.register("schedule", JobKind(run=self._run_queued, made=lambda payload: len(
            (self.runs_store.get("id", payload["run_id"]) or {}).get("done") or [])))

    @staticmethod
    def _queue_spec(request: dict, schedule_id: str, trigger: str, run_id: str):
        from studio.job_queue import JobSpec

        return JobSpec(payload={"schedule_id": schedule_id, "trigger": trigger, "run_id": run_id},
                       title=f"Schedule '{request['name']}' ({trigger})", model=request["model"],
                       total=request["images"])

    def _start_run(self, schedule_id: str, trigger: str = "scheduled", run_id: str | None = None):
        """The scheduler's job: queue a run on the studio queue (without one, run it here). A schedule whose
        previous run still waits in the queue is not queued again (coalesced); the queue runs one job at a time,
        so a schedule never overlaps itself and two schedules due together run one after the other."""
        doc = self.store.get("id", schedule_id)
        if self.queue is None or doc is None:
            return self._fire(schedule_id, trigger, run_id)
        if run_id is None:
            if any(j["payload"]["schedule_id"] == schedule_id for j in self.queue.jobs("schedule", ("pending",))):
                log.info("schedule %s is due while its previous run still waits in the queue: coalesced",
                         schedule_id)
                return None
            run_id = self._new_run(doc, trigger, status="queued")["id"]
        self.queue.submit("schedule", self._queue_spec(doc["request"], schedule_id, trigger, run_id))
        return run_id

    def _requeue_unfinished(self) -> None:
        """At start: queue again every queued or interrupted run the studio queue does not hold (e.g. one from
        before the queue existed), so none is lost."""
        held = {j["payload"].get("run_id") for j in self.queue.jobs("schedule")}
        for status in ("running", "queued"):
            for run in self.runs_store.search("status", status):
                if run["id"] not in held:
                    self.queue.submit("schedule", self._queue_spec(run["asked"], run["schedule_id"], run["trigger"],
                                                                   run["id"]))

    def _run_queued(self, payload: dict, turn) -> dict | None:
        """The studio queue's runner: start a queued run, or continue an interrupted one; a run stopped by the
        shutdown stays in the queue for the next start."""
        from studio.job_queue import Interrupted

        run = self.runs_store.get("id", payload["run_id"])
        if run is not None and run["status"] == "queued":
            run = self._fire(payload["schedule_id"], payload["trigger"], run["id"], turn)
        elif run is not None and run["status"] == "running":
            run = self._resume(run["id"], turn)
        if run is not None and run["status"] == "running":
            raise Interrupted()
        return run

    @staticmethod
    def _stop_early(run: dict, turn) -> str:
        """A queued run told to stop: raise _Stopped when the app shuts down (it resumes at the next start);
        when it was cancelled from the queue, say so (the run ends "partial" with the images made)."""
        if turn.interrupted or not turn.cancel.is_set():
            raise _Stopped()
        return f"cancelled from the queue: {len(run['pending'])} image(s) not made"

    def _on_event(self, event) -> None:
        if event.code == EVENT_JOB_MISSED and event.job_id.startswith("schedule:"):
            doc = self.store.get("id", event.job_id.split(":", 1)[1])
            if doc:
                self._record_missed(doc, event.scheduled_run_time.timestamp(),
                                    f"started more than {MISFIRE_GRACE_SECONDS // 60} min late")
        elif event.code == EVENT_JOB_ERROR:
            log.error("scheduled job %s raised %r", event.job_id, event.exception)

    # ------------------------------------------------------------------ runs
    def _new_run(self, doc: dict, trigger: str, status: str) -> dict:
        req = doc["request"]
        run = {"version": VERSION, "id": uuid.uuid4().hex, "schedule_id": doc["id"], "schedule_name": req["name"],
               "trigger": trigger, "status": status, "reason": "", "asked": req, "pending": [], "done": [],
               "images": [], "accepted": [], "verdicts": {}, "discarded": [], "upscaled": [], "errors": [],
               "created": self.clock(), "started": None, "finished": None, "seconds": 0.0, "notification": None}
        self.runs_store.insert(run)
        return run

    def _record_missed(self, doc: dict, due: float, reason: str) -> dict:
        run = self._new_run(doc, "scheduled", status="missed")
        run.update(reason=reason, finished=self.clock(), due=due)
        self.runs_store.update("id", run["id"], {"reason": reason, "finished": run["finished"], "due": due})
        self._notify(run)
        return run

    def _update(self, run: dict, *keys: str) -> None:
        self.runs_store.update("id", run["id"], {k: run[k] for k in keys})

    def _skip_reason(self, req: ScheduleRequest) -> str:
        if req.min_free_gb:
            free = shutil.disk_usage(self.data_dir).free / 2**30
            if free < req.min_free_gb:
                return f"free disk {free:.1f} GB < {req.min_free_gb:g} GB"
        if req.skip_while_training and self.training is not None:
            busy = self.training.busy()
            if busy:
                return f"a training run is going ({busy})"
        spans = parse_hours(req.allowed_hours)
        hour = self.now().hour
        if not hour_allowed(spans, hour):
            return f"outside the allowed hours {req.allowed_hours} (now {hour}h)"
        return ""

    def _plan(self, req: ScheduleRequest, run_id: str) -> list[dict]:
        rng = random.Random(run_id)
        seeds = ([(req.seed + i) % 2**32 for i in range(req.images)] if req.seed >= 0
                 else [rng.randrange(2**32 - 1) for _ in range(req.images)])
        return [{"index": i, "seed": seed,
                 "prompt": self.templates.expand(req.prompts[i % len(req.prompts)], seed, req.variables, "prompts")}
                for i, seed in enumerate(seeds)]

    def _fire(self, schedule_id: str, trigger: str = "scheduled", run_id: str | None = None,
              turn=None) -> dict | None:
        """One run of a schedule (the scheduler's job): never raises; every outcome is a run report."""
        doc = self.store.get("id", schedule_id)
        if doc is None:  # deleted after a Run now was queued
            if run_id:
                self.runs_store.update("id", run_id, {"status": "failed", "reason": "the schedule was deleted",
                                                      "finished": self.clock()})
            return None
        if trigger == "scheduled" and self._started:
            job = self.scheduler.get_job(self._job_id(schedule_id))
            if job is not None and job.next_run_time:
                self.store.update("id", schedule_id, {"next_run": job.next_run_time.timestamp()})
        run = self.runs_store.get("id", run_id) if run_id else None
        if run is None:
            run = self._new_run(doc, trigger, status="queued")
        try:
            req = ScheduleRequest.from_dict(doc["request"])
            with self._run_lock:
                reason = self._skip_reason(req)
                if reason:
                    run.update(status="skipped", reason=reason, finished=self.clock())
                    self._update(run, "status", "reason", "finished")
                else:
                    run["pending"] = self._plan(req, run["id"])
                    run.update(status="running", started=self.clock())
                    self._update(run, "pending", "status", "started")  # persisted before the first image
                    self._execute(run, req, turn)
        except Exception as exc:  # noqa: BLE001 - a scheduled job never takes the scheduler down
            log.exception("schedule %s failed", schedule_id)
            self._fail(run, exc)
        if run["status"] != "running":
            self._notify(run)
        return run

    def _resume(self, run_id: str, turn=None) -> dict | None:
        """Continue an interrupted run with its pending images (same prompts and seeds)."""
        run = self.runs_store.get("id", run_id)
        if run is None or run["status"] != "running":
            return run
        try:
            with self._run_lock:
                run["errors"].append(f"resumed after an interruption with {len(run['pending'])} image(s) pending")
                self._update(run, "errors")
                self._execute(run, ScheduleRequest.from_dict(run["asked"]), turn)
        except Exception as exc:  # noqa: BLE001
            log.exception("resuming run %s failed", run_id)
            self._fail(run, exc)
        if run["status"] != "running":
            self._notify(run)
        return run

    def _fail(self, run: dict, exc: Exception) -> None:
        field_name = getattr(exc, "field", None)
        message = str(exc) if isinstance(exc, StudioError) else f"{type(exc).__name__}: {exc}"
        if field_name and not message.startswith(field_name):
            message = f"{field_name}: {message}"
        run["errors"].append(message)
        run.update(status="failed", reason=message, finished=self.clock())
        self._update(run, "errors", "status", "reason", "finished")

    def _execute(self, run: dict, req: ScheduleRequest, turn=None) -> None:
        """Generate the pending images one at a time (a person's job waits at most one image), tick each off,
        then curate and finish the report. `turn` (a studio queue JobContext): between two images a person's
        waiting jobs run and a paused queue waits; its cancel stops the run."""
        segment = time.perf_counter()
        run.setdefault("upscaled", [])  # runs recorded before upscaling was offered
        budget = req.time_budget_minutes * 60
        partial = ""
        cancel = threading.Event() if turn is None else turn.cancel
        try:
            while run["pending"]:
                if self._stopping.is_set():
                    raise _Stopped()
                if budget and run["seconds"] + time.perf_counter() - segment > budget:
                    partial = (f"time budget of {req.time_budget_minutes:g} min reached: "
                               f"{len(run['pending'])} image(s) not made")
                    break
                if run["done"]:
                    time.sleep(YIELD_SECONDS)  # threading.Lock is not fair: let a waiting person's job in
                    if turn is not None and not turn.between_images():
                        partial = self._stop_early(run, turn)
                        break
                item = run["pending"][0]
                result = self.generation.generate(self._generation_request(req, item["prompt"], item["seed"],
                                                                           run["id"]), cancel=cancel)
                if not result.images:
                    if turn is None:
                        raise _Stopped()
                    partial = self._stop_early(run, turn)
                    break
                image = result.images[0]
                run["pending"].pop(0)
                run["done"].append({**item, "image_id": image.id, "path": str(image.path)})
                run["images"].append(image.id)
                self._update(run, "pending", "done", "images")
                if turn is not None:
                    turn.image_done(done=len(run["done"]), total=len(run["done"]) + len(run["pending"]),
                                    durable=False)  # the run record above is the durable one
                if self.after_image is not None:
                    self.after_image(run)
        except _Stopped:
            run["seconds"] += time.perf_counter() - segment
            self._update(run, "seconds")
            return  # stays "running": resumed at the next start
        if req.curate and run["images"]:
            report = self.curation.run(self._curation_request(run["images"]))
            scores = {}
            for record in report.records:
                run["verdicts"][record["id"]] = record.get("verdict")
                scores[record["id"]] = record.get("score")
            run["accepted"] = [i for i in run["images"] if run["verdicts"].get(i) in ACCEPTED]
            run["errors"] += [f"curation: {e['image_path']}: {e['error']}" for e in report.errors]
            if req.keep_only_accepted:
                for image_id in run["images"]:
                    if image_id not in run["accepted"]:
                        self._discard(image_id)
                        run["discarded"].append(image_id)
            if req.upscale_top and self.upscale is not None:
                self._upscale_best(run, req, scores, cancel)
        if partial:
            run["errors"].append(partial)
        run["seconds"] += time.perf_counter() - segment
        run.update(status="partial" if partial else "succeeded", reason=partial, finished=self.clock())
        self._update(run, "verdicts", "accepted", "discarded", "upscaled", "errors", "seconds", "status", "reason",
                     "finished")

    @staticmethod
    def _curation_request(ids: list[str]):
        from studio.curation_service import CurationRequest

        return CurationRequest(ids=list(ids))

    def _discard(self, image_id: str) -> None:
        """Keep-only-accepted: move a rejected image to the gallery's trash (restorable for 30 days)."""
        if self.gallery.get(image_id) is not None:
            self.gallery.trash([image_id])

    # ------------------------------------------------------------------ reports
    def runs(self, schedule_id: str | None = None, limit: int = 50) -> list[dict]:
        """Run reports, newest first (pending lists left out)."""
        docs = self.runs_store.search("schedule_id", schedule_id) if schedule_id else self.runs_store.all()
        docs.sort(key=lambda r: r.get("created") or 0, reverse=True)
        return docs[:max(0, int(limit))]

    def run(self, run_id: str) -> dict | None:
        return self.runs_store.get("id", run_id)

    def run_images(self, run_id: str) -> list[tuple[str, str]]:
        """(file, caption) of a run's images still in the gallery, with their verdicts."""
        run = self.run(run_id)
        if run is None:
            raise ValidationError(f"run_id: no run with id {run_id!r}", "run_id")
        out = []
        for item in run["done"]:
            record = self.gallery.get(item["image_id"])
            if record is None:
                continue
            verdict = run["verdicts"].get(item["image_id"])
            out.append((str(self.gallery.path_of(record)),
                        f"seed {item['seed']}" + (f" · {verdict}" if verdict else "")))
        return out

    # ------------------------------------------------------------------ notifications
    @staticmethod
    def summary(run: dict) -> dict:
        text = (f"Schedule '{run['schedule_name']}' run {run['status']}: {len(run['images'])} image(s) made, "
                f"{len(run['accepted'])} accepted, {run['seconds']:.1f} s"
                + (f" ({run['reason']})" if run.get("reason") else ""))
        return {"event": "schedule_run", "schedule": run["schedule_name"], "schedule_id": run["schedule_id"],
                "run_id": run["id"], "status": run["status"], "trigger": run["trigger"],
                "images_made": len(run["images"]), "images_accepted": len(run["accepted"]),
                "image_ids": run["images"], "accepted_ids": run["accepted"], "seconds": round(run["seconds"], 2),
                "errors": run["errors"], "reason": run.get("reason", ""), "text": text}

    def _report(self, run: dict) -> None:
        """Save the run's contact sheet and e-mail its report when asked (studio.run_report)."""
        run.update(finish_report(run, self.data_dir, self.curation, self.email))
        self._update(run, "contact_sheet", "email", "errors")

    def _notify(self, run: dict) -> None:
        """Report the run (contact sheet, e-mail), then POST its summary to its webhook when asked; an error is
        recorded on the run, never raised."""
        self._report(run)
        asked = run["asked"]
        url = asked.get("webhook_url")
        success = run["status"] == "succeeded"
        wanted = asked.get("notify_on", "both")
        if not url or (wanted == "success" and not success) or (wanted == "failure" and success):
            return
        summary = self.summary(run)
        body = {"json": summary, "discord": {"content": summary["text"]},
                "slack": {"text": summary["text"]}}.get(asked.get("webhook_format", "json"), summary)
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "ai-artist-studio"})
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
                note = {"ok": True, "status": response.status, "at": self.clock()}
        except (urllib.error.URLError, OSError, ValueError) as exc:
            note = {"ok": False, "error": f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", "at": self.clock()}
            log.warning("webhook of run %s failed: %s", run["id"], note["error"])
        run["notification"] = note
        self.runs_store.update("id", run["id"], {"notification": note})
