"""Schedule extras: e-mailed run reports (a local SMTP server in the test), SMTP settings and their password,
contact sheets, the dashboard's data and panel, conflict detection between schedules."""

from __future__ import annotations

import base64
import email
import email.policy
import io
import socket
import socketserver
import stat
import threading
import time
from datetime import date, datetime, timedelta

import pytest
from PIL import Image

from studio.contact_sheet import Tile, contact_sheet
from studio.errors import ValidationError
from studio.notify_email import EmailSettings, validate, wanted
from studio.run_report import report_text
from studio.schedule_conflicts import find_conflicts
from studio.schedule_dashboard import images_per_day, resources, upcoming
from studio.ui.schedule_tab import run_rows
from tests.conftest import TINY_MODEL_ID, free_port
from tests.test_schedule import request

PASSWORD = "s3cret-Passw0rd"


# ---------------------------------------------------------------------- a tiny SMTP server
class SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT) to receive a message."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        mail = {"rcpt": [], "auth": None}
        self.reply("220 test ESMTP")
        while line := self.rfile.readline():
            command = line.decode().strip()
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250-test\r\n250-AUTH PLAIN\r\n250 8BITMIME")
            elif verb == "AUTH":
                mail["auth"] = base64.b64decode(command.split()[2]).split(b"\0")[1:]
                self.reply("535 bad credentials" if self.server.refuse_login else "235 ok")
            elif verb == "MAIL":
                mail["from"] = command
                self.reply("250 ok")
            elif verb == "RCPT":
                mail["rcpt"].append(command)
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go on")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                mail["message"] = email.message_from_bytes(data, policy=email.policy.default)
                self.server.received.append(mail)
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


@pytest.fixture
def smtp_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), SMTPHandler)
    server.daemon_threads = True
    server.received, server.refuse_login = [], False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def schedules(services):
    yield services.schedules
    services.schedules.shutdown(wait=True)


def smtp_settings(port: int = 25, **overrides) -> EmailSettings:
    values = dict(host="127.0.0.1", port=port, security="none", user="artist", sender="Studio <studio@localhost>",
                  recipients="me@example.org, you@example.org", timeout_seconds=2)
    values.update(overrides)
    return EmailSettings(**values)


# ---------------------------------------------------------------------- e-mail
def test_a_run_report_is_e_mailed_with_its_contact_sheet(services, schedules, smtp_server):
    schedules.email.save(smtp_settings(smtp_server.server_address[1]), PASSWORD)
    saved = schedules.save(request(curate=True, email_on="success", images=3))
    run = schedules.run_once(saved["id"])
    assert run["status"] == "succeeded" and run["email"]["ok"], run["email"]
    assert schedules.run(run["id"])["email"]["to"] == ["me@example.org", "you@example.org"]
    (mail,) = smtp_server.received
    assert mail["auth"] == [b"artist", PASSWORD.encode()]
    assert len(mail["rcpt"]) == 2 and "studio@localhost" in mail["from"]
    message = mail["message"]
    assert "shapes" in message["Subject"] and "succeeded" in message["Subject"] and "3 made" in message["Subject"]
    assert run["id"] in message.get_body(("plain",)).get_content()
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_content_type() == "image/jpeg" and attachment.get_filename() == f"{run['id']}.jpg"
    sheet = Image.open(io.BytesIO(attachment.get_content()))
    assert sheet.format == "JPEG" and sheet.width >= 3 * 64 and sheet.height > 64


def test_e_mail_follows_the_schedule_choice(schedules, smtp_server):
    schedules.email.save(smtp_settings(smtp_server.server_address[1]))
    off = schedules.save(request(name="quiet", images=1))
    failures = schedules.save(request(name="failures only", images=1, email_on="failure"))
    assert schedules.run_once(off["id"])["email"] is None
    assert schedules.run_once(failures["id"])["email"] is None
    assert smtp_server.received == []
    skipped = schedules.save(request(name="skipped", images=1, email_on="failure", min_free_gb=1e6))
    run = schedules.run_once(skipped["id"])
    assert run["status"] == "skipped" and run["email"]["ok"] and run["contact_sheet"] is None
    assert "skipped" in smtp_server.received[0]["message"]["Subject"]
    assert not list(smtp_server.received[0]["message"].iter_attachments())
    assert [wanted(w, "failed") for w in ("off", "both", "success", "failure")] == [False, True, False, True]


def test_an_unreachable_or_silent_smtp_server_is_recorded_and_the_run_still_succeeds(schedules):
    schedules.email.save(smtp_settings(free_port()))
    saved = schedules.save(request(images=1, email_on="both"))
    run = schedules.run_once(saved["id"])
    assert run["status"] == "succeeded" and run["email"]["ok"] is False
    assert "Connection" in schedules.run(run["id"])["email"]["error"]
    with socket.socket() as silent:  # accepts connections, never says hello
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        schedules.email.save(smtp_settings(silent.getsockname()[1], timeout_seconds=1))
        started = time.monotonic()
        run = schedules.run_once(saved["id"])
    assert time.monotonic() - started < 30
    assert run["status"] == "succeeded" and "timed out" in run["email"]["error"]
    assert "E-mail:** failed" in report_text(schedules.run(run["id"]))
    assert any("e-mail: " in row[-1] for row in run_rows(schedules))


def test_the_password_is_stored_apart_never_shown_back_nor_in_errors(services, schedules, smtp_server):
    notifier = schedules.email
    view = notifier.save(smtp_settings(smtp_server.server_address[1]), PASSWORD)
    assert view["password_set"] and "password" not in view and PASSWORD not in str(view)
    db = services.settings.data_dir / "db"
    assert PASSWORD not in (db / "email_settings.json").read_text()
    assert stat.S_IMODE((db / "smtp_password").stat().st_mode) == 0o600
    assert PASSWORD not in repr(notifier.settings())
    notifier.save(smtp_settings(smtp_server.server_address[1], user="other"))  # no password given: kept
    assert notifier.settings().password == PASSWORD and notifier.view()["user"] == "other"
    smtp_server.refuse_login = True
    note = notifier.send("hello", "body")
    assert note["ok"] is False and "535" in note["error"] and PASSWORD not in note["error"]
    assert notifier.forget_password()["password_set"] is False and not (db / "smtp_password").exists()


def test_the_settings_panel_never_fills_the_password(schedules):
    import gradio as gr

    from studio.ui.email_settings_panel import create_email_settings

    schedules.email.save(smtp_settings(2525), PASSWORD)
    with gr.Blocks():
        load = create_email_settings(schedules.email)
    values = load.fn()
    assert values[:2] == ("127.0.0.1", 2525) and PASSWORD not in str(values) and "password stored" in values[-1]
    assert all(getattr(c, "type", None) != "password" for c in load.outputs)


@pytest.mark.parametrize("overrides, field", [
    (dict(port=0), "smtp_port"), (dict(port=65536), "smtp_port"), (dict(port="abc"), "smtp_port"),
    (dict(recipients="me@example.org, not an address"), "email_to"), (dict(recipients=""), "email_to"),
    (dict(sender="studio"), "email_from"), (dict(sender="a@b.org\r\nBcc: x@y.org"), "email_from"),
    (dict(security="ssl3"), "smtp_security"), (dict(host="smtp example.org"), "smtp_host"),
    (dict(timeout_seconds=0), "smtp_timeout_seconds"),
    (dict(host="smtp.example.org", security="none"), "smtp_security"),  # a password in clear over the network
])
def test_bad_smtp_settings_are_refused_naming_the_field(overrides, field):
    with pytest.raises(ValidationError) as err:
        validate(smtp_settings(**{"port": 25, **overrides}))
    assert err.value.field == field


def test_starttls_is_required_when_asked(schedules, smtp_server):
    schedules.email.save(smtp_settings(smtp_server.server_address[1], security="starttls"))
    note = schedules.email.send("hello", "body")
    assert note["ok"] is False and "STARTTLS" in note["error"] and smtp_server.received == []


def test_an_empty_host_turns_e_mail_off_and_email_on_is_checked(schedules):
    assert validate(EmailSettings()).enabled is False
    assert schedules.email.send("s", "b")["ok"] is False  # not set up: a note, not an exception
    with pytest.raises(ValidationError) as err:
        schedules.save(request(email_on="sometimes"))
    assert err.value.field == "email_on"


# ---------------------------------------------------------------------- contact sheets
def test_the_contact_sheet_is_saved_with_the_run_and_labels_each_image(services, schedules, tmp_path):
    saved = schedules.save(request(curate=True, images=4))
    run = schedules.run_once(saved["id"])
    path = services.settings.data_dir / run["contact_sheet"]
    assert run["contact_sheet"] == f"reports/{run['id']}.jpg" and path.exists()
    assert schedules.run(run["id"])["contact_sheet"] == run["contact_sheet"]
    with Image.open(path) as sheet:
        assert sheet.format == "JPEG" and sheet.width >= 2 * 64
    text = report_text(run)
    assert "succeeded" in text and "Made:** 4" in text and "a {color} {circle|square}" in text

    tiles = [Tile(tmp_path / f"{n}.png", n, verdict, score) for n, verdict, score in
             [(1, "accepted", 0.91), (2, "rejected", 0.2), (3, None, None), (4, "featured", 0.99), (5, None, 0.5)]]
    for n, tile in enumerate(tiles):
        Image.new("RGB", (96, 64), (40 * n, 80, 120)).save(tile.path)
    sheet = contact_sheet(tiles, "title")
    assert sheet.size == (3 * (160 + 12), 28 + 2 * (160 + 34 + 12))
    assert tiles[0].label == "seed 1 · accepted · 0.91" and tiles[2].label == "seed 3"
    with pytest.raises(ValueError):
        contact_sheet([])


def test_a_keep_only_accepted_run_still_shows_its_discarded_images(services, schedules):
    saved = schedules.save(request(curate=True, keep_only_accepted=True, images=3))
    run = schedules.run_once(saved["id"])
    assert (services.settings.data_dir / run["contact_sheet"]).exists()


# ---------------------------------------------------------------------- the dashboard
def test_upcoming_runs_over_the_next_24_hours(schedules):
    schedules.save(request(name="half hourly", cron="*/30 * * * *", interval_minutes=0))
    schedules.save(request(name="hourly", interval_minutes=60))
    paused = schedules.save(request(name="paused", interval_minutes=10))
    schedules.pause(paused["id"])
    rows = upcoming(schedules)
    by_name = {name: [r for r in rows if r["schedule"] == name] for name in ("half hourly", "hourly", "paused")}
    assert len(by_name["half hourly"]) == 48 and len(by_name["hourly"]) == 24 and by_name["paused"] == []
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)
    times = [datetime.fromisoformat(r["at"]) for r in by_name["half hourly"]]
    assert all(t.minute in (0, 30) for t in times) and times[0] - schedules.now() <= timedelta(minutes=30)
    schedules.start()
    hourly = next(v for v in schedules.list() if v["name"] == "hourly")
    assert [r["at"] for r in upcoming(schedules) if r["schedule"] == "hourly"][0] == hourly["next_run"]


def test_images_per_day_and_resources():
    today = date(2026, 12, 6)
    noon = datetime(2026, 12, 6, 12).timestamp()
    runs = [{"finished": noon, "images": ["a", "b", "c"], "accepted": ["a"]},
            {"finished": noon - 86400, "images": ["d"], "accepted": []},
            {"finished": noon - 30 * 86400, "images": ["old"], "accepted": ["old"]},
            {"finished": None, "created": noon, "images": [], "accepted": []}]
    days = images_per_day(runs, days=7, today=today)
    assert len(days) == 7 and days[-1] == {"day": "2026-12-06", "made": 3, "accepted": 1}
    assert days[-2]["made"] == 1 and sum(d["made"] for d in days) == 4
    res = resources(".", cpu_sample_seconds=0)
    assert 0 <= res["cpu_percent"] <= 100 and 0 < res["ram_used_gb"] <= res["ram_total_gb"]
    assert 0 < res["disk_free_gb"] <= res["disk_total_gb"] and isinstance(res["gpu"], list)


def test_the_dashboard_panel_fills_its_plots(services, schedules):
    import gradio as gr

    from studio.ui.schedule_dashboard_panel import create_dashboard

    schedules.save(request(name="every 2 h", interval_minutes=120))
    run = schedules.run_once(schedules.save(request(name="ran", images=1))["id"])
    with gr.Blocks():
        load, api = create_dashboard(schedules, services.settings.data_dir)
    text, timeline, per_day, last, sheets = load.fn()
    assert "CPU" in text and "disk free" in text
    assert list(timeline.columns) == ["time", "schedule"] and (timeline["schedule"] == "every 2 h").sum() == 12
    assert per_day["images"].sum() == 1 and set(per_day["kind"]) == {"made", "accepted"}
    assert "ran" in last and "succeeded" in last
    assert [s[0] for s in sheets] == [str(services.settings.data_dir / run["contact_sheet"])]
    data = api["schedule_dashboard"]()
    assert data["last_runs"][0]["run_id"] == run["id"] and data["last_runs"][0]["contact_sheet"]
    for component, value in ((load.outputs[1], timeline), (load.outputs[2], per_day)):
        assert component.postprocess(value) is not None  # Gradio takes the frames as they are


# ---------------------------------------------------------------------- conflicts
def add_past_run(schedules, schedule_id: str, seconds: float) -> None:
    schedules.runs_store.insert({"id": f"past-{schedule_id}-{seconds}", "schedule_id": schedule_id,
                                 "schedule_name": "past", "status": "succeeded", "seconds": seconds,
                                 "created": time.time() - 3600, "images": [], "accepted": []})


def test_conflicts_same_minute_overlap_and_overrun(schedules):
    morning = schedules.save(request(name="morning", cron="0 9 * * *", interval_minutes=0))
    weekdays = schedules.save(request(name="weekdays", cron="0 9 * * mon-fri", interval_minutes=0))
    (same,) = find_conflicts(schedules, weekdays["id"])
    assert same.other_name == "morning" and same.kind == "same minute" and same.count == 5
    assert same.first.hour == 9 and "one after the other" in same.message

    later = schedules.save(request(name="later", cron="30 9 * * *", interval_minutes=0))
    assert find_conflicts(schedules, later["id"]) == []  # the others have no history yet: minutes differ
    add_past_run(schedules, morning["id"], 45 * 60)
    (overlap,) = find_conflicts(schedules, later["id"])
    assert overlap.other_id == morning["id"] and overlap.kind == "overlap" and overlap.count == 7
    assert "45.0 min" in overlap.message

    evening = schedules.save(request(name="evening", cron="0 21 * * *", interval_minutes=0))
    assert find_conflicts(schedules, evening["id"]) == []
    busy = schedules.save(request(name="busy", cron="*/5 * * * *", interval_minutes=0))
    add_past_run(schedules, busy["id"], 600)
    kinds = {c.kind: c for c in find_conflicts(schedules, busy["id"])}
    assert "overrun" in kinds and "skipped" in kinds["overrun"].message
    schedules.pause(morning["id"])
    assert all(c.other_id != morning["id"] for c in find_conflicts(schedules, later["id"]))


def test_saving_through_the_api_warns_of_a_conflict_and_serves_the_dashboard(served):
    from gradio_client import Client

    url, services = served
    client = Client(url, verbose=False)
    common = dict(model=TINY_MODEL_ID, prompts="a {red|blue} circle", images=1, steps=2, width=64, height=64,
                  skip_while_training=False, api_name="/schedule_save")
    client.predict(name="api first", cron="15 4 * * *", **common)
    status, second_id, *_ = client.predict(name="api second", cron="15 4 * * *", email_on="failure", **common)
    assert "Saved" in status and "⚠" in status and "api first" in status and "one after the other" in status
    assert services.schedules.get(second_id).email_on == "failure"
    data = client.predict(api_name="/schedule_dashboard")
    assert {"upcoming", "per_day", "resources", "last_runs"} <= set(data)
    assert sum(r["schedule"] in ("api first", "api second") for r in data["upcoming"]) == 2
    for view in services.schedules.list():
        if view["name"] in ("api first", "api second"):
            services.schedules.delete(view["id"])


# ---------------------------------------------------------------------- upscale the best
def test_a_run_upscales_its_best_accepted_images(services, schedules):
    saved = schedules.save(request(curate=True, images=3, upscale_top=2, upscaler="Lanczos", upscale_scale=2))
    assert saved["request"]["upscale_top"] == 2 and saved["request"]["upscaler"] == "Lanczos"
    from studio.curation.policy import KEYS

    lenient = services.curation.make_policy(threshold=0, limits={k: None for k in KEYS})
    lenient.dedup_radius = 0  # the tiny model's noise images: every one accepted, so the best K are upscaled
    services.curation.apply(lenient)
    run = schedules.run_once(saved["id"])
    accepted = run["accepted"]
    assert len(accepted) == 3, run["verdicts"]
    scores = {i: services.curation.record(i)["score"] for i in accepted}
    best = sorted(accepted, key=lambda i: -scores[i])[:2]
    assert len(run["upscaled"]) == len(best)
    made = {services.gallery.get(i)["source_id"]: services.gallery.get(i) for i in run["upscaled"]}
    assert sorted(made) == sorted(best)
    for image_id, record in made.items():
        source = Image.open(services.gallery.path_of(services.gallery.get(image_id))).size
        assert Image.open(services.gallery.path_of(record)).size == (2 * source[0], 2 * source[1])
        infotext = services.generation.infotext_of(str(services.gallery.path_of(record)))
        assert "Postprocess upscaler: Lanczos" in infotext
    assert f"the best {len(run['upscaled'])} upscaled (Lanczos, x2)" in report_text(run)


@pytest.mark.parametrize("overrides, field", [
    (dict(upscale_top=2), "upscale_top"),  # without curation
    (dict(curate=True, upscale_top=9, images=3), "upscale_top"),
    (dict(curate=True, upscale_top=1, upscaler="no-such-model"), "upscaler"),
    (dict(curate=True, upscale_top=1, upscale_scale=20), "upscale_scale"),
])
def test_upscale_settings_are_checked_naming_the_field(schedules, overrides, field):
    with pytest.raises(ValidationError) as caught:
        schedules.save(request(**overrides))
    assert caught.value.field == field
