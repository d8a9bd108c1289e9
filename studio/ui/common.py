"""The UI kit every tab uses: the tab contract, the one GPU queue, form handlers that build typed requests,
the job-streaming helper (thread + progress + Stop) and the adapter from domain errors to gr.Error.

A tab module exposes `create_tab(services) -> Tab`; `app_ui` loops over the tabs and wires each one's
`on_load` events, knowing nothing else about them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import gradio as gr

from studio.errors import StudioError
from studio.job_queue import WAITING_INDEX

log = logging.getLogger(__name__)

GPU_QUEUE = "gpu"
# every event that runs a model joins the one GPU queue; its limit is the queue's default (Settings.gpu_concurrency)
ON_GPU = {"concurrency_id": GPU_QUEUE, "concurrency_limit": "default"}
# Generate and ControlNet: their handlers wait in the studio job queue (services.queue), which runs one job at a
# time and lists every waiting job on the Queue tab, so Gradio lets them all in at once
ON_QUEUE = {"concurrency_id": "studio-queue", "concurrency_limit": None}
# UI plumbing: works in the page, absent from the API page and refused to API clients
PLUMBING = {"api_visibility": "private"}


@dataclass
class LoadEvent:
    """An event the page runs when it opens (e.g. fill a table)."""

    fn: Callable
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


@dataclass
class Tab:
    """What a tab module hands to the app: its title, its on-load events, API-only endpoints (name -> typed
    function, served through gr.api), the components other tabs may send to (e.g. "prompt"), and `connect`:
    called once every tab is built, with the tabs by title and the gr.Tabs that holds them, to wire events that
    reach into another tab (a "Send to ControlNet" button)."""

    title: str
    on_load: list[LoadEvent] = field(default_factory=list)
    api: dict[str, Callable] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)
    connect: Callable[[dict[str, "Tab"], Any], None] | None = None


# ---------------------------------------------------------------------- errors
def _to_gr_error(exc: Exception) -> gr.Error:
    if isinstance(exc, StudioError):
        prefix = f"{exc.field}: " if exc.field and not str(exc).startswith(exc.field) else ""
        return gr.Error(f"{prefix}{exc}")
    log.exception("unexpected error in a UI handler")
    return gr.Error(f"Unexpected error: {type(exc).__name__}: {exc}")


def user_errors(fn):
    """Wrap a handler so StudioError (and anything unexpected) reaches the page as a clear gr.Error."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise _to_gr_error(exc) from exc
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise _to_gr_error(exc) from exc
    return wrapper


# ---------------------------------------------------------------------- forms
class Form:
    """Named components whose values reach a handler as one dict, `{name: value}`.

    `form.inputs` is the components list to pass to an event; `form.handler(fn)` wraps `fn(values, ...)` so its
    API parameters carry the field names (gradio_client callers pass them as keywords, each defaulting to its
    component's starting value) and Gradio still injects `gr.Request` / `gr.Progress` parameters that `fn`
    declares after `values`."""

    def __init__(self, **components):
        self.components = components

    @property
    def inputs(self) -> list:
        return list(self.components.values())

    @property
    def names(self) -> list[str]:
        return list(self.components)

    def values(self, args) -> dict:
        return dict(zip(self.names, args))

    def handler(self, fn: Callable) -> Callable:
        fn = user_errors(fn)
        extra = [p if p.default is not inspect.Parameter.empty else p.replace(default=None)
                 for p in list(inspect.signature(fn).parameters.values())[1:]]
        n = len(self.names)

        if inspect.isgeneratorfunction(fn):
            def wrapper(*args, **kwargs):
                return (yield from fn(self.values(args[:n]), *args[n:], **kwargs))
        else:
            def wrapper(*args, **kwargs):
                return fn(self.values(args[:n]), *args[n:], **kwargs)
        # every field defaults to its component's starting value, so API callers pass only what they change
        params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                    default=getattr(component, "value", None))
                  for name, component in self.components.items()]
        wrapper.__signature__ = inspect.Signature(params + extra)
        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper


def mode_visibility(mode: str):
    """Show the init image (img2img), the inpaint editor (inpaint) and the strength (both) for a mode."""
    return (gr.update(visible=mode == "img2img"), gr.update(visible=mode == "inpaint"),
            gr.update(visible=mode != "txt2img"))


# ---------------------------------------------------------------------- jobs
def session_owner(request: gr.Request | None) -> str:
    """Who a job belongs to, so that this page's Stop stops this page's jobs only."""
    return request.session_hash if request is not None and request.session_hash else "api"


def stream_job(jobs, owner: str, work: Callable[[threading.Event, Callable[[Any], None]], Any],
               render: Callable[[Any], Any], poll_seconds: float = 0.1) -> Iterator:
    """Run `work(cancel, report)` in a thread, registered under `owner` so a Stop click sets `cancel`; yield
    `render(update)` for every `report(update)` (None renders are skipped) while it runs; then return work's
    result (use `result = yield from stream_job(...)`) or raise its error in the handler's thread."""
    updates: queue.Queue = queue.Queue()
    outcome: dict = {}
    with jobs.track(owner) as cancel:
        def target():
            try:
                outcome["result"] = work(cancel, updates.put)
            except BaseException as exc:  # re-raised in the handler's thread
                outcome["error"] = exc

        thread = threading.Thread(target=target, daemon=True, name=f"job-{owner[:8]}")
        thread.start()
        while thread.is_alive() or not updates.empty():
            try:
                update = updates.get(timeout=poll_seconds)
            except queue.Empty:
                continue
            shown = render(update)
            if shown is not None:
                yield shown
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def queue_wait_text(step) -> str:
    """The status of a job still waiting in the studio queue: its place, when it should start, a paused queue."""
    eta = f", starts in about {step.starts_in:.0f} s" if step.starts_in is not None else ""
    paused = " The queue is paused (Queue tab)." if step.paused else ""
    return f"Queued: position {step.position}{eta}.{paused}"


def stream_generation(jobs, owner: str, req, run: Callable, progress) -> Iterator:
    """The page side of a generation job (the Generate and ControlNet tabs): yields (live preview, gallery items,
    infotext, status) while `run(cancel, on_progress)` (GenerationService.generate with the validated request
    `req` bound) works, then the saved PNG files, the first one's infotext and the result's message with the
    seeds."""
    # img2img and inpaint run only the last `strength` share of the steps
    steps_per_image = req.steps if req.mode == "txt2img" else max(1, int(req.steps * req.strength))
    yield None, [], "", f"Queued on the device… ({req.batch_count * req.batch_size} image(s))"

    def render(update):
        index, total, step = update
        if index == WAITING_INDEX:  # still waiting in the studio queue: its place
            return gr.update(), gr.update(), gr.update(), queue_wait_text(step)
        if index < 0:
            progress(step.step / max(1, step.total), desc="Downloading model")
            return (gr.update(), gr.update(), gr.update(),
                    f"Downloading model… {step.step / 2**20:.0f} of {step.total / 2**20:.0f} MB")
        progress((index * steps_per_image + step.step) / max(1, total * steps_per_image),
                 desc=f"image {index + 1}/{total}")
        if step.preview is None:
            return None
        return step.preview, gr.update(), gr.update(), f"Image {index + 1}/{total}, step {step.step}/{step.total}"

    def work(cancel, report):
        return run(cancel, lambda i, n, u: report((i, n, u)))

    result = yield from stream_job(jobs, owner, work, render)
    items = [(str(img.path), f"seed {img.seed}") for img in result.images]
    first = result.images[0].infotext if result.images else ""
    seeds = ", ".join(str(img.seed) for img in result.images)
    message = result.message + (f" · seed {seeds}" if seeds else "")
    yield (str(result.images[-1].path) if result.images else None), items, first, message


def stop_jobs(jobs, request: gr.Request | None) -> str:
    """The Stop buttons' handler body: cancel this page's running jobs."""
    return "Stopping…" if jobs.cancel(session_owner(request)) else "Nothing is running."


# ---------------------------------------------------------------------- shared widgets
def generation_fields(services, recommended: dict, prefix: str = "", rescale: bool = True) -> dict:
    """The sampling widgets of a tab that generates (sampler, steps, CFG scale and rescale, width, height, seed,
    batch count and size), named as GenerationRequest's fields, for a `Form`; laid out in rows where called.
    `recommended` is the model's recommended {cfg_scale, cfg_rescale}; `prefix` keeps elem_ids unique; `rescale`
    False hides CFG rescale (for pipelines without it)."""
    generation, settings = services.generation, services.settings
    fields = {}
    with gr.Row():
        fields["sampler"] = gr.Dropdown(generation.samplers(), value=generation.default_sampler(), label="Sampler")
        fields["steps"] = gr.Slider(1, 150, value=20, step=1, label="Steps")
        fields["cfg_scale"] = gr.Slider(0, 30, value=recommended["cfg_scale"], step=0.5, label="CFG scale")
        fields["cfg_rescale"] = gr.Slider(0, 1, value=recommended["cfg_rescale"], step=0.05, label="CFG rescale",
                                          visible=rescale)
    with gr.Row():
        fields["width"] = gr.Slider(64, 2048, value=128, step=8, label="Width", elem_id=f"{prefix}width")
        fields["height"] = gr.Slider(64, 2048, value=128, step=8, label="Height", elem_id=f"{prefix}height")
    with gr.Row():
        fields["seed"] = gr.Number(-1, label="Seed (-1 = random)", precision=0)
        fields["batch_count"] = gr.Slider(1, settings.max_batch_count, value=1, step=1, label="Batch count")
        fields["batch_size"] = gr.Slider(1, settings.max_batch_size, value=1, step=1, label="Batch size")
    return fields
