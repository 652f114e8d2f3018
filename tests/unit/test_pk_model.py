"""The circuit model against closed-form solutions, and the refit against a known curve."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isoperf.domain.melphalan import Constants, Dose, Schedule, Washout, concentration
from services.pk.model import prior_fit, refit

REL = 1e-6
TIMES = np.array([0.5, 3.0, 9.99, 10.0, 10.01, 25.0, 60.0, 180.0])


@pytest.mark.parametrize("k_uptake", [0.0, 0.03])
def test_bolus_matches_the_one_compartment_closed_form(k_uptake: float) -> None:
    c = Constants(v_ml=1000.0, k_uptake_min=k_uptake)
    k = c.k_deg_min + k_uptake  # irreversible uptake is one more first-order loss
    got = concentration(TIMES, c, Schedule((Dose(0.0, 70_000.0),)))
    np.testing.assert_allclose(got, 70.0 * np.exp(-k * TIMES), rtol=REL)


@pytest.mark.parametrize("k_uptake", [0.0, 0.03])
def test_constant_infusion_matches_the_closed_form(k_uptake: float) -> None:
    c = Constants(v_ml=1000.0, k_uptake_min=k_uptake)
    k, rate, dur = c.k_deg_min + k_uptake, 7_000.0, 10.0
    plateau = rate / (k * c.v_ml)
    during = plateau * (1 - np.exp(-k * TIMES))
    after = plateau * (1 - math.exp(-k * dur)) * np.exp(-k * (TIMES - dur))
    got = concentration(TIMES, c, Schedule((Dose(0.0, 70_000.0, dur),)))
    np.testing.assert_allclose(got, np.where(dur >= TIMES, during, after), rtol=REL)


def test_nothing_before_the_dose_and_a_washout_dilutes() -> None:
    c = Constants(v_ml=1000.0, k_uptake_min=0.0)
    s = Schedule((Dose(5.0, 70_000.0),), (Washout(30.0, 35.0, 1000.0),))
    before, start, end = concentration([1.0, 30.0, 35.0], c, s)
    assert before == 0.0
    assert end == pytest.approx(start * math.exp(-1.0 - c.k_deg_min * 5), rel=REL), "1 L through 1 L: e^-1"


def test_tissue_exchange_returns_drug_to_the_circuit() -> None:
    s = Schedule((Dose(0.0, 70_000.0),))
    one_way = concentration([120.0], Constants(1000.0, 0.03), s)[0]
    exchange = concentration([120.0], Constants(1000.0, 0.03, k_return_min=0.02), s)[0]
    assert exchange > one_way


def test_refit_recovers_known_constants_within_their_stated_uncertainty() -> None:
    truth = Constants(v_ml=1200.0, k_uptake_min=0.015)
    prior = Constants(v_ml=990.0, k_uptake_min=0.01)
    schedule = Schedule((Dose(0.0, 70_000.0, 10.0),))
    times = np.arange(5.0, 31.0, 5.0)
    z_v, z_k, covered = [], [], 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        measured = concentration(times, truth, schedule) * np.exp(rng.normal(0, 0.08, times.size))
        fit = refit(prior, schedule, list(times), list(measured))
        z_v.append(math.log(fit.constants.v_ml / truth.v_ml) / math.sqrt(fit.cov_log[0, 0]))
        z_k.append(math.log(fit.constants.k_uptake_min / truth.k_uptake_min) / math.sqrt(fit.cov_log[1, 1]))
        _, lo, hi = fit.predict(times, schedule)
        covered += int(
            np.all((lo <= concentration(times, truth, schedule)) & (concentration(times, truth, schedule) <= hi))
        )
    assert max(map(abs, z_v)) < 3.0 and max(map(abs, z_k)) < 3.0, (z_v, z_k)
    assert sum(abs(z) < 1.96 for z in z_v) >= 17 and sum(abs(z) < 1.96 for z in z_k) >= 17
    assert covered >= 18, "the 95 % prediction interval holds the true curve"


def test_before_any_sample_the_prediction_carries_the_prior_uncertainty() -> None:
    prior = Constants(v_ml=990.0, k_uptake_min=0.01)
    schedule = Schedule((Dose(0.0, 70_000.0, 10.0),))
    c, lo, hi = prior_fit(prior).predict([10.0], schedule)
    assert lo[0] < 0.8 * c[0] and hi[0] > 1.25 * c[0]
    fitted = refit(prior, schedule, [5.0, 10.0, 15.0], list(concentration([5.0, 10.0, 15.0], prior, schedule)))
    _, lo2, hi2 = fitted.predict([10.0], schedule)
    assert hi2[0] - lo2[0] < hi[0] - lo[0], "samples narrow the interval"
