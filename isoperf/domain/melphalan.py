"""Melphalan kinetics shared by the simulator and the pk service: the circuit model, and the
systemic exposure carried by leaked perfusate. Pure, no I/O.

The circuit model (refitted to each patient's circuit samples by ``services.pk.model``):

Two compartments, linear, time in minutes, amounts in ug, volumes in mL:

    circuit  dA_c/dt = input(t) - (k_uptake + k_deg + k_wash(t)) A_c + k_return A_t
    tissue   dA_t/dt = k_uptake A_c - (k_return + k_deg) A_t

with C = A_c / V. The drug enters the circuit's distribution volume ``V``
(perfusate plus the organ's accessible space) as a bolus or at a constant
infusion rate; the tissue takes it up by first-order exchange; it degrades
spontaneously (hydrolysis) everywhere; a washout of ``W`` mL over ``d`` min
adds ``k_wash = W / (V d)``. Inputs are piecewise constant, so each piece is
solved exactly with a matrix exponential (no step-size error).

Default constants and where they come from (docs/clinical-background.md):

* ``k_deg``: ln 2 / 60 min: melphalan's half-life in plasma at 37 degC is of
  the order of an hour.
* ``V``: circuit volume + 11 mL/kg, and ``k_uptake`` 0.02 /min: chosen so that
  1 mg/kg infused over 10 minutes gives the IHHP series' median regional peak
  (68 ug/mL; this model: 60 ug/mL for 70 kg and a 220 mL circuit) and a
  regional AUC of its order (2382 ug*min/mL; here 2,200 to infinity). They are
  starting points for the refit, not facts about a patient.
* ``k_return``: 0 (uptake taken as irreversible over a perfusion).

Systemic exposure from the leak: the leakage ``L(t)`` (% of the circuit's tracer
now in the body) rises by ``dL`` while the circuit carries ``C(t)``; that moves
``C * V * dL / 100`` of drug into the body, which eliminates it with melphalan's
terminal half-life (46 to 108 min published; 75 min here) and spreads it over the
systemic volume (about 40 L). Increments are signed, so the noise of the leakage
estimate cancels instead of piling up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import expm

K_DEG_DEFAULT = math.log(2) / 60.0
V_ML_PER_KG = 11.0
K_UPTAKE_DEFAULT = 0.01
SYSTEMIC_VOLUME_ML = 40_000.0
K_SYSTEMIC_MIN = math.log(2) / 75.0


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


def systemic_from_leak(
    times_min: list[float], leak_pct: list[float], grid: np.ndarray, curve: np.ndarray, v_ml: float
) -> tuple[np.ndarray, float, float]:
    """Systemic concentration (ug/mL) at each leakage time, the drug in the body now (ug) and the
    systemic AUC (ug*min/mL), from the leakage series and the circuit curve on ``grid``."""
    c_circ = np.where(np.asarray(times_min) >= 0, np.interp(times_min, grid, curve), 0.0)
    c_sys = np.zeros(len(times_min))
    amount = auc = 0.0
    for i in range(1, len(times_min)):
        dt = times_min[i] - times_min[i - 1]
        amount = amount * math.exp(-K_SYSTEMIC_MIN * dt) + c_circ[i] * v_ml * (leak_pct[i] - leak_pct[i - 1]) / 100.0
        c_sys[i] = max(amount, 0.0) / SYSTEMIC_VOLUME_ML
        auc += (c_sys[i - 1] + c_sys[i]) * dt / 2.0
    return c_sys, max(amount, 0.0), auc
