"""The release model (``isoperf.domain.melphalan``) refitted to each patient's systemic samples
after the release, and its prediction with a 95 % prediction interval. Pure, no I/O.

Before any systemic sample after the release, the release constants are the procedure's
typical ones with the population's between-patient spread (``RELEASE_SD``) as their prior
uncertainty: the same spread the simulator draws its patients from. Each systemic sample drawn
after the release refits the free constants (``v1_ml``, ``tissue_fraction``, ``k_back_min``,
``t_half_min``) by maximum a posteriori, as the circuit model is refitted: those priors, a
proportional error on the samples (log scale, SD pooled from 0.15 with the residuals), the
covariance from the Jacobian.

The prediction carries both fits' uncertainty: the circuit model's constants (``log V``,
``log k_uptake``, from ``services.pk.model``) set how much drug the organ holds at the release;
the release constants how it comes back. The interval of a concentration (and of the peak, a
concentration) combines them by the delta method with the residual SD, as a prediction of what
the lab will measure; the AUC's interval carries the constants' uncertainty only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from isoperf.domain.melphalan import (
    RELEASE_FREE,
    RELEASE_SD,
    Constants,
    Release,
    Schedule,
    amounts,
    release_auc,
    release_curve,
    release_peak,
    release_theta,
    with_theta,
)
from services.pk.model import SIGMA_PRIOR, SIGMA_PRIOR_DF, Z95, Fit, _with_log

STEP = 1e-4  # finite-difference step on the transformed scale


@dataclass(frozen=True)
class ReleaseFit:
    """This patient's release constants, with their uncertainty (on ``release_theta``'s scale)."""

    release: Release
    cov: np.ndarray = field(repr=False)
    sigma: float
    n: int

    @property
    def v1_se_ml(self) -> float:
        return self.release.v1_ml * math.sqrt(self.cov[0, 0])


def prior_release_fit(typical: Release) -> ReleaseFit:
    return ReleaseFit(typical, np.diag([RELEASE_SD[n] ** 2 for n in RELEASE_FREE]), SIGMA_PRIOR, 0)


def refit_release(
    typical: Release,
    release_min: float,
    organ_ug: tuple[float, float],
    body_ug: float,
    times_min: Sequence[float],
    conc: Sequence[float],
) -> ReleaseFit:
    """Refit the free release constants to systemic samples drawn after the release (times in
    minutes from the drug start; zero concentrations and samples at the release are left out)."""
    pts = [(t, y) for t, y in zip(times_min, conc, strict=True) if y > 0 and t > release_min]
    if not pts:
        return prior_release_fit(typical)
    ts = np.array([t for t, _ in pts])
    log_y = np.log([y for _, y in pts])
    theta0 = release_theta(typical)
    prior_sd = np.array([RELEASE_SD[n] for n in RELEASE_FREE])

    def residuals(theta: np.ndarray, sigma: float) -> np.ndarray:
        try:
            c = release_curve(ts, release_min, organ_ug, with_theta(typical, theta), body_ug)
        except ValueError:  # a terminal half-life the distribution cannot have: far off
            c = np.full(ts.size, 1e-300)
        pred = np.log(np.maximum(c, 1e-300))
        return np.concatenate([(log_y - pred) / sigma, (theta - theta0) / prior_sd])

    sigma, theta = SIGMA_PRIOR, theta0
    for _ in range(2):  # fit, pool the residual SD with its prior, fit again
        result = least_squares(residuals, theta, args=(sigma,), method="lm")
        theta = result.x
        rss = float(np.sum((result.fun[: len(ts)] * sigma) ** 2))
        sigma = math.sqrt((SIGMA_PRIOR_DF * SIGMA_PRIOR**2 + rss) / (SIGMA_PRIOR_DF + len(ts)))
    result = least_squares(residuals, theta, args=(sigma,), method="lm")
    j = result.jac
    return ReleaseFit(with_theta(typical, result.x), np.linalg.inv(j.T @ j), sigma, len(ts))


@dataclass(frozen=True)
class ReleasePrediction:
    """The systemic concentration after the release, predicted (times in minutes from the drug
    start; ``low``/``high`` the 95 % prediction interval; zeros before the release)."""

    release_min: float
    projected: bool
    times_min: np.ndarray = field(repr=False)
    c: np.ndarray = field(repr=False)
    low: np.ndarray = field(repr=False)
    high: np.ndarray = field(repr=False)
    peak: float
    peak_low: float
    peak_high: float
    tmax_min: float
    auc: float  # release to infinity, ug*min/mL
    auc_low: float
    auc_high: float
    n: int


def predict_release(
    circuit: Fit,
    schedule: Schedule,
    rfit: ReleaseFit,
    release_min: float,
    body_ug: float,
    times_min: Sequence[float] | np.ndarray,
    projected: bool = False,
    summary: bool = True,
) -> ReleasePrediction:
    """The prediction at ``times_min`` and (``summary``) the peak, its time and the AUC, with 95 %
    intervals from both fits' uncertainty (delta method on the log scale); without ``summary``
    those are NaN."""
    times = np.asarray(times_min, dtype=float)
    after = times > release_min

    def organ(c: Constants) -> tuple[float, float]:
        a_c, a_t = amounts([release_min], c, schedule)[0]
        return float(a_c), float(a_t)

    def logs(organ_ug: tuple[float, float], theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """log of (the curve after the release, [peak], [AUC]) and the time of the peak."""
        r = with_theta(rfit.release, theta)
        curve = release_curve(times[after], release_min, organ_ug, r, body_ug)
        if not summary:
            return np.log(np.maximum(curve, 1e-300)), curve, math.nan
        peak, tmax = release_peak(release_min, organ_ug, r, body_ug)
        figures = np.concatenate([curve, [peak, release_auc(organ_ug, r, body_ug)]])
        return np.log(np.maximum(figures, 1e-300)), figures, tmax

    theta = release_theta(rfit.release)
    organ0 = organ(circuit.constants)
    base, values, tmax = logs(organ0, theta)
    # the circuit constants (log V, log k_uptake): the drug the organ holds
    grads = [(logs(organ(_with_log(circuit.constants, i, STEP)), theta)[0] - base) / STEP for i in range(2)]
    for i in range(theta.size):  # the release constants
        shifted = theta.copy()
        shifted[i] += STEP
        grads.append((logs(organ0, shifted)[0] - base) / STEP)
    g = np.vstack(grads).T  # d log figure / d (log V, log k_uptake, release theta)
    cov = np.zeros((2 + theta.size, 2 + theta.size))
    cov[:2, :2] = circuit.cov_log
    cov[2:, 2:] = rfit.cov
    var = np.einsum("ij,jk,ik->i", g, cov, g)
    n = int(after.sum())
    var[: n + 1 if summary else n] += rfit.sigma**2  # concentrations and the peak: as the lab would measure them
    half = Z95 * np.sqrt(var)
    curve, low, high = np.zeros(times.size), np.zeros(times.size), np.zeros(times.size)
    curve[after] = values[:n]
    low[after] = values[:n] * np.exp(-half[:n])
    high[after] = values[:n] * np.exp(half[:n])
    peak, auc = (float(values[n]), float(values[n + 1])) if summary else (math.nan, math.nan)
    return ReleasePrediction(
        release_min=release_min,
        projected=projected,
        times_min=times,
        c=curve,
        low=low,
        high=high,
        peak=peak,
        peak_low=peak * math.exp(-half[n]) if summary else math.nan,
        peak_high=peak * math.exp(half[n]) if summary else math.nan,
        tmax_min=tmax,
        auc=auc,
        auc_low=auc * math.exp(-half[n + 1]) if summary else math.nan,
        auc_high=auc * math.exp(half[n + 1]) if summary else math.nan,
        n=rfit.n,
    )
