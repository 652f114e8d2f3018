"""The circuit model refitted to each patient's circuit samples (the model itself is in
``isoperf.domain.melphalan``).

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
from scipy.optimize import least_squares

from isoperf.domain.melphalan import Constants, Schedule, concentration

PRIOR_SD_LOG_V = 0.3
PRIOR_SD_LOG_K = 0.5
SIGMA_PRIOR = 0.15  # proportional error of assay and model, log scale
SIGMA_PRIOR_DF = 3.0
Z95 = 1.959963984540054


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
