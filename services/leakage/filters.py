"""Small filter primitives of the leakage estimator: a two-state Kalman filter and a line fit."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INITIAL_RATE_SD = 0.1  # %/min: prior on the leak rate when monitoring starts


@dataclass
class TrendFilter:
    """Level (%) and rate (%/s) with their covariance ``p``, as of time ``t``."""

    level: float = 0.0
    rate: float = 0.0
    p: np.ndarray = field(default_factory=lambda: np.diag([1e-4, (INITIAL_RATE_SD / 60) ** 2]))
    t: float = 0.0


def kalman_step(f: TrendFilter, t: float, y: float, r_var: float, q_rate: float, q_level: float) -> None:
    """One predict-and-update step of a local-linear-trend filter with reading ``y`` of variance ``r_var``."""
    h = max(t - f.t, 0.0)
    f.level += f.rate * h
    F = np.array([[1.0, h], [0.0, 1.0]])
    Q = q_rate * np.array([[h**3 / 3, h**2 / 2], [h**2 / 2, h]]) + np.diag([q_level * h, 0.0])
    f.p = F @ f.p @ F.T + Q
    f.t = t
    s = float(f.p[0, 0]) + r_var
    innovation = y - f.level
    gain = f.p[:, 0] / s
    f.level += float(gain[0]) * innovation
    f.rate += float(gain[1]) * innovation
    f.p = f.p - np.outer(gain, f.p[0, :])


def line_fit(x: np.ndarray, y: np.ndarray, var: np.ndarray) -> tuple[float, float, float]:
    """Weighted least-squares line: the mean level, the slope and the slope's variance."""
    w = 1.0 / var
    xc = x - np.average(x, weights=w)
    sxx = float(np.sum(w * xc * xc))
    return float(np.average(y, weights=w)), float(np.sum(w * xc * y)) / sxx, 1.0 / sxx
