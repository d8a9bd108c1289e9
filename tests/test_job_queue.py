"""The studio job queue: order and interactive priority, reorder/cancel/pause/resume, persistence and resume after a
restart (also after a real kill -9), model grouping without starvation, a person's job waiting at most one image of
a scheduled batch, the start-state setting, versioned JSON migration, generation streamed through the queue, the
named API."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from studio.errors import ValidationError
from studio.job_queue import MAX_PASS_OVERS, JobKind, JobQueue, JobSpec
from studio.stores.queue_store import QueueStore
from tests.conftest import TINY_MODEL_ID, wait_for


class Killed(BaseException):
    """Stands for a kill -9: nothing after it runs."""


def recording_queue(path: Path, **kwargs) -> tuple[JobQueue, list]:
    """A queue whose "note" jobs append their payload's name to a list (and "batch" jobs make images)."""
    ran: list = []
    queue = JobQueue(QueueStore(path), **kwargs)
    queue.register("note", JobKind(run=lambda payload, ctx: ran.append(payload["name"]) or payload["name"]))
    queue.register("batch", JobKind(run=batch_runner(ran)))
    return queue, ran


def batch_runner(ran: list, image_seconds: float = 0.0, kill_at: int | None = None):
    """Makes `total` images named `<name>-<i>`, resuming at its stored `next`; raises Killed before image
    `kill_at` (a crash mid-batch)."""
    def run(payload, ctx):
        for index in range(ctx.job["progress"].get("next", 0), payload["total"]):
            if index and not ctx.between_images():
                return "stopped"
            if kill_at is not None and index == kill_at and payload.get("killable"):
                raise Killed()
            time.sleep(image_seconds)
            ran.append(f"{payload['name']}-{index}")
            ctx.image_done({"next": index + 1})
        return payload["name"]
    return run


def note(name: str, model: str = "m1") -> JobSpec:
    return JobSpec({"name": name}, name, model)


def names(queue: JobQueue) -> list[str]:
    return [job["title"] for job in queue.list()]


@contextmanager
def running_batches(tmp_path: Path, image_seconds: float):
    """A started recording queue with the "batch" kind (each image takes `image_seconds`): (queue, ran); shut
    down on leaving."""
    queue, ran = recording_queue(tmp_path / "q.json")
    queue.register("batch", JobKind(run=batch_runner(ran, image_seconds=image_seconds)))
    queue.start()
    try:
        yield queue, ran
    finally:
        queue.shutdown()


def finished(queue: JobQueue, count: int) -> list[dict]:
    return wait_for(lambda: len(h := queue.history(100)) >= count and h)


def run_until_finished(queue: JobQueue, count: int) -> None:
    """Start and resume the queue, wait until `count` jobs have ended, shut it down."""
    queue.start()
    queue.resume()
    try:
        finished(queue, count)
    finally:
        queue.shutdown()


# ---------------------------------------------------------------------- order and the person's controls
def test_jobs_run_in_order_with_a_persons_jobs_first(tmp_path):
    queue, ran = recording_queue(tmp_path / "q.json", start_state="paused")
    for name in ("b1", "b2"):
        queue.submit("note", note(name))
    queue.submit("note", note("i1"), priority="interactive")
    assert names(queue) == ["i1", "b1", "b2"] and [j["position"] for j in queue.list()] == [1, 2, 3]
    queue.start()
    try:
        assert ran == []  # paused
        queue.resume()
        finished(queue, 3)
        assert ran == ["i1", "b1", "b2"]
        assert [j["state"] for j in queue.history()] == ["done"] * 3 and queue.list() == []
    finally:
        queue.shutdown()


def test_move_and_cancel_pending_jobs_and_bad_input_names_the_field(tmp_path):
    queue, ran = recording_queue(tmp_path / "q.json", start_state="paused")
    ids = {name: queue.submit("note", note(name)) for name in "abcd"}
    queue.move(ids["d"], "top")
    assert names(queue) == ["d", "a", "b", "c"]
    queue.move(ids["a"], "down")
    assert names(queue) == ["d", "b", "a", "c"]
    queue.move(ids["c"], 2)
    assert names(queue) == ["d", "c", "b", "a"]
    queue.move(ids["d"], "bottom")
    queue.move(ids["b"], "up")
    assert names(queue) == ["b", "c", "a", "d"]
    assert queue.cancel(ids["a"]) == {"id": ids["a"], "state": "cancelled"}
    assert names(queue) == ["b", "c", "d"] and queue.history()[0]["state"] == "cancelled"
    for where, field in (("sideways", "where"), (9, "position"), (0, "position")):
        with pytest.raises(ValidationError) as err:
            queue.move(ids["b"], where)
        assert err.value.field == field and ("1 and 3" in str(err.value) or "top, up" in str(err.value))
    with pytest.raises(ValidationError) as err:
        queue.cancel("nope")
    assert err.value.field == "job_id"
    with pytest.raises(ValidationError) as err:
        queue.submit("unknown", note("x"))
    assert err.value.field == "kind" and "note" in str(err.value)
    queue.start()
    queue.resume()
    try:
        finished(queue, 4)
        assert ran == ["b", "c", "d"]
    finally:
        queue.shutdown()


def test_pause_holds_a_running_batch_between_images_and_resume_goes_on(tmp_path):
    with running_batches(tmp_path, 0.05) as (queue, ran):
        queue.submit("batch", JobSpec({"name": "b", "total": 6}, "batch", "m1", 6))
        wait_for(lambda: len(ran) >= 2)
        assert queue.pause()["paused"]
        time.sleep(0.4)
        held = len(ran)
        assert held < 6 and queue.list()[0]["done"] == held
        time.sleep(0.3)
        assert len(ran) == held  # nothing moves while paused
        queue.resume()
        finished(queue, 1)
        assert ran == [f"b-{i}" for i in range(6)]


def test_cancel_stops_a_running_job(tmp_path):
    with running_batches(tmp_path, 0.05) as (queue, ran):
        job_id = queue.submit("batch", JobSpec({"name": "b", "total": 50}, "batch", "m1", 50))
        wait_for(lambda: len(ran) >= 2)
        assert queue.cancel(job_id)["state"] == "stopping"
        job = finished(queue, 1)[0]
        assert job["state"] == "cancelled" and job["done"] < 50


# ---------------------------------------------------------------------- persistence
def test_pending_jobs_and_their_order_survive_a_restart(tmp_path):
    path = tmp_path / "q.json"
    first, _ = recording_queue(path, start_state="paused")
    ids = [first.submit("note", note(name)) for name in ("a", "b", "c")]
    first.move(ids[2], "top")
    first.submit("note", note("p"), priority="interactive")
    again, ran = recording_queue(path)
    assert names(again) == ["p", "c", "a", "b"] and again.status()["paused"]  # "as_was": it was paused
    again.start()
    again.resume()
    try:
        finished(again, 4)
        assert ran == ["p", "c", "a", "b"]
    finally:
        again.shutdown()
    doc = json.loads(path.read_text())["_default"]
    assert all(d["version"] == 1 for d in doc.values() if "id" in d)  # plain versioned JSON


def test_a_killed_batch_resumes_at_its_next_image(tmp_path):
    path = tmp_path / "q.json"
    first, ran = recording_queue(path)
    first.register("batch", JobKind(run=batch_runner(ran, kill_at=3)))
    later = first.submit("note", note("later"))
    with pytest.raises(Killed):
        first.run_here("batch", JobSpec({"name": "b", "total": 6, "killable": True}, "batch", "m1", 6))
    assert ran == ["b-0", "b-1", "b-2"]
    stored = {j["title"]: j for j in QueueStore(path).jobs()}
    assert stored["batch"]["state"] == "pending" and stored["batch"]["done"] == 3  # running is not written
    assert stored["later"]["state"] == "pending"

    again, ran_again = recording_queue(path)
    rows = {j["title"]: j for j in again.list()}
    assert rows["batch"]["state"] == "pending" and rows["batch"]["done"] == 3
    again.start()
    try:
        history = finished(again, 2)
    finally:
        again.shutdown()
    assert sorted(ran_again) == ["b-3", "b-4", "b-5", "later"]  # nothing lost, nothing made twice
    assert {j["id"] for j in history} >= {later}


# ---------------------------------------------------------------------- model grouping
def test_jobs_on_the_loaded_model_are_grouped_and_no_job_starves(tmp_path):
    queue, ran = recording_queue(tmp_path / "q.json")
    queue.run_here("note", note("warm", "m1"))  # m1 is loaded now
    ran.clear()
    queue.submit("note", note("A", "m2"))
    queue.submit("note", note("B", "m1"))
    queue.submit("note", note("C", "m2"))
    queue.submit("note", note("D", "m1"))
    run_until_finished(queue, 5)
    assert ran == ["B", "D", "A", "C"]


def test_grouping_passes_over_a_job_at_most_a_few_times_and_never_a_moved_one(tmp_path):
    queue, ran = recording_queue(tmp_path / "q.json")
    queue.run_here("note", note("warm", "m1"))
    ran.clear()
    queue.submit("note", note("other", "m2"))
    for n in range(8):
        queue.submit("note", note(f"m1-{n}", "m1"))
    run_until_finished(queue, 10)
    assert ran.index("other") == MAX_PASS_OVERS

    queue, ran = recording_queue(tmp_path / "q2.json")
    queue.run_here("note", note("warm", "m1"))
    ran.clear()
    moved = queue.submit("note", note("moved", "m2"))
    queue.submit("note", note("same", "m1"))
    queue.move(moved, "top")
    run_until_finished(queue, 3)
    assert ran == ["moved", "same"]

    queue, ran = recording_queue(tmp_path / "q3.json", group_by_model=False)
    queue.run_here("note", note("warm", "m1"))
    ran.clear()
    queue.submit("note", note("A", "m2"))
    queue.submit("note", note("B", "m1"))
    run_until_finished(queue, 3)
    assert ran == ["A", "B"]


# ---------------------------------------------------------------------- a person's job and a batch
def test_a_persons_job_waits_at_most_one_image_of_a_background_batch(tmp_path):
    with running_batches(tmp_path, 0.1) as (queue, ran):
        queue.submit("batch", JobSpec({"name": "b", "total": 8}, "batch", "m1", 8))
        wait_for(lambda: len(ran) >= 1)
        made_before = len(ran)
        person = queue.submit("note", note("person"), priority="interactive", cancel=threading.Event())
        assert queue.wait(person) == "person"
        assert ran.index("person") <= made_before + 1
        rows = queue.list()
        assert rows[0]["kind"] == "batch"
        finished(queue, 2)
    assert [r for r in ran if r != "person"] == [f"b-{i}" for i in range(8)]


def test_eta_comes_from_measured_seconds_per_image(tmp_path):
    queue, ran = recording_queue(tmp_path / "q.json")
    queue.register("batch", JobKind(run=batch_runner(ran, image_seconds=0.05)))
    assert queue.rate("m1") is None
    queue.run_here("batch", JobSpec({"name": "warm", "total": 3}, "batch", "m1", 3))
    assert 0.03 < queue.rate("m1") < 1.0
    queue.pause()
    queue.submit("batch", JobSpec({"name": "a", "total": 4}, "batch", "m1", 4))
    queue.submit("batch", JobSpec({"name": "b", "total": 2}, "batch", "m1", 2))
    first, second = queue.list()
    assert second["eta_seconds"] == pytest.approx(6 * queue.rate("m1"), rel=0.05)
    assert first["eta_seconds"] == pytest.approx(4 * queue.rate("m1"), rel=0.05)
    assert JobQueue(QueueStore(tmp_path / "q.json")).rate("m1") == pytest.approx(queue.rate("m1"))  # stored


# ---------------------------------------------------------------------- the start state and versions
def test_the_start_state_setting(tmp_path):
    path = tmp_path / "q.json"
    queue, _ = recording_queue(path)
    queue.pause()
    assert recording_queue(path)[0].status()["paused"]  # as it was
    assert not recording_queue(path, start_state="run")[0].status()["paused"]
    queue.resume()
    assert not recording_queue(path)[0].status()["paused"]
    queue.set_start_state("paused")
    assert recording_queue(path)[0].status()["paused"] and queue.status()["start_state"] == "paused"
    queue.set_start_state("run")
    queue.pause()
    assert not recording_queue(path)[0].status()["paused"]
    with pytest.raises(ValidationError) as err:
        queue.set_start_state("sometimes")
    assert err.value.field == "start_state" and "as_was" in str(err.value)


def test_old_documents_are_migrated_and_newer_ones_left_alone(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"_default": {
        "1": {"id": "old", "kind": "note", "title": "from before versions", "payload": {"name": "old"},
              "state": "pending", "order": 1},
        "2": {"version": 99, "id": "future", "kind": "note", "title": "from a newer release", "state": "pending"},
    }}))
    queue, ran = recording_queue(path)
    job = QueueStore(path).get("id", "old")
    assert job["version"] == 1 and job["priority"] == "background" and job["done"] == 0 and job["total"] == 1
    assert names(queue) == ["from before versions"]
    assert QueueStore(path).get("id", "future")["version"] == 99  # kept, not run

    def to_v2(doc):
        return {**doc, "version": 2, "payload": {**doc["payload"], "name": doc["payload"]["name"].upper()}}
    store = QueueStore(path, version=2, migrations={0: lambda d: {**d, "version": 1}, 1: to_v2})
    assert store.get("id", "old")["version"] == 2 and store.jobs()[0]["payload"] == {"name": "OLD"}


# ---------------------------------------------------------------------- generation through the queue
def generation_request(**overrides):
    from studio.generation_service import GenerationRequest

    values = dict(prompt="a red circle", model=TINY_MODEL_ID, steps=2, width=64, height=64, seed=100,
                  batch_count=3)
    values.update(overrides)
    return GenerationRequest(**values)


def test_a_person_generation_streams_through_the_queue(services):
    from studio.ui.common import stream_generation

    services.queue.start()
    try:
        req = services.generation.validate(generation_request(batch_count=2))
        steps = []
        run = services.queue.interactive("generate", req, "page-1")
        shown = list(stream_generation(services.jobs, "page-1", req, run,
                                       lambda value, desc=None: steps.append(value)))
        assert shown[0][3].startswith("Queued") and steps and steps[-1] <= 1
        *_, (last, items, info, message) = shown
        assert len(items) == 2 and "seed 100, 101" in message and "Seed: 100" in info
        job = finished(services.queue, 1)[0]
        assert job["state"] == "done" and job["priority"] == "interactive" and job["owner"] == "page-1"
        assert [m["seed"] for m in job["progress"]["made"]] == [100, 101]
        records = services.gallery.store.by_job(job["id"])
        assert sorted(r["params"]["seed"] for r in records) == [100, 101]
    finally:
        services.queue.shutdown()


def test_stop_removes_a_waiting_job_and_the_page_gets_a_stopped_result(services):
    from studio.job_queue import JobKind

    services.queue.start()
    gate = threading.Event()
    services.queue.register("hold", JobKind(run=lambda payload, ctx: gate.wait(30)))
    try:
        services.queue.submit("hold", JobSpec({}, "holding the turn"))
        cancel = threading.Event()
        run = services.queue.interactive("generate", services.generation.validate(generation_request()), "p")
        outcome = {}
        waiter = threading.Thread(target=lambda: outcome.update(result=run(cancel)))
        waiter.start()
        wait_for(lambda: any(j["kind"] == "generate" for j in services.queue.list()))
        cancel.set()  # the page's Stop
        waiter.join(5)
        assert outcome["result"].stopped and outcome["result"].images == []
        assert "Stopped: kept 0 of 3" in outcome["result"].message
        gate.set()
    finally:
        services.queue.shutdown()


def test_a_killed_generation_job_resumes_with_the_same_seeds_and_no_duplicate(services, tmp_path):
    from studio.generation_jobs import GenerationJobs
    from studio.stores.queue_store import QueueStore

    added = []
    original_add = services.gallery.store.add

    def add_then_die(record):
        record_id = original_add(record)
        added.append(record_id)
        if len(added) == 2:  # the image is in the gallery, its job's progress not yet stored
            raise Killed()
        return record_id
    services.gallery.store.add = add_then_die
    jobs = GenerationJobs(services.generation, services.controlnet, services.settings.data_dir / "queue")
    req = services.generation.validate(generation_request(batch_count=4, seed=200))
    spec = jobs.encode(req, "killed-job")
    with pytest.raises(Killed):
        services.queue.run_here("generate", spec)
    services.gallery.store.add = original_add

    again = JobQueue(QueueStore(services.settings.data_dir / "db" / "queue.json"))
    jobs.register(again)
    assert [j["done"] for j in again.list()] == [2]  # from the gallery: the 2nd image was saved
    again.start()
    try:
        job = finished(again, 1)[0]
    finally:
        again.shutdown()
    records = services.gallery.store.by_job(job["payload"]["job_id"])
    assert job["state"] == "done" and sorted(r["params"]["seed"] for r in records) == [200, 201, 202, 203]


# ---------------------------------------------------------------------- schedules go through the queue
def test_a_persons_generation_waits_at_most_one_image_of_a_scheduled_run(services):
    from studio.schedule_service import ScheduleRequest

    schedules = services.schedules
    saved = schedules.save(ScheduleRequest(name="batch", interval_minutes=60, model=TINY_MODEL_ID,
                                           prompts=["a blue square"], images=5, seed=1, steps=2, width=64,
                                           height=64, skip_while_training=False))
    seen = {}

    def person():
        req = services.generation.validate(generation_request(batch_count=1, seed=9))
        seen["result"] = services.queue.interactive("generate", req, "person")(threading.Event())
        seen["done_images_then"] = len(schedules.run(run_id)["done"])

    def hook(run):
        if len(run["done"]) == 1:
            seen["thread"] = threading.Thread(target=person)
            seen["thread"].start()
            wait_for(lambda: any(j["kind"] == "generate" for j in services.queue.list()))
    schedules.after_image = hook
    schedules.start()
    try:
        run_id = schedules.run_now(saved["id"])
        run = wait_for(lambda: (r := schedules.run(run_id)) and r["status"] == "succeeded" and r, timeout=60)
        seen["thread"].join(30)
        history = finished(services.queue, 2)
    finally:
        schedules.shutdown()
    assert len(seen["result"].images) == 1 and seen["done_images_then"] <= 2
    assert [d["seed"] for d in run["done"]] == [1, 2, 3, 4, 5]
    assert [j["kind"] for j in history][::-1] == ["generate", "schedule"]  # the person's job ran inside the run


def test_a_schedule_due_while_its_run_waits_is_coalesced(services):
    from studio.schedule_service import ScheduleRequest

    schedules = services.schedules
    services.queue.pause()
    saved = schedules.save(ScheduleRequest(name="often", interval_minutes=60, model=TINY_MODEL_ID,
                                           prompts=["a red circle"], images=1, steps=2, width=64, height=64,
                                           skip_while_training=False))
    first = schedules._start_run(saved["id"])
    assert first and schedules._start_run(saved["id"]) is None
    assert [j["kind"] for j in services.queue.list()] == ["schedule"]
    services.queue.resume()


# ---------------------------------------------------------------------- a real kill -9
@pytest.mark.slow
def test_a_queue_killed_9_mid_batch_loses_no_job_and_makes_no_image_twice(tmp_path, tiny_models_dir):
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from studio.services import build_services
    from tests.conftest import make_settings

    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from studio.generation_service import GenerationRequest
        from studio.services import build_services
        from tests.conftest import make_settings
        services = build_services(make_settings(Path({str(tmp_path)!r}), Path({str(tiny_models_dir)!r})))
        services.queue.pause()
        for seed, count in ((500, 5), (900, 2)):
            req = services.generation.validate(GenerationRequest(prompt="a green triangle", model={TINY_MODEL_ID!r},
                                               steps=2, width=64, height=64, seed=seed, batch_count=count))
            print(services.queue.submit_request("generate", req), flush=True)
        add, made = services.gallery.store.add, []
        def add_then_die(record):
            made.append(add(record))
            if len(made) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return made[-1]
        services.gallery.store.add = add_then_die
        services.queue.start()
        services.queue.resume()
        import time
        time.sleep(120)
    """)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=root, timeout=180, capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    first, second = done.stdout.split()

    services = build_services(make_settings(tmp_path, tiny_models_dir))
    try:
        waiting = {j["id"]: j for j in services.queue.list()}
        assert set(waiting) == {first, second} and waiting[first]["done"] >= 2
        services.queue.start()
        services.queue.resume()
        history = finished(services.queue, 2)
        assert {j["id"]: j["state"] for j in history} == {first: "done", second: "done"}
        seeds = {job_id: sorted(r["params"]["seed"] for r in services.gallery.store.by_job(job_id))
                 for job_id in (first, second)}
        assert seeds == {first: [500, 501, 502, 503, 504], second: [900, 901]}
    finally:
        services.queue.shutdown()
        services.training.shutdown()


# ---------------------------------------------------------------------- the named API
def test_the_queue_api(served):
    from gradio_client import Client

    url, services = served
    client = Client(url, verbose=False)
    assert client.predict(api_name="/queue_pause")["paused"] is True
    try:
        req = services.generation.validate(generation_request(batch_count=1))
        ids = [services.queue.submit_request("generate", req) for _ in range(2)]
        listed = client.predict(api_name="/queue_list")
        assert [j["id"] for j in listed if j["id"] in ids] == ids
        moved = client.predict(job_id=ids[1], where="top", api_name="/queue_move")
        assert [j["id"] for j in moved if j["id"] in ids] == ids[::-1]
        assert client.predict(job_id=ids[0], api_name="/queue_cancel")["state"] == "cancelled"
        with pytest.raises(Exception, match="where must be one of"):
            client.predict(job_id=ids[1], where="sideways", api_name="/queue_move")
    finally:
        assert client.predict(api_name="/queue_resume")["paused"] is False
    wait_for(lambda: all(j["id"] != ids[1] for j in services.queue.list()), timeout=60)


def test_batch_curation_runs_as_a_queue_job(services):
    from studio.curation_service import CurationRequest

    made = services.generation.generate(generation_request(batch_count=2))
    ids = [image.id for image in made.images]
    services.queue.start()
    try:
        updates = []
        run = services.queue.interactive("curate", CurationRequest(ids=ids), "page")
        report = run(threading.Event(), updates.append)
        job = finished(services.queue, 1)[0]
    finally:
        services.queue.shutdown()
    assert report.total == 2 and report.scored == 2 and updates
    assert job["kind"] == "curate" and job["title"] == "Curate 2 image(s)" and (job["done"], job["total"]) == (2, 2)
    assert all(services.curation.record(i)["verdict"] for i in ids)


@pytest.mark.browser
def test_browser_queue_tab_lists_a_waiting_job_and_pauses_and_resumes(served):
    from playwright.sync_api import sync_playwright

    from tests.test_app_e2e import open_page, require_chromium

    require_chromium()
    url, services = served
    services.queue.pause()
    req = services.generation.validate(generation_request(batch_count=1, prompt="a queued yellow square"))
    job_id = services.queue.submit_request("generate", req)
    try:
        with sync_playwright() as p:
            browser, page, errors = open_page(p, url)
            page.get_by_role("tab", name="Queue").click()
            page.wait_for_function("document.querySelector('#queue-table').innerText.includes('queued yellow')",
                                   timeout=30_000)
            assert "paused" in page.inner_text("#queue-status")
            page.click("#queue-resume")
            page.wait_for_function("!document.querySelector('#queue-status').innerText.includes('paused')",
                                   timeout=30_000)
            wait_for(lambda: all(j["id"] != job_id for j in services.queue.list()), timeout=60)
            page.wait_for_function("!document.querySelector('#queue-table').innerText.includes('queued yellow')",
                                   timeout=30_000)
            page.click("#queue-pause")
            page.wait_for_function("document.querySelector('#queue-status').innerText.includes('paused')",
                                   timeout=30_000)
            browser.close()
        assert errors == []
    finally:
        services.queue.resume()


def test_a_waiting_persons_job_hears_its_place_and_that_the_queue_is_paused(tmp_path):
    from studio.job_queue import Waiting

    with running_batches(tmp_path, 0.02) as (queue, ran):
        queue.pause()
        heard, result = [], []
        job_id = queue.submit("note", note("person"), priority="interactive", cancel=threading.Event())
        waiter = threading.Thread(target=lambda: result.append(queue.wait(job_id, None, heard.append)))
        waiter.start()
        wait_for(lambda: heard)
        assert heard[0] == Waiting(position=1, paused=True, starts_in=heard[0].starts_in)
        queue.resume()
        waiter.join(30)
        assert result == ["person"] and all(w.position == 1 for w in heard)


def test_a_generation_waiting_behind_a_paused_queue_shows_its_position(services):
    from studio.ui.common import stream_generation

    services.queue.pause()
    services.queue.start()
    try:
        req = services.generation.validate(generation_request(batch_count=1))
        run = services.queue.interactive("generate", req, "page-2")
        shown = stream_generation(services.jobs, "page-2", req, run, lambda value, desc=None: None)
        messages = [next(shown)[3], next(shown)[3]]
        assert messages[1].startswith("Queued: position 1") and "paused" in messages[1]
        services.queue.resume()
        *_, (last, items, info, message) = list(shown)
        assert len(items) == 1
    finally:
        services.queue.shutdown()
