"""The Schedule tab's dashboard data: upcoming runs over the next 24 h, images made and accepted per day by
schedules, the machine's resources now (psutil; GPU memory when CUDA is there) and the last runs with status.
Plain data (lists of dicts), cheap enough to compute on each refresh."""

from __future__ import annotations

import shutil
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import psutil

from studio.schedule_times import all_fire_times

GB = 2**30


def upcoming(schedules, hours: float = 24) -> list[dict]:
    """Every fire time of every schedule that is not paused in the next `hours`, soonest first."""
    start = schedules.now()
    rows = [{"at": t.isoformat(), "schedule": f.name, "schedule_id": f.schedule_id,
             "usual_seconds": round(f.seconds, 1)}
            for f in all_fire_times(schedules, start, start + timedelta(hours=hours)) for t in f.times]
    return sorted(rows, key=lambda r: r["at"])


def images_per_day(runs: list[dict], days: int = 14, today: date | None = None) -> list[dict]:
    """Images made and accepted by schedule runs per local day, the last `days` days (zeros included)."""
    today = today or date.today()
    first = today - timedelta(days=days - 1)
    per_day = {(first + timedelta(days=n)).isoformat(): [0, 0] for n in range(days)}
    for run in runs:
        when = run.get("finished") or run.get("started") or run.get("created")
        key = time.strftime("%Y-%m-%d", time.localtime(when)) if when else None
        if key in per_day:
            per_day[key][0] += len(run.get("images") or [])
            per_day[key][1] += len(run.get("accepted") or [])
    return [{"day": day, "made": made, "accepted": accepted} for day, (made, accepted) in per_day.items()]


def gpu_memory() -> list[dict]:
    """Used and total memory of each CUDA device; [] without CUDA (torch is imported only when asked)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        out.append({"device": f"cuda:{index}", "name": torch.cuda.get_device_name(index),
                    "used_gb": round((total - free) / GB, 2), "total_gb": round(total / GB, 2),
                    "studio_gb": round(torch.cuda.memory_allocated(index) / GB, 2)})
    return out


def resources(data_dir: Path, cpu_sample_seconds: float = 0.1) -> dict:
    """CPU %, RAM, free disk of the data folder's drive, GPU memory."""
    memory = psutil.virtual_memory()
    disk = shutil.disk_usage(data_dir)
    return {"cpu_percent": psutil.cpu_percent(interval=cpu_sample_seconds), "cpu_count": psutil.cpu_count(),
            "ram_used_gb": round((memory.total - memory.available) / GB, 2),
            "ram_total_gb": round(memory.total / GB, 2),
            "ram_percent": memory.percent, "disk_free_gb": round(disk.free / GB, 2),
            "disk_total_gb": round(disk.total / GB, 2), "gpu": gpu_memory()}


def last_runs(schedules, limit: int = 8) -> list[dict]:
    return [{"run_id": r["id"], "schedule": r["schedule_name"], "status": r["status"], "reason": r.get("reason", ""),
             "finished": datetime.fromtimestamp(r["finished"]).isoformat(timespec="seconds") if r.get("finished")
             else None, "made": len(r.get("images") or []), "accepted": len(r.get("accepted") or []),
             "contact_sheet": r.get("contact_sheet")} for r in schedules.runs(limit=limit)]


def dashboard(schedules, data_dir: Path, hours: float = 24, days: int = 14) -> dict:
    """Everything the dashboard shows, as plain data (the `schedule_dashboard` API)."""
    return {"upcoming": upcoming(schedules, hours), "per_day": images_per_day(schedules.runs(limit=10**6), days),
            "resources": resources(data_dir), "last_runs": last_runs(schedules)}
