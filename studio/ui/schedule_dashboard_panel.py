"""The Schedule tab's dashboard panel: the machine's resources now, upcoming runs over the next 24 h (a timeline),
images made and accepted per day by schedules (bars), the last runs and their contact sheets. Filled on page
load and by its Refresh button (never on a timer: it samples the CPU)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from studio.schedule_dashboard import dashboard
from studio.ui.common import PLUMBING, LoadEvent

STATUS_MARK = {"succeeded": "✅", "partial": "🟡", "failed": "❌", "skipped": "⏭", "missed": "⏰",
               "running": "⏳", "queued": "⏳"}


def resources_text(res: dict) -> str:
    gpus = "; ".join(f"{g['device']} {g['used_gb']:.1f}/{g['total_gb']:.1f} GB" for g in res["gpu"]) or "none"
    return (f"**Now:** CPU {res['cpu_percent']:.0f}% of {res['cpu_count']} cores · RAM {res['ram_used_gb']:.1f}/"
            f"{res['ram_total_gb']:.1f} GB ({res['ram_percent']:.0f}%) · disk free {res['disk_free_gb']:.1f} GB of "
            f"{res['disk_total_gb']:.0f} GB · GPU memory: {gpus}")


def timeline_frame(upcoming: list[dict]) -> pd.DataFrame:
    times = pd.to_datetime([r["at"] for r in upcoming], utc=True)  # true instants: the browser shows local time
    return pd.DataFrame({"time": times, "schedule": [r["schedule"] for r in upcoming]}, columns=["time", "schedule"])


def per_day_frame(per_day: list[dict]) -> pd.DataFrame:
    """Made and accepted per day; days shown as month-day (12-06), so two weeks of labels fit the plot."""
    rows = [{"day": d["day"][5:], "images": d[kind], "kind": kind} for d in per_day for kind in ("made", "accepted")]
    return pd.DataFrame(rows, columns=["day", "images", "kind"])


def last_runs_text(runs: list[dict]) -> str:
    if not runs:
        return "**Last runs:** none yet"
    return "**Last runs:**\n" + "\n".join(
        f"- {STATUS_MARK.get(r['status'], '')} {r['schedule']} · {r['status']}"
        + (f" ({r['reason']})" if r["reason"] else "") + f" · {r['made']} made, {r['accepted']} accepted · "
        + (r["finished"] or "not finished") for r in runs)


def latest_sheets(runs: list[dict], data_dir: Path) -> list[tuple[str, str]]:
    """(file, caption) of the last runs' contact sheets still on disk."""
    files = [(Path(data_dir) / r["contact_sheet"], r) for r in runs if r.get("contact_sheet")]
    return [(str(f), f"{r['schedule']} · {r['status']} · {r['finished'] or ''}") for f, r in files if f.exists()]


def create_dashboard(schedules, data_dir) -> tuple[LoadEvent, dict]:
    """Build the panel where it is called; returns its on-load event and its API (`schedule_dashboard`)."""
    with gr.Accordion("Dashboard", open=True):
        with gr.Row():
            resources = gr.Markdown(elem_id="schedule-resources")
            refresh = gr.Button("Refresh dashboard", scale=0, elem_id="schedule-dashboard-refresh")
        with gr.Row():
            timeline = gr.ScatterPlot(x="time", y="schedule", color="schedule", title="Upcoming runs (next 24 h)",
                                      x_title="time", y_title="", height=240, elem_id="schedule-timeline")
            per_day = gr.BarPlot(x="day", y="images", color="kind", title="Images per day from schedules",
                                 x_title="", y_title="images", height=240, elem_id="schedule-per-day")
        with gr.Row():
            last = gr.Markdown(elem_id="schedule-last-runs")
            sheets = gr.Gallery(label="Latest contact sheets", columns=3, height=220, interactive=False,
                                elem_id="schedule-latest-sheets")

    def refresh_all():
        data = dashboard(schedules, data_dir)
        return (resources_text(data["resources"]), timeline_frame(data["upcoming"]), per_day_frame(data["per_day"]),
                last_runs_text(data["last_runs"]), latest_sheets(data["last_runs"], data_dir))

    def schedule_dashboard() -> dict:
        """Upcoming runs (next 24 h), images made/accepted per day, resources now and the last runs."""
        return dashboard(schedules, data_dir)

    outputs = [resources, timeline, per_day, last, sheets]
    refresh.click(refresh_all, None, outputs, queue=False, **PLUMBING)
    return LoadEvent(refresh_all, [], outputs), {"schedule_dashboard": schedule_dashboard}
