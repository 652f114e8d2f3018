"""A live model of melphalan in the perfusion circuit, refitted to each patient's circuit samples.

Two compartments, linear, time in minutes, amounts in ug, volumes in mL:

    circuit  dA_c/dt = input(t) - (k_uptake + k_deg + k_wash(t)) A_c + k_return A_t
    tissue   dA_t/dt = k_uptake A_c - (k_return + k_deg) A_t

with C = A_c / V. The drug enters the circuit's distribution volume ``V``
(perfusate plus the organ's accessible space) as a bolus or at a constant
infusion rate; the tissue takes it up by first-order exchange; it degrades
spontaneously (hydrolysis) everywhere; a washout of ``W`` mL over ``d`` min
adds ``k_wash = W / (V d)``. Inputs are piecewise constant, so each piece is
solved exactly with a matrix exponential (no step-size error).

Default constants and where they come from (shared/domain.md):

* ``k_deg``: ln 2 / 60 min: melphalan's half-life in plasma at 37 degC is of
  the order of an hour.
* ``V``: circuit volume + 11 mL/kg, and ``k_uptake`` 0.02 /min: chosen so that
  1 mg/kg infused over 10 minutes gives the IHHP series' median regional peak
  (68 ug/mL; this model: 60 ug/mL for 70 kg and a 220 mL circuit) and a
  regional AUC of its order (2382 ug*min/mL; here 2,200 to infinity). They are
  starting points for the refit, not facts about a patient.
* ``k_return``: 0 (uptake taken as irreversible over a perfusion).

The refit estimates ``log V`` and ``log k_uptake`` by maximum a posteriori:
log-normal priors around the defaults (SD 0.3 and 0.5) and a proportional
error on the samples (log scale, SD pooled from 0.15 with the residuals).
Their covariance comes from the Jacobian; a 95 % prediction interval combines
it (delta method) with the residual SD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.linalg import expm
from scipy.optimize import least_squares

K_DEG_DEFAULT = math.log(2) / 60.0
V_ML_PER_KG = 11.0
K_UPTAKE_DEFAULT = 0.01
PRIOR_SD_LOG_V = 0.3
PRIOR_SD_LOG_K = 0.5
SIGMA_PRIOR = 0.15  # proportional error of assay and model, log scale
SIGMA_PRIOR_DF = 3.0
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Constants:
    v_ml: float
    k_uptake_min: float
    k_deg_min: float = K_DEG_DEFAULT
    k_return_min: float = 0.0

    @classmethod
    def default(cls, circuit_volume_ml: float, weight_kg: float) -> Constants:
        return cls(v_ml=circuit_volume_ml + V_ML_PER_KG * weight_kg, k_uptake_min=K_UPTAKE_DEFAULT)


@dataclass(frozen=True)
class Dose:
    start_min: float
    amount_ug: float
    duration_min: float = 0.0  # 0: a bolus


@dataclass(frozen=True)
class Washout:
    start_min: float
    end_min: float
    volume_ml: float


@dataclass(frozen=True)
class Schedule:
    """What happened to the circuit, in minutes from the session's reference time."""

    doses: tuple[Dose, ...] = ()
    washouts: tuple[Washout, ...] = ()

    def breakpoints(self) -> list[float]:
        pts = {d.start_min for d in self.doses} | {d.start_min + d.duration_min for d in self.doses}
        pts |= {w.start_min for w in self.washouts} | {w.end_min for w in self.washouts}
        return sorted(pts)

    def rate_ug_min(self, t: float) -> float:
        """Infusion rate during the piece starting at ``t``."""
        return sum(
            d.amount_ug / d.duration_min
            for d in self.doses
            if d.duration_min > 0 and d.start_min <= t < d.start_min + d.duration_min
        )

    def k_wash(self, t: float, v_ml: float) -> float:
        return sum(
            w.volume_ml / (v_ml * (w.end_min - w.start_min))
            for w in self.washouts
            if w.start_min <= t < w.end_min and w.end_min > w.start_min
        )


def concentration(times_min: Sequence[float] | np.ndarray, c: Constants, schedule: Schedule) -> np.ndarray:
    """Circuit concentration (ug/mL) at each time (any order), by exact piecewise solution."""
    times = np.asarray(times_min, dtype=float)
    out = np.zeros(times.size)
    order = np.argsort(times)
    cuts = schedule.breakpoints()
    state = np.zeros(2)  # amounts in circuit and tissue
    t_now = cuts[0] if cuts else (float(times.min()) if times.size else 0.0)
    j = 0
    # Times before anything happened: zero.
    while j < times.size and times[order[j]] < t_now:
        j += 1
    for piece_end in [*cuts[1:], math.inf]:
        state = state + np.array([_bolus(schedule, t_now), 0.0])
        a_aug = _augmented(c, schedule, t_now)
        while j < times.size and times[order[j]] < piece_end:
            dt = times[order[j]] - t_now
            out[order[j]] = (expm(a_aug * dt) @ np.append(state, 1.0))[0] / c.v_ml
            j += 1
        if math.isinf(piece_end):
            break
        state = (expm(a_aug * (piece_end - t_now)) @ np.append(state, 1.0))[:2]
        t_now = piece_end
    return out


def _bolus(schedule: Schedule, t: float) -> float:
    return sum(d.amount_ug for d in schedule.doses if d.duration_min == 0 and d.start_min == t)


def _augmented(c: Constants, schedule: Schedule, t: float) -> np.ndarray:
    k_out = c.k_uptake_min + c.k_deg_min + schedule.k_wash(t, c.v_ml)
    return np.array(
        [
            [-k_out, c.k_return_min, schedule.rate_ug_min(t)],
            [c.k_uptake_min, -(c.k_return_min + c.k_deg_min), 0.0],
            [0.0, 0.0, 0.0],
        ]
    )


@dataclass(frozen=True)
class Fit:
    """The constants refitted to a patient's circuit samples, with their uncertainty."""

    constants: Constants
    cov_log: np.ndarray = field(repr=False)  # covariance of (log V, log k_uptake)
    sigma: float  # residual SD on the log scale
    n: int

    @property
    def v_se_ml(self) -> float:
        return self.constants.v_ml * math.sqrt(self.cov_log[0, 0])

    @property
    def k_uptake_se_min(self) -> float:
        return self.constants.k_uptake_min * math.sqrt(self.cov_log[1, 1])

    def predict(
        self, times_min: Sequence[float] | np.ndarray, schedule: Schedule
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prediction and its 95 % interval (low, high) at each time."""
        c0 = concentration(times_min, self.constants, schedule)
        grads = []
        for i in range(2):
            step = 1e-5
            shifted = _with_log(self.constants, i, step)
            grads.append(
                (
                    np.log(np.maximum(concentration(times_min, shifted, schedule), 1e-300))
                    - np.log(np.maximum(c0, 1e-300))
                )
                / step
            )
        g = np.vstack(grads).T  # d log C / d theta
        var = np.einsum("ij,jk,ik->i", g, self.cov_log, g) + self.sigma**2
        half = Z95 * np.sqrt(var)
        return c0, c0 * np.exp(-half), c0 * np.exp(half)


def _with_log(c: Constants, i: int, delta: float) -> Constants:
    if i == 0:
        return replace(c, v_ml=c.v_ml * math.exp(delta))
    return replace(c, k_uptake_min=c.k_uptake_min * math.exp(delta))


def prior_fit(prior: Constants) -> Fit:
    """What is known before any sample: the defaults with their prior uncertainty."""
    return Fit(prior, np.diag([PRIOR_SD_LOG_V**2, PRIOR_SD_LOG_K**2]), SIGMA_PRIOR, 0)


def refit(prior: Constants, schedule: Schedule, times_min: Sequence[float], conc: Sequence[float]) -> Fit:
    """Refit ``V`` and ``k_uptake`` to circuit samples (zero concentrations are left out of the log fit)."""
    pts = [(t, y) for t, y in zip(times_min, conc, strict=True) if y > 0]
    if not pts:
        return prior_fit(prior)
    ts = np.array([t for t, _ in pts])
    log_y = np.log([y for _, y in pts])
    theta0 = np.array([math.log(prior.v_ml), math.log(prior.k_uptake_min)])
    prior_sd = np.array([PRIOR_SD_LOG_V, PRIOR_SD_LOG_K])

    def constants(theta: np.ndarray) -> Constants:
        return replace(prior, v_ml=math.exp(theta[0]), k_uptake_min=math.exp(theta[1]))

    def residuals(theta: np.ndarray, sigma: float) -> np.ndarray:
        pred = np.log(np.maximum(concentration(ts, constants(theta), schedule), 1e-300))
        return np.concatenate([(log_y - pred) / sigma, (theta - theta0) / prior_sd])

    sigma = SIGMA_PRIOR
    theta = theta0
    for _ in range(2):  # fit, pool the residual SD with its prior, fit again
        result = least_squares(residuals, theta, args=(sigma,), method="lm", x_scale=1.0)
        theta = result.x
        rss = float(np.sum((result.fun[: len(ts)] * sigma) ** 2))
        sigma = math.sqrt((SIGMA_PRIOR_DF * SIGMA_PRIOR**2 + rss) / (SIGMA_PRIOR_DF + len(ts)))
    result = least_squares(residuals, theta, args=(sigma,), method="lm")
    j = result.jac
    cov = np.linalg.inv(j.T @ j)
    return Fit(constants(result.x), cov, sigma, len(ts))
