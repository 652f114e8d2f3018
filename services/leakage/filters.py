"""Small filter primitives of the leakage estimator: a two-state Kalman filter and a line fit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INITIAL_RATE_SD = 0.1  # %/min: prior on the leak rate when monitoring starts


@dataclass(slots=True)
class TrendFilter:
    """Level (%) and rate (%/s) with their covariance (``p00``, ``p01``, ``p11``: symmetric), as of time ``t``."""

    level: float = 0.0
    rate: float = 0.0
    p00: float = 1e-4
    p01: float = 0.0
    p11: float = (INITIAL_RATE_SD / 60) ** 2
    t: float = 0.0


def kalman_step(f: TrendFilter, t: float, y: float, r_var: float, q_rate: float, q_level: float) -> None:
    """One predict-and-update step of a local-linear-trend filter with reading ``y`` of variance ``r_var``.

    Written out in scalars: with 2 x 2 matrices numpy's per-call overhead is nearly all of the cost
    (``scripts/bench_ingest.py estimator`` measures both; :func:`kalman_step_matrix` is the same
    step in matrix form, the reference the tests hold this one to)."""
    h = max(t - f.t, 0.0)
    f.level += f.rate * h
    p00 = f.p00 + 2.0 * h * f.p01 + h * h * f.p11 + q_rate * h**3 / 3.0 + q_level * h
    p01 = f.p01 + h * f.p11 + q_rate * h * h / 2.0
    p11 = f.p11 + q_rate * h
    f.t = t
    s = p00 + r_var
    k0, k1 = p00 / s, p01 / s
    innovation = y - f.level
    f.level += k0 * innovation
    f.rate += k1 * innovation
    f.p00, f.p01, f.p11 = p00 - k0 * p00, p01 - k0 * p01, p11 - k1 * p01


def kalman_step_matrix(f: TrendFilter, t: float, y: float, r_var: float, q_rate: float, q_level: float) -> None:
    """:func:`kalman_step` in matrix form (numpy): the textbook predict-and-update."""
    h = max(t - f.t, 0.0)
    f.level += f.rate * h
    F = np.array([[1.0, h], [0.0, 1.0]])
    Q = q_rate * np.array([[h**3 / 3, h**2 / 2], [h**2 / 2, h]]) + np.diag([q_level * h, 0.0])
    P = F @ np.array([[f.p00, f.p01], [f.p01, f.p11]]) @ F.T + Q
    f.t = t
    s = float(P[0, 0]) + r_var
    innovation = y - f.level
    gain = P[:, 0] / s
    f.level += float(gain[0]) * innovation
    f.rate += float(gain[1]) * innovation
    P = P - np.outer(gain, P[0, :])
    f.p00, f.p01, f.p11 = float(P[0, 0]), float(P[0, 1]), float(P[1, 1])


def line_fit(x: np.ndarray, y: np.ndarray, var: np.ndarray) -> tuple[float, float, float]:
    """Weighted least-squares line: the mean level, the slope and the slope's variance."""
    w = 1.0 / var
    xc = x - np.average(x, weights=w)
    sxx = float(np.sum(w * xc * xc))
    return float(np.average(y, weights=w)), float(np.sum(w * xc * y)) / sxx, 1.0 / sxx
