"""Schedules: validation naming the field, cron previews, runs through GenerationService with curation, pause,
restart, resume of a killed run, the missed-run policy, webhooks (a local HTTP server)."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from studio.errors import ValidationError
from studio.schedule_service import MISFIRE_GRACE_SECONDS, ScheduleRequest, ScheduleService
from tests.conftest import TINY_MODEL_ID, wait_for

UTC = timezone.utc


def request(**overrides) -> ScheduleRequest:
    values = dict(name="shapes", interval_minutes=60, model=TINY_MODEL_ID, prompts=["a {color} {circle|square}"],
                  variables={"color": ["red", "blue"]}, images=2, seed=7, steps=2, width=64, height=64,
                  skip_while_training=False)
    values.update(overrides)
    return ScheduleRequest(**values)


def new_service(services, **kwargs) -> ScheduleService:
    """A second service over the same data dir (as after a restart)."""
    from studio.stores.atomic_storage import JsonStore

    db = services.settings.data_dir / "db"
    return ScheduleService(JsonStore(db / "schedules.json"), JsonStore(db / "schedule_runs.json"),
                           services.generation, services.curation, services.gallery, services.settings.data_dir,
                           services.training, **kwargs)


@pytest.fixture
def schedules(services):
    yield services.schedules
    services.schedules.shutdown(wait=True)


# ---------------------------------------------------------------------- validation and previews
def test_cron_preview_known_expressions(schedules):
    start = datetime(2026, 12, 7, 8, 30, tzinfo=schedules.tz)  # a Monday
    assert [t.strftime("%a %H:%M") for t in schedules.next_runs("0 9 * * mon-fri", start=start)] == \
        ["Mon 09:00", "Tue 09:00", "Wed 09:00", "Thu 09:00", "Fri 09:00"]
    assert [t.strftime("%H:%M") for t in schedules.next_runs("*/15 * * * *", start=start)] == \
        ["08:45", "09:00", "09:15", "09:30", "09:45"]
    assert [t.strftime("%d %H:%M") for t in schedules.next_runs("30 2 1 * *", count=2, start=start)] == \
        ["01 02:30", "01 02:30"]
    assert [t.month for t in schedules.next_runs("30 2 1 * *", count=2, start=start)] == [1, 2]
    assert [t - start for t in schedules.next_runs("", 90, count=3, start=start)] == \
        [timedelta(minutes=90 * k) for k in (1, 2, 3)]
    assert "Next runs" in schedules.preview_text("0 9 * * *") and "cron" in schedules.preview_text("0 99 * * *")


@pytest.mark.parametrize("overrides, field, words", [
    (dict(cron="0 25 * * *"), "cron", "hour"),
    (dict(cron="61 * * * *"), "cron", "minute"),
    (dict(cron="* * * *"), "cron", "5 fields"),
    (dict(prompts=["a {colour} circle"]), "prompts", "colour"),
    (dict(webhook_url="ftp://example.org/hook"), "webhook_url", "http"),
    (dict(webhook_url="file:///etc/passwd"), "webhook_url", "http"),
    (dict(model="local:nope"), "model", "nope"),
    (dict(allowed_hours="9-30"), "allowed_hours", "9-30"),
    (dict(interval_minutes=0), "cron", "interval"),
])
def test_bad_schedules_are_refused_naming_the_field(schedules, overrides, field, words):
    with pytest.raises(ValidationError) as err:
        schedules.save(request(**overrides))
    assert err.value.field == field and words in str(err.value)
    assert schedules.list() == []


# ---------------------------------------------------------------------- runs
def test_a_run_makes_images_in_the_gallery_with_curation_verdicts(services, schedules):
    saved = schedules.save(request(curate=True, prompts=["a {color} circle"]))
    run = schedules.run_once(saved["id"])
    assert run["status"] == "succeeded", run
    assert len(run["images"]) == 2 and [d["seed"] for d in run["done"]] == [7, 8]
    for item in run["done"]:
        record = services.gallery.get(item["image_id"])
        assert record["source"] == "schedule" and record["job_id"] == run["id"]
        assert record["prompt"] in ("a red circle", "a blue circle")
        assert services.curation.record(item["image_id"])["verdict"] in ("accepted", "rejected", "duplicate")
    assert set(run["verdicts"]) == set(run["images"])
    assert [r["id"] for r in schedules.runs(saved["id"])] == [run["id"]]
    assert len(schedules.run_images(run["id"])) == 2


def test_keep_only_accepted_moves_the_others_to_the_trash(services, schedules):
    saved = schedules.save(request(curate=True, keep_only_accepted=True))
    run = schedules.run_once(saved["id"])
    assert run["status"] == "succeeded"
    assert sorted(run["discarded"] + run["accepted"]) == sorted(run["images"])
    for image_id in run["discarded"]:  # in the gallery's trash, restorable
        record = services.gallery.get(image_id)
        assert record["trashed"] and (services.settings.data_dir / "trash" / record["path"]).exists()


def test_conditions_skip_and_record_why(schedules):
    saved = schedules.save(request(min_free_gb=1e6))
    run = schedules.run_once(saved["id"])
    assert run["status"] == "skipped" and "free disk" in run["reason"] and run["images"] == []
    hour = schedules.now().hour
    saved = schedules.save(request(name="night", allowed_hours=f"{(hour + 1) % 24}-{(hour + 2) % 24}"))
    run = schedules.run_once(saved["id"])
    assert run["status"] == "skipped" and "allowed hours" in run["reason"]


def test_a_missing_model_fails_the_run_clearly_and_the_schedule_stays(services, schedules):
    saved = schedules.save(request())
    doc = schedules.store.get("id", saved["id"])
    schedules.store.update("id", saved["id"], {"request": {**doc["request"], "model": "local:gone"}})
    run = schedules.run_once(saved["id"])
    assert run["status"] == "failed" and "model" in run["reason"] and "gone" in run["reason"]
    assert [s["id"] for s in schedules.list()] == [saved["id"]]


def test_a_short_interval_fires_and_pause_stops_it(schedules):
    schedules.start()
    saved = schedules.save(request(interval_minutes=0.02, images=1))  # every 1.2 s
    assert schedules.list()[0]["next_run"] is not None
    wait_for(lambda: any(r["status"] == "succeeded" for r in schedules.runs(saved["id"])))
    schedules.pause(saved["id"])
    assert schedules.list()[0]["status"] == "paused" and schedules.list()[0]["next_run"] is None
    time.sleep(0.5)  # a run already going may finish
    count = len(schedules.runs(saved["id"]))
    time.sleep(2.5)
    assert len(schedules.runs(saved["id"])) == count
    schedules.resume(saved["id"])
    assert schedules.list()[0]["status"] == "scheduled"
    schedules.delete(saved["id"])
    assert schedules.list() == [] and schedules.scheduler.get_job(f"schedule:{saved['id']}") is None


def test_run_now_returns_a_run_id_and_runs_on_the_scheduler(schedules):
    schedules.start()
    saved = schedules.save(request(images=1))
    run_id = schedules.run_now(saved["id"])
    run = wait_for(lambda: (r := schedules.run(run_id)) and r["status"] == "succeeded" and r)
    assert run["trigger"] == "manual" and len(run["images"]) == 1


def test_a_restart_restores_schedules(services, schedules):
    schedules.start()
    saved = schedules.save(request(cron="0 9 * * *"))
    paused = schedules.save(request(name="paused one"))
    schedules.pause(paused["id"])
    schedules.shutdown()
    again = new_service(services)
    again.start()
    try:
        views = {v["id"]: v for v in again.list()}
        assert views[saved["id"]]["status"] == "scheduled" and views[saved["id"]]["next_run"]
        assert views[saved["id"]]["when"] == "cron 0 9 * * *"
        assert views[paused["id"]]["status"] == "paused"
        assert again.scheduler.get_job(f"schedule:{saved['id']}").next_run_time.hour == 9
    finally:
        again.shutdown()


class Killed(BaseException):
    """Stands for a kill -9 in the middle of a run: nothing after it runs."""


def test_a_killed_run_resumes_its_remaining_seeds(services, schedules):
    saved = schedules.save(request(images=4, seed=100))

    def kill_after_two(run):
        if len(run["done"]) == 2:
            raise Killed()
    schedules.after_image = kill_after_two
    with pytest.raises(Killed):
        schedules.run_once(saved["id"])
    run = schedules.runs(saved["id"])[0]
    assert run["status"] == "running" and [p["seed"] for p in run["pending"]] == [102, 103]
    planned = [d["prompt"] for d in run["done"]] + [p["prompt"] for p in run["pending"]]

    again = new_service(services)
    again.start()
    try:
        done = wait_for(lambda: (r := again.run(run["id"])) and r["status"] == "succeeded" and r)
    finally:
        again.shutdown()
    assert [d["seed"] for d in done["done"]] == [100, 101, 102, 103] and done["pending"] == []
    assert [d["prompt"] for d in done["done"]] == planned
    assert len(done["images"]) == 4 and all(services.gallery.get(i) for i in done["images"])
    assert sum(1 for r in services.gallery.list(limit=50)[0] if r["job_id"] == run["id"]) == 4


def test_a_late_start_within_the_grace_time_runs_and_a_later_one_is_missed(services, schedules):
    late = schedules.save(request(name="late", images=1))
    missed = schedules.save(request(name="missed", images=1))
    now = time.time()
    schedules.store.update("id", late["id"], {"next_run": now - 300})           # 5 min late: runs once
    schedules.store.update("id", missed["id"], {"next_run": now - MISFIRE_GRACE_SECONDS - 3600})  # too late
    schedules.start()
    run = wait_for(lambda: (r := schedules.runs(late["id"])) and r[0]["status"] == "succeeded" and r[0])
    assert run["trigger"] == "late start"
    missed_runs = schedules.runs(missed["id"])
    assert [r["status"] for r in missed_runs] == ["missed"] and "down" in missed_runs[0]["reason"]


def test_the_scheduler_runs_a_job_whose_time_passed_within_the_grace(schedules):
    """APScheduler's default misfire_grace_time (1 s) would drop this run; ours keeps it."""
    schedules.start()
    saved = schedules.save(request(images=1))
    job = schedules.scheduler.get_job(f"schedule:{saved['id']}")
    assert job.misfire_grace_time == MISFIRE_GRACE_SECONDS and job.max_instances == 1 and job.coalesce
    job.modify(next_run_time=datetime.now(UTC) - timedelta(minutes=2))
    run = wait_for(lambda: (r := schedules.runs(saved["id"])) and r[0]["status"] == "succeeded" and r[0])
    assert run["trigger"] == "scheduled"


# ---------------------------------------------------------------------- webhooks
@pytest.fixture
def hook_server():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()


def test_the_webhook_receives_the_summary(schedules, hook_server):
    url, received = hook_server
    saved = schedules.save(request(webhook_url=f"{url}/hook", images=1))
    run = schedules.run_once(saved["id"])
    assert run["status"] == "succeeded" and run["notification"]["ok"]
    path, body = received[0]
    assert path == "/hook" and body["run_id"] == run["id"] and body["status"] == "succeeded"
    assert body["images_made"] == 1 and body["image_ids"] == run["images"]
    chat = schedules.save(request(name="chat", webhook_url=f"{url}/discord", webhook_format="discord", images=1,
                                  notify_on="failure"))
    schedules.run_once(chat["id"])
    assert len(received) == 1  # success, but only failures were asked for
    schedules.save(request(**{**chat["request"], "notify_on": "success", "id": chat["id"]}))
    schedules.run_once(chat["id"])
    assert received[1][0] == "/discord" and "chat" in received[1][1]["content"]


def test_a_failing_webhook_is_recorded_and_the_run_still_succeeds(schedules):
    from tests.conftest import free_port

    saved = schedules.save(request(webhook_url=f"http://127.0.0.1:{free_port()}/nobody", images=1))
    run = schedules.run_once(saved["id"])
    assert run["status"] == "succeeded" and run["notification"]["ok"] is False
    assert schedules.run(run["id"])["notification"]["error"]


# ---------------------------------------------------------------------- the API
def test_the_api_saves_lists_runs_and_reports_a_schedule(served):
    from gradio_client import Client

    url, services = served
    client = Client(url, verbose=False)
    status, schedule_id, *_ = client.predict(
        name="api artist", cron="*/30 * * * *", model=TINY_MODEL_ID, prompts="a {color} circle",
        variables="color: red, blue", images=1, seed=3, steps=2, width=64, height=64, skip_while_training=False,
        api_name="/schedule_save")
    assert "Saved" in status and schedule_id
    listed = client.predict(api_name="/schedule_list")
    assert [s["name"] for s in listed if s["id"] == schedule_id] == ["api artist"]
    assert next(s for s in listed if s["id"] == schedule_id)["next_run"]
    with pytest.raises(Exception, match="cron field hour"):
        client.predict(name="bad", cron="0 25 * * *", model=TINY_MODEL_ID, api_name="/schedule_save")
    client.predict(schedule_id=schedule_id, api_name="/schedule_run_now")
    runs = wait_for(lambda: [r for r in client.predict(schedule_id=schedule_id, api_name="/schedule_runs")
                             if r["status"] == "succeeded"])
    assert runs[0]["images"] and services.gallery.get(runs[0]["images"][0])["source"] == "schedule"
    client.predict(schedule_id=schedule_id, api_name="/schedule_pause")
    assert next(s for s in client.predict(api_name="/schedule_list") if s["id"] == schedule_id)["status"] == "paused"
    client.predict(schedule_id=schedule_id, api_name="/schedule_delete")
    assert all(s["id"] != schedule_id for s in client.predict(api_name="/schedule_list"))


def test_a_persons_generation_waits_at_most_one_image_of_a_run(services, schedules):
    from studio.generation_service import GenerationRequest

    saved = schedules.save(request(images=4))
    person_done = threading.Event()
    seen = {}

    def person():
        services.generation.generate(GenerationRequest(prompt="a person's circle", model=TINY_MODEL_ID, steps=2,
                                                       width=64, height=64, seed=1))
        person_done.set()

    def hook(run):
        if len(run["done"]) == 1:
            threading.Thread(target=person, daemon=True).start()
            time.sleep(0.3)  # the person's job reaches the device lock between two images
        elif len(run["done"]) == 2:
            seen["after_next_image"] = person_done.is_set()
    schedules.after_image = hook
    run = schedules.run_once(saved["id"])
    assert run["status"] == "succeeded" and seen["after_next_image"] is True


# ---------------------------------------------------------------------- the browser
@pytest.mark.browser
def test_browser_creates_a_schedule_runs_it_and_sees_its_images(served):
    from playwright.sync_api import sync_playwright

    from tests.test_app_e2e import open_page, require_chromium

    require_chromium()
    url, services = served
    with sync_playwright() as p:
        browser, page, errors = open_page(p, url, height=1400)
        page.get_by_role("tab", name="Schedule").click()
        page.wait_for_selector("#schedule-cron textarea, #schedule-cron input", timeout=60_000)
        cron = page.locator("#schedule-cron textarea, #schedule-cron input").first
        for _ in range(20):  # a page still hydrating may drop keystrokes: type until it sticks
            cron.fill("30 6 * * *")
            page.wait_for_timeout(300)
            if cron.input_value() == "30 6 * * *":
                break
        page.wait_for_function("document.querySelector('#schedule-preview').innerText.includes('06:30')",
                               timeout=30_000)
        assert page.inner_text("#schedule-preview").count("06:30") == 5
        name = page.locator("#schedule-name textarea, #schedule-name input").first
        name.fill("browser artist")
        page.click("#schedule-save")
        page.wait_for_function("document.querySelector('#schedule-status').innerText.includes('Saved')",
                               timeout=30_000)
        assert "browser artist" in page.inner_text("#schedule-table")
        page.click("#schedule-run-now")
        schedule_id = next(s["id"] for s in services.schedules.list() if s["name"] == "browser artist")
        run = wait_for(lambda: (r := services.schedules.runs(schedule_id)) and r[0]["status"] == "succeeded"
                       and r[0], timeout=120)
        page.click("#schedule-refresh")
        page.wait_for_function("document.querySelector('#schedule-runs').innerText.includes('succeeded')",
                               timeout=30_000)
        page.locator("#schedule-run-pick input").click()
        page.get_by_role("option", name=run["id"][:8], exact=False).first.click()
        page.wait_for_function(f"document.querySelectorAll('#schedule-run-images img').length >= "
                               f"{len(run['images'])}", timeout=30_000)
        browser.close()
    assert errors == []


@pytest.mark.slow
def test_a_run_killed_9_mid_batch_resumes_at_the_next_start(tmp_path, tiny_models_dir):
    """A real kill -9 after the 2nd of 4 images; the next start makes images 3 and 4 with their seeds."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from studio.services import build_services
    from tests.conftest import make_settings

    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from studio.schedule_service import ScheduleRequest
        from studio.services import build_services
        from tests.conftest import make_settings
        services = build_services(make_settings(Path({str(tmp_path)!r}), Path({str(tiny_models_dir)!r})))
        saved = services.schedules.save(ScheduleRequest(
            name="killed", interval_minutes=60, model={TINY_MODEL_ID!r}, prompts=["a {{red|blue}} circle"],
            images=4, seed=40, steps=2, width=64, height=64, skip_while_training=False))
        def kill(run):
            if len(run["done"]) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        services.schedules.after_image = kill
        services.schedules.run_once(saved["id"])
    """)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], cwd=root, timeout=120, capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]

    services = build_services(make_settings(tmp_path, tiny_models_dir))
    try:
        run = services.schedules.runs()[0]
        assert run["status"] == "running" and [p["seed"] for p in run["pending"]] == [42, 43]
        services.schedules.start()
        finished = wait_for(lambda: (r := services.schedules.run(run["id"])) and r["status"] == "succeeded" and r)
        assert [d["seed"] for d in finished["done"]] == [40, 41, 42, 43]
        assert all(services.gallery.get(i) for i in finished["images"])
    finally:
        services.schedules.shutdown()
        services.training.shutdown()


def test_two_schedules_due_together_run_one_after_the_other(schedules):
    schedules.start()
    first, second = (schedules.save(request(name=n, images=1)) for n in ("first", "second"))
    ids = [schedules.run_now(first["id"]), schedules.run_now(second["id"])]
    runs = wait_for(lambda: all((r := schedules.run(i)) and r["status"] == "succeeded" for i in ids)
                    and sorted((schedules.run(i) for i in ids), key=lambda r: r["started"]))
    assert runs[0]["finished"] <= runs[1]["started"]


def test_style_presets_and_a_negative_template_wrap_every_scheduled_prompt(services, schedules):
    style = services.prompts.styles.names()[0]
    negative = services.prompts.negatives.names()[0]
    saved = schedules.save(request(styles=[style], negative_template=negative, images=1))
    run = schedules.run_once(saved["id"])
    record = services.gallery.get(run["images"][0])
    item = run["done"][0]
    expected, expected_negative = services.prompts.prepare(item["prompt"], "", [style], negative)
    assert record["prompt"] == expected != item["prompt"] and record["negative_prompt"] == expected_negative
    assert schedules.get(saved["id"]).styles == [style]
    with pytest.raises(ValidationError, match="style 'no such style' does not exist"):
        schedules.save(request(styles=["no such style"]))
