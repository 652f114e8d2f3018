"""The alert state of one session, driven by event time: pure, no I/O.

One alert per rule while it fires (deduplicated); a higher severity replaces
the lower on the same alert (escalated), a lower one eases it; a reminder is
sent every ``repeat_s`` while it fires unacknowledged; a critical or stop alert
left unacknowledged for ``escalate_after_s`` is sent once more, to the
escalation channels (kind ``unacknowledged``); a resolution closes it. A
silence mutes notifications (reminders and escalations are held back, alerts
are marked ``silenced``) but never the record.

Missing numbers (no calibration yet, a probe fault) change nothing: an alert
is never resolved for want of data. Time is the event time of the inputs
(``now`` only moves forward); ``on_time`` lets a caller advance it when
nothing arrives. Stale data is the one thing judged by the caller's clock
(``check_stale``): a device may send its readings in batches, so a gap in
event time between two signals says nothing.

Phases: leakage rules apply until the isolation ends (afterwards the clamps
are off, the release is expected, and leakage alerts are closed); circuit
limits apply while the pump runs; every alert is closed at the session's end.
The predicted systemic peak after the release (``on_pk``, rule ``release_peak``,
advisory) applies from the drug start to the session's end, projected before the
release and refitted after it: it fires when the prediction is above its level and
resolves when a later prediction is not.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from isoperf.schemas import Alert, AlertKind, AlertSilence, GatewayStatus, Leakage, Pk, Severity
from services.alerts.rules import LIMITED_SIGNALS, SEVERITIES, UNITS, AlertRules

# The reservoir level the circuit settled at: median of this window after the pump started.
RESERVOIR_BASELINE_WINDOW_S = (30.0, 90.0)


@dataclass
class _Firing:
    id: str
    severity: Severity
    threshold: float
    value: float
    message: str
    last_sent: float
    severity_since: float
    acked_by: str | None = None
    paged: bool = False


@dataclass
class _Silence:
    rule: str | None
    until: float
    reason: str
    by: str

    def covers(self, rule: str) -> bool:
        return self.rule is None or rule == self.rule or rule.startswith(self.rule + ":")


@dataclass
class _Circuit:
    """What the alert rules need to know about the procedure's phases."""

    isolation_t: float | None = None  # ischaemia starts
    isolation_end_t: float | None = None
    pump_on_t: float | None = None  # circuit limits armed from here ...
    pump_done: bool = False  # ... until the washout ends or the isolation does
    ended: bool = False  # session_end: everything closed
    reservoir_early: list[float] = field(default_factory=list)
    reservoir_baseline: float | None = None


class SessionAlerts:
    def __init__(self, session: str, rules: AlertRules) -> None:
        self.session = session
        self.rules = rules
        self.firing: dict[str, _Firing] = {}
        self.now: float | None = None
        self.circuit = _Circuit()
        self.last_seen: dict[str, float] = {}
        self.silences: list[_Silence] = []
        self._active_levels: set[Severity] = set()
        self._since: dict[str, float] = {}  # when a condition began (or, while firing, when it cleared)
        self._episodes = 0

    # -- inputs ------------------------------------------------------------------------------

    def on_leakage(self, leak: Leakage) -> list[Alert]:
        out: list[Alert] = []
        # After release the rise is the organ's tracer reaching the body, not a leak: no level or
        # rate alarm, also when the leakage point comes before the isolation_end event itself.
        isolated = self.circuit.isolation_end_t is None and leak.state not in ("released", "ended")
        if isolated and not self.circuit.ended:
            if leak.ci_low is not None and leak.ci_high is not None and leak.percent is not None:
                out += self._leakage_levels(leak.t, leak.percent, leak.ci_low, leak.ci_high)
            if leak.rate_pct_min is not None:
                out += self._leak_rate(leak.t, leak.rate_pct_min)
        if not self.circuit.ended:
            out += self._probe_fault(leak)
        return out + self.on_time(leak.t)

    def on_reading(self, signal: str, t: float, v: float) -> list[Alert]:
        out: list[Alert] = []
        if self.circuit.ended:
            return out
        self.last_seen[signal] = max(t, self.last_seen.get(signal, t))
        stale = f"stale_{signal}"
        if stale in self.firing:
            out.append(self._resolve(t, stale, v, f"{_label(signal)} readings back"))
        c = self.circuit
        if signal == "flow" and v > self.rules.circuit_flow_on_ml_min and c.pump_on_t is None and not c.pump_done:
            c.pump_on_t = t
            if c.isolation_t is None:
                c.isolation_t = t  # no isolation_start event: the pump starting marks it
        # Armed from the pump's start on, by event time: a reading from before it that comes late
        # (after the leakage service was behind for longer than the hold) is not a circuit alarm.
        if c.pump_on_t is not None and t >= c.pump_on_t and not c.pump_done and signal in LIMITED_SIGNALS:
            out += self._limits(signal, t, v)
            if signal == "reservoir":
                out += self._reservoir_drop(t, v)
        return out + self.on_time(t)

    def on_event(self, kind: str, t: float) -> list[Alert]:
        c = self.circuit
        out: list[Alert] = []
        if kind == "isolation_start" and c.isolation_end_t is None:
            c.isolation_t = t  # the event is authoritative, also over a pump-inferred time
        elif kind in ("washout_end", "isolation_end") and not c.pump_done:
            c.pump_done = True
            out += self._resolve_all(
                t, lambda r: r.endswith(("_low", "_high")) or r == "reservoir_drop", "pump stopped"
            )
        if kind == "isolation_end" and c.isolation_end_t is None:
            c.isolation_end_t = t
            out += self._resolve_all(t, lambda r: r in ("leakage", "leak_rate", "ischaemia"), "isolation ended")
        if kind == "session_end" and not c.ended:
            c.ended = True
            out += self._resolve_all(t, lambda r: True, "session ended")
        return out + self.on_time(t)

    def on_service(self, name: str, online: bool, t: float, critical: bool) -> list[Alert]:
        """A service or device went ``offline`` (or came back); ``name`` is ``service/instance``."""
        rule = f"offline:{name}"
        if online:
            return [self._resolve(t, rule, 1.0, f"{name} back online")] if rule in self.firing else []
        if rule in self.firing or self.circuit.ended:
            return []
        severity: Severity = "critical" if critical else "warning"
        return [self._fire(t, rule, severity, 0.0, 1.0, f"{name} went offline")]

    def on_device(self, status: GatewayStatus) -> list[Alert]:
        """A technical alarm from the gateway: a device unplugged, silent or sending garbage, its clock
        jumping, or the gateway's journal filling up (rules ``device:{name}`` and ``clock:{name}``)."""
        if self.circuit.ended:
            return []
        t, name = status.t, status.source
        if status.state == "clock_jump":
            rule = f"clock:{name}"
            msg = f"Clock of {name} jumped: {status.reason}; fix the device clock or set clock.offset_s in its profile"
            if rule in self.firing:
                return []
            return [self._fire(t, rule, "warning", status.offset_s or 0.0, 0.0, msg)]
        rule = f"device:{name}"
        if status.state in ("connected", "journal_ok"):
            return (
                [self._resolve(t, rule, 0.0, f"{name}: {status.state.replace('_', ' ')}")]
                if rule in self.firing
                else []
            )
        if rule in self.firing:
            return []
        what = "Gateway journal filling up" if name == "journal" else f"Device {name} {status.state}"
        value = status.fill if status.fill is not None else 1.0
        return [self._fire(t, rule, "warning", value, 0.0, f"{what}: {status.reason}")]

    def on_pk(self, pk: Pk) -> list[Alert]:
        """The pk service's predicted systemic peak after the release against its advisory level."""
        peak, level, rule = pk.release_peak_ug_ml, self.rules.release_peak_ug_ml, "release_peak"
        if peak is None or self.circuit.ended:
            return []
        current = self.firing.get(rule)
        if peak <= level:
            return [self._resolve(pk.t, rule, peak, f"Predicted systemic peak after the release {peak:.1f} ug/mL, "
                                  f"back at or below {level:g} ug/mL")] if current else []  # fmt: skip
        basis = (
            "projected"
            if pk.release_projected
            else f"refitted to {pk.n_release} systemic sample{'s' if pk.n_release != 1 else ''} after the release"
            if pk.n_release
            else "before any systemic sample after the release"
        )
        message = (
            f"Predicted systemic melphalan peak after the release {peak:.1f} ug/mL "
            f"(95 % PI {pk.release_peak_low_ug_ml or 0:.1f} to {pk.release_peak_high_ug_ml or 0:.1f}; {basis}) "
            f"above {level:g} ug/mL"
        )
        if current is None:
            return [self._fire(pk.t, rule, "advisory", peak, level, message)]
        current.value, current.message = peak, message
        return []

    def on_time(self, t: float) -> list[Alert]:
        """Advance the session clock: stale data, ischaemia time, silences, reminders, escalation."""
        if self.now is not None and t <= self.now:
            return []
        self.now = t
        out: list[Alert] = []
        if not self.circuit.ended:
            out += self._ischaemia(t)
        self.silences = [s for s in self.silences if s.until > t]
        for rule, f in self.firing.items():
            if f.acked_by is not None or self._silenced(rule):
                continue
            if (
                f.severity in ("critical", "stop")
                and not f.paged
                and t - f.severity_since >= self.rules.escalate_after_s
            ):
                f.paged = True
                minutes = (t - f.severity_since) / 60
                message = f"Unacknowledged for {minutes:.0f} min: {f.message}"
                out.append(self._send(t, rule, f, f.value, message, "unacknowledged"))
            elif t - f.last_sent >= self.rules.repeat_s:
                out.append(self._send(t, rule, f, f.value, f"Reminder: {f.message}", "repeat"))
        return out

    def acknowledge(self, alert_id: str, by: str) -> bool:
        """Stop the reminders of a firing alert; False if no such alert is firing."""
        for f in self.firing.values():
            if f.id == alert_id:
                f.acked_by = by
                return True
        return False

    def silence(self, s: AlertSilence) -> None:
        if s.duration_s == 0:
            self.silences = [x for x in self.silences if x.rule != s.rule]
        else:
            self.silences.append(_Silence(s.rule, s.t + s.duration_s, s.reason, s.by))

    # -- rules ------------------------------------------------------------------------------

    def _leakage_levels(self, t: float, pct: float, low: float, high: float) -> list[Alert]:
        for severity, level in self.rules.levels():
            if low > level:
                self._active_levels.add(severity)
            elif high < level:
                self._active_levels.discard(severity)
        active = [(s, lv) for s, lv in self.rules.levels() if s in self._active_levels]
        rule = "leakage"
        current = self.firing.get(rule)
        if not active:
            return [self._resolve(t, rule, pct, f"Leakage back below {current.threshold:g} %")] if current else []
        severity, level = active[-1]
        message = f"Leakage {pct:.2f} % (95 % CI {low:.2f} to {high:.2f}) above the {severity} level of {level:g} %"
        if current is None:
            return [self._fire(t, rule, severity, pct, level, message)]
        current.value, current.message = pct, message
        if severity == current.severity:
            return []
        kind: AlertKind = "escalated" if SEVERITIES.index(severity) > SEVERITIES.index(current.severity) else "eased"
        current.severity, current.threshold, current.severity_since = severity, level, t
        if kind == "escalated":
            current.acked_by, current.paged = None, False  # a new severity wants a new acknowledgement
        return [self._send(t, rule, current, pct, message, kind)]

    def _leak_rate(self, t: float, rate: float) -> list[Alert]:
        limit, hold = self.rules.leak_rate_pct_min, self.rules.leak_rate_for_s
        message = f"Leak rate {rate:.2f} %/min above {limit:g} %/min for {hold / 60:g} min"
        return self._sustained(t, "leak_rate", rate > limit, hold, 0.0, "warning", rate, limit, message)

    def _probe_fault(self, leak: Leakage) -> list[Alert]:
        rule, current = "probe_fault", self.firing.get("probe_fault")
        if leak.probe_fault is not None and current is None:
            message = f"Probe fault ({leak.probe_fault}): leakage cannot be measured"
            return [self._fire(leak.t, rule, "critical", 1.0, 1.0, message)]
        if leak.probe_fault is None and leak.percent is not None and current is not None:
            return [self._resolve(leak.t, rule, 0.0, "Probe counting normally again")]
        return []

    def _limits(self, signal: str, t: float, v: float) -> list[Alert]:
        low, high, hold = self.rules.limits(signal)
        unit = UNITS[signal]
        return [
            *self._sustained(
                t, f"{signal}_low", v < low, hold, hold, "warning", v, low,
                f"{_label(signal)} {v:g} {unit} below {low:g} {unit} for {hold:g} s",
            ),
            *self._sustained(
                t, f"{signal}_high", v > high, hold, hold, "warning", v, high,
                f"{_label(signal)} {v:g} {unit} above {high:g} {unit} for {hold:g} s",
            ),
        ]  # fmt: skip

    def _reservoir_drop(self, t: float, v: float) -> list[Alert]:
        c = self.circuit
        assert c.pump_on_t is not None
        if c.reservoir_baseline is None:
            start, end = (c.pump_on_t + w for w in RESERVOIR_BASELINE_WINDOW_S)
            if start <= t < end:
                c.reservoir_early.append(v)
            elif t >= end and c.reservoir_early:
                c.reservoir_baseline = statistics.median(c.reservoir_early)
                c.reservoir_early = []
            if c.reservoir_baseline is None:
                return []
        drop, limit, hold = c.reservoir_baseline - v, self.rules.reservoir_drop_ml, self.rules.reservoir_for_s
        message = f"Reservoir level fell {drop:.0f} mL from {c.reservoir_baseline:.0f} mL (limit {limit:g} mL): a leak?"
        return self._sustained(t, "reservoir_drop", drop > limit, hold, hold, "warning", drop, limit, message)

    def check_stale(self, quiet_s: dict[str, float], t: float) -> list[Alert]:
        """Fire for each signal seen before that has been quiet (by the caller's clock) too long."""
        out: list[Alert] = []
        if self.circuit.ended:
            return out
        for signal, quiet in quiet_s.items():
            rule = f"stale_{signal}"
            limit = self.rules.stale_counts_s if signal == "counts" else self.rules.stale_device_s
            if rule not in self.firing and quiet > limit:
                what = "probe counts" if signal == "counts" else f"{_label(signal).lower()} readings"
                severity: Severity = "critical" if signal == "counts" and self._isolated() else "warning"
                out.append(self._fire(t, rule, severity, quiet, limit, f"No {what} for {quiet:.0f} s"))
        return out

    def _ischaemia(self, t: float) -> list[Alert]:
        start = self.circuit.isolation_t
        if start is None or self.circuit.isolation_end_t is not None:
            return []
        minutes = (t - start) / 60
        warn, limit = self.rules.ischaemia_warn_min, self.rules.ischaemia_limit_min
        severity: Severity | None = "critical" if minutes >= limit else "warning" if minutes >= warn else None
        current = self.firing.get("ischaemia")
        if severity is None or (current is not None and current.severity == severity):
            return []
        level = limit if severity == "critical" else warn
        message = f"Ischaemia time {minutes:.0f} min (limit {limit:g} min)"
        if current is None:
            return [self._fire(t, "ischaemia", severity, minutes, level, message)]
        current.severity, current.threshold, current.severity_since = severity, level, t
        current.message, current.value, current.acked_by, current.paged = message, minutes, None, False
        return [self._send(t, "ischaemia", current, minutes, message, "escalated")]

    def _sustained(
        self,
        t: float,
        rule: str,
        crossed: bool,
        fire_after: float,
        clear_after: float,
        severity: Severity,
        value: float,
        threshold: float,
        message: str,
    ) -> list[Alert]:
        """A condition that must hold ``fire_after`` s to fire, and be gone ``clear_after`` s to resolve."""
        current = self.firing.get(rule)
        if current is not None:
            current.value = value
        if crossed == (current is not None):
            self._since.pop(rule, None)  # nothing changing
            return []
        since = self._since.setdefault(rule, t)
        if current is None and t - since >= fire_after:
            del self._since[rule]
            return [self._fire(t, rule, severity, value, threshold, message)]
        if current is not None and t - since >= clear_after:
            del self._since[rule]
            return [self._resolve(t, rule, value, f"{rule.replace('_', ' ').capitalize()}: back within limits")]
        return []

    def _isolated(self) -> bool:
        return self.circuit.isolation_t is not None and self.circuit.isolation_end_t is None

    def _silenced(self, rule: str) -> bool:
        return any(s.covers(rule) for s in self.silences)

    # -- bookkeeping -----------------------------------------------------------------------

    def _new_id(self, rule: str) -> str:
        self._episodes += 1
        return f"{self.session}-{rule.split(':', maxsplit=1)[0]}-{self._episodes}"

    def _fire(self, t: float, rule: str, severity: Severity, value: float, threshold: float, msg: str) -> Alert:
        f = _Firing(self._new_id(rule), severity, threshold, value, msg, t, t)
        self.firing[rule] = f
        return self._send(t, rule, f, value, msg, "new")

    def _send(self, t: float, rule: str, f: _Firing, value: float, message: str, kind: AlertKind) -> Alert:
        f.last_sent = t
        return _message(t, rule, f, value, message, kind, self._silenced(rule))

    def _resolve(self, t: float, rule: str, value: float, message: str) -> Alert:
        return _message(t, rule, self.firing.pop(rule), value, message, "resolved", self._silenced(rule))

    def _resolve_all(self, t: float, which: Callable[[str], bool], why: str) -> list[Alert]:
        return [
            self._resolve(t, r, f.value, f"{why.capitalize()}: alert closed (last: {f.message})")
            for r, f in list(self.firing.items())
            if which(r)
        ]


def _label(signal: str) -> str:
    return {"counts": "Probe", "flow": "Pump flow", "pressure": "Circuit pressure"}.get(signal, signal.capitalize())


def _message(t: float, rule: str, f: _Firing, value: float, message: str, kind: AlertKind, silenced: bool) -> Alert:
    return Alert(
        t=t,
        id=f.id,
        rule=rule,
        severity=f.severity,
        status="resolved" if kind == "resolved" else "firing",
        value=value,
        threshold=f.threshold,
        message=message,
        kind=kind,
        silenced=silenced or None,
    )


def to_state(e: SessionAlerts) -> dict[str, object]:
    """What a restart needs to carry on without losing or repeating an alert (JSON-serialisable)."""
    return {
        "session": e.session,
        "rules": dataclasses.asdict(e.rules),
        "firing": {rule: dataclasses.asdict(f) for rule, f in e.firing.items()},
        "now": e.now,
        "circuit": dataclasses.asdict(e.circuit),
        "last_seen": e.last_seen,
        "silences": [dataclasses.asdict(s) for s in e.silences],
        "active_levels": sorted(e._active_levels),
        "since": e._since,
        "episodes": e._episodes,
    }


def from_state(state: dict[str, Any]) -> SessionAlerts:
    e = SessionAlerts(str(state["session"]), AlertRules(**state["rules"]))
    e.firing = {rule: _Firing(**f) for rule, f in state["firing"].items()}
    e.now = state["now"]
    e.circuit = _Circuit(**state["circuit"])
    e.last_seen = dict(state["last_seen"])
    e.silences = [_Silence(**s) for s in state["silences"]]
    e._active_levels = set(state["active_levels"])
    e._since = dict(state["since"])
    e._episodes = int(state["episodes"])
    return e
