"""The alert engine: levels on the interval bounds with hysteresis, escalation, reminders, acks."""

from __future__ import annotations

import dataclasses

import pytest

from isoperf.schemas import Alert, Event, LabSample, Leakage, Pk
from services.acquisition.simulator import LeakScenario, SimConfig, SimulatedSession, simulate
from services.alerts.engine import SessionAlerts
from services.alerts.rules import AlertRules
from services.leakage.estimator import LeakageEstimator

T = 1_767_225_600.0


def leak(t: float, pct: float, half: float = 0.3, rate: float = 0.0) -> Leakage:
    return Leakage(t=T + t, state="monitoring", percent=pct, ci_low=pct - half, ci_high=pct + half, rate_pct_min=rate)


def feed(engine: SessionAlerts, points: list[Leakage]) -> list[Alert]:
    return [a for p in points for a in engine.on_leakage(p)]


def test_fires_on_the_lower_bound_escalates_eases_and_resolves_with_hysteresis() -> None:
    e = SessionAlerts("s-1", AlertRules())
    alerts = feed(
        e,
        [
            leak(0, 1.2),  # [0.9, 1.5]: lower bound not above 1 %: nothing
            leak(1, 1.4),  # [1.1, 1.7]: advisory
            leak(2, 1.1),  # [0.8, 1.4]: upper bound still above 1 %: stays, no flapping
            leak(3, 2.5),  # [2.2, 2.8]: warning replaces advisory
            leak(4, 2.1),  # [1.8, 2.4]: stays warning
            leak(5, 1.5),  # [1.2, 1.8]: upper bound below 2 %: eases to advisory
            leak(6, 0.6),  # [0.3, 0.9]: upper bound below 1 %: resolved
        ],
    )
    assert [(a.kind, a.severity, a.status) for a in alerts] == [
        ("new", "advisory", "firing"),
        ("escalated", "warning", "firing"),
        ("eased", "advisory", "firing"),
        ("resolved", "advisory", "resolved"),
    ]
    assert len({a.id for a in alerts}) == 1, "one alert for the whole episode"
    assert alerts[1].threshold == 2.0 and "warning level of 2 %" in alerts[1].message


def test_missing_numbers_never_resolve_and_a_probe_fault_is_an_alert_of_its_own() -> None:
    e = SessionAlerts("s-1", AlertRules())
    feed(e, [leak(0, 3.0)])
    fault = e.on_leakage(Leakage(t=T + 1, state="monitoring", probe_fault="no counts"))
    assert [(a.rule, a.kind, a.severity) for a in fault] == [("probe_fault", "new", "critical")]
    assert "leakage" in e.firing
    back = feed(e, [leak(2, 3.0)])
    assert [(a.rule, a.kind) for a in back] == [("probe_fault", "resolved")]


def test_reminders_until_acknowledged_and_again_after_escalation() -> None:
    e = SessionAlerts("s-1", AlertRules(repeat_s=300))
    first = feed(e, [leak(0, 1.5)])[0]
    quiet = feed(e, [leak(t, 1.5) for t in range(1, 300)])
    assert quiet == []
    reminder = feed(e, [leak(300, 1.5)])
    assert [a.kind for a in reminder] == ["repeat"] and reminder[0].id == first.id
    assert e.acknowledge(first.id, "perfusionist")
    assert feed(e, [leak(t, 1.5) for t in range(301, 1500, 50)]) == []
    escalated = feed(e, [leak(1500, 2.6)])
    assert [a.kind for a in escalated] == ["escalated"]
    assert [a.kind for a in feed(e, [leak(1800, 2.6)])] == ["repeat"], "a new severity wants a new acknowledgement"
    assert not e.acknowledge("nope", "x")


def test_leak_rate_must_be_sustained() -> None:
    e = SessionAlerts("s-1", AlertRules(leak_rate_pct_min=0.1, leak_rate_for_s=180))
    brief = feed(e, [leak(t, 0.2, rate=0.3) for t in range(120)] + [leak(120, 0.2, rate=0.05)])
    assert brief == []
    sustained = feed(e, [leak(t, 0.2, rate=0.3) for t in range(200, 400)])
    assert [(a.rule, a.kind) for a in sustained] == [("leak_rate", "new")]
    assert sustained[0].t == T + 380
    assert [a.kind for a in feed(e, [leak(400, 0.2, rate=0.0)])] == ["resolved"]


def test_session_thresholds_override_the_defaults() -> None:
    rules = AlertRules().with_thresholds({"advisory": 0.5, "warning": 3.0})
    assert rules.levels()[:2] == [("advisory", 0.5), ("warning", 3.0)]
    with pytest.raises(ValueError, match="unknown thresholds"):
        AlertRules().with_thresholds({"panic": 1.0})


def _estimator(s: SimulatedSession) -> LeakageEstimator:
    est = LeakageEstimator()
    est.set_isotope(s.config.isotope)
    for ev in s.events:
        est.add_event(ev.type, ev.t, ev.activity_mbq)
    return est


def _session_alerts(cfg: SimConfig, seed: int) -> list[Alert]:
    """Leakage points of a simulated session until the washout, through one engine."""
    s = simulate(cfg, seed)
    est, engine = _estimator(s), SessionAlerts("s", AlertRules())
    alerts: list[Alert] = []
    washout = cfg.start_t + cfg.drug_stop_at_s
    for t, v in s.readings["counts"]:
        est.add_counts(t, v, cfg.counts_dt_s)
        for p in est.update():
            if p.t < washout:
                alerts += engine.on_leakage(p)
    return alerts


def test_four_hours_without_a_leak_raise_no_leakage_alert() -> None:
    cfg = SimConfig(leak=LeakScenario(release_pct=0.0), perfusion_s=4 * 3600.0)
    assert [a for a in _session_alerts(cfg, 0) if a.rule == "leakage"] == []


def _whole_session(cfg: SimConfig, seed: int) -> list[Alert]:
    """Every event, reading and leakage point of a simulated session through one engine, in time order."""
    s = simulate(cfg, seed)
    est, engine = _estimator(s), SessionAlerts("s", AlertRules())
    alerts: list[Alert] = []
    for t, kind, item in s.timeline():
        if isinstance(item, Event):
            alerts += engine.on_event(item.type, t)
            continue
        if isinstance(item, LabSample):
            continue
        alerts += engine.on_reading(kind, t, item.v)
        if kind == "counts":
            est.add_counts(t, item.v, cfg.counts_dt_s)
            for p in est.update():
                alerts += engine.on_leakage(p)
    return alerts


def test_a_step_to_two_and_a_half_percent_raises_advisory_then_warning_once_and_closes_at_isolation_end() -> None:
    cfg = dataclasses.replace(SimConfig(), leak=LeakScenario(kind="step", step_pct=2.5))
    alerts = _whole_session(cfg, 1)
    leakage = [(a.kind, a.severity) for a in alerts if a.rule == "leakage" and a.kind != "repeat"]
    assert leakage == [("new", "advisory"), ("escalated", "warning"), ("resolved", "warning")]
    resolved = next(a for a in alerts if a.kind == "resolved" and a.rule == "leakage")
    assert resolved.t == cfg.start_t + cfg.isolation_end_at_s and resolved.message.startswith(
        "Isolation ended: alert closed"
    )
    # The clamps coming off releases 7 % more: expected, so no alarm; the circuit was healthy throughout.
    assert {a.rule for a in alerts} == {"leakage", "leak_rate"}, "no limit, stale or ischaemia alarm"


def test_a_two_percent_step_fires_once_and_does_not_flap() -> None:
    step = LeakScenario(kind="step", step_pct=2.0, step_tau_s=5.0, release_pct=0.0)
    alerts = [a for a in _session_alerts(dataclasses.replace(SimConfig(), leak=step), 1) if a.rule == "leakage"]
    assert (alerts[0].kind, alerts[0].severity) == ("new", "advisory")
    assert sum(a.kind == "new" for a in alerts) == 1 and not any(a.kind == "resolved" for a in alerts)


def test_an_advisory_when_the_predicted_post_release_peak_is_above_its_level() -> None:
    e = SessionAlerts("s-1", AlertRules().with_thresholds({"release_peak_ug_ml": 8.0}))

    def pk(t: float, peak: float, projected: bool, n: int = 0) -> Pk:
        return Pk(
            t=T + t,
            release_peak_ug_ml=peak,
            release_peak_low_ug_ml=peak * 0.7,
            release_peak_high_ug_ml=peak * 1.4,
            release_projected=projected,
            n_release=n,
        )

    assert e.on_pk(pk(0, 4.3, True)) == []
    fired = e.on_pk(pk(15, 8.6, True))  # e.g. 2 mg/kg: known before the clamps come off
    assert [(a.rule, a.severity, a.kind) for a in fired] == [("release_peak", "advisory", "new")]
    assert fired[0].threshold == 8.0 and "8.6 ug/mL" in fired[0].message and "projected" in fired[0].message
    assert e.on_pk(pk(30, 9.1, False, 1)) == [], "one alert while it stays above"
    assert "refitted to 1 systemic sample after the release" in e.firing["release_peak"].message
    assert e.on_pk(Pk(t=T + 40)) == [], "no prediction: nothing changes"
    resolved = e.on_pk(pk(45, 6.0, False, 2))
    assert [(a.kind, a.status) for a in resolved] == [("resolved", "resolved")]
    assert e.now is None, "pk estimates do not move the session's event time"
    assert e.on_pk(pk(50, 12.0, False, 3))[0].kind == "new"
    assert [a.rule for a in e.on_event("session_end", T + 60)] == ["release_peak"]
