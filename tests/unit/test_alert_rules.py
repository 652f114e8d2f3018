"""The alert rules beyond leakage: circuit limits, reservoir drop, stale data, offline services,
ischaemia time, escalation of unacknowledged critical alerts, silences, phases and state."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Literal

import pytest

from isoperf.schemas import Alert, AlertKind, AlertSilence, Leakage
from services.alerts.channels import Notice, Notifier
from services.alerts.engine import SessionAlerts, from_state, to_state
from services.alerts.rules import AlertRules

T = 1_767_225_600.0


def kinds(alerts: list[Alert]) -> list[tuple[str, str]]:
    return [(a.rule, a.kind or "") for a in alerts]


def pumping(e: SessionAlerts, start: float, end: float, **signals: float) -> list[Alert]:
    """One reading per second of each signal (defaults: a healthy circuit) from ``start`` to ``end``."""
    values = {"flow": 200.0, "pressure": 70.0, "temperature": 39.0, "reservoir": 150.0, **signals}
    return [a for t in range(int(start), int(end)) for s, v in values.items() for a in e.on_reading(s, T + t, v)]


def test_readings_from_before_the_pump_started_that_come_late_raise_no_circuit_alarm() -> None:
    """After the leakage service was behind for longer than the hold, inputs go on without it, and
    the readings of another signal may come after a later flow reading armed the limits."""
    e = SessionAlerts("s", AlertRules(pressure_for_s=15))
    assert pumping(e, 300, 330) == []  # the pump runs from t = 300 on
    assert e.circuit.pump_on_t == T + 300
    assert pumping(e, 100, 200, flow=0.0, pressure=4.0, reservoir=0.0) == []  # late, from before
    assert kinds(pumping(e, 330, 360, pressure=4.0)) == [("pressure_low", "new")]  # armed still


def test_circuit_limits_fire_after_their_for_duration_and_resolve_after_as_long_inside() -> None:
    e = SessionAlerts("s", AlertRules(flow_min=30, flow_for_s=15))
    assert pumping(e, 0, 60, flow=0.0) == [], "limits wait for the pump to start"
    assert pumping(e, 60, 120) == []
    assert e.circuit.pump_on_t == T + 60 and e.circuit.isolation_t == T + 60
    assert pumping(e, 120, 134, flow=10.0) == [], "a dip shorter than 15 s is not an alarm"
    assert pumping(e, 134, 140) == []
    low = pumping(e, 140, 160, flow=10.0)
    assert kinds(low) == [("flow_low", "new")] and low[0].t == T + 155
    assert "Pump flow 10 mL/min below 30 mL/min" in low[0].message
    assert pumping(e, 160, 170) == [], "resolving waits as long as firing did"
    assert kinds(pumping(e, 170, 180)) == [("flow_low", "resolved")]
    # After the washout the pump stops: the limits are disarmed, a firing limit is closed.
    assert kinds(pumping(e, 180, 200, pressure=200.0)) == [("pressure_high", "new")]
    assert kinds(e.on_event("washout_end", T + 200)) == [("pressure_high", "resolved")]
    assert pumping(e, 200, 300, flow=0.0, pressure=3.0) == []


def test_a_falling_reservoir_fires_against_the_level_the_circuit_settled_at() -> None:
    e = SessionAlerts("s", AlertRules(reservoir_drop_ml=20, reservoir_for_s=30, reservoir_min=50))
    assert pumping(e, 0, 200, reservoir=180.0) == []
    assert e.circuit.reservoir_baseline == 180.0
    assert pumping(e, 200, 300, reservoir=165.0) == [], "15 mL is within the limit"
    drop = pumping(e, 300, 400, reservoir=150.0)
    assert kinds(drop) == [("reservoir_drop", "new")] and drop[0].value == 30.0
    assert "fell 30 mL from 180 mL" in drop[0].message


def test_stale_data_by_the_callers_clock_and_back() -> None:
    e = SessionAlerts("s", AlertRules(stale_counts_s=30, stale_device_s=60))
    pumping(e, 0, 10)
    for t in range(10):
        e.on_reading("counts", T + t, 300.0)
    # Batches of one signal may run ahead of another's in event time: that is not stale data.
    assert pumping(e, 10, 100) == []
    quiet = {"counts": 31.0, "flow": 10.0, "pressure": 61.0}
    stale = e.check_stale(quiet, T + 100)
    assert kinds(stale) == [("stale_counts", "new"), ("stale_pressure", "new")]
    assert stale[0].severity == "critical", "blind during isolation"
    assert stale[0].message == "No probe counts for 31 s"
    assert e.check_stale(quiet, T + 101) == [], "deduplicated"
    assert kinds(e.on_reading("counts", T + 121, 300.0)) == [("stale_counts", "resolved")]


def test_offline_service_fires_and_resolves_when_it_is_back() -> None:
    e = SessionAlerts("s", AlertRules())
    off = e.on_service("leakage/or-1", False, T, critical=True)
    assert kinds(off) == [("offline:leakage/or-1", "new")] and off[0].severity == "critical"
    assert e.on_service("leakage/or-1", False, T + 1, critical=True) == []
    assert kinds(e.on_service("leakage/or-1", True, T + 2, critical=True)) == [("offline:leakage/or-1", "resolved")]


@pytest.mark.parametrize("by_event", [True, False])
def test_ischaemia_time_warns_ahead_of_the_limit_then_escalates_and_closes_at_isolation_end(by_event: bool) -> None:
    e = SessionAlerts("s", AlertRules(ischaemia_warn_min=50, ischaemia_limit_min=60, escalate_after_s=1e9))
    if by_event:
        e.on_event("isolation_start", T)
    else:
        e.on_reading("flow", T, 200.0)  # no event: the pump starting marks the isolation

    def ischaemia(alerts: list[Alert]) -> list[Alert]:
        return [a for a in alerts if a.rule == "ischaemia"]  # (the flow reading then stops: stale too)

    assert ischaemia(e.on_time(T + 49 * 60)) == []
    warn = ischaemia(e.on_time(T + 50 * 60))
    assert kinds(warn) == [("ischaemia", "new")] and warn[0].severity == "warning"
    crit = ischaemia(e.on_time(T + 60 * 60))
    assert kinds(crit) == [("ischaemia", "escalated")] and crit[0].severity == "critical"
    assert crit[0].id == warn[0].id and "Ischaemia time 60 min (limit 60 min)" in crit[0].message
    assert kinds(ischaemia(e.on_event("isolation_end", T + 62 * 60))) == [("ischaemia", "resolved")]


def test_an_unacknowledged_critical_alert_is_escalated_once_and_an_acknowledged_one_is_not() -> None:
    rules = AlertRules(escalate_after_s=120, repeat_s=300)
    e = SessionAlerts("s", rules)
    first = e.on_leakage(Leakage(t=T, state="monitoring", percent=6.0, ci_low=5.5, ci_high=6.5))
    assert [(a.kind, a.severity) for a in first] == [("new", "critical")]
    assert e.on_time(T + 119) == []
    page = e.on_time(T + 120)
    assert kinds(page) == [("leakage", "unacknowledged")] and page[0].id == first[0].id
    assert "Unacknowledged for 2 min" in page[0].message
    assert [a.kind for a in e.on_time(T + 420)] == ["repeat"], "then reminders, not pages"
    acked = SessionAlerts("s", rules)
    a = acked.on_leakage(Leakage(t=T, state="monitoring", percent=6.0, ci_low=5.5, ci_high=6.5))[0]
    assert acked.acknowledge(a.id, "surgeon")
    assert acked.on_time(T + 3600) == []


def test_silences_mute_reminders_and_escalation_until_they_expire_but_alerts_still_come() -> None:
    e = SessionAlerts("s", AlertRules(repeat_s=60, escalate_after_s=1e9, stale_device_s=1e9))
    e.silence(AlertSilence(t=T, rule="flow_low", duration_s=600, reason="pump paused for a line change", by="perf"))
    pumping(e, 0, 60)
    low = pumping(e, 60, 100, flow=5.0)
    assert kinds(low) == [("flow_low", "new")] and low[0].silenced is True
    assert e.on_time(T + 500) == [], "no reminder while silenced"
    assert [(a.kind, a.silenced) for a in e.on_time(T + 601)] == [("repeat", None)], "expired: reminders again"
    # A silence of the whole session covers every rule; a duration of 0 lifts it.
    e.silence(AlertSilence(t=T + 602, duration_s=3600, reason="theatre drill", by="perf"))
    assert e.on_time(T + 800) == []
    e.silence(AlertSilence(t=T + 801, duration_s=0, reason="drill over", by="perf"))
    assert [a.kind for a in e.on_time(T + 802)] == ["repeat"]


def test_leakage_alerts_close_at_isolation_end_and_everything_at_session_end() -> None:
    e = SessionAlerts("s", AlertRules())
    e.on_event("isolation_start", T)
    e.on_leakage(Leakage(t=T + 60, state="monitoring", percent=3.0, ci_low=2.5, ci_high=3.5))
    e.on_service("recorder/a", False, T + 61, critical=True)
    closed = e.on_event("isolation_end", T + 120)
    assert (
        kinds(closed) == [("leakage", "resolved")]
        and "Isolation ended: alert closed (last: Leakage 3.00 %" in closed[0].message
    )
    # The release after the clamps come off is expected: no leakage alarm for it.
    after = e.on_leakage(Leakage(t=T + 300, state="monitoring", percent=9.0, ci_low=8.5, ci_high=9.5))
    assert kinds(after) == [("offline:recorder/a", "unacknowledged")], "only the still-offline recorder"
    assert kinds(e.on_event("session_end", T + 400)) == [("offline:recorder/a", "resolved")]
    assert e.on_time(T + 10_000) == [] and not e.firing


def test_state_round_trips_through_json() -> None:
    e = SessionAlerts("s", AlertRules(advisory=0.5))
    e.on_event("isolation_start", T)
    pumping(e, 0, 100, reservoir=170.0)
    e.on_leakage(Leakage(t=T + 100, state="monitoring", percent=3.0, ci_low=2.5, ci_high=3.5))
    e.silence(AlertSilence(t=T + 100, rule="leak_rate", duration_s=60, reason="known", by="perf"))
    back = from_state(json.loads(json.dumps(to_state(e))))
    assert to_state(back) == to_state(e)
    assert back.on_time(T + 500) == e.on_time(T + 500) != []


def test_rules_from_a_toml_file_and_bad_values(tmp_path: Path) -> None:
    f = tmp_path / "rules.toml"
    f.write_text("warning = 2.5\nflow_min = 40\nischaemia_limit_min = 90\n")
    rules = AlertRules.from_file(f)
    assert (rules.warning, rules.flow_min, rules.ischaemia_limit_min, rules.advisory) == (2.5, 40.0, 90.0, 1.0)
    assert AlertRules.from_file(None) == AlertRules()
    shipped = Path(__file__).parents[2] / "deploy" / "alert-rules.toml"
    assert AlertRules.from_file(shipped) == AlertRules(), "the shipped file names every rule with its default"
    names = {line.split(" = ")[0] for line in shipped.read_text().splitlines() if " = " in line}
    assert names == {f.name for f in dataclasses.fields(AlertRules)}
    with pytest.raises(ValueError, match="finite number"):
        AlertRules().with_thresholds({"flow_min": "40"})  # type: ignore[dict-item]  # a wrong type on purpose
    with pytest.raises(ValueError, match="unknown thresholds"):
        AlertRules().with_thresholds({"flow_minimum": 40.0})


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[str] = []

    async def send(self, notice: Notice) -> None:
        self.got.append(f"{notice.alert.kind}:{notice.alert.id}")


async def test_escalation_channels_get_only_what_was_escalated_to_them_and_its_resolution() -> None:
    team, oncall = Recorder("team"), Recorder("oncall")
    n = Notifier([team], [oncall])

    def alert(kind: AlertKind, id: str) -> Notice:
        status: Literal["firing", "resolved"] = "resolved" if kind == "resolved" else "firing"
        a = Alert(
            t=T, id=id, rule="leakage", severity="critical", status=status, value=6, threshold=5, message="m", kind=kind
        )
        return Notice("or-1", "s", a)

    sent: list[tuple[AlertKind, str]] = [
        ("new", "a"),
        ("unacknowledged", "a"),
        ("new", "b"),
        ("resolved", "b"),
        ("resolved", "a"),
    ]
    for kind, id in sent:
        n.notify(alert(kind, id))
    await n.drain(5.0)
    assert team.got == ["new:a", "unacknowledged:a", "new:b", "resolved:b", "resolved:a"]
    assert oncall.got == ["unacknowledged:a", "resolved:a"]
    await asyncio.sleep(0)
