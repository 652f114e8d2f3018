"""The simulator: deterministic, physically sensible, truth kept apart."""

from __future__ import annotations

import numpy as np
import pytest

from isoperf.domain.melphalan import typical_release
from services.acquisition.simulator import LeakScenario, SimConfig, simulate, true_count_rate


def test_same_seed_same_session_other_seed_other_noise() -> None:
    a, b, c = simulate(SimConfig(), 3), simulate(SimConfig(), 3), simulate(SimConfig(), 4)
    assert a.readings == b.readings
    assert a.readings["counts"] != c.readings["counts"]


def test_timeline_is_in_time_order_with_all_items() -> None:
    s = simulate(SimConfig(), 0)
    items = list(s.timeline())
    times = [t for t, _, _ in items]
    assert times == sorted(times)
    assert len(items) == len(s.events) + sum(len(v) for v in s.readings.values()) + len(s.samples)
    # Lab results come on the bus when the lab reports them, after the draw.
    reported = [(t, item) for t, kind, item in items if kind == "sample"]
    assert len(reported) == 14 and all(t == item.t + s.config.lab_delay_s for t, item in reported)
    assert [e.type for e in s.events][:4] == ["session_start", "calibration_dose", "isolation_start", "perfusion_dose"]


def test_counts_are_poisson_around_the_expected_rate() -> None:
    cfg = SimConfig(isotope="I-131")
    s = simulate(cfg, 0)
    t, n = np.array(s.readings["counts"]).T
    background = n[(t - cfg.start_t) < cfg.calibration_at_s]
    assert background.mean() == pytest.approx(cfg.background_cps, rel=0.05)
    assert background.var() == pytest.approx(background.mean(), rel=0.25)  # Poisson: variance = mean
    plateau = n[((t - cfg.start_t) > 800) & ((t - cfg.start_t) < 1000)]
    assert plateau.mean() == pytest.approx(cfg.background_cps + cfg.calibration_rise_cps, rel=0.03)


def test_tc99m_decays_i131_does_not() -> None:
    late = np.array([5000.0])
    quiet = LeakScenario(release_pct=0.0)
    tc = SimConfig(isotope="Tc-99m", calibration_at_s=0, observation_s=5000, leak=quiet)
    i131 = SimConfig(isotope="I-131", calibration_at_s=0, observation_s=5000, leak=quiet)
    rate_tc = true_count_rate(tc, tc.start_t + late)[0][0] - tc.background_cps
    rate_i = true_count_rate(i131, i131.start_t + late)[0][0] - i131.background_cps
    assert rate_i == pytest.approx(300.0, rel=0.01)
    assert rate_tc == pytest.approx(300.0 * 0.5 ** (5000 / 3600 / 6.0067), rel=0.01)


def test_leak_scenarios_truth() -> None:
    steady = LeakScenario(kind="steady", rate_pct_min=0.3, onset_s=180)
    assert steady.percent(np.array([100.0, 180.0, 780.0])).tolist() == pytest.approx([0.0, 0.0, 3.0])
    step = LeakScenario(kind="step", step_pct=2.0, step_at_s=900, step_tau_s=90)
    assert step.percent(np.array([899.0, 900.0 + 900.0]))[0] == 0.0
    assert step.percent(np.array([1800.0]))[0] == pytest.approx(2.0, abs=1e-3)
    assert LeakScenario().percent(np.array([5000.0]))[0] == 0.0


def test_release_after_clamps_off_and_reservoir_falls_with_leak() -> None:
    cfg = SimConfig(leak=LeakScenario(kind="steady", release_pct=7.0))
    s = simulate(cfg, 0)
    truth = dict(s.truth)
    end = cfg.start_t + cfg.duration_s
    assert truth[round(end, 3)] > truth[round(cfg.start_t + cfg.isolation_end_at_s, 3)] + 6.5
    res = np.array(s.readings["reservoir"])
    rel = res[:, 0] - cfg.start_t
    early = res[(rel > 1100) & (rel < 1200), 1].mean()
    late = res[(rel > 2500) & (rel < 2600), 1].mean()
    assert early - late > 10  # ~7 % of a 220 mL circuit lost to the body


def test_the_leak_stops_when_the_circuit_is_washed_out() -> None:
    cfg = SimConfig(leak=LeakScenario(kind="steady", release_pct=0.0))
    truth = dict(simulate(cfg, 0).truth)
    at_washout = truth[round(cfg.start_t + cfg.drug_stop_at_s, 3)]
    assert at_washout == pytest.approx(0.3 * (cfg.drug_stop_at_s - cfg.perfusion_dose_at_s - 180) / 60)
    assert truth[round(cfg.start_t + cfg.duration_s, 3)] == pytest.approx(at_washout)


def test_each_seed_draws_a_patient_release_without_touching_the_counts() -> None:
    a = simulate(SimConfig(), 3)
    fixed = simulate(SimConfig(pk_release=typical_release("IHHP", 75.0)), 3)
    assert a.readings == fixed.readings, "the patient's release comes from a stream of its own"
    assert a.release_truth is not None and fixed.release_truth is not None
    assert a.release_truth.release != fixed.release_truth.release
    other = simulate(SimConfig(), 4).release_truth
    assert other is not None and other.release != a.release_truth.release
    # After the clamps come off the systemic samples are of the IHHP series' order (median peak
    # 4.2 ug/mL), during the isolation without a leak they are nil.
    end = a.config.start_t + a.config.isolation_end_at_s
    systemic = [(x.t, x.melphalan_ug_ml) for _, x in a.samples if x.site == "systemic"]
    assert all(c == 0.0 for t, c in systemic if t < end)
    assert 1.0 < max(c for t, c in systemic if t >= end) < 20.0
    peak, at = a.release_truth.peak()
    assert end < at < end + 180 and a.release_truth.systemic([at])[0] == pytest.approx(peak)


def test_a_bolus_is_announced_as_one() -> None:
    s = simulate(SimConfig(drug_mode="bolus"), 0)
    start = next(e for e in s.events if e.type == "drug_start")
    assert start.mode == "bolus" and start.duration_s is None
