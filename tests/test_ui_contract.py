"""The UI's contract: every tab is a Tab, the UI imports no pipelines/ or training/ code, the forms map their
fields by name, the job streamer returns, raises and stops, and the API lists only the named actions."""

from __future__ import annotations

import ast
import dataclasses
import re
import threading
from pathlib import Path

import gradio as gr
import pytest

from studio.jobs import JobRegistry
from studio.training_service import TrainingRequest
from studio.ui import app_ui
from studio.ui.common import Form, Tab, stream_job

UI_DIR = Path(__file__).resolve().parent.parent / "studio" / "ui"
PUBLIC_API = {
    "/generate", "/stop", "/png_info", "/dataset_add_files", "/dataset_add_folder", "/dataset_add_gallery",
    "/dataset_add_trigger", "/dataset_auto_caption", "/train", "/train_stop", "/train_status", "/train_resume",
    "/train_compare", "/gallery_search", "/gallery_search_meaning", "/gallery_stats", "/gallery_import", "/models_status", "/unload_model", "/controlnet", "/controlnet_preview",
    "/curate", "/override", "/curation_results", "/suggest_thresholds", "/curation_apply",
    "/schedule_save", "/schedule_run_now", "/schedule_pause", "/schedule_resume", "/schedule_delete",
    "/schedule_list", "/schedule_runs", "/schedule_dashboard",
    "/prompts_list", "/prompts_save", "/prompts_delete", "/prompt_versions", "/prompt_compare", "/prompt_restore",
    "/styles_list", "/styles_save", "/styles_delete", "/styles_import", "/styles_export", "/negative_templates_save",
    "/wildcards_list", "/wildcards_preview", "/wildcards_save", "/history_search", "/builder_compose",
    "/seed_explore", "/seed_variations",
    "/queue_list", "/queue_move", "/queue_cancel", "/queue_pause", "/queue_resume",
    "/upscale",
}


def test_the_ui_imports_nothing_from_pipelines_or_training():
    offenders = []
    for path in UI_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("pipelines", "training")]
    assert offenders == []


def test_every_tab_module_returns_a_tab_and_the_app_knows_only_the_list(services):
    with gr.Blocks():
        with gr.Tabs():
            tabs = [module.create_tab(services) for module in app_ui.TAB_MODULES]
    assert [t.title for t in tabs] == ["Generate", "ControlNet", "Train", "Curate", "Schedule", "Queue",
                                        "Upscale", "Gallery", "Prompts", "Models"]
    assert all(isinstance(t, Tab) for t in tabs)
    assert [len(t.on_load) for t in tabs] == [0, 0, 1, 1, 3, 1, 0, 1, 2, 2]
    source = (UI_DIR / "app_ui.py").read_text()
    for internal in ("runs_view", "refresh_all", "gallery_load", r"\bprompt\b"):
        assert not re.search(internal, source)


def test_form_handler_passes_a_dict_and_names_its_api_parameters():
    import inspect

    with gr.Blocks():
        form = Form(prompt=gr.Textbox("cat"), steps=gr.Slider(1, 50, value=20))

    seen = {}

    @form.handler
    def plain(values: dict, request: gr.Request):
        seen.update(values, request=request)
        return values["steps"] * 2

    params = inspect.signature(plain).parameters
    assert list(params) == ["prompt", "steps", "request"]
    assert (params["prompt"].default, params["steps"].default, params["request"].default) == ("cat", 20, None)
    assert plain("dog", 3, "req") == 6 and seen == {"prompt": "dog", "steps": 3, "request": "req"}

    @form.handler
    def streamed(values: dict):
        yield values["prompt"]
        return "done"

    assert inspect.isgeneratorfunction(streamed) and list(streamed("a", 1)) == ["a"]


def test_the_train_form_names_are_the_training_request_fields(served):
    from gradio_client import Client

    url, _ = served
    info = Client(url, verbose=False).view_api(return_format="dict", print_info=False)
    names = [p["parameter_name"] for p in info["named_endpoints"]["/train"]["parameters"]]
    fields = [f.name for f in dataclasses.fields(TrainingRequest) if f.name != "dataset"]
    assert sorted(names) == sorted(fields)


def test_the_api_lists_only_the_named_user_actions(served):
    from gradio_client import Client

    url, _ = served
    info = Client(url, verbose=False).view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == PUBLIC_API
    assert info["unnamed_endpoints"] == {}


def test_stream_job_yields_renders_and_returns_the_result():
    jobs = JobRegistry()

    def work(cancel, report):
        for n in range(3):
            report(n)
        return "result"

    gen = stream_job(jobs, "me", work, lambda n: None if n == 1 else f"step {n}")
    shown = []
    with pytest.raises(StopIteration) as done:
        while True:
            shown.append(next(gen))
    assert shown == ["step 0", "step 2"] and done.value.value == "result"


def test_stream_job_raises_the_work_error_in_the_caller():
    def work(cancel, report):
        raise ValueError("broken input")

    with pytest.raises(ValueError, match="broken input"):
        list(stream_job(JobRegistry(), "me", work, str))


def test_stream_job_stops_when_its_owner_cancels():
    jobs = JobRegistry()
    started = threading.Event()

    def work(cancel, report):
        started.set()
        report("running")
        return "stopped" if cancel.wait(30) else "ran out"

    gen = stream_job(jobs, "page-1", work, str)
    assert next(gen) == "running" and started.is_set()
    assert jobs.cancel("page-2") == 0 and jobs.cancel("page-1") == 1
    with pytest.raises(StopIteration) as done:
        next(gen)
    assert done.value.value == "stopped"
