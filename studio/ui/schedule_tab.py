"""Schedule tab: the autonomous artist. Create or edit a schedule (cron or interval, prompt templates with
variables, conditions, webhook, e-mail) with a live "next 5 runs" preview and a warning when it collides with another
schedule; list schedules with their next run; Run now, Pause, Resume, Delete; a timeline of past runs, a run's
images, report and contact sheet; the dashboard (schedule_dashboard_panel)."""

from __future__ import annotations

import time

import gradio as gr

from studio.errors import ValidationError
from studio.run_report import report_text
from studio.schedule_conflicts import find_conflicts
from studio.schedule_service import EMAIL_ON, NOTIFY_ON, WEBHOOK_FORMATS, ScheduleRequest
from studio.ui.common import PLUMBING, Form, LoadEvent, Tab, user_errors
from studio.ui.schedule_dashboard_panel import create_dashboard

SCHEDULE_COLUMNS = ["id", "name", "when", "next run", "status", "last run"]
RUN_COLUMNS = ["run", "schedule", "trigger", "status", "started", "duration s", "made", "accepted", "errors"]


def parse_variables(text: str) -> dict[str, list[str]]:
    """"color: red, blue" lines (or `|` between values) -> {"color": ["red", "blue"]}."""
    out = {}
    for n, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise ValidationError(f"variables line {n} must look like `color: red, blue, green`; got {line!r}",
                                  "variables")
        name, values = line.split(":", 1)
        sep = "|" if "|" in values else ","
        out[name.strip()] = [v.strip() for v in values.split(sep) if v.strip()]
    return out


def variables_text(variables: dict) -> str:
    return "\n".join(f"{k}: {', '.join(v)}" for k, v in (variables or {}).items())


def schedule_rows(schedules) -> list[list]:
    return [[v["id"], v["name"], v["when"], v["next_run_text"] or "-", v["status"], v["last_run_status"] or "-"]
            for v in schedules.list()]


def run_rows(schedules, schedule_id: str | None = None) -> list[list]:
    rows = []
    for r in schedules.runs(schedule_id or None, limit=100):
        started = r.get("started") or r.get("created")
        errors = "; ".join(r.get("errors") or [])
        note = r.get("notification") or {}
        if note and not note.get("ok"):
            errors = "; ".join(x for x in (errors, f"webhook: {note.get('error')}") if x)
        mail = r.get("email") or {}
        if mail and not mail.get("ok"):
            errors = "; ".join(x for x in (errors, f"e-mail: {mail.get('error')}") if x)
        rows.append([r["id"][:12], r["schedule_name"], r["trigger"], r["status"] + (f": {r['reason']}"
                     if r.get("reason") and r["status"] in ("skipped", "missed") else ""),
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "-",
                     round(r.get("seconds") or 0, 1), len(r.get("images") or []), len(r.get("accepted") or []),
                     errors])
    return rows


def create_tab(services) -> Tab:
    schedules, generation = services.schedules, services.generation
    models = services.models.choices()
    with gr.Tab("Schedule", id="schedule"):
        dashboard_load, dashboard_api = create_dashboard(schedules, services.settings.data_dir)
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    name = gr.Textbox(label="Name", value="my artist", scale=2, elem_id="schedule-name")
                    cron = gr.Textbox(label="Cron (minute hour day month day-of-week)", value="0 9 * * *", scale=2,
                                      placeholder="0 9 * * mon-fri", elem_id="schedule-cron")
                    interval = gr.Number(0, label="or every N minutes (cron empty)", minimum=0, scale=1)
                prompts = gr.Textbox(label="Prompt templates (one per line; {variable}, {a|b|c})", lines=3,
                                     elem_id="schedule-prompts",
                                     value="a {color} {circle|square|triangle} on a {background} background")
                variables = gr.Textbox(label="Variables (one per line: name: value, value, ...)", lines=3,
                                       value="color: red, green, blue, yellow\nbackground: white, black")
                negative = gr.Textbox(label="Negative prompt", lines=1)
                with gr.Row():
                    styles = gr.Dropdown(services.prompts.styles.names(), value=[], multiselect=True,
                                         label="Styles (prompt library)")
                    negatives = [("none", "")] + [(n, n) for n in services.prompts.negatives.names()]
                    negative_template = gr.Dropdown(negatives, value="", label="Negative template")
                with gr.Row():
                    model = gr.Dropdown(models, value=services.models.default_model(services.settings.model)
                                        or (models[0] if models else None), label="Model", allow_custom_value=True)
                    images = gr.Slider(1, 100, value=4, step=1, label="Images per run")
                    seed = gr.Number(-1, label="Seed (-1 = random each run)", precision=0)
                with gr.Row():
                    sampler = gr.Dropdown(generation.samplers(), value=generation.default_sampler(), label="Sampler")
                    steps = gr.Slider(1, 150, value=20, step=1, label="Steps")
                    width = gr.Slider(64, 2048, value=128, step=8, label="Width", elem_id="schedule-width")
                    height = gr.Slider(64, 2048, value=128, step=8, label="Height", elem_id="schedule-height")
                with gr.Row():
                    curate = gr.Checkbox(False, label="Curate after")
                    keep = gr.Checkbox(False, label="Keep only accepted")
                    training = gr.Checkbox(True, label="Skip while a training runs")
                upscalers = services.upscale.choices() if services.upscale is not None else []
                with gr.Row(visible=bool(upscalers)):
                    upscale_top = gr.Slider(0, 100, value=0, step=1, label="Upscale the best K (0 = none)",
                                            info="the K accepted with the best curation score; needs Curate after",
                                            elem_id="schedule-upscale-top")
                    upscaler = gr.Dropdown([("Upscale tab's default", "")] + upscalers, value="", label="Upscaler")
                    upscale_scale = gr.Slider(1, 8, value=2, step=0.5, label="Upscale by")
                with gr.Accordion("Conditions and notifications", open=False):
                    with gr.Row():
                        min_free = gr.Number(0, label="Min free disk (GB)", minimum=0)
                        hours = gr.Textbox(label="Allowed hours (e.g. 22-6; empty = any)")
                        budget = gr.Number(0, label="Time budget per run (min, 0 = none)", minimum=0)
                    with gr.Row():
                        webhook = gr.Textbox(label="Webhook URL (http/https)", scale=3)
                        hook_format = gr.Dropdown(list(WEBHOOK_FORMATS), value="json", label="Body")
                        notify = gr.Dropdown(list(NOTIFY_ON), value="both", label="Notify on")
                        email_on = gr.Dropdown(list(EMAIL_ON), value="off", label="E-mail the report",
                                               info="SMTP settings: Models tab")
                schedule_id = gr.Textbox(label="Editing schedule id (empty = a new schedule)")
            with gr.Column(scale=2):
                preview = gr.Markdown(elem_id="schedule-preview")
                save = gr.Button("Save schedule", variant="primary", elem_id="schedule-save")
                status = gr.Markdown(elem_id="schedule-status")
        schedule_table = gr.Dataframe(headers=SCHEDULE_COLUMNS, interactive=False, label="Schedules",
                                      elem_id="schedule-table")
        with gr.Row():
            pick = gr.Dropdown([], label="Schedule", scale=3, allow_custom_value=True)
            run_now = gr.Button("Run now", variant="primary", scale=1, elem_id="schedule-run-now")
            pause = gr.Button("Pause", scale=1)
            resume = gr.Button("Resume", scale=1)
            edit = gr.Button("Edit", scale=1)
            delete = gr.Button("Delete", variant="stop", scale=1)
        runs_table = gr.Dataframe(headers=RUN_COLUMNS, interactive=False, label="Runs (newest first)",
                                  elem_id="schedule-runs")
        with gr.Row():
            run_pick = gr.Dropdown([], label="Run", scale=3, allow_custom_value=True, elem_id="schedule-run-pick")
            refresh = gr.Button("Refresh", scale=1, elem_id="schedule-refresh")
            open_run = gr.Button("Open in Gallery", scale=1, elem_id="schedule-open-run")
        run_gallery = gr.Gallery(columns=8, height=300, format="png", interactive=False, label="The run's images",
                                 elem_id="schedule-run-images")
        with gr.Row():
            run_report = gr.Markdown(elem_id="schedule-run-report")
            run_sheet = gr.Image(label="Contact sheet", type="filepath", interactive=False, height=300,
                                 elem_id="schedule-run-sheet")
        timer = gr.Timer(5)

    form = Form(name=name, cron=cron, interval_minutes=interval, model=model, prompts=prompts, variables=variables,
                negative_prompt=negative, styles=styles, negative_template=negative_template, images=images, seed=seed,
                sampler=sampler, steps=steps, width=width,
                height=height, curate=curate, keep_only_accepted=keep, upscale_top=upscale_top, upscaler=upscaler,
                upscale_scale=upscale_scale, skip_while_training=training,
                min_free_gb=min_free, allowed_hours=hours, time_budget_minutes=budget, webhook_url=webhook,
                webhook_format=hook_format, notify_on=notify, email_on=email_on, id=schedule_id)

    def choices():
        return [(f"{v['name']} ({v['id']})", v["id"]) for v in schedules.list()]

    def run_choices():
        return [(f"{r['schedule_name']} · {r['status']} · {r['id'][:8]}", r["id"]) for r in schedules.runs(limit=50)]

    def tables(selected=None):
        options = choices()
        ids = [v for _, v in options]
        selected = selected if selected in ids else (ids[0] if ids else None)
        return (schedule_rows(schedules), gr.update(choices=options, value=selected), run_rows(schedules),
                gr.update(choices=run_choices()))

    listing = [schedule_table, pick, runs_table, run_pick]

    @form.handler
    def on_save(values: dict):
        values = dict(values)
        values["prompts"] = [p for p in (values.get("prompts") or "").splitlines() if p.strip()]
        values["variables"] = parse_variables(values.get("variables") or "")
        values["interval_minutes"] = values.get("interval_minutes") or 0
        values["seed"] = -1 if values.get("seed") is None else values["seed"]
        saved = schedules.save(ScheduleRequest(**values))
        text = f"Saved **{saved['name']}** (`{saved['id']}`); next run: {saved['next_run_text'] or '-'}"
        for conflict in find_conflicts(schedules, saved["id"]):
            gr.Warning(conflict.message)
            text += f"\n\n⚠ {conflict.message}"
        return (text, saved["id"], *tables(saved["id"]))

    @user_errors
    def on_run_now(schedule_id: str):
        """Run a schedule at once; its run appears in the runs table."""
        run_id = schedules.run_now(schedule_id)
        return (f"Started run `{run_id[:12]}`", *tables(schedule_id))

    @user_errors
    def on_pause(schedule_id: str):
        view = schedules.pause(schedule_id)
        return (f"Paused **{view['name']}**", *tables(schedule_id))

    @user_errors
    def on_resume(schedule_id: str):
        view = schedules.resume(schedule_id)
        return (f"Resumed **{view['name']}**; next run: {view['next_run_text'] or '-'}", *tables(schedule_id))

    @user_errors
    def on_delete(schedule_id: str):
        schedules.delete(schedule_id)
        return (f"Deleted `{schedule_id}` (its run reports are kept)", *tables())

    @user_errors
    def on_edit(schedule_id: str):
        """The form filled with a saved schedule (prompts one per line, variables as `name: a, b` lines)."""
        req = schedules.get(schedule_id)
        shown = {"prompts": "\n".join(req.prompts), "variables": variables_text(req.variables)}
        return tuple(shown.get(name, getattr(req, name)) for name in form.names)

    @user_errors
    def on_run_pick(run_id):
        if not run_id:
            return [], "", None
        run = schedules.run(run_id) or {}
        sheet = services.settings.data_dir / run["contact_sheet"] if run.get("contact_sheet") else None
        return (schedules.run_images(run_id), report_text(run) if run else "",
                str(sheet) if sheet and sheet.exists() else None)

    def on_preview(cron_text, minutes):
        return schedules.preview_text(cron_text, minutes or 0)

    def schedule_list() -> list[dict]:
        """Every schedule with its next run time and status."""
        return [{k: v for k, v in view.items()} for view in schedules.list()]

    def schedule_runs(schedule_id: str = "", limit: int = 20) -> list[dict]:
        """Run reports, newest first (a schedule's only when `schedule_id` is given)."""
        return [{k: v for k, v in r.items() if k != "pending"} for r in schedules.runs(schedule_id or None, limit)]

    actions = [status, *listing]
    save.click(on_save, form.inputs, [status, schedule_id, *listing], api_name="schedule_save", queue=False)
    run_now.click(on_run_now, pick, actions, api_name="schedule_run_now", queue=False)
    pause.click(on_pause, pick, actions, api_name="schedule_pause", queue=False)
    resume.click(on_resume, pick, actions, api_name="schedule_resume", queue=False)
    delete.click(on_delete, pick, actions, api_name="schedule_delete", queue=False)
    edit.click(on_edit, pick, form.inputs, queue=False, **PLUMBING)
    gr.on([cron.change, interval.change], on_preview, [cron, interval], preview, queue=False,
          show_progress="hidden", **PLUMBING)
    run_pick.change(on_run_pick, run_pick, [run_gallery, run_report, run_sheet], queue=False, **PLUMBING)
    refresh.click(lambda p: tables(p), pick, listing, queue=False, **PLUMBING)
    timer.tick(lambda p: (schedule_rows(schedules), run_rows(schedules)), pick, [schedule_table, runs_table],
               queue=False, show_progress="hidden", **PLUMBING)
    return Tab("Schedule",
               on_load=[LoadEvent(lambda: tables(), [], listing), LoadEvent(on_preview, [cron, interval], preview),
                        dashboard_load],
               api={"schedule_list": schedule_list, "schedule_runs": schedule_runs, **dashboard_api},
               components={"run_pick": run_pick, "open_run": open_run, "prompts": prompts,
                           "negative_prompt": negative, "id": schedule_id})
