"""The alerts service's handler: leakage, readings, events, service status, session thresholds,
acknowledgements and silences in; alerts out on MQTT at once (the alert path does not wait for
storage), then into the record and to the notification channels.

Readings, events and leakage are applied in event-time order (:mod:`isoperf.eventtime`):
the leakage points are derived from the readings and come later, so a reading or an
event (``isolation_end``, ``session_end``) is held until the leakage stream has passed
its time, or for at most ``hold_s`` of the service's clock (then it goes on, logged).
Readings and events come from one producer in event-time order, so each is the other's
progress: a quiet event stream holds nothing back. The pk service's estimates (its predicted
post-release peak, rule ``release_peak``) are ordered with them at their own event time, but
never waited for (a stream of predictions must not delay the leakage alarms): one goes at
once when every input before it has gone. Acknowledgements, silences, device and service
status are not ordered by event time and apply at once.

State (which alerts fire, which are acknowledged or silenced, what is held) is saved to
a JSON file with every flush, before the input is acknowledged, so a restart carries on.
A clock task advances each session's event time by the wall time elapsed since
its last input, so data that stops coming is noticed (stale data).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from isoperf.codec import encode
from isoperf.eventtime import EventTimeOrder, Released
from isoperf.influx import LineSink, RowReader
from isoperf.messages import Inbound, Readings, ServiceStatus
from isoperf.outbox import Emitter
from isoperf.points import alert_ack_line, alert_line, alert_silence_line, alert_state_line
from isoperf.queries import session_where
from isoperf.schemas import (
    Alert,
    AlertAck,
    AlertSilence,
    Event,
    GatewayStatus,
    Leakage,
    LeakageSeries,
    Pk,
    Reading,
    Sample,
    SessionMeta,
    readings_of,
)
from isoperf.sources import ConnectionLost, Publisher
from isoperf.timewindow import Rejection
from isoperf.topics import Topics
from services.alerts.channels import Notice, Notifier
from services.alerts.engine import SessionAlerts, from_state, to_state
from services.alerts.rules import PREFIXED, RULE_NAMES, UNITS, AlertRules

log = logging.getLogger(__name__)

Key = tuple[str, str]
# A service whose going offline blinds the leakage monitoring: critical, not warning.
CRITICAL_SERVICES = ("leakage", "acquisition", "recorder")
# A session with no input for this long (wall time) is closed and released from memory.
ABANDONED_AFTER_S = 12 * 3600.0
ENDED_REMEMBERED = 10_000  # ended sessions whose late messages are ignored
STATE_VERSION = 2
# The inputs ordered by event time; leakage is waited for once a session has counts (it is derived from them);
# the pk estimates are ordered with them, never waited for.
STREAMS = ("readings", "events", "leakage", "pk")
HOLD_S = 30.0
# The consumers: on a cluster they speak AMQP, which has no last will, so they repeat their
# ``online`` status every heartbeat and are judged offline when it stops (the gateways keep MQTT's).
HEARTBEATING = ("recorder", "leakage", "pk", "alerts")

Ordered = Leakage | Readings | Event | Pk


def _critical(service: str) -> bool:
    return service.split("/", maxsplit=1)[0] in CRITICAL_SERVICES


class AlertsHandler:
    kinds: tuple[str, ...] = (
        "meta", "event", "raw/+", "leakage", "leakage/series", "device", "alert/ack", "alert/silence", "status", "pk",
    )  # fmt: skip

    def __init__(
        self,
        topics: Topics,
        publisher: Publisher,
        writer: LineSink,
        rules: AlertRules,
        state_file: Path,
        notifier: Notifier | None = None,
        own_name: str | None = None,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        hold_s: float = HOLD_S,
        shared: RowReader | None = None,
        heartbeat_expiry_s: float | None = None,
    ) -> None:
        self.topics, self.writer = topics, writer
        self.emitter = Emitter(publisher, writer)
        self.notifier = notifier
        self.rules = rules
        self.state_file = state_file
        self.own_name = own_name
        self.tick_s = tick_s
        self.clock = clock
        self.hold_s = hold_s
        self.sessions: dict[Key, SessionAlerts] = {}
        self.orders: dict[Key, EventTimeOrder[Ordered]] = {}
        self._forcing: set[Key] = set()  # sessions going on without a stream that is behind
        self.thresholds: dict[Key, dict[str, float]] = {}
        self.ended: deque[Key] = deque(maxlen=ENDED_REMEMBERED)
        self.services_seen: set[str] = set()  # went online at least once
        self.services_offline: set[str] = set()
        # Heartbeats (a cluster): when each service was last heard online, on this service's clock.
        self.heartbeat_expiry_s = heartbeat_expiry_s
        self._heard: dict[str, float] = {}
        self._last_input: dict[Key, float] = {}  # wall clock of a session's last input
        # A session's latest event time from its inputs, and this service's clock when it came.
        self._anchors: dict[Key, tuple[float, float]] = {}
        self._received: dict[Key, dict[str, float]] = {}  # wall clock of each signal's last reading
        self._flush_lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None
        # Shared state (partitions on a cluster): each session's state is stored in InfluxDB with its
        # alerts, and an instance that takes a session over carries on from it; no state file then.
        self.shared = shared
        self._dirty: set[Key] = set()
        self._state_t: dict[Key, float] = {}
        if shared is None:
            self._load()

    # -- input ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_forever())

    async def handle(self, message: Inbound) -> None:
        if self.shared is not None and not isinstance(message.body, ServiceStatus):
            await self._adopt(message.key)
        if isinstance(message.body, ServiceStatus):
            self._emit_many(self._on_status(message.body))
        else:
            self._on_session_message(message)
        await self.emitter.send()  # at once: before anything is stored

    def _on_session_message(self, message: Inbound) -> None:
        key, body = message.key, message.body
        if isinstance(body, SessionMeta):
            rules = self.rules.with_thresholds(body.thresholds)  # ValueError: unknown names, kept aside
            if body.thresholds:
                self.thresholds[key] = dict(body.thresholds)
            if key in self.sessions:
                self.sessions[key].rules = rules
            return
        if isinstance(body, AlertAck):
            self._acknowledge(key, body)
            return
        if isinstance(body, Leakage | LeakageSeries | Readings | Event | Pk):
            if key in self.ended:
                log.debug("%s/%s has ended; ignoring a late %s message", *key, message.kind)
                return
            if isinstance(body, Readings) and body.signal in UNITS:
                # stale-data rules: the circuit's own signals (a blood-gas monitor reports per minutes)
                self._received.setdefault(key, {})[body.signal] = self.clock()
            self._start_session(key)
            for item in body.points if isinstance(body, LeakageSeries) else (body,):
                self._hold(key, item)  # a series' points one by one, as if each had come alone
            self._release(key)
            return
        if isinstance(body, GatewayStatus):
            status = body

            def step(e: SessionAlerts) -> list[Alert]:
                return e.on_device(status)
        elif isinstance(body, AlertSilence):
            silence = body
            if silence.rule is not None and silence.rule not in RULE_NAMES and not silence.rule.startswith(PREFIXED):
                raise ValueError(f"cannot silence unknown rule {silence.rule!r}; known: {sorted(RULE_NAMES)}")
            self.writer.add([alert_silence_line(*key, silence)])

            def step(e: SessionAlerts) -> list[Alert]:
                e.silence(silence)
                return e.on_time(silence.t)
        else:
            return
        if key in self.ended:
            log.debug("%s/%s has ended; ignoring a late %s message", *key, message.kind)
            return
        engine = self._start_session(key)
        self._emit(key, step(engine))
        self._anchor(key, body.t)

    async def rejected(self, message: Inbound, rejections: list[Rejection]) -> None:
        """Inputs stamped far from their session's time (kept aside): a technical alarm, once
        (``clock:{signal}``), with the offset, so that the device's clock gets fixed."""
        key, body = message.key, message.body
        engine = self.sessions.get(key)
        if engine is None or engine.now is None or key in self.ended:
            return
        source = body.signal if isinstance(body, Readings) else message.kind
        worst = max(rejections, key=lambda r: abs(r.offset_s))
        status = GatewayStatus(
            t=engine.now, source=source, state="clock_jump", reason=worst.reason[:500], offset_s=worst.offset_s
        )
        self._emit(key, engine.on_device(status))
        await self.emitter.send()

    def _start_session(self, key: Key) -> SessionAlerts:
        """The session's engine; a new one learns of the services already offline. Notes the input's arrival."""
        new = key not in self.sessions
        engine = self._engine(key)
        self._last_input[key] = self.clock()
        if new:  # services already offline concern this session too
            self._emit(key, self._liveness_since(key))
        return engine

    # -- event-time order ----------------------------------------------------------------------

    def _order(self, key: Key) -> EventTimeOrder[Ordered]:
        order = self.orders.get(key)
        if order is None:
            order = self.orders[key] = EventTimeOrder(STREAMS, self.hold_s)
        return order

    def _hold(self, key: Key, body: Ordered, arrived: float | None = None) -> None:
        order = self._order(key)
        now = self.clock() if arrived is None else arrived
        if isinstance(body, Leakage):
            order.expect("leakage")
            order.add("leakage", body.t, body, now)
        elif isinstance(body, Readings):
            if not body.readings:
                return
            if body.signal == "counts":
                order.expect("leakage")  # the leakage service will follow these counts
            t = max(r.t for r in body.readings)
            order.add("readings", t, body, now)
            order.advance("events", t)
        elif isinstance(body, Pk):
            order.add("pk", body.t, body, now)
        else:
            order.add("events", body.t, body, now)
            order.advance("readings", body.t)

    def _release(self, key: Key) -> int:
        """Apply what every expected stream has passed (or what was held too long), in event-time order.

        Returns how many alerts that raised."""
        order = self.orders.get(key)
        if order is None:
            return 0
        released = order.ready(self.clock())
        forced = [r for r in released if r.forced]
        if forced and key not in self._forcing:
            self._forcing.add(key)
            log.warning(
                "%s/%s: %s behind at t=%.3f; inputs held %.0f s go on without it (ISOPERF_ALERTS_HOLD_S)",
                *key,
                " and ".join(order.behind(forced[-1].t)),
                forced[-1].t,
                self.hold_s,
            )
        elif key in self._forcing and not order.behind(order.released_until):
            self._forcing.discard(key)
            log.info("%s/%s: every input has caught up", *key)
        return sum(self._apply(key, r) for r in released)

    def _apply(self, key: Key, r: Released[Ordered]) -> int:
        self._dirty.add(key)
        engine = self.sessions.get(key)
        if engine is None:
            return 0  # released (ended) while this was held
        self._anchor(key, r.t)
        body = r.item
        alerts: list[Alert]
        if isinstance(body, Leakage):
            alerts = engine.on_leakage(body)  # a late point's alerts carry its own time
        elif isinstance(body, Readings):
            alerts = [a for x in body.readings for a in engine.on_reading(body.signal, x.t, x.v)]
        elif isinstance(body, Pk):
            # Derived from the leakage like the leakage from the counts, and never waited for: one older
            # than what was applied is the pk service's pace, not a hold bound run out.
            raised = engine.on_pk(body)
            self._emit(key, raised)
            return len(raised)
        else:
            alerts = engine.on_event(body.type, body.t)
        if r.late and alerts:
            log.warning("%s/%s: %d alerts raised late, at their event time t=%.3f", *key, len(alerts), r.t)
            alerts = [a.model_copy(update={"late": True}) for a in alerts]
        self._emit(key, alerts)
        return len(alerts)

    async def _adopt(self, key: Key) -> None:
        """A session this instance has not seen: carry on from the state another instance stored."""
        assert self.shared is not None
        if key in self.sessions or key in self.ended or key in self._state_t:
            return
        self._state_t[key] = 0.0  # looked up: not again
        got = await self.shared.rows(f"SELECT last(state) AS state FROM alert_state WHERE {session_where(*key)}")
        if not got:
            return
        state = json.loads(str(got[0]["state"]))
        self._state_t[key] = got[0]["time"] / 1000.0
        if state.get("ended"):
            self.ended.append(key)
            return
        self.sessions[key] = from_state(state["engine"])
        self._last_input[key] = self.clock()
        self._anchor(key, self.sessions[key].now)
        self._received[key] = dict.fromkeys(self.sessions[key].last_seen, self.clock())
        if state.get("thresholds"):
            self.thresholds[key] = state["thresholds"]
        if state.get("order"):
            self._restore_order(key, state["order"])
        log.info("%s/%s taken over: %d alerts firing", *key, len(self.sessions[key].firing))
        self._emit(key, self._liveness_since(key))

    def _liveness_since(self, key: Key) -> list[Alert]:
        """What a session new to this instance learns of the services' liveness: those offline
        concern it too; one taken over also learns what was heard while another instance held it
        (a service judged offline since, perhaps the dead instance itself, or back online), and
        that this instance, which another may have judged offline in it, is online."""
        engine = self.sessions[key]
        now = self._session_now(key)
        alerts = [a for s in sorted(self.services_offline) for a in engine.on_service(s, False, now, _critical(s))]
        online = self.services_seen - self.services_offline
        for service in sorted(online | ({self.own_name} if self.own_name else set())):
            alerts += engine.on_service(service, True, now, _critical(service))
        return alerts

    def _shared_lines(self) -> list[str]:
        """The state of every session changed since the last flush, as points (taken before any await)."""
        lines = []
        for key in self._dirty:
            engine = self.sessions.get(key)
            if engine is None and key not in self.ended:
                continue
            t = self._state_t.get(key) or (engine.now if engine is not None and engine.now else time.time())
            self._state_t[key] = t
            if engine is None:
                state: dict[str, object] = {"ended": True}
            else:
                order = self.orders.get(key)
                state = {
                    "engine": to_state(engine),
                    "thresholds": self.thresholds.get(key),
                    "order": _order_state(key, order) if order is not None else None,
                }
            lines.append(alert_state_line(*key, json.dumps(state), t))
        self._dirty.clear()
        return lines

    def _engine(self, key: Key) -> SessionAlerts:
        self._dirty.add(key)
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
        self.writer.add([alert_ack_line(*key, ack, matched)])

    def _on_status(self, status: ServiceStatus) -> list[tuple[Key, Alert]]:
        service = status.service
        if service == self.own_name:
            return []
        if status.online:
            self._heard[service] = self.clock()
            self.services_seen.add(service)
            self.services_offline.discard(service)
        elif service in self.services_seen:  # a retained offline of a long-gone instance is no news
            self.services_offline.add(service)
        else:
            return []
        return [
            (key, a)
            for key, e in self.sessions.items()
            for a in e.on_service(service, status.online, self._session_now(key), _critical(service))
        ]

    # -- output --------------------------------------------------------------------------------

    def _emit(self, key: Key, alerts: list[Alert]) -> None:
        self._emit_many([(key, a) for a in alerts])

    def _emit_many(self, alerts: list[tuple[Key, Alert]]) -> None:
        for key, alert in alerts:
            self._dirty.add(key)
            self.emitter.emit(self.topics.session(*key, "alert"), encode(alert), [alert_line(*key, alert)])
            if self.notifier is not None and not alert.silenced:
                self.notifier.notify(Notice(key[0], key[1], alert))  # queued per channel: never waits

    async def flush(self) -> None:
        async with self._flush_lock:
            self._release_ended()
            # The state as of now, before any await: what it holds is stored by this flush.
            if self.shared is not None:
                self.writer.add(self._shared_lines())
                await self.emitter.flush()
                return
            state = self._state()
            await self.emitter.flush()
            self._save(state)

    async def close(self, timeout_s: float = 10.0) -> None:
        """At shutdown: stop the clock; give queued notifications a bounded chance to go out."""
        if self._ticker is not None:
            self._ticker.cancel()
        if self.notifier is not None:
            await self.notifier.drain(timeout_s)

    # -- the clock -----------------------------------------------------------------------------

    def _anchor(self, key: Key, t: float | None) -> None:
        """An input (or a restored state) of event time ``t`` applied now: the session's clock runs on
        from it. A held input counts from its release, not its arrival: after a hold the clock lags
        the wall by up to the hold, never runs ahead of the inputs still held."""
        if t is not None and (key not in self._anchors or t > self._anchors[key][0]):
            self._anchors[key] = (t, self.clock())

    def _session_now(self, key: Key) -> float:
        """The session's event time now: its latest applied input's time plus the wall time since it
        was applied (not since the last tick: the ticks of a gap in the inputs would add up)."""
        anchor = self._anchors.get(key)
        if anchor is None:
            return self.sessions[key].now or time.time()
        t, at = anchor
        return t + (self.clock() - at)

    def tick(self) -> int:
        """Advance every live session's clock to now; returns how many alerts that raised."""
        raised = self._expire_heartbeats()
        for key in list(self.orders):
            raised += self._release(key)
        for key, e in list(self.sessions.items()):
            if self.clock() - self._last_input.get(key, self.clock()) > ABANDONED_AFTER_S:
                now = self._session_now(key)
                self._emit(key, e.on_event("session_end", now))
                log.warning("%s/%s: no input for %.0f h; its alerts are closed", *key, ABANDONED_AFTER_S / 3600)
                continue
            now = self._session_now(key)
            quiet = {s: self.clock() - w for s, w in self._received.get(key, {}).items()}
            # While inputs are held, they (not the wall clock) move the session's event time on.
            held = key in self.orders and len(self.orders[key]) > 0
            alerts = ([] if held else e.on_time(now)) + e.check_stale(quiet, now)
            raised += len(alerts)
            self._emit(key, alerts)
        return raised

    def _expire_heartbeats(self) -> int:
        """A heartbeating service silent for ``heartbeat_expiry_s`` went offline (its process or its
        node died: nothing else would say so without a last will). Silence is measured up to the
        freshest heartbeat of any service, not this service's clock: heartbeats wait in the queues
        behind the data, so an alerts service catching up a backlog, or paused itself, does not
        take its own lag for their silence (the price: the last consumer but this one dying goes
        unnoticed until another beats)."""
        if self.heartbeat_expiry_s is None or not self._heard:
            return 0
        freshest = max(self._heard.values())
        raised = 0
        for service in sorted(self.services_seen - self.services_offline):
            silent = freshest - self._heard.get(service, freshest)
            if service.split("/", maxsplit=1)[0] in HEARTBEATING and silent > self.heartbeat_expiry_s:
                log.warning("%s: no heartbeat for %.0f s: it went offline", service, silent)
                alerts = self._on_status(ServiceStatus(service, online=False))
                raised += len(alerts)
                self._emit_many(alerts)
        return raised

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                if self.tick():
                    await self.flush()
            except ConnectionLost:
                pass  # sent by the flush after reconnecting
            except Exception:
                log.exception("alert clock tick failed")

    def _release_ended(self) -> None:
        for key in [k for k, e in self.sessions.items() if e.circuit.ended and not e.firing]:
            del self.sessions[key]
            order = self.orders.pop(key, None)
            if order is not None and len(order):
                log.debug("%s/%s ended: %d inputs after its end dropped", *key, len(order))
            self._forcing.discard(key)
            self._last_input.pop(key, None)
            self._anchors.pop(key, None)
            self._received.pop(key, None)
            self.thresholds.pop(key, None)
            self.ended.append(key)
            self._dirty.add(key)
            log.info("session %s/%s ended: released", *key)

    # -- state ---------------------------------------------------------------------------------

    def _state(self) -> str:
        return json.dumps(
            {
                "version": STATE_VERSION,
                "sessions": [{"theatre": k[0], **to_state(e)} for k, e in self.sessions.items()],
                "thresholds": [{"theatre": k[0], "session": k[1], "values": v} for k, v in self.thresholds.items()],
                "ended": [list(k) for k in self.ended],
                "orders": [_order_state(k, o) for k, o in self.orders.items() if k in self.sessions],
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
            self.orders.clear()
            self.thresholds.clear()
            self.ended.clear()

    def _restore_order(self, key: Key, o: dict[str, Any]) -> None:
        order = self._order(key)
        for stream in o["expected"]:
            order.expect(stream)
        for stream, t in o["watermarks"].items():
            if t is not None:
                order.advance(stream, t)
        if o["released_until"] is not None:
            order.released_until = o["released_until"]
        for h in o["held"]:
            self._hold(key, _body_from_state(h))

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r}, expected {STATE_VERSION}")
        for s in state["sessions"]:
            key = (s["theatre"], s["session"])
            self.sessions[key] = from_state(s)
            self._last_input[key] = self.clock()
            self._anchor(key, self.sessions[key].now)
            self._received[key] = dict.fromkeys(self.sessions[key].last_seen, self.clock())
        for o in state.get("orders", []):  # absent in a state saved before inputs were ordered
            self._restore_order((o["theatre"], o["session"]), o)
        for t in state["thresholds"]:
            self.thresholds[(t["theatre"], t["session"])] = t["values"]
        self.ended.extend((k[0], k[1]) for k in state["ended"])
        self.services_seen = set(state["services_seen"])
        self.services_offline = set(state["services_offline"])
        firing = sum(len(e.firing) for e in self.sessions.values())
        held = sum(len(o) for o in self.orders.values())
        if held:
            log.info("%d inputs held for event-time order restored; held afresh (up to %.0f s)", held, self.hold_s)
        log.info(
            "alert state restored from %s: %d sessions, %d alerts firing", self.state_file, len(self.sessions), firing
        )


def _order_state(key: Key, order: EventTimeOrder[Ordered]) -> dict[str, object]:
    """What is held for a session, as JSON: a restart holds it afresh (the input was acknowledged)."""

    def finite(t: float) -> float | None:
        return t if math.isfinite(t) else None

    return {
        "theatre": key[0],
        "session": key[1],
        "expected": sorted(order.expected),
        "watermarks": {s: finite(t) for s, t in order.watermarks.items()},
        "released_until": finite(order.released_until),
        "held": [_body_state(item) for _, _, item in order.held()],
    }


def _body_state(body: Ordered) -> dict[str, object]:
    if isinstance(body, Readings):
        return {"raw": body.signal, "readings": [_sample_state(r) for r in body.readings]}
    kind = "leakage" if isinstance(body, Leakage) else "pk" if isinstance(body, Pk) else "event"
    return {kind: body.model_dump(exclude_none=True)}


def _sample_state(r: Sample) -> dict[str, object]:
    state: dict[str, object] = {"t": r.t, "v": r.v, "dt": r.dt}
    if r.seq is not None:
        state["seq"] = r.seq
    return state


def readings_of_states(states: list[dict[str, Any]]) -> list[Sample]:
    """Held readings of a saved state, validated again (the file may have been edited)."""
    return [s for r in states for s in readings_of(Reading.model_validate(r))]


def _body_from_state(h: dict[str, Any]) -> Ordered:
    if "raw" in h:
        return Readings(str(h["raw"]), readings_of_states(h["readings"]))
    if "leakage" in h:
        return Leakage.model_validate(h["leakage"])
    if "pk" in h:
        return Pk.model_validate(h["pk"])
    return Event.model_validate(h["event"])
