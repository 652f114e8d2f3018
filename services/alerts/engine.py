"""The alert state of one session, driven by event time: pure, no I/O.

One alert per rule while it fires (deduplicated); a higher severity replaces
the lower on the same alert (escalated), a lower one eases it; a reminder is
sent every ``repeat_s`` while it fires unacknowledged; a resolution closes it.
Missing numbers (no calibration yet, a probe fault) change nothing: an alert
is never resolved for want of data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from isoperf.schemas import Alert, AlertKind, Leakage, Severity
from services.alerts.rules import SEVERITIES, AlertRules


@dataclass
class _Firing:
    id: str
    severity: Severity
    threshold: float
    last_sent: float
    acked_by: str | None = None


class SessionAlerts:
    def __init__(self, session: str, rules: AlertRules) -> None:
        self.session = session
        self.rules = rules
        self.firing: dict[str, _Firing] = {}
        self._active_levels: set[Severity] = set()
        self._rate_since: float | None = None
        self._episodes = 0

    def _new_id(self, rule: str) -> str:
        self._episodes += 1
        return f"{self.session}-{rule}-{self._episodes}"

    def on_leakage(self, leak: Leakage) -> list[Alert]:
        out: list[Alert] = []
        if leak.ci_low is not None and leak.ci_high is not None and leak.percent is not None:
            out += self._leakage_levels(leak.t, leak.percent, leak.ci_low, leak.ci_high)
        if leak.rate_pct_min is not None:
            out += self._leak_rate(leak.t, leak.rate_pct_min)
        out += self._reminders(leak.t, leak)
        return out

    def acknowledge(self, alert_id: str, by: str) -> bool:
        """Stop the reminders of a firing alert; False if no such alert is firing."""
        for f in self.firing.values():
            if f.id == alert_id:
                f.acked_by = by
                return True
        return False

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
        if severity == current.severity:
            return []
        kind: AlertKind = "escalated" if SEVERITIES.index(severity) > SEVERITIES.index(current.severity) else "eased"
        current.severity, current.threshold = severity, level
        if kind == "escalated":
            current.acked_by = None  # a new severity wants a new acknowledgement
        return [self._send(t, rule, current, pct, message, kind)]

    def _leak_rate(self, t: float, rate: float) -> list[Alert]:
        rule, limit = "leak_rate", self.rules.leak_rate_pct_min
        current = self.firing.get(rule)
        if rate <= limit:
            self._rate_since = None
            return [self._resolve(t, rule, rate, f"Leak rate back below {limit:g} %/min")] if current else []
        if self._rate_since is None:
            self._rate_since = t
        if current is None and t - self._rate_since >= self.rules.leak_rate_for_s:
            minutes = self.rules.leak_rate_for_s / 60
            message = f"Leak rate {rate:.2f} %/min above {limit:g} %/min for {minutes:g} min"
            return [self._fire(t, rule, "warning", rate, limit, message)]
        return []

    def _reminders(self, t: float, leak: Leakage) -> list[Alert]:
        out = []
        for rule, f in self.firing.items():
            if f.acked_by is None and t - f.last_sent >= self.rules.repeat_s:
                value = (leak.percent if rule == "leakage" else leak.rate_pct_min) or 0.0
                reminder = f"Reminder: {rule.replace('_', ' ')} still firing"
                out.append(self._send(t, rule, f, value, reminder, "repeat"))
        return out

    # -- bookkeeping -----------------------------------------------------------------------

    def _fire(self, t: float, rule: str, severity: Severity, value: float, threshold: float, msg: str) -> Alert:
        f = _Firing(self._new_id(rule), severity, threshold, t)
        self.firing[rule] = f
        return self._send(t, rule, f, value, msg, "new")

    def _send(self, t: float, rule: str, f: _Firing, value: float, message: str, kind: AlertKind) -> Alert:
        f.last_sent = t
        return _message(t, rule, f, value, message, kind)

    def _resolve(self, t: float, rule: str, value: float, message: str) -> Alert:
        return _message(t, rule, self.firing.pop(rule), value, message, "resolved")


def _message(t: float, rule: str, f: _Firing, value: float, message: str, kind: AlertKind) -> Alert:
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
    )


def to_state(e: SessionAlerts) -> dict[str, object]:
    """What a restart needs to carry on without losing or repeating an alert (JSON-serialisable)."""
    return {
        "session": e.session,
        "rules": dataclasses.asdict(e.rules),
        "firing": {rule: dataclasses.asdict(f) for rule, f in e.firing.items()},
        "active_levels": sorted(e._active_levels),
        "rate_since": e._rate_since,
        "episodes": e._episodes,
    }


def from_state(state: dict[str, Any]) -> SessionAlerts:
    e = SessionAlerts(str(state["session"]), AlertRules(**state["rules"]))
    e.firing = {rule: _Firing(**f) for rule, f in state["firing"].items()}
    e._active_levels = set(state["active_levels"])
    e._rate_since = state["rate_since"]
    e._episodes = int(state["episodes"])
    return e
