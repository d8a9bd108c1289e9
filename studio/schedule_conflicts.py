"""Conflicts between schedules, checked when one is saved: over the next 7 days, does it fire in the same minute
as another schedule, or while another's run is usually still going (its usual duration from its run reports)?
Does it usually run longer than the gap between its own fire times? Schedules never run at the same time (one
run at a time): a collision means the later one starts late, an overrun means the next fire is skipped."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime, timedelta

from studio.schedule_times import FireTimes, all_fire_times

WINDOW_DAYS = 7


@dataclass
class Conflict:
    other_id: str      # the schedule itself for an overrun
    other_name: str
    kind: str          # "same minute" | "overlap" | "overrun"
    first: datetime
    count: int
    message: str


def _minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def collisions(mine: FireTimes, other: FireTimes) -> tuple[list[datetime], str]:
    """My fire times that meet the other's (same minute, or within either's usual run), and the first kind."""
    theirs = [t.timestamp() for t in other.times]
    hits, kind = [], ""
    for t in mine.times:
        ts = t.timestamp()
        lo = bisect.bisect_right(theirs, ts - max(other.seconds, 60))
        hi = bisect.bisect_left(theirs, ts + max(mine.seconds, 60))
        for b in theirs[lo:hi]:
            same = _minute(datetime.fromtimestamp(b, t.tzinfo)) == _minute(t)
            overlap = b < ts + mine.seconds and ts < b + other.seconds
            if same or overlap:
                hits.append(t)
                kind = kind or ("same minute" if same else "overlap")
                break
    return hits, kind


def overrun(mine: FireTimes) -> float:
    """The shortest gap between two of my fire times when my runs usually take longer; 0 otherwise."""
    gaps = [(b - a).total_seconds() for a, b in zip(mine.times, mine.times[1:])]
    return min(gaps) if gaps and mine.seconds > min(gaps) else 0.0


def find_conflicts(schedules, schedule_id: str, days: float = WINDOW_DAYS) -> list[Conflict]:
    """The conflicts of a saved schedule with the others (and with itself), over the next `days` days."""
    start = schedules.now()
    every = all_fire_times(schedules, start, start + timedelta(days=days))
    mine = next((f for f in every if f.schedule_id == schedule_id), None)
    if mine is None or not mine.times:
        return []
    out = []
    gap = overrun(mine)
    if gap:
        out.append(Conflict(mine.schedule_id, mine.name, "overrun", mine.times[0], len(mine.times),
                            f"'{mine.name}' usually runs {_duration(mine.seconds)} but fires every "
                            f"{_duration(gap)}: a run that comes due while the previous one is still going is "
                            f"skipped (one run of a schedule at a time)."))
    for other in every:
        if other.schedule_id == schedule_id:
            continue
        hits, kind = collisions(mine, other)
        if not hits:
            continue
        usual = f" (its runs usually take {_duration(other.seconds)})" if kind == "overlap" else ""
        out.append(Conflict(other.schedule_id, other.name, kind, hits[0], len(hits),
                            f"'{mine.name}' collides with '{other.name}'{usual} {len(hits)} time(s) in the next "
                            f"{days:g} days, first {hits[0].strftime('%a %Y-%m-%d %H:%M')} ({kind}): both will run, "
                            f"one after the other (the queue runs one job at a time), so one of them starts late."))
    return out
