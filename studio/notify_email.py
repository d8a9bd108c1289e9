"""E-mail notifications over SMTP (stdlib `smtplib` + `email.message`): the studio's SMTP settings, kept in
`<data>/db/email_settings.json` with the password beside it in `<data>/db/smtp_password` (mode 0600; never logged,
never shown back), and the sending of a run report with its contact sheet attached.

    EmailNotifier.view() -> dict              the settings without the password ("password_set" instead)
    EmailNotifier.save(EmailSettings, password=None)   validate and store; password None keeps the stored one
    EmailNotifier.send(subject, body, attachments) -> note   {"ok", "to", "at"} or {"ok": False, "error", "at"}

A failing, refusing or silent server gives a note with the error; `send` never raises. A login over a plain
(unencrypted) connection is refused unless the server is on this machine (a local relay).
"""

from __future__ import annotations

import ipaddress
import mimetypes
import os
import re
import smtplib
import ssl
import time
from dataclasses import asdict, dataclass, field, fields
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from pathlib import Path
from typing import Callable

from studio.errors import ValidationError, check_range

SECURITY = ("starttls", "tls", "none")  # STARTTLS on a plain port (587), implicit TLS (465), plain (local relays)
WHEN = ("off", "both", "success", "failure")
SETTINGS_KEY = "smtp"
_ADDRESS = re.compile(r"[^@\s<>,;:\"()\[\]]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[?[0-9A-Fa-f:.]+\]?")


@dataclass
class EmailSettings:
    """Where and how to send; `host` empty means e-mail is off. `recipients`: addresses separated by commas."""

    host: str = ""
    port: int = 587
    security: str = "starttls"
    user: str = ""
    password: str = field(default="", repr=False)
    sender: str = ""
    recipients: str = ""
    timeout_seconds: float = 10

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    @property
    def to(self) -> list[str]:
        return [addr for _, addr in getaddresses([self.recipients]) if addr]

    @classmethod
    def from_dict(cls, data: dict) -> "EmailSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


def check_address(field_name: str, text: str) -> str:
    """One e-mail address (a display name allowed: `Studio <me@example.org>`); ValidationError naming the field."""
    if "\n" in text or "\r" in text or not _ADDRESS.fullmatch(parseaddr(text)[1] or "-"):
        raise ValidationError(f"{field_name} must be an e-mail address like name@example.org; got {text!r}",
                              field_name)
    return text.strip()


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate(settings: EmailSettings) -> EmailSettings:
    """Check every field (port 1..65535, addresses, security mode); an empty host turns e-mail off."""
    host = (settings.host or "").strip()
    if host and not _HOST.fullmatch(host):
        raise ValidationError(f"smtp_host must be a host name or IP address; got {host!r}", "smtp_host")
    port = check_range("smtp_port", settings.port, 1, 65535, int)
    if settings.security not in SECURITY:
        raise ValidationError(f"smtp_security must be one of {', '.join(SECURITY)}; got {settings.security!r}",
                              "smtp_security")
    user = (settings.user or "").strip()
    if any(c in user + (settings.password or "") for c in "\r\n"):
        raise ValidationError("smtp_user and smtp_password must be one line each", "smtp_user")
    if user and settings.security == "none" and not is_loopback(host):
        raise ValidationError("smtp_security must be starttls or tls when logging in to another machine (the "
                              "password would cross the network in clear); none is for a relay on this machine",
                              "smtp_security")
    sender = (settings.sender or "").strip()
    recipients = [r.strip() for r in (settings.recipients or "").split(",") if r.strip()]
    if host:
        if not sender:
            raise ValidationError("email_from must be an e-mail address like studio@example.org", "email_from")
        if not recipients:
            raise ValidationError("email_to must hold at least one address (several: separated by commas)",
                                  "email_to")
    if sender:
        check_address("email_from", sender)
    for recipient in recipients:
        check_address("email_to", recipient)
    timeout = check_range("smtp_timeout_seconds", settings.timeout_seconds, 1, 300, float)
    return EmailSettings(host=host, port=port, security=settings.security, user=user, password=settings.password,
                         sender=sender, recipients=", ".join(recipients), timeout_seconds=timeout)


def wanted(when: str, status: str) -> bool:
    """Whether a run that ended with `status` is e-mailed under the schedule's `email_on` choice."""
    success = status == "succeeded"
    return when == "both" or (when == "success" and success) or (when == "failure" and not success)


def build_message(settings: EmailSettings, subject: str, body: str, attachments=()) -> EmailMessage:
    """A plain-text message from the settings' sender to its recipients, with files attached."""
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.sender
    message["To"] = ", ".join(settings.to)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="ai-artist-studio.local")
    message.set_content(body)
    for path in attachments:
        path = Path(path)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        maintype, subtype = kind.split("/", 1)
        message.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    return message


def deliver(settings: EmailSettings, message: EmailMessage) -> None:
    """Send through the settings' server (implicit TLS, STARTTLS or plain; login when a user is set)."""
    context = ssl.create_default_context()
    if settings.security == "tls":
        smtp = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout_seconds, context=context)
    else:
        smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_seconds)
    with smtp:
        if settings.security == "starttls":
            smtp.starttls(context=context)
        if settings.user:
            smtp.login(settings.user, settings.password)
        smtp.send_message(message)


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def write_secret(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only (mode 0600); empty text deletes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not text:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class EmailNotifier:
    """The SMTP settings (a key/value JsonStore + a secret file) and sending with them."""

    def __init__(self, settings_store, secret_path: Path, clock: Callable[[], float] = time.time,
                 transport: Callable[[EmailSettings, EmailMessage], None] = deliver):
        self.store, self.secret_path = settings_store, Path(secret_path)
        self.clock, self.transport = clock, transport

    def settings(self) -> EmailSettings:
        doc = self.store.get("key", SETTINGS_KEY)
        stored = EmailSettings.from_dict((doc or {}).get("value"))
        stored.password = self.secret_path.read_text(encoding="utf-8") if self.secret_path.exists() else ""
        return stored

    def view(self) -> dict:
        """The settings as the page shows them: never the password, only whether one is stored."""
        current = self.settings()
        out = {k: v for k, v in asdict(current).items() if k != "password"}
        return {**out, "password_set": bool(current.password), "enabled": current.enabled}

    def save(self, settings: EmailSettings, password: str | None = None) -> dict:
        """Validate and store; `password` None (or "") keeps the stored one, `forget_password()` clears it."""
        if password:
            settings.password = password
        else:
            settings.password = self.settings().password
        checked = validate(settings)
        self.store.upsert("key", SETTINGS_KEY, {"key": SETTINGS_KEY,
                                                "value": {k: v for k, v in asdict(checked).items()
                                                          if k != "password"}})
        write_secret(self.secret_path, checked.password)
        return self.view()

    def forget_password(self) -> dict:
        write_secret(self.secret_path, "")
        return self.view()

    def send(self, subject: str, body: str, attachments=()) -> dict:
        """Send one message with the stored settings; the outcome as a note, never an exception."""
        settings = self.settings()
        if not settings.enabled:
            return {"ok": False, "error": "e-mail is not set up (SMTP host empty in Models ▸ E-mail)",
                    "at": self.clock()}
        try:
            self.transport(settings, build_message(settings, subject, body, attachments))
        except (smtplib.SMTPException, OSError, ValueError) as exc:
            return {"ok": False, "error": _scrub(f"{type(exc).__name__}: {exc}", settings.password),
                    "at": self.clock()}
        return {"ok": True, "to": settings.to, "at": self.clock()}
