"""The SMTP settings for e-mailed schedule reports (Models / Settings tab): host, port, security, login, from and
to; Save and Send a test e-mail. The password box is always empty: typing one replaces the stored password,
leaving it empty keeps it; the page only says whether one is stored."""

from __future__ import annotations

import gradio as gr

from studio.notify_email import SECURITY, EmailSettings
from studio.ui.common import PLUMBING, LoadEvent, user_errors


def status_text(view: dict) -> str:
    if not view["enabled"]:
        return "E-mail is **off** (no SMTP host)."
    return (f"E-mail **on**: {view['sender']} → {view['recipients']} via {view['host']}:{view['port']} "
            f"({view['security']}); password {'stored' if view['password_set'] else 'not set'}.")


def create_email_settings(notifier) -> LoadEvent:
    """Build the panel where it is called; returns its on-load event (fills the fields, never the password)."""
    with gr.Accordion("E-mail (SMTP) for schedule reports", open=False):
        with gr.Row():
            host = gr.Textbox(label="SMTP host (empty = e-mail off)", scale=3, elem_id="smtp-host")
            port = gr.Number(587, label="Port", precision=0, minimum=1, maximum=65535, scale=1)
            security = gr.Dropdown(list(SECURITY), value="starttls", label="Security", scale=1)
        with gr.Row():
            user = gr.Textbox(label="User (empty = no login)")
            password = gr.Textbox(label="Password (empty = keep the stored one)", type="password",
                                  elem_id="smtp-password")
            forget = gr.Checkbox(False, label="Forget the stored password")
        with gr.Row():
            sender = gr.Textbox(label="From", placeholder="studio@example.org")
            recipients = gr.Textbox(label="To (commas between addresses)", placeholder="me@example.org")
            timeout = gr.Number(10, label="Timeout (s)", minimum=1, maximum=300)
        with gr.Row():
            save = gr.Button("Save e-mail settings", variant="primary", elem_id="smtp-save")
            test = gr.Button("Send a test e-mail")
        status = gr.Markdown(elem_id="smtp-status")

    fields = [host, port, security, user, sender, recipients, timeout]

    def load():
        view = notifier.view()
        return (view["host"], view["port"], view["security"], view["user"], view["sender"], view["recipients"],
                view["timeout_seconds"], status_text(view))

    @user_errors
    def on_save(host_, port_, security_, user_, sender_, recipients_, timeout_, password_, forget_):
        settings = EmailSettings(host=host_ or "", port=port_, security=security_, user=user_ or "",
                                 sender=sender_ or "", recipients=recipients_ or "", timeout_seconds=timeout_)
        view = notifier.save(settings, password_ or None)
        if forget_:
            view = notifier.forget_password()
        return status_text(view), "", False

    @user_errors
    def on_test():
        note = notifier.send("[AI Artist Studio] test e-mail", "The studio's SMTP settings work.")
        if not note["ok"]:
            raise gr.Error(f"The test e-mail failed: {note['error']}")
        return f"Test e-mail sent to {', '.join(note['to'])}."

    save.click(on_save, [*fields, password, forget], [status, password, forget], queue=False, **PLUMBING)
    test.click(on_test, None, status, queue=False, **PLUMBING)
    return LoadEvent(load, [], [*fields, status])
