"""AI Artist Studio: parse the command line, build services, build the UI, launch."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from pipelines.offline import enforce_offline
from studio.settings import PROJECT_ROOT, Settings, parse_args


def launch_kwargs(settings: Settings) -> dict:
    """Safe launch defaults: local only unless asked, data dir served, databases and models never."""
    import gradio as gr

    hf_cache = Path.home() / ".cache" / "huggingface"
    return dict(
        server_name=settings.host, server_port=settings.port, share=settings.share, auth=settings.auth,
        allowed_paths=[str(settings.data_dir)],
        blocked_paths=[str(settings.data_dir / "db"), str(settings.models_root), str(hf_cache)],
        max_file_size=settings.max_file_size, enable_monitoring=False, strict_cors=True,
        inbrowser=settings.inbrowser, theme=gr.themes.Soft(primary_hue="violet"),
        css_paths=[str(PROJECT_ROOT / "assets" / "studio.css")], footer_links=["api", "settings"],
    )


def create_app(settings: Settings):
    """Build services and the Blocks app (not launched)."""
    from studio.services import build_services
    from studio.ui.app_ui import build_ui

    services = build_services(settings)
    demo = build_ui(services)
    demo.queue(max_size=settings.queue_max_size, default_concurrency_limit=settings.gpu_concurrency)
    services.schedules.start()  # schedules rebuilt, missed runs handled, interrupted runs resumed
    services.gallery.start_thumbnailer()  # missing gallery thumbnails are made in the background
    return demo, services


def warm_up_in_background(services) -> threading.Thread:
    """Warm up the selected model (GenerationService.warm_up) while the page opens, so the first Generate is
    quick; a model that fails here reports the error on Generate instead."""
    def run():
        model = services.models.default_model(services.settings.model)
        if model is None:
            return
        try:
            seconds = services.generation.warm_up(model)
            logging.getLogger("studio").info("%s loaded and warmed up in %.1f s", model, seconds)
        except Exception as exc:  # the studio still serves; Generate shows the real message
            logging.getLogger("studio").warning("warming up %s failed: %s", model, exc)

    thread = threading.Thread(target=run, name="warm-up", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings, password = parse_args(argv).with_generated_auth()
    if settings.offline:  # before diffusers / transformers / huggingface_hub are imported
        enforce_offline()
    if password:
        print(f"Sharing needs a login: user 'studio', password '{password}' (or pass --auth user:password)",
              flush=True)
    demo, services = create_app(settings)
    if settings.warm_up:
        warm_up_in_background(services)
    demo.launch(**launch_kwargs(settings))


if __name__ == "__main__":
    main(sys.argv[1:])
