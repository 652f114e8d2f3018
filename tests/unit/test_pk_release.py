"""The release model (after the clamps come off) and its prediction in the pk service."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from isoperf.domain.melphalan import (
    Release,
    draw_release,
    release_auc,
    release_curve,
    release_peak,
    typical_release,
)
from isoperf.points import pk_release_lines
from isoperf.schemas import LabSample
from services.acquisition.simulator import SimConfig, SimulatedSession, simulate
from services.pk.session import PkSession

ORGAN = (16_600.0, 14_700.0)  # ug in the circuit and the tissue at the release (a 75 kg IHHP at 1 mg/kg)


def test_nothing_before_the_release_then_a_peak_within_minutes_and_the_published_terminal_half_life() -> None:
    r = typical_release("IHHP", 75.0)
    c = release_curve([20.0, 30.99, 31.0, 32.0, 33.0, 41.0, 151.0, 226.0], 31.0, ORGAN, r)
    assert c[:3].tolist() == [0.0, 0.0, 0.0]
    peak, tmax = release_peak(31.0, ORGAN, r)
    assert 31.0 < tmax < 34.0, "a peak right after the release (docs/melphalan.md)"
    assert 3.0 < peak < 6.0 and peak >= c[3:].max()
    # Late on, the curve falls with the terminal half-life (75 min): 75 minutes halve it.
    assert c[-1] / c[-2] == pytest.approx(0.5, rel=0.02)


def test_mass_balance_the_auc_to_infinity_is_the_drug_returned_over_the_clearance() -> None:
    r = dataclasses.replace(typical_release("IHHP", 75.0), k_deg_min=0.0)  # nothing lost on the way back
    k10, _, _ = r.rates()
    returned = r.residual_fraction * ORGAN[0] + r.tissue_fraction * ORGAN[1]
    assert release_auc(ORGAN, r) == pytest.approx(returned / (k10 * r.v1_ml), rel=1e-9)
    grid = np.linspace(31.0, 31.0 + 3000.0, 300_001)
    numeric = float(np.trapezoid(release_curve(grid, 31.0, ORGAN, r), grid))
    assert numeric == pytest.approx(release_auc(ORGAN, r), rel=1e-4)


def test_drug_leaked_during_the_isolation_is_in_the_body_at_the_release() -> None:
    r = typical_release("IHHP", 75.0)
    body = release_curve([31.0, 200.0], 31.0, (0.0, 0.0), r, body_ug=4_000.0)
    assert body[0] == pytest.approx(4_000.0 / r.vss_ml), "spread over the body, as the leak estimate has it"
    assert 0 < body[1] < body[0]


def test_patients_drawn_from_the_population_vary_around_the_typical_one() -> None:
    typical = typical_release("IHHP", 75.0)
    rng = np.random.default_rng(0)
    drawn = [draw_release(typical, rng) for _ in range(500)]
    v1 = np.array([d.v1_ml for d in drawn])
    assert np.median(v1) == pytest.approx(typical.v1_ml, rel=0.05)
    assert all(0.0 < d.tissue_fraction < 1.0 for d in drawn)
    with pytest.raises(ValueError, match="terminal half-life"):
        dataclasses.replace(typical, t_half_min=1.0).rates()


def session(seed: int) -> SimulatedSession:
    return simulate(SimConfig(), seed)


def fed(s: SimulatedSession, post_release: int) -> PkSession:
    """All circuit samples and the systemic ones of the isolation, then ``post_release`` after it."""
    pk = PkSession(meta=s.meta)
    for e in s.events:
        pk.add_event(e)
    for t, leak in s.truth[::5]:
        pk.add_leakage(t, leak)
    end = s.config.start_t + s.config.isolation_end_at_s
    lab = sorted((x for _, x in s.samples), key=lambda x: x.t)
    after = [x for x in lab if x.site == "systemic" and x.t >= end]
    for x in [x for x in lab if x not in after] + after[:post_release]:
        pk.add_sample(x)
    return pk


def test_the_prediction_holds_the_true_peak_and_narrows_with_the_first_systemic_sample() -> None:
    held = narrowed = 0
    for seed in range(6):
        s = session(seed)
        assert s.release_truth is not None
        true_peak = s.release_truth.peak()[0]
        t_end = s.config.start_t + s.config.duration_s
        before, after = fed(s, 0).estimate(t_end), fed(s, 1).estimate(t_end)
        assert before is not None and after is not None
        assert before.n_release == 0 and after.n_release == 1 and before.release_projected is False
        assert before.release_peak_low_ug_ml is not None and before.release_peak_high_ug_ml is not None
        assert after.release_peak_low_ug_ml is not None and after.release_peak_high_ug_ml is not None
        held += before.release_peak_low_ug_ml <= true_peak <= before.release_peak_high_ug_ml
        narrowed += (after.release_peak_high_ug_ml - after.release_peak_low_ug_ml) < (
            before.release_peak_high_ug_ml - before.release_peak_low_ug_ml
        )
        # the curve at the session's end, with its interval
        assert after.release_low_ug_ml is not None and after.release_high_ug_ml is not None
        assert after.release_low_ug_ml <= (after.release_ug_ml or 0) <= after.release_high_ug_ml
    assert held >= 5 and narrowed >= 5  # scripts/validate_release.py measures both over 200 patients


def test_before_the_isolation_ends_the_release_is_a_projection_and_its_curve_is_published_on_a_fixed_grid() -> None:
    s = session(1)
    cfg = s.config
    pk = PkSession(meta=s.meta)
    for e in s.events:
        if e.type in ("session_start", "calibration_dose", "isolation_start", "perfusion_dose", "drug_start"):
            pk.add_event(e)
    t = cfg.start_t + cfg.drug_start_at_s + 600
    est = pk.estimate(t)
    assert est is not None and est.release_projected is True
    # the procedure's usual 25 minutes, 1 L at 200 mL/min, clamps off a minute later
    assert est.release_min == pytest.approx(25.0 + 5.0 + 1.0)
    assert est.release_ug_ml is None, "nothing yet at the time of the estimate"
    curve = pk.release_message(t)
    assert curve is not None and curve.projected and curve.release_t == pytest.approx(t + 21 * 60)
    times = [p[0] for p in curve.points]
    assert times[0] == cfg.start_t + cfg.drug_start_at_s and times[1] - times[0] == 30.0
    assert all(lo <= c <= hi for _, c, lo, hi in curve.points)
    assert max(c for _, c, _, _ in curve.points) > 1.0
    key = pk.release_key()
    pk.add_event(next(e for e in s.events if e.type == "drug_stop"))
    assert pk.release_key() != key, "a new event, a new prediction to publish"
    lines = pk_release_lines("theatre-1", "s-1", curve)
    assert len(lines) == len(curve.points) and lines[0].startswith("pk_release,session=s-1,theatre=theatre-1 ")


def test_a_late_systemic_sample_refits_the_release() -> None:
    s = session(2)
    pk = fed(s, 3)
    est = pk.estimate(s.config.start_t + s.config.duration_s)
    assert est is not None and est.n_release == 3 and est.release_v1_ml is not None
    typical: Release = typical_release("IHHP", s.config.weight_kg)
    assert est.release_v1_ml != pytest.approx(typical.v1_ml)
    # a correction of the first post-release sample (same id) gives another fit
    end = s.config.start_t + s.config.isolation_end_at_s
    first = min((x for _, x in s.samples if x.site == "systemic" and x.t >= end), key=lambda x: x.t)
    pk.add_sample(
        LabSample(t=first.t, site="systemic", melphalan_ug_ml=first.melphalan_ug_ml * 2, sample_id=first.sample_id)
    )
    again = pk.estimate(s.config.start_t + s.config.duration_s)
    assert again is not None and again.release_peak_ug_ml is not None and est.release_peak_ug_ml is not None
    assert again.release_peak_ug_ml > est.release_peak_ug_ml
    assert math.isfinite(again.release_auc_inf or math.nan)
