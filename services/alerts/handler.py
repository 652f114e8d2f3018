"""The alerts service's handler: leakage, readings, events, service status, session thresholds,
acknowledgements and silences in; alerts out on MQTT at once (the alert path does not wait for
storage), then into the record and to the notification channels.

State (which alerts fire, which are acknowledged or silenced) is saved to a JSON
file with every flush, before the input is acknowledged, so a restart carries on.
A clock task advances each session's event time by the wall time elapsed since
its last input, so data that stops coming is noticed (stale data).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

from isoperf.codec import decode, encode
from isoperf.influx import FieldValue, InfluxWriter, line
from isoperf.mqtt import Outbox, Publisher
from isoperf.schemas import (
    Alert,
    AlertAck,
    AlertSilence,
    Event,
    Leakage,
    SessionMeta,
    check_signal_range,
    parse_reading_payload,
    readings_of,
)
from isoperf.topics import Topics
from services.alerts.channels import Notice, Notifier
from services.alerts.engine import SessionAlerts, from_state, to_state
from services.alerts.rules import RULE_NAMES, AlertRules

log = logging.getLogger(__name__)

Key = tuple[str, str]
# A service whose going offline blinds the leakage monitoring: critical, not warning.
CRITICAL_SERVICES = ("leakage", "acquisition", "recorder")
# A session with no input for this long (wall time) is closed and released from memory.
ABANDONED_AFTER_S = 12 * 3600.0
ENDED_REMEMBERED = 10_000  # ended sessions whose late messages are ignored
STATE_VERSION = 2


def _critical(service: str) -> bool:
    return service.split("/")[0] in CRITICAL_SERVICES


def alert_line(theatre: str, session: str, a: Alert) -> str:
    tags = {"theatre": theatre, "session": session, "rule": a.rule, "severity": a.severity}
    fields = {
        "status": a.status,
        "value": a.value,
        "threshold": a.threshold,
        "message": a.message,
        "id": a.id,
        "kind": a.kind,
        "silenced": bool(a.silenced),
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
        own_name: str | None = None,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics, self.publisher, self.writer = topics, publisher, writer
        self.notifier = notifier
        self.rules = rules
        self.state_file = state_file
        self.max_payload_bytes = max_payload_bytes
        self.own_name = own_name
        self.tick_s = tick_s
        self.clock = clock
        self.sessions: dict[Key, SessionAlerts] = {}
        self.thresholds: dict[Key, dict[str, float]] = {}
        self.ended: deque[Key] = deque(maxlen=ENDED_REMEMBERED)
        self.services_seen: set[str] = set()  # went online at least once
        self.services_offline: set[str] = set()
        self.outbox = Outbox()
        self._last_input: dict[Key, float] = {}  # wall clock of a session's last input
        self._received: dict[Key, dict[str, float]] = {}  # wall clock of each signal's last reading
        self._flush_lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None
        self._load()

    def subscriptions(self) -> list[str]:
        kinds = ("meta", "event", "raw/+", "leakage", "alert/ack", "alert/silence")
        return [*(self.topics.subscription(k) for k in kinds), self.topics.status_subscription()]

    # -- input ---------------------------------------------------------------------------------

    async def handle(self, topic: str, payload: bytes) -> None:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever())
        service = self.topics.parse_status(topic)
        if service is not None:
            self._emit_many(self._on_status(service, payload))
        else:
            self._on_session_message(topic, payload)
        await self.outbox.send(self.publisher)  # at once: before anything is stored

    def _on_session_message(self, topic: str, payload: bytes) -> None:
        where = self.topics.parse(topic)
        data = decode(payload, self.max_payload_bytes)
        key = (where.theatre, where.session)
        if where.kind == "meta":
            meta = SessionMeta.model_validate(data)
            rules = self.rules.with_thresholds(meta.thresholds)  # ValueError: unknown names, kept aside
            if meta.thresholds:
                self.thresholds[key] = dict(meta.thresholds)
            if key in self.sessions:
                self.sessions[key].rules = rules
            return
        if where.kind == "alert/ack":
            self._acknowledge(key, AlertAck.model_validate(data))
            return
        # Validate before touching state, so bad input changes nothing.
        if where.kind == "leakage":
            leak = Leakage.model_validate(data)
            step: Callable[[SessionAlerts], list[Alert]] = lambda e: e.on_leakage(leak)
        elif where.kind == "raw":
            assert where.signal is not None
            signal, readings = where.signal, readings_of(parse_reading_payload(data))
            check_signal_range(signal, readings)
            self._received.setdefault(key, {})[signal] = self.clock()
            step = lambda e: [a for r in readings for a in e.on_reading(signal, r.t, r.v)]
        elif where.kind == "event":
            event = Event.model_validate(data)
            step = lambda e: e.on_event(event.type, event.t)
        elif where.kind == "alert/silence":
            silence = AlertSilence.model_validate(data)
            if silence.rule is not None and silence.rule not in RULE_NAMES and not silence.rule.startswith("offline:"):
                raise ValueError(f"cannot silence unknown rule {silence.rule!r}; known: {sorted(RULE_NAMES)}")
            self._record_silence(key, silence)

            def step(e: SessionAlerts) -> list[Alert]:
                e.silence(silence)
                return e.on_time(silence.t)
        else:
            raise ValueError(f"the alerts service does not take {where.kind!r} messages")
        if key in self.ended:
            log.debug("%s/%s has ended; ignoring a late %s message", *key, where.kind)
            return
        new = key not in self.sessions
        engine = self._engine(key)
        self._last_input[key] = self.clock()
        alerts = step(engine)
        if new:  # services already offline concern this session too
            now = engine.now or time.time()
            alerts += [a for s in sorted(self.services_offline) for a in engine.on_service(s, False, now, _critical(s))]
        self._emit(key, alerts)

    def _engine(self, key: Key) -> SessionAlerts:
        engine = self.sessions.get(key)
        if engine is None:
            engine = SessionAlerts(key[1], self.rules.with_thresholds(self.thresholds.get(key)))
            self.sessions[key] = engine
        return engine

    def _acknowledge(self, key: Key, ack: AlertAck) -> None:
        engine = self.sessions.get(key)
        matched = engine is not None and engine.acknowledge(ack.id, ack.by)
        if not matched:
            log.warning("acknowledgement of %s in %s/%s: no such alert firing (recorded anyway)", ack.id, *key)
        tags = {"theatre": key[0], "session": key[1]}
        fields: dict[str, FieldValue] = {"id": ack.id, "acknowledged_by": ack.by, "matched": matched}
        self.writer.add([line("alert_ack", tags, fields, ack.t)])

    def _record_silence(self, key: Key, s: AlertSilence) -> None:
        tags = {"theatre": key[0], "session": key[1], "rule": s.rule or "*"}
        fields: dict[str, FieldValue] = {
            "duration_s": s.duration_s,
            "until": s.t + s.duration_s,
            "reason": s.reason,
            "silenced_by": s.by,
        }
        self.writer.add([line("alert_silence", tags, fields, s.t)])

    def _on_status(self, service: str, payload: bytes) -> list[tuple[Key, Alert]]:
        if service == self.own_name:
            return []
        status = self.topics.status_payload(service, payload)
        if status == "online":
            self.services_seen.add(service)
            self.services_offline.discard(service)
        elif service in self.services_seen:  # a retained offline of a long-gone instance is no news
            self.services_offline.add(service)
        else:
            return []
        return [
            (key, a)
            for key, e in self.sessions.items()
            for a in e.on_service(service, status == "online", self._session_now(key), _critical(service))
        ]

    # -- output --------------------------------------------------------------------------------

    def _emit(self, key: Key, alerts: list[Alert]) -> None:
        self._emit_many([(key, a) for a in alerts])

    def _emit_many(self, alerts: list[tuple[Key, Alert]]) -> None:
        for key, alert in alerts:
            self.outbox.put(self.topics.session(*key, "alert"), encode(alert))
            self.writer.add([alert_line(*key, alert)])
            if self.notifier is not None and not alert.silenced:
                self.notifier.notify(Notice(key[0], key[1], alert))  # queued per channel: never waits

    async def flush(self) -> None:
        async with self._flush_lock:
            self._release_ended()
            # The state as of now, before any await: what it holds is stored by this flush.
            state = self._state()
            await self.writer.flush()
            await self.outbox.send(self.publisher)
            self._save(state)

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """At shutdown: stop the clock; give queued notifications a bounded chance to go out."""
        if self._ticker is not None:
            self._ticker.cancel()
        if self.notifier is not None:
            await self.notifier.drain(timeout_s)

    # -- the clock -----------------------------------------------------------------------------

    def _session_now(self, key: Key) -> float:
        """The session's event time now: its latest input's time plus the wall time since."""
        e = self.sessions[key]
        elapsed = self.clock() - self._last_input.get(key, self.clock())
        return (e.now or time.time()) + elapsed

    def tick(self) -> int:
        """Advance every live session's clock to now; returns how many alerts that raised."""
        raised = 0
        for key, e in list(self.sessions.items()):
            if self.clock() - self._last_input.get(key, self.clock()) > ABANDONED_AFTER_S:
                now = self._session_now(key)
                self._emit(key, e.on_event("session_end", now))
                log.warning("%s/%s: no input for %.0f h; its alerts are closed", *key, ABANDONED_AFTER_S / 3600)
                continue
            now = self._session_now(key)
            quiet = {s: self.clock() - w for s, w in self._received.get(key, {}).items()}
            alerts = e.on_time(now) + e.check_stale(quiet, now)
            raised += len(alerts)
            self._emit(key, alerts)
        return raised

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                if self.tick():
                    await self.flush()
            except aiomqtt.MqttError:
                pass  # sent by the flush after reconnecting
            except Exception:
                log.exception("alert clock tick failed")

    def _release_ended(self) -> None:
        for key in [k for k, e in self.sessions.items() if e.circuit.ended and not e.firing]:
            del self.sessions[key]
            self._last_input.pop(key, None)
            self._received.pop(key, None)
            self.thresholds.pop(key, None)
            self.ended.append(key)
            log.info("session %s/%s ended: released", *key)

    # -- state ---------------------------------------------------------------------------------

    def _state(self) -> str:
        return json.dumps(
            {
                "version": STATE_VERSION,
                "sessions": [{"theatre": k[0], **to_state(e)} for k, e in self.sessions.items()],
                "thresholds": [{"theatre": k[0], "session": k[1], "values": v} for k, v in self.thresholds.items()],
                "ended": [list(k) for k in self.ended],
                "services_seen": sorted(self.services_seen),
                "services_offline": sorted(self.services_offline),
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
        try:
            self._restore(json.loads(self.state_file.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            # Better alerts raised again as new than no alerts: set the file aside and start afresh.
            aside = self.state_file.with_name(f"{self.state_file.name}.unreadable-{int(time.time())}")
            os.replace(self.state_file, aside)
            log.error(
                "alert state %s could not be restored (%r); kept as %s, starting afresh: "
                "alerts still firing will be raised again as new",
                self.state_file,
                exc,
                aside,
            )
            self.sessions.clear()
            self.thresholds.clear()
            self.ended.clear()

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r}, expected {STATE_VERSION}")
        for s in state["sessions"]:
            key = (s["theatre"], s["session"])
            self.sessions[key] = from_state(s)
            self._last_input[key] = self.clock()
            self._received[key] = dict.fromkeys(self.sessions[key].last_seen, self.clock())
        for t in state["thresholds"]:
            self.thresholds[(t["theatre"], t["session"])] = t["values"]
        self.ended.extend((k[0], k[1]) for k in state["ended"])
        self.services_seen = set(state["services_seen"])
        self.services_offline = set(state["services_offline"])
        firing = sum(len(e.firing) for e in self.sessions.values())
        log.info(
            "alert state restored from %s: %d sessions, %d alerts firing", self.state_file, len(self.sessions), firing
        )
