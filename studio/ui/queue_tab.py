"""Queue tab: every pending and running job of the studio queue (a person's batches from Generate and ControlNet,
scheduled runs) with its position, images done and ETA; move a pending job, cancel one, pause or resume the whole
queue, and choose its state at start."""

from __future__ import annotations

import gradio as gr

from studio.ui.common import PLUMBING, LoadEvent, Tab, user_errors

COLUMNS = ["#", "state", "kind", "title", "model", "images", "ETA", "id"]
HISTORY_COLUMNS = ["finished", "state", "kind", "title", "images", "error"]
START_LABELS = [("Run", "run"), ("Paused", "paused"), ("As it was", "as_was")]


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def job_rows(queue) -> list[list]:
    return [[job["position"] or "▶", job["state"], job["kind"], job["title"], job["model"],
             f"{job['done']}/{job['total']}", eta_text(job["eta_seconds"]), job["id"]] for job in queue.list()]


def history_rows(queue) -> list[list]:
    import time

    return [[time.strftime("%H:%M:%S", time.localtime(j["finished"])) if j.get("finished") else "-", j["state"],
             j["kind"], j["title"], f"{j['done']}/{j['total']}", j.get("error") or ""] for j in queue.history()]


def status_text(queue) -> str:
    status = queue.status()
    state = "**paused**" if status["paused"] else "running"
    return f"Queue {state} · {status['running']} running · {status['pending']} waiting"


def create_tab(services) -> Tab:
    queue = services.queue
    with gr.Tab("Queue", id="queue"):
        status = gr.Markdown(elem_id="queue-status")
        table = gr.Dataframe(headers=COLUMNS, interactive=False, label="Pending and running jobs (run order)",
                             elem_id="queue-table")
        with gr.Row():
            pick = gr.Dropdown([], label="Job", scale=3, allow_custom_value=True, elem_id="queue-pick")
            top = gr.Button("Move to top", scale=1, elem_id="queue-top")
            up = gr.Button("Up", scale=1)
            down = gr.Button("Down", scale=1)
            cancel = gr.Button("Cancel job", variant="stop", scale=1, elem_id="queue-cancel")
        with gr.Row():
            pause = gr.Button("Pause queue", scale=1, elem_id="queue-pause")
            resume = gr.Button("Resume queue", variant="primary", scale=1, elem_id="queue-resume")
            start_state = gr.Dropdown(START_LABELS, value=queue.status()["start_state"], label="Queue at start",
                                      scale=2, info="as it was: paused at start if it was paused when it stopped")
        history = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, label="Recently finished",
                               elem_id="queue-history")
        timer = gr.Timer(2)

    def view(selected=None):
        jobs = queue.list()
        options = [(f"{j['position'] or '▶'} · {j['title'][:40]} ({j['id'][:8]})", j["id"]) for j in jobs]
        ids = [j["id"] for j in jobs]
        return (status_text(queue), job_rows(queue), gr.update(choices=options, value=selected if selected in ids
                                                                else None), history_rows(queue))

    outputs = [status, table, pick, history]

    def mover(where: str):
        @user_errors
        def move(job_id):
            if job_id:
                queue.move(job_id, where)
            return view(job_id)
        return move

    for button, where in ((top, "top"), (up, "up"), (down, "down")):
        button.click(mover(where), pick, outputs, queue=False, **PLUMBING)

    @user_errors
    def on_cancel(job_id):
        if job_id:
            queue.cancel(job_id)
        return view()

    cancel.click(on_cancel, pick, outputs, queue=False, **PLUMBING)
    pause.click(lambda p: (queue.pause(), view(p))[1], pick, outputs, queue=False, **PLUMBING)
    resume.click(lambda p: (queue.resume(), view(p))[1], pick, outputs, queue=False, **PLUMBING)
    @user_errors
    def on_start_state(state):
        queue.set_start_state(state)

    start_state.change(on_start_state, start_state, None, queue=False, **PLUMBING)
    timer.tick(lambda p: view(p), pick, outputs, queue=False, show_progress="hidden", **PLUMBING)

    # ------------------------------------------------------------------ the API
    def queue_list() -> list[dict]:
        """Pending and running jobs in run order: id, kind, title, model, priority, state, done, total, position
        (0 = running), eta_seconds (None until measured)."""
        return queue.list()

    def queue_move(job_id: str, where: str = "top") -> list[dict]:
        """Move a pending job: top, up, down, bottom, or a position (1 = next); returns the new list."""
        return queue.move(job_id, where)

    def queue_cancel(job_id: str) -> dict:
        """Cancel a job: a pending one leaves the queue, a running one stops within one step."""
        return queue.cancel(job_id)

    def queue_pause() -> dict:
        """Pause the queue: no job starts; a running batch stops between two images."""
        return queue.pause()

    def queue_resume() -> dict:
        """Resume the queue."""
        return queue.resume()

    api = {fn.__name__: user_errors(fn) for fn in (queue_list, queue_move, queue_cancel, queue_pause, queue_resume)}
    return Tab("Queue", on_load=[LoadEvent(lambda: view(), [], outputs)], api=api)
