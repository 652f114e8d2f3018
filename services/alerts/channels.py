"""Notification channels beyond MQTT: webhooks (generic JSON, Slack, Microsoft Teams) and e-mail.

Each channel has its own queue and worker: a failing or slow channel is retried
with backoff and never delays another channel or the MQTT alert, which the
handler publishes before anything is queued here. Credentials come from the
environment (see docs/configuration.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal, Protocol

import aiohttp
import aiosmtplib

from isoperf.backoff import Backoff
from isoperf.influx import LineSink
from isoperf.points import alert_delivery_line
from isoperf.schemas import Alert

log = logging.getLogger(__name__)

WebhookFormat = Literal["generic", "slack", "teams"]
# What a channel may fail with: retried with backoff, never allowed past its own worker.
CHANNEL_ERRORS = (aiohttp.ClientError, aiosmtplib.SMTPException, OSError, TimeoutError, RuntimeError)
COLOURS = {"advisory": "2E86C1", "warning": "F39C12", "critical": "E74C3C", "stop": "7B241C"}


@dataclass(frozen=True)
class Notice:
    theatre: str
    session: str
    alert: Alert

    def subject(self) -> str:
        a = self.alert
        extra = {"repeat": " reminder", "unacknowledged": " UNACKNOWLEDGED"}.get(a.kind or "", "")
        what = "RESOLVED" if a.status == "resolved" else f"{a.severity.upper()}{extra}"
        return f"[isoperf {what}] {self.theatre}/{self.session}: {a.rule.replace('_', ' ')}"


# Adaptive Card text colours: the card has no free colours, only these.
CARD_COLOURS = {"advisory": "Accent", "warning": "Warning", "critical": "Attention", "stop": "Attention"}


def teams_card(notice: Notice) -> dict[str, Any]:
    """A Teams Workflows ("When a Teams webhook request is received") message: one Adaptive Card.

    Teams retires the Office 365 connectors and their MessageCard format; a Workflow posts the
    attachments of a ``message`` to the channel.
    """
    a = notice.alert
    facts = [
        {"title": "Theatre", "value": notice.theatre},
        {"title": "Session", "value": notice.session},
        {"title": "Rule", "value": a.rule},
        {"title": "Severity", "value": a.severity},
        {"title": "Status", "value": a.status},
        {"title": "Alert id", "value": a.id},
    ]
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": {"width": "Full"},
        "body": [
            {
                "type": "TextBlock",
                "text": notice.subject(),
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
                "color": "Good" if a.status == "resolved" else CARD_COLOURS[a.severity],
            },
            {"type": "TextBlock", "text": a.message, "wrap": True},
            {"type": "FactSet", "facts": facts},
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def webhook_body(notice: Notice, fmt: WebhookFormat) -> dict[str, Any]:
    """The JSON body of a webhook: isoperf's own, or what Slack or Teams incoming webhooks accept."""
    a = notice.alert
    if fmt == "slack":
        return {"text": f"*{notice.subject()}*\n{a.message}"}
    if fmt == "teams":
        return teams_card(notice)
    return {"theatre": notice.theatre, "session": notice.session, **a.model_dump(mode="json", exclude_none=True)}


class Channel(Protocol):
    name: str

    async def send(self, notice: Notice) -> None: ...


class WebhookChannel:
    def __init__(self, url: str, fmt: WebhookFormat, session: aiohttp.ClientSession, timeout_s: float = 10.0) -> None:
        self.name = f"webhook:{fmt}:{url.split('?', maxsplit=1)[0]}"
        self.url, self.fmt, self.session = url, fmt, session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(self, notice: Notice) -> None:
        async with self.session.post(self.url, json=webhook_body(notice, self.fmt), timeout=self.timeout) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"{self.name} answered {resp.status}")


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_s: float = 15.0


class EmailChannel:
    def __init__(self, config: SmtpConfig) -> None:
        self.name = f"email:{config.host}:{config.port}"
        self.config = config

    async def send(self, notice: Notice) -> None:
        c = self.config
        msg = EmailMessage()
        msg["From"] = c.sender
        msg["To"] = ", ".join(c.recipients)
        msg["Subject"] = notice.subject()
        a = notice.alert
        msg.set_content(
            f"{a.message}\n\nTheatre {notice.theatre}, session {notice.session}\nRule {a.rule}, severity {a.severity}, "
            f"status {a.status}\nValue {a.value:g}, threshold {a.threshold:g}\nAlert id {a.id}\n"
        )
        await aiosmtplib.send(
            msg,
            hostname=c.host,
            port=c.port,
            username=c.username,
            password=c.password,
            start_tls=c.starttls,
            timeout=c.timeout_s,
        )


class Notifier:
    """Fans notices out to every channel; each channel's worker retries on its own.

    Escalation channels (the on-call phone, a second team) get only what was escalated to
    them: alerts left unacknowledged, and later the resolution of those alerts.
    """

    def __init__(
        self,
        channels: list[Channel],
        escalation: list[Channel] | None = None,
        max_attempts: int = 8,
        first_backoff_s: float = 1.0,
        record: LineSink | None = None,
    ) -> None:
        self.escalation = list(escalation or [])
        self.channels = [*channels, *self.escalation]
        self.record = record  # where each delivery (or giving up) is kept, per channel
        self.labels = [f"{':'.join(c.name.split(':')[:2])}#{i + 1}" for i, c in enumerate(self.channels)]
        self._escalated: set[str] = set()  # alert ids sent to the escalation channels
        self.max_attempts, self.first_backoff_s = max_attempts, first_backoff_s
        self._queues: list[asyncio.Queue[Notice]] = [asyncio.Queue() for _ in self.channels]
        self._workers: list[asyncio.Task[None]] = []
        self._storing: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0

    def notify(self, notice: Notice) -> None:
        """Queue for every channel; never waits."""
        if not self._workers and self.channels:
            self._workers = [
                asyncio.create_task(self._work(c, q, label))
                for c, q, label in zip(self.channels, self._queues, self.labels, strict=True)
            ]
        a = notice.alert
        to_escalation = a.kind == "unacknowledged" or (a.status == "resolved" and a.id in self._escalated)
        if a.kind == "unacknowledged":
            self._escalated.add(a.id)
        elif a.status == "resolved":
            self._escalated.discard(a.id)
        for c, q in zip(self.channels, self._queues, strict=True):
            if to_escalation or c not in self.escalation:
                q.put_nowait(notice)

    def _kept(self, notice: Notice, label: str, delivered: bool, attempts: int) -> None:
        """Keep the outcome in the record; stored in the background (the writer's flush takes a
        lock and retries on its own), so a slow database never holds up a channel."""
        if self.record is None:
            return
        n = notice
        self.record.add([alert_delivery_line(n.theatre, n.session, n.alert, label, delivered, attempts, time.time())])
        task = asyncio.create_task(self.record.flush())
        self._storing.add(task)
        task.add_done_callback(self._stored)

    def _stored(self, task: asyncio.Task[None]) -> None:
        self._storing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("a delivery record is not stored yet: %s", exc)

    async def _work(self, channel: Channel, queue: asyncio.Queue[Notice], label: str) -> None:
        while True:
            notice = await queue.get()
            backoff = Backoff(self.first_backoff_s, 60.0)
            for attempt in range(1, self.max_attempts + 1):
                try:
                    await channel.send(notice)
                    self.sent += 1
                    self._kept(notice, label, True, attempt)
                    break
                except CHANNEL_ERRORS as exc:
                    if attempt == self.max_attempts:
                        self.failed += 1
                        self._kept(notice, label, False, attempt)
                        log.error(
                            "%s: giving up on alert %s after %d attempts: %s",
                            channel.name,
                            notice.alert.id,
                            attempt,
                            exc,
                        )
                        break
                    delay = backoff.next_delay()
                    log.warning(
                        "%s: sending alert %s failed (%s); retrying in %.1f s",
                        channel.name,
                        notice.alert.id,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
            queue.task_done()

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for queued notices to go out, then stop the workers."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                for q in self._queues:
                    await q.join()
        for w in self._workers:
            w.cancel()
