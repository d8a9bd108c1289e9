"""A schedule run's report beyond its record: the readable text (the tab's report and the e-mail body), the
contact sheet saved beside it and the e-mail that carries both. Errors are recorded on the run, never raised."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from studio.contact_sheet import contact_sheet, run_tiles, save_sheet, sheet_path
from studio.notify_email import wanted

log = logging.getLogger(__name__)


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def report_text(run: dict) -> str:
    """The run in a few Markdown lines: what was asked, made, accepted and why, time, errors, notifications."""
    asked = run.get("asked") or {}
    verdicts = run.get("verdicts") or {}
    counts: dict[str, int] = {}
    for verdict in verdicts.values():
        counts[verdict or "unscored"] = counts.get(verdict or "unscored", 0) + 1
    lines = [
        f"### {run['schedule_name']}: run {run['status']}" + (f" ({run['reason']})" if run.get("reason") else ""),
        f"- **Run:** `{run['id']}` · {run['trigger']} · started {_when(run.get('started') or run.get('created'))}"
        f" · finished {_when(run.get('finished'))} · {run.get('seconds') or 0:.1f} s",
        f"- **Asked:** {asked.get('images', '?')} image(s) of {asked.get('model', '?')}, "
        f"{asked.get('steps', '?')} steps, {asked.get('width', '?')}x{asked.get('height', '?')}; prompts: "
        + "; ".join(f"`{p}`" for p in asked.get("prompts") or []),
        f"- **Made:** {len(run.get('images') or [])} · **accepted:** {len(run.get('accepted') or [])}"
        + (" · verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) if counts else "")
        + (f" · {len(run['discarded'])} moved to the trash" if run.get("discarded") else "")
        + (f" · the best {len(run['upscaled'])} upscaled ({asked.get('upscaler')}, "
           f"x{asked.get('upscale_scale', 0):g})" if run.get("upscaled") else ""),
    ]
    if run.get("errors"):
        lines.append("- **Errors:** " + "; ".join(run["errors"]))
    for key, label in (("notification", "Webhook"), ("email", "E-mail")):
        note = run.get(key)
        if note:
            lines.append(f"- **{label}:** " + ("sent" if note.get("ok") else f"failed: {note.get('error')}"))
    return "\n".join(lines)


def write_contact_sheet(run: dict, data_dir: Path, curation=None) -> Path | None:
    """Save the run's contact sheet as `<data>/reports/<run id>.jpg`; None when the run has no image left."""
    def score_of(image_id):
        record = curation.record(image_id) if curation is not None else None
        return (record or {}).get("score")

    tiles = run_tiles(run, data_dir, score_of)
    if not tiles:
        return None
    made, accepted = len(run.get("images") or []), len(run.get("accepted") or [])
    title = (f"{run['schedule_name']} · {run['status']} · {made} made, {accepted} accepted · "
             f"{_when(run.get('finished'))}")
    return save_sheet(contact_sheet(tiles, title), sheet_path(data_dir, run["id"]))


def email_report(notifier, run: dict, sheet: Path | None) -> dict | None:
    """E-mail the report (the sheet attached) when the schedule asks for it; the delivery note, or None."""
    when = (run.get("asked") or {}).get("email_on", "off")
    if notifier is None or not wanted(when, run["status"]):
        return None
    made, accepted = len(run.get("images") or []), len(run.get("accepted") or [])
    subject = f"[AI Artist Studio] {run['schedule_name']}: run {run['status']} ({made} made, {accepted} accepted)"
    note = notifier.send(subject, report_text(run).replace("**", ""), [sheet] if sheet else [])
    if not note["ok"]:
        log.warning("e-mail report of run %s failed: %s", run["id"], note["error"])
    return note


def finish_report(run: dict, data_dir: Path, curation=None, notifier=None) -> dict:
    """Contact sheet, then e-mail: the run fields to store (`contact_sheet` relative to the data dir, `email`,
    and `errors` with a sheet that could not be made)."""
    errors = list(run.get("errors") or [])
    sheet = None
    try:
        sheet = write_contact_sheet(run, data_dir, curation)
    except (OSError, ValueError) as exc:
        errors.append(f"contact sheet: {type(exc).__name__}: {exc}")
    relative = sheet.relative_to(data_dir).as_posix() if sheet else None
    note = email_report(notifier, {**run, "errors": errors, "contact_sheet": relative}, sheet)
    return {"contact_sheet": relative, "email": note, "errors": errors}
