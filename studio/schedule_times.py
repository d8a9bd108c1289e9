"""When schedules fire over a window of time, from their APScheduler triggers (the dashboard's timeline and the
conflict check), and how long a schedule's runs usually take (from its run reports)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from apscheduler.triggers.interval import IntervalTrigger

MAX_TIMES = 20_000  # a schedule every minute for two weeks
TIMED_STATUSES = ("succeeded", "partial")


@dataclass
class FireTimes:
    schedule_id: str
    name: str
    times: list[datetime]
    seconds: float  # a run's usual duration, 0 when it has not run yet


def trigger_times(trigger, start: datetime, end: datetime, limit: int = MAX_TIMES) -> list[datetime]:
    """Fire times in [start, end], asking the trigger for the next one again and again."""
    out, previous, now = [], None, start
    while len(out) < limit:
        nxt = trigger.get_next_fire_time(previous, now)
        if nxt is None or nxt > end:
            break
        out.append(nxt)
        previous, now = nxt, nxt + timedelta(microseconds=1)
    return out


def usual_seconds(runs: list[dict], last: int = 10) -> float:
    """The median duration of the last `last` runs that made images; 0 without any."""
    durations = [r.get("seconds") or 0 for r in runs if r.get("status") in TIMED_STATUSES][:last]
    return float(statistics.median(durations)) if durations else 0.0


def schedule_times(schedules, view: dict, start: datetime, end: datetime) -> list[datetime]:
    """One schedule's fire times in [start, end]: a cron as its trigger says; an interval counted from the
    scheduler's next run (the interval is anchored where the job was added), or from `start` when not started."""
    req = view["request"]
    trigger = schedules.trigger_of(req.get("cron", ""), req.get("interval_minutes", 0))
    if isinstance(trigger, IntervalTrigger):
        first = datetime.fromisoformat(view["next_run"]) if view.get("next_run") else start + trigger.interval
        trigger = IntervalTrigger(seconds=trigger.interval.total_seconds(), start_date=first, timezone=schedules.tz)
    return trigger_times(trigger, start, end)


def all_fire_times(schedules, start: datetime, end: datetime) -> list[FireTimes]:
    """Every schedule that is not paused, with its fire times in [start, end] and usual run duration."""
    out = []
    for view in schedules.list():
        if view["status"] == "paused":
            continue
        out.append(FireTimes(view["id"], view["name"], schedule_times(schedules, view, start, end),
                             usual_seconds(schedules.runs(view["id"], limit=50))))
    return out
