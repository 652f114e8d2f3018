"""The estimator on real-data trouble: each case fails if it is mishandled."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from isoperf.schemas import Leakage
from services.acquisition.simulator import LeakScenario, SimConfig, SimulatedSession, simulate
from services.leakage.estimator import LeakageEstimator

STEADY = LeakScenario(kind="steady", release_pct=0.0)


def run(session: SimulatedSession, counts: list[tuple[float, float, float]] | None = None) -> list[Leakage]:
    est = LeakageEstimator()
    est.set_isotope(session.config.isotope)
    for e in session.events:
        est.add_event(e.type, e.t, e.activity_mbq)
    dt = session.config.counts_dt_s
    out: list[Leakage] = []
    for t, v, d in counts if counts is not None else [(t, v, dt) for t, v in session.readings["counts"]]:
        est.add_counts(t, v, d)
        out.extend(est.update())
    return out


def errors(session: SimulatedSession, points: list[Leakage], t0: float, t1: float) -> np.ndarray:
    truth = dict(session.truth)
    return np.array([p.percent - truth[p.t] for p in points if p.percent is not None and t0 <= p.t <= t1])


def ci_width(p: Leakage) -> float:
    assert p.ci_low is not None and p.ci_high is not None, p
    return p.ci_high - p.ci_low


def test_a_gap_widens_the_interval_and_the_estimate_resumes() -> None:
    cfg = SimConfig(leak=STEADY)
    s = simulate(cfg, 1)
    gap = (cfg.start_t + 2000.0, cfg.start_t + 2120.0)
    counts = [(t, v, 1.0) for t, v in s.readings["counts"] if not gap[0] < t < gap[1]]
    pts = {p.t: p for p in run(s, counts)}
    before, after = pts[gap[0]], pts[gap[1]]
    assert ci_width(after) > 1.5 * ci_width(before)
    assert not any(gap[0] < t < gap[1] for t in pts)
    assert np.abs(errors(s, list(pts.values()), gap[1] + 60, cfg.start_t + cfg.drug_stop_at_s)).max() < 0.5


@pytest.mark.parametrize("dt", [0.5, 2.0])
def test_other_counting_intervals(dt: float) -> None:
    cfg = SimConfig(leak=STEADY, counts_dt_s=dt)
    s = simulate(cfg, 2)
    err = errors(s, run(s), cfg.start_t, cfg.start_t + cfg.drug_stop_at_s)
    assert err.size > 700  # one point a second at most (output interval), one per interval above that
    assert np.percentile(np.abs(err), 95) < 0.35


def test_counting_intervals_that_vary_from_sample_to_sample() -> None:
    cfg = SimConfig(leak=STEADY)
    s = simulate(cfg, 3)
    # Merge pairs of 1 s intervals into 2 s ones, every other pair: dt alternates 1, 1, 2, 1, 1, 2, ...
    raw = s.readings["counts"]
    counts: list[tuple[float, float, float]] = []
    for i in range(0, len(raw) - 1, 3):
        counts.append((raw[i][0], raw[i][1], 1.0))
        counts.append(
            (raw[i + 2][0], raw[i + 1][1] + raw[i + 2][1], 2.0)
            if i + 2 < len(raw)
            else (raw[i + 1][0], raw[i + 1][1], 1.0)
        )
    pts = run(s, counts)
    assert np.percentile(np.abs(errors(s, pts, cfg.start_t, cfg.start_t + cfg.drug_stop_at_s)), 95) < 0.35


def _with_fault(s: SimulatedSession, t0: float, t1: float, value: float | None) -> list[tuple[float, float, float]]:
    """Counts with a probe fault between t0 and t1: zeros (value 0) or one value repeated (saturation)."""
    return [(t, (value if t0 <= t < t1 else v) if value is not None else v, 1.0) for t, v in s.readings["counts"]]


@pytest.mark.parametrize(
    ("value", "fault"), [(0.0, "no counts"), (65535.0, "constant counts"), (350.0, "constant counts")]
)
def test_a_faulty_probe_is_flagged_and_gives_no_number(value: float, fault: str) -> None:
    cfg = SimConfig(leak=STEADY)
    s = simulate(cfg, 4)
    t0, t1 = cfg.start_t + 1800.0, cfg.start_t + 1860.0
    pts = run(s, _with_fault(s, t0, t1, value))
    during = [p for p in pts if t0 + 5 <= p.t < t1]
    assert during and all(p.probe_fault == fault and p.percent is None for p in during)
    assert all(p.probe_fault is None for p in pts if p.t >= t1 + 1)
    assert np.abs(errors(s, pts, t1 + 1, cfg.start_t + cfg.drug_stop_at_s)).max() < 0.5


def test_a_disconnection_during_calibration_does_not_spoil_the_plateau() -> None:
    cfg = SimConfig(leak=STEADY)
    s = simulate(cfg, 5)
    clean = run(s)
    t0 = cfg.start_t + cfg.calibration_at_s + 500  # on the plateau
    faulty = run(s, _with_fault(s, t0, t0 + 60, 0.0))
    a = {p.t: p.percent for p in clean if p.percent is not None}
    b = {p.t: p.percent for p in faulty if p.percent is not None}
    diffs = [abs(a[t] - b[t]) for t in a]
    assert max(diffs) < 0.1  # without the mask, 60 zeros would shift the plateau by ~13 %


def test_zero_counts_at_background_level_are_not_a_fault() -> None:
    cfg = dataclasses.replace(SimConfig(leak=STEADY), background_cps=2.0)
    s = simulate(cfg, 6)
    pts = run(s)
    assert not any(p.probe_fault for p in pts if p.t < cfg.start_t + cfg.calibration_at_s)


def test_a_late_event_re_emits_the_points_it_changes() -> None:
    cfg = SimConfig(leak=STEADY)
    s = simulate(cfg, 7)
    late = next(e for e in s.events if e.type == "washout_end")
    est = LeakageEstimator()
    est.set_isotope(cfg.isotope)
    for e in s.events:
        if e is not late:
            est.add_event(e.type, e.t, e.activity_mbq)
    for t, v in s.readings["counts"]:
        if t <= late.t + 30:
            est.add_counts(t, v, 1.0)
    first = {p.t: p.state for p in est.update()}
    assert first[late.t + 10] == "washout"  # not known yet
    est.add_event(late.type, late.t)  # arrives 30 s late
    again = {p.t: p.state for p in est.update()}
    assert again[late.t + 10] == "monitoring"
    assert min(again) == late.t  # only what changed is sent again
    assert first[late.t - 1] == "washout"
