"""The alerts service's handler: leakage estimates, session thresholds and acknowledgements in;
alerts out on MQTT at once (the alert path does not wait for storage), then into the record.

State (which alerts fire, which are acknowledged) is saved to a JSON file with
every flush, before the input is acknowledged, so a restart carries on.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from isoperf.codec import decode, encode
from isoperf.influx import InfluxWriter, line
from isoperf.mqtt import Outbox, Publisher
from isoperf.schemas import Alert, AlertAck, Leakage, SessionMeta
from isoperf.topics import Topics
from services.alerts.channels import Notice, Notifier
from services.alerts.engine import SessionAlerts, from_state, to_state
from services.alerts.rules import AlertRules

log = logging.getLogger(__name__)


def alert_line(theatre: str, session: str, a: Alert) -> str:
    tags = {"theatre": theatre, "session": session, "rule": a.rule, "severity": a.severity}
    fields = {
        "status": a.status,
        "value": a.value,
        "threshold": a.threshold,
        "message": a.message,
        "id": a.id,
        "kind": a.kind,
    }
    return line("alert", tags, fields, a.t)


class AlertsHandler:
    def __init__(
        self,
        topics: Topics,
        publisher: Publisher,
        writer: InfluxWriter,
        rules: AlertRules,
        state_file: Path,
        max_payload_bytes: int,
        notifier: Notifier | None = None,
    ) -> None:
        self.topics, self.publisher, self.writer = topics, publisher, writer
        self.notifier = notifier
        self.rules = rules
        self.state_file = state_file
        self.max_payload_bytes = max_payload_bytes
        self.sessions: dict[tuple[str, str], SessionAlerts] = {}
        self.thresholds: dict[tuple[str, str], dict[str, float]] = {}
        self.outbox = Outbox()
        self._load()

    def subscriptions(self) -> list[str]:
        return [self.topics.subscription(k) for k in ("meta", "leakage", "alert/ack")]

    def _engine(self, key: tuple[str, str]) -> SessionAlerts:
        if key not in self.sessions:
            self.sessions[key] = SessionAlerts(key[1], self.rules.with_thresholds(self.thresholds.get(key)))
        return self.sessions[key]

    async def handle(self, topic: str, payload: bytes) -> None:
        where = self.topics.parse(topic)
        data = decode(payload, self.max_payload_bytes)
        key = (where.theatre, where.session)
        if where.kind == "leakage":
            leak = Leakage.model_validate(data)
            raised = self._engine(key).on_leakage(leak)
            for alert in raised:
                self.outbox.put(self.topics.session(*key, "alert"), encode(alert))
                self.writer.add([alert_line(*key, alert)])
            await self.outbox.send(self.publisher)  # at once: before anything is stored
            if self.notifier is not None:
                for alert in raised:  # queued per channel: never waits for a webhook or a mail server
                    self.notifier.notify(Notice(key[0], key[1], alert))
        elif where.kind == "meta":
            meta = SessionMeta.model_validate(data)
            rules = self.rules.with_thresholds(meta.thresholds)  # ValueError: unknown names, kept aside
            self.thresholds[key] = dict(meta.thresholds or {})
            if key in self.sessions:
                self.sessions[key].rules = rules
        elif where.kind == "alert/ack":
            ack = AlertAck.model_validate(data)
            if not self._engine(key).acknowledge(ack.id, ack.by):
                raise ValueError(f"no firing alert {ack.id!r} in {key[0]}/{key[1]} to acknowledge")
            tags = {"theatre": key[0], "session": key[1]}
            self.writer.add([line("alert_ack", tags, {"id": ack.id, "acknowledged_by": ack.by}, ack.t)])
        else:
            raise ValueError(f"the alerts service does not take {where.kind!r} messages")

    async def flush(self) -> None:
        # The state as of now, before any await: what it holds is stored by this flush.
        state = self._state()
        await self.writer.flush()
        await self.outbox.send(self.publisher)
        self._save(state)

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """At shutdown: give queued notifications a bounded chance to go out."""
        if self.notifier is not None:
            await self.notifier.drain(timeout_s)

    def _state(self) -> str:
        return json.dumps(
            {
                "sessions": [{"theatre": k[0], **to_state(e)} for k, e in self.sessions.items()],
                "thresholds": [{"theatre": k[0], "session": k[1], "values": v} for k, v in self.thresholds.items()],
            }
        )

    def _save(self, state: str) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(state)
        os.replace(tmp, self.state_file)  # atomic: a crash leaves the old state or the new

    def _load(self) -> None:
        if not self.state_file.exists():
            return
        state = json.loads(self.state_file.read_text())
        for s in state["sessions"]:
            self.sessions[(s["theatre"], s["session"])] = from_state(s)
        for t in state["thresholds"]:
            self.thresholds[(t["theatre"], t["session"])] = t["values"]
        firing = sum(len(e.firing) for e in self.sessions.values())
        log.info(
            "alert state restored from %s: %d sessions, %d alerts firing", self.state_file, len(self.sessions), firing
        )
