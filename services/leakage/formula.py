"""The leakage formula of docs/clinical-background.md, as plain functions of numbers (cps, MBq, s, %)."""

from __future__ import annotations

import math


def decay_corrected_rate(rate_cps: float, background_cps: float, lam_per_s: float, t: float, t_cal: float) -> float:
    """``C* = B + (C - B) * exp(lambda * (t - t_cal))``: the count rate as if no decay since calibration."""
    return background_cps + (rate_cps - background_cps) * math.exp(lam_per_s * (t - t_cal))


def leakage_percent(
    corrected_cps: float, zero_cps: float, calibration_cps: float, background_cps: float, k: float
) -> float:
    """``L = 100 * (C* - C_0) / (k * (C_cal - B))``, in % of the circuit tracer (docs/clinical-background.md)."""
    rise = calibration_cps - background_cps
    if k <= 0 or rise <= 0:
        raise ValueError(f"need k > 0 and a calibration rise > 0, got k={k}, rise={rise}")
    return 100.0 * (corrected_cps - zero_cps) / (k * rise)


def shine_through_corrected_percent(percent: float, k: float, rise_cps: float, shine_cps: float) -> float:
    """Correct ``L`` for the circuit's shine-through ``S = C_0 - C_cal`` (cps, decay-corrected).

    Tracer that leaks leaves the circuit, whose shine-through ``S`` the probe saw
    at the zero point, and enters the body, seen at ``k * (C_cal - B)`` for all of
    it: ``C* - C_0 = L/100 * (k * (C_cal - B) - S)``. So
    ``L_corrected = L * k * (C_cal - B) / (k * (C_cal - B) - S)``.
    """
    seen = k * rise_cps - shine_cps
    if seen <= 0:
        raise ValueError(f"shine-through {shine_cps} cps is not below the circuit dose's {k * rise_cps} cps")
    return percent * k * rise_cps / seen


def activity_ratio(a_perf_mbq: float, a_cal_mbq: float, lam_per_s: float, t_perf: float, t_cal: float) -> float:
    """``k = A_perf / A_cal``, the circuit dose decay-corrected back to the calibration time.

    Each activity is as measured at its own injection; ``C*`` refers to ``t_cal``.
    """
    if a_perf_mbq <= 0 or a_cal_mbq <= 0:
        raise ValueError("activities must be positive")
    return a_perf_mbq / a_cal_mbq * math.exp(lam_per_s * (t_perf - t_cal))
