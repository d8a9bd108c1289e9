"""Models / Settings tab: loaded models, their memory, cache hits and misses; unload one; the SMTP settings for
e-mailed schedule reports."""

from __future__ import annotations

import gradio as gr

from studio.ui.common import PLUMBING, LoadEvent, Tab, user_errors
from studio.ui.email_settings_panel import create_email_settings

COLUMNS = ["model", "kind", "MB", "in use", "hits", "load s", "shares weights with"]


def _mb(n: int) -> float:
    return round(n / 2**20, 1)


def cache_table(services) -> tuple[list[list], str]:
    stats = services.models.stats()
    rows = [[e["model"], e["kind"], _mb(e["bytes"]), "yes" if e["pinned"] else "", e["hits"], e["load_seconds"],
             e["shared_with"]] for e in stats.entries]
    summary = (f"**Cache:** {_mb(stats.used_bytes)} MB of {_mb(stats.budget_bytes)} MB · hits {stats.hits} · "
               f"misses {stats.misses} · loads {stats.loads} ({stats.load_seconds:.2f} s total) · "
               f"evictions {stats.evictions}")
    return rows, summary


def settings_text(services) -> str:
    s = services.settings
    dev = services.models.device
    return "\n".join([
        f"- **Device:** {dev.device} ({dev.dtype_name})",
        f"- **Data folder:** `{s.data_dir}`",
        f"- **Models folder:** `{s.models_root}` (A1111 layout: Stable-diffusion/, Lora/, ControlNet/, ESRGAN/)",
        f"- **Offline:** {'yes' if s.offline else 'no'} · **GPU queue:** {s.gpu_concurrency} job at a time",
    ])


def create_tab(services) -> Tab:
    with gr.Tab("Models", id="models"):
        summary = gr.Markdown()
        table = gr.Dataframe(headers=COLUMNS, interactive=False, label="Loaded models", elem_id="cache-table")
        with gr.Row():
            target = gr.Dropdown([], label="Model to unload", allow_custom_value=False, scale=3)
            unload = gr.Button("Unload", scale=1)
            refresh = gr.Button("Refresh", scale=1)
        installed = gr.Markdown()
        gr.Markdown(settings_text(services))
        email_load = create_email_settings(services.schedules.email)

    def refresh_all():
        rows, text = cache_table(services)
        loaded = sorted({r[0] for r in rows})
        listed = services.models.choices()
        models_md = ("**Installed:** " + ", ".join(f"`{m}`" for m in listed)) if listed else \
            services.models.no_model_message()
        return text, rows, gr.update(choices=loaded, value=loaded[0] if loaded else None), models_md

    @user_errors
    def do_unload(model):
        if model:
            services.models.unload(model)
            gr.Info(f"Unloaded {model}")
        return refresh_all()

    outputs = [summary, table, target, installed]
    refresh.click(refresh_all, None, outputs, queue=False, api_name="models_status")
    unload.click(do_unload, target, outputs, queue=False, api_name="unload_model")
    return Tab("Models", on_load=[LoadEvent(refresh_all, [], outputs), email_load])
