"""Melphalan kinetics shared by the simulator and the pk service: the circuit model, the
systemic exposure carried by leaked perfusate, and the release of the organ's drug into the
body after the clamps come off. Pure, no I/O. Every constant's source: docs/melphalan.md.

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
* ``V``: circuit volume + 11 mL/kg, and ``k_uptake`` 0.01 /min: chosen so that
  1 mg/kg infused over 10 minutes gives the IHHP series' median regional peak
  (68 ug/mL; this model: about 64 ug/mL for 75 kg and a 220 mL circuit) and a
  regional AUC of its order (2382 ug*min/mL). They are starting points for the
  refit, not facts about a patient.
* ``k_return``: 0 (uptake taken as irreversible over a perfusion).

Systemic exposure from the leak: the leakage ``L(t)`` (% of the circuit's tracer
now in the body) rises by ``dL`` while the circuit carries ``C(t)``; that moves
``C * V * dL / 100`` of drug into the body, which eliminates it with melphalan's
terminal half-life (46 to 108 min published; 75 min here) and spreads it over the
systemic volume (about 40 L). Increments are signed, so the noise of the leakage
estimate cancels instead of piling up.

The release model (``Release``, from the isolation's end): the drug the circuit model leaves
in the circuit's distribution volume and in the organ's tissue comes back into the body, mixes
into a small volume, distributes into the rest of the body's 40 L and is eliminated with the
terminal half-life; typical constants per procedure (``PROCEDURES``), the between-patient
spread (``RELEASE_SD``), the curve, its peak and its AUC to infinity, all solved exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

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
    return amounts(times_min, c, schedule)[:, 0] / c.v_ml


def amounts(times_min: Sequence[float] | np.ndarray, c: Constants, schedule: Schedule) -> np.ndarray:
    """Drug (ug) in the circuit and in the organ's tissue at each time (any order): shape (n, 2)."""
    times = np.asarray(times_min, dtype=float)
    out = np.zeros((times.size, 2))
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
        # Step from time to time within the piece: a regular grid costs one matrix exponential.
        x, t_x = np.append(state, 1.0), t_now
        steps: dict[float, np.ndarray] = {}
        while j < times.size and times[order[j]] < piece_end:
            dt = round(float(times[order[j]] - t_x), 9)
            if dt > 0:
                e = steps.get(dt)
                if e is None:
                    e = steps[dt] = expm(a_aug * dt)
                x, t_x = e @ x, float(times[order[j]])
            out[order[j]] = x[:2]
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
    times_min: Sequence[float], leak_pct: Sequence[float], grid: np.ndarray, curve: np.ndarray, v_ml: float
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


@dataclass
class LeakExposure:
    """``systemic_from_leak`` over a session's leakage series as it grows at its end, carried on
    from where the last call stopped: the same arithmetic in the same order, so the same numbers,
    but each estimate costs its new points, not the whole series again (a 4-hour session has
    14,400 points and an estimate every 15 s). Times are seconds, from ``t0`` (the drug start)."""

    grid: np.ndarray
    curve: np.ndarray
    v_ml: float
    t0: float
    n: int = 0
    amount: float = 0.0
    auc: float = 0.0
    c_sys: float = 0.0
    _t_prev: float = 0.0
    _pct_prev: float = 0.0

    def upto(self, leak_t: Sequence[float], leak_pct: Sequence[float], n: int) -> tuple[float, float, float]:
        """Over the first ``n`` points (``n`` at least as many as before): the systemic concentration
        at the last (ug/mL), the drug in the body (ug) and the systemic AUC (ug*min/mL)."""
        if n < self.n:
            raise ValueError(f"the exposure is carried on, not back: {n} points after {self.n}")
        for i in range(self.n, n):
            t = (leak_t[i] - self.t0) / 60.0
            if i > 0:
                c_circ = np.interp(t, self.grid, self.curve) if t >= 0 else 0.0
                dt = t - self._t_prev
                self.amount = (
                    self.amount * math.exp(-K_SYSTEMIC_MIN * dt)
                    + c_circ * self.v_ml * (leak_pct[i] - self._pct_prev) / 100.0
                )
                c_sys = max(self.amount, 0.0) / SYSTEMIC_VOLUME_ML
                self.auc += (self.c_sys + c_sys) * dt / 2.0
                self.c_sys = c_sys
            self._t_prev, self._pct_prev = t, leak_pct[i]
        self.n = n
        return self.c_sys, max(self.amount, 0.0), self.auc


# -- After the clamps come off: the release model ----------------------------------------------

K_INFLOW_MIN = 1.5  # the organ's residual perfusate reaches the body within about a minute of the release
RELEASE_GRID_STEP_MIN = 0.05  # the peak is looked for on this grid ...
RELEASE_PEAK_WINDOW_MIN = 30.0  # ... over this long after the release
EIG_COND_MAX = 1e6  # above: near-equal rates, solved by matrix exponentials instead


@dataclass(frozen=True)
class Release:
    """One patient's release of the organ's drug into the body, and the body's kinetics of it.

    At the release (the isolation's end, when the clamps come off) the circuit model holds
    ``A_c`` in the circuit's distribution volume (perfusate and the organ's vascular space,
    after the washout) and ``A_t`` in the organ's tissue. ``residual_fraction`` of ``A_c``
    enters the body at ``k_inflow_min``; ``tissue_fraction`` of ``A_t`` comes back at
    ``k_back_min`` (the rest stays bound); both keep degrading at ``k_deg`` on the way. In the
    body the drug first mixes into ``v1_ml`` and distributes from it at ``k12_min`` into the
    rest of its steady-state volume ``vss_ml``; it is eliminated with the terminal half-life
    ``t_half_min`` (the elimination rate of the mixing volume follows from these).
    Sources and fitted choices: ``docs/melphalan.md``.
    """

    v1_ml: float
    k12_min: float
    tissue_fraction: float
    k_back_min: float
    t_half_min: float
    vss_ml: float = SYSTEMIC_VOLUME_ML
    k_inflow_min: float = K_INFLOW_MIN
    residual_fraction: float = 1.0
    k_deg_min: float = K_DEG_DEFAULT

    def rates(self) -> tuple[float, float, float]:
        """``(k10, k12, k21)`` of the body's two compartments."""
        k12 = self.k12_min
        k21 = k12 * self.v1_ml / (self.vss_ml - self.v1_ml)
        beta = math.log(2) / self.t_half_min
        if not beta < k21:
            raise ValueError(f"terminal half-life {self.t_half_min:g} min too short for the distribution")
        return beta * (k12 + k21 - beta) / (k21 - beta), k12, k21

    def matrix(self) -> np.ndarray:
        """d/dt of (residual in transit, tissue drug returning, mixing volume, rest of the body), ug."""
        k10, k12, k21 = self.rates()
        ki, kb, kd = self.k_inflow_min, self.k_back_min, self.k_deg_min
        return np.array(
            [
                [-(ki + kd), 0.0, 0.0, 0.0],
                [0.0, -(kb + kd), 0.0, 0.0],
                [ki, kb, -(k10 + k12), k21],
                [0.0, 0.0, k12, -k21],
            ]
        )

    def start(self, organ_ug: tuple[float, float], body_ug: float = 0.0) -> np.ndarray:
        """The state at the release: the organ's drug on its way, and drug already in the body
        (leaked during the isolation, taken as distributed)."""
        a_c, a_t = organ_ug
        share = self.v1_ml / self.vss_ml
        return np.array(
            [self.residual_fraction * a_c, self.tissue_fraction * a_t, body_ug * share, body_ug * (1.0 - share)]
        )


@dataclass(frozen=True)
class ProcedureDefaults:
    """What a procedure's projection of the release assumes until the events say otherwise,
    and its patients' typical release (docs/melphalan.md)."""

    perfusion_min: float  # drug start to washout start
    washout_ml: float
    washout_flow_ml_min: float
    release_after_washout_min: float  # washout end to clamps off
    v1_ml_per_kg: float
    k12_min: float
    tissue_fraction: float
    k_back_min: float
    t_half_min: float


_LIVER = ProcedureDefaults(
    perfusion_min=25.0,
    washout_ml=1000.0,
    washout_flow_ml_min=200.0,
    release_after_washout_min=1.0,
    v1_ml_per_kg=48.0,
    k12_min=0.4,
    tissue_fraction=0.8,
    k_back_min=1.0,
    t_half_min=75.0,
)
PROCEDURES: dict[str, ProcedureDefaults] = {
    "IHHP": _LIVER,
    "IHP": _LIVER,
    "ILP": ProcedureDefaults(**{**_LIVER.__dict__, "perfusion_min": 60.0}),
}

# Between-patient variability of the release (SD on the log scale; the tissue fraction on the
# logit scale): what the simulator draws its patients from, and the prior of the pk refit.
RELEASE_FREE = ("v1_ml", "tissue_fraction", "k_back_min", "t_half_min")
RELEASE_SD = {"v1_ml": 0.14, "tissue_fraction": 0.35, "k_back_min": 0.3, "t_half_min": 0.22}


def typical_release(procedure: str, weight_kg: float) -> Release:
    p = PROCEDURES[procedure]
    return Release(
        v1_ml=p.v1_ml_per_kg * weight_kg,
        k12_min=p.k12_min,
        tissue_fraction=p.tissue_fraction,
        k_back_min=p.k_back_min,
        t_half_min=p.t_half_min,
    )


def _to(name: str, x: float) -> float:
    return math.log(x / (1.0 - x)) if name == "tissue_fraction" else math.log(x)


def _from(name: str, y: float) -> float:
    return 1.0 / (1.0 + math.exp(-y)) if name == "tissue_fraction" else math.exp(y)


def release_theta(r: Release) -> np.ndarray:
    """The free parameters on their transformed scale (log; logit for the fraction)."""
    return np.array([_to(n, getattr(r, n)) for n in RELEASE_FREE])


def with_theta(r: Release, theta: Sequence[float] | np.ndarray) -> Release:
    return replace(r, **{n: _from(n, float(y)) for n, y in zip(RELEASE_FREE, theta, strict=True)})


def draw_release(typical: Release, rng: np.random.Generator) -> Release:
    """A patient drawn from the population around ``typical``."""
    sd = np.array([RELEASE_SD[n] for n in RELEASE_FREE])
    return with_theta(typical, release_theta(typical) + sd * rng.standard_normal(sd.size))


def _propagate(m: np.ndarray, x0: np.ndarray, dts: np.ndarray) -> np.ndarray:
    """States after each of the (non-negative, sorted) times ``dts`` from ``x0``. By the matrix's
    eigenvectors when they are well conditioned (distinct rates, the usual case); otherwise one
    matrix exponential per distinct step (a regular grid costs one)."""
    w, v = np.linalg.eig(m)
    if np.all(np.isreal(w)) and np.linalg.cond(v) < EIG_COND_MAX:
        w, v = w.real, v.real
        coef = np.linalg.solve(v, x0)
        states: np.ndarray = (np.exp(np.outer(dts, w)) * coef) @ v.T
        return np.asarray(np.maximum(states, 0.0))  # amounts: rounding below zero is zero
    out = np.zeros((dts.size, x0.size))
    cache: dict[float, np.ndarray] = {}
    x, t = x0, 0.0
    for i, d in enumerate(dts):
        step = round(float(d) - t, 9)
        if step > 0:
            e = cache.get(step)
            if e is None:
                e = cache[step] = expm(m * step)
            x = e @ x
            t = float(d)
        out[i] = x
    return out


def release_curve(
    times_min: Sequence[float] | np.ndarray,
    release_min: float,
    organ_ug: tuple[float, float],
    r: Release,
    body_ug: float = 0.0,
) -> np.ndarray:
    """Systemic concentration (ug/mL, the mixing volume) at each time (any order): 0 before the
    release; ``organ_ug`` is the circuit model's ``(A_c, A_t)`` at the release."""
    times = np.asarray(times_min, dtype=float)
    out = np.zeros(times.size)
    after = np.flatnonzero(times >= release_min)
    if after.size == 0:
        return out
    order = after[np.argsort(times[after])]
    states = _propagate(r.matrix(), r.start(organ_ug, body_ug), times[order] - release_min)
    out[order] = states[:, 2] / r.v1_ml
    return out


def release_peak(
    release_min: float, organ_ug: tuple[float, float], r: Release, body_ug: float = 0.0
) -> tuple[float, float]:
    """``(peak, time of the peak)`` of the systemic concentration after the release (ug/mL, min)."""
    grid = release_min + np.arange(0.0, RELEASE_PEAK_WINDOW_MIN + 1e-9, RELEASE_GRID_STEP_MIN)
    c = release_curve(grid, release_min, organ_ug, r, body_ug)
    i = int(np.argmax(c))
    return float(c[i]), float(grid[i])


def release_auc(organ_ug: tuple[float, float], r: Release, body_ug: float = 0.0) -> float:
    """Systemic AUC (ug*min/mL) from the release to infinity: exact, ``-M^-1 x0``."""
    return float(-np.linalg.solve(r.matrix(), r.start(organ_ug, body_ug))[2] / r.v1_ml)
