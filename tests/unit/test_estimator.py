"""The leakage estimator on hand-checked values and noise-free sessions."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from isoperf.domain.isotopes import HALF_LIFE_S, decay_constant_per_s
from isoperf.schemas import Leakage
from services.leakage.estimator import EstimatorParams, LeakageEstimator
from services.leakage.filters import TrendFilter, kalman_step, kalman_step_matrix
from services.leakage.formula import (
    activity_ratio,
    decay_corrected_rate,
    leakage_percent,
    shine_through_corrected_percent,
)

LAM_TC = math.log(2) / (6.0067 * 3600)


def test_formula_hand_checked() -> None:
    # B = 40, C_cal = 340 (rise 300), C_0 = 355 (a 15 cps shine-through step), k = 10.
    # C* = 385 is 30 cps above zero: 30 / (10 * 300) = 1.0 %.
    assert leakage_percent(385.0, 355.0, 340.0, 40.0, 10.0) == pytest.approx(1.0, rel=1e-12)
    # k = 37 (Lausanne): the same rise is 10/37 of that.
    assert leakage_percent(385.0, 355.0, 340.0, 40.0, 37.0) == pytest.approx(10 / 37, rel=1e-12)


def test_decay_correction_hand_checked() -> None:
    # One Tc-99m half-life after calibration, a net 150 cps is 300 cps at calibration time.
    t_half = HALF_LIFE_S["Tc-99m"]
    assert decay_corrected_rate(190.0, 40.0, LAM_TC, t_half, 0.0) == pytest.approx(340.0, rel=1e-9)
    # Tc-99m loses about 11 % an hour (shared/domain.md).
    assert 1 - math.exp(-LAM_TC * 3600) == pytest.approx(0.109, abs=0.001)


def test_activity_ratio_decays_circuit_dose_to_calibration_time() -> None:
    assert activity_ratio(200.0, 20.0, 0.0, 1000.0, 0.0) == 10.0
    t_half = HALF_LIFE_S["Tc-99m"]
    assert activity_ratio(200.0, 20.0, LAM_TC, t_half, 0.0) == pytest.approx(20.0, rel=1e-9)


def test_shine_through_correction_hand_checked() -> None:
    # k * rise = 3000 cps for all the circuit tracer in the body; the circuit shone 90 cps
    # through at the zero point. A 1 % leak adds 30 - 0.9 = 29.1 cps, which the plain formula
    # reads as 0.97 %; corrected, 1 %.
    plain = leakage_percent(355.0 + 29.1, 355.0, 340.0, 40.0, 10.0)
    assert plain == pytest.approx(0.97, rel=1e-12)
    assert shine_through_corrected_percent(plain, 10.0, 300.0, 90.0) == pytest.approx(1.0, rel=1e-12)
    assert shine_through_corrected_percent(plain, 10.0, 300.0, 0.0) == plain
    with pytest.raises(ValueError, match="is not below the circuit dose"):
        shine_through_corrected_percent(1.0, 10.0, 300.0, 3000.0)


@pytest.mark.parametrize(
    "args", [(385.0, 355.0, 40.0, 40.0, 10.0), (385.0, 355.0, 340.0, 40.0, 0.0), (385.0, 355.0, 30.0, 40.0, 10.0)]
)
def test_formula_rejects_nonsense(args: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="need k > 0 and a calibration rise > 0"):
        leakage_percent(*args)


def test_unknown_isotope() -> None:
    with pytest.raises(ValueError, match="unknown isotope"):
        decay_constant_per_s("Xx-1")


# -- a noise-free session -------------------------------------------------------------------------

T0 = 1_767_225_600.0  # event times are Unix seconds
T_CAL, T_PERF = T0 + 300.0, T0 + 1200.0
B, RISE, K = 40.0, 300.0, 10.0


def true_rate(t: float, lam: float, leak_pct: float) -> float:
    """Counts rate of a session with instant mixing and a leak of ``leak_pct`` of the circuit tracer."""
    rate = B
    if t > T_CAL:
        rate += RISE * math.exp(-lam * (t - T_CAL))
    if t > T_PERF:
        rate += K * RISE * math.exp(-lam * (t - T_PERF)) * leak_pct / 100.0
    return rate


def leak_profile(t: float) -> float:
    return 0.0 if t < T0 + 1500 else 2.0  # a 2 % step 1500 s into the session


def feed(est: LeakageEstimator, lam: float, t_end: float = 2400.0, events: bool = True) -> list[Leakage]:
    if events:
        est.add_event("calibration_dose", T_CAL, 20.0)
        est.add_event("perfusion_dose", T_PERF, 200.0)
    points = []
    t = T0 + 1.0
    while t <= T0 + t_end:
        est.add_counts(t, true_rate(t - 0.5, lam, leak_profile(t - 0.5)), 1.0)
        points.extend(est.update())
        t += 1.0
    return points


@pytest.mark.parametrize("isotope", ["Tc-99m", "I-131", "In-111"])
def test_noise_free_session_recovers_leak(isotope: str) -> None:
    est = LeakageEstimator()
    est.set_isotope(isotope)
    points = feed(est, decay_constant_per_s(isotope))
    by_t = {p.t: p for p in points}
    assert by_t[T0 + 1400.0].percent == pytest.approx(0.0, abs=1e-6)
    # Without decay-correcting k, Tc-99m would read 2.2 % low here (exp(lambda * 900 s)).
    assert by_t[T0 + 2400.0].percent == pytest.approx(2.0, abs=0.005)
    end = by_t[T0 + 2400.0]
    assert end.ci_low is not None and end.ci_high is not None
    assert end.ci_low < 2.0 < end.ci_high
    assert any(p.step for p in points if T0 + 1500 <= p.t <= T0 + 1530), "the 2 % step is flagged"


def test_states_follow_the_procedure() -> None:
    est = LeakageEstimator()
    est.set_isotope("I-131")
    est.add_event("washout_start", T0 + 2000.0)
    est.add_event("washout_end", T0 + 2100.0)
    est.add_event("session_end", T0 + 2300.0)
    states = {p.t: p.state for p in feed(est, decay_constant_per_s("I-131"))}
    assert states[T0 + 100.0] == "background"
    assert states[T0 + 400.0] == "calibrating"
    assert states[T0 + 1210.0] == "calibrated"  # inside the zero window
    assert states[T0 + 1400.0] == "monitoring"
    assert states[T0 + 2050.0] == "washout"
    assert states[T0 + 2200.0] == "monitoring"
    assert states[T0 + 2350.0] == "ended"


def test_plateau_is_found_by_stability_not_a_fixed_wait() -> None:
    """With slow mixing the plateau comes later than with instant mixing."""

    def first_calibrated(mixing_s: float) -> float:
        est = LeakageEstimator()
        est.set_isotope("I-131")
        est.add_event("calibration_dose", T_CAL, 20.0)
        for i in range(1, 1200):
            t = T0 + i
            mix = 0.0 if t < T_CAL else (1 - math.exp(-(t - T_CAL) / mixing_s) if mixing_s else 1.0)
            est.add_counts(t, B + RISE * mix + (i % 3 - 1), 1.0)  # real counts never repeat exactly
            for p in est.update():
                if p.state == "calibrated":
                    return p.t - T_CAL
        return math.inf

    fast, slow = first_calibrated(0.0), first_calibrated(150.0)
    assert fast == pytest.approx(EstimatorParams().plateau_min_wait_s + EstimatorParams().plateau_window_s, abs=2)
    assert slow > fast + 60


def test_missing_calibration_gives_no_number() -> None:
    est = LeakageEstimator()
    est.set_isotope("Tc-99m")
    est.add_event("perfusion_dose", T_PERF, 200.0)
    points = feed(est, LAM_TC, events=False)
    assert points and all(p.percent is None for p in points)
    assert {p.state for p in points} == {"background"}


def test_no_isotope_no_number() -> None:
    est = LeakageEstimator()
    points = feed(est, LAM_TC)
    assert all(p.percent is None for p in points)


def test_duplicates_ignored_and_order_does_not_matter() -> None:
    in_order = LeakageEstimator()
    in_order.set_isotope("Tc-99m")
    reference = {p.t: p.percent for p in feed(in_order, LAM_TC)}

    shuffled = LeakageEstimator()
    shuffled.set_isotope("Tc-99m")
    samples = [(T0 + t, true_rate(T0 + t - 0.5, LAM_TC, leak_profile(T0 + t - 0.5))) for t in range(1, 2401)]
    # Late events and a swapped pair of samples, and every sample twice.
    for t, v in samples[:700]:
        shuffled.add_counts(t, v, 1.0)
    shuffled.add_event("calibration_dose", T_CAL, 20.0)
    shuffled.update()
    rest = samples[700:]
    rest[10], rest[11] = rest[11], rest[10]
    for t, v in rest:
        shuffled.add_counts(t, v, 1.0)
        shuffled.add_counts(t, v, 1.0)
    shuffled.add_event("perfusion_dose", T_PERF, 200.0)
    shuffled.add_event("perfusion_dose", T_PERF + 50, 999.0)  # a repeat is ignored
    last = shuffled.update()
    assert shuffled.duplicates == len(rest)
    assert last[-1].t == T0 + 2400.0
    assert last[-1].percent == pytest.approx(reference[T0 + 2400.0], abs=1e-9)


@given(st.floats(min_value=0.0, max_value=20.0))
def test_formula_is_linear_in_the_rise(leak: float) -> None:
    c_star = 355.0 + leak / 100 * K * RISE
    assert leakage_percent(c_star, 355.0, B + RISE, B, K) == pytest.approx(leak, abs=1e-9)


def test_the_reference_it_used_is_reported_for_the_record() -> None:
    est = LeakageEstimator()
    est.set_isotope("Tc-99m")
    assert est.reference() is None
    feed(est, decay_constant_per_s("Tc-99m"))
    ref = est.reference()
    assert ref is not None
    # Decay-corrected to the calibration time, a noise-free session gives back B, C_cal, C_0 = C_cal, k.
    assert ref["background_cps"] == pytest.approx(B, rel=1e-3)
    assert ref["calibration_cps"] == pytest.approx(B + RISE, rel=1e-3)
    assert ref["zero_cps"] == pytest.approx(B + RISE, rel=1e-3)
    assert ref["k"] == pytest.approx(K * math.exp(decay_constant_per_s("Tc-99m") * (T_PERF - T_CAL)), rel=1e-9)
    assert T_CAL < ref["plateau_start_t"] < ref["plateau_end_t"] == T_PERF
    assert (ref["zero_start_t"], ref["zero_end_t"]) == (T_PERF + 60.0, T_PERF + 120.0)


def test_the_scalar_kalman_step_is_the_matrix_one() -> None:
    """The filter is written out in scalars for speed; the textbook matrix form is its reference."""
    rng = random.Random(3)
    for q_rate, q_level in ((1e-9, 1e-7), (0.0, 1e-5)):
        a, b = TrendFilter(t=0.0), TrendFilter(t=0.0)
        t = 0.0
        for _ in range(3000):
            t += rng.choice((0.2, 1.0, 5.0))
            y, r = rng.gauss(2.0, 0.5), rng.uniform(0.01, 1.0)
            kalman_step(a, t, y, r, q_rate, q_level)
            kalman_step_matrix(b, t, y, r, q_rate, q_level)
        for name in ("level", "rate", "p00", "p01", "p11"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-9, abs=1e-15), name
        assert a.level != 0.0 and a.p00 > 0.0
