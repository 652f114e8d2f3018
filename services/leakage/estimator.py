"""Systemic leakage from precordial probe counts: pure, deterministic, no I/O.

Method (docs/clinical-background.md, after the IHHP and Lausanne series)::

    L(t) = 100 * (C*(t) - C_0) / (k * (C_cal - B))
    C*(t) = B + (C(t) - B) * exp(lambda * (t - t_cal))

* ``B``: background count rate (cps), all counts before the calibration dose.
* ``C_cal``: the calibration plateau, found automatically once the
  decay-corrected rate is stable: a weighted linear fit over the last
  ``plateau_window_s`` must have a slope that is neither statistically
  significant nor larger than ``plateau_max_change`` of the rise over the
  window. It then averages everything from the start of that window up to the
  circuit dose.
* ``C_0``: the mean corrected rate ``zero_start_s`` to ``zero_end_s`` after the
  circuit dose, once the circuit has mixed, so a shine-through step from a
  circuit near the probe is not read as leakage.
* ``k = A_perf / A_cal`` from the two events. Each activity is taken as
  measured at its own injection; the circuit dose is decay-corrected to the
  calibration time, the reference of ``C*``: ``k = A_perf/A_cal * exp(lambda *
  (t_perf - t_cal))``.

* Shine-through: as tracer leaks, it leaves the circuit, whose shine-through
  ``S = C_0 - C_cal`` shrinks with it; ``L`` is corrected for that.
* Optionally, the slow drift of the calibration plateau is fitted and
  extrapolated.

Counts are Poisson. Each count interval gives a reading ``y`` of leakage with
variance from the expected counts; a local-linear-trend Kalman filter (level in
%, rate in %/s) smooths them. A fast local-level filter runs alongside; when
the two disagree by more than ``switch_z`` standard errors the level has
stepped: the slow filter takes the fast one's level (not a rate) and the point
is flagged, so the estimate follows a step at once instead of creeping after
it. The 95 % interval adds, in quadrature, the filter's variance, the
uncertainty of ``C_0`` and the relative uncertainty of the calibration rise.

A disconnected probe (zeros) or a saturated or stuck one (one value repeated)
is flagged and kept out of every estimate. Samples are ordered by their own
time; a late sample or event recomputes the session and emits again the points
it changed.

Everything runs on event time, so the same samples and events give the same
series, live, replayed, or after a restart.
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass

import numpy as np

from isoperf.domain.isotopes import decay_constant_per_s
from isoperf.schemas import Leakage, LeakageState, ProbeFault
from services.leakage.filters import TrendFilter, kalman_step, line_fit
from services.leakage.formula import (
    activity_ratio,
    decay_corrected_rate,
    leakage_percent,
    shine_through_corrected_percent,
)

Z95 = 1.959963984540054
MIN_COUNTS_FOR_FAULT = 20.0  # zero counts where at least this many were expected: no counts
STUCK_RUN = 5  # this many identical counts of 50 or more in a row: constant counts
DUPLICATE_S = 0.0005  # samples closer than this are the same sample (storage keeps ms)


@dataclass(frozen=True)
class EstimatorParams:
    plateau_min_wait_s: float = 120.0
    plateau_window_s: float = 180.0
    plateau_max_change: float = 0.02
    zero_start_s: float = 60.0
    zero_end_s: float = 120.0
    output_interval_s: float = 1.0
    shine_through_correction: bool = True
    # Fit and extrapolate the slow drift of the calibration plateau (albumin leaving the
    # circulation). Off by default: over a plateau of a few minutes the slope is noisy.
    calibration_drift_correction: bool = False
    # Local linear trend: random walk of the rate (%/s)^2 per s, of the level %^2 per s.
    q_rate: float = 1e-7
    q_level: float = 1e-5
    # The fast filter, and the disagreement (in standard errors) at which the slow one follows it.
    fast_q_level: float = 0.01
    switch_z: float = 3.0
    step_rate_var: float = (0.1 / 60) ** 2  # (%/s)^2 added to the rate variance at a step


@dataclass
class _Reference:
    """What the formula needs once the zero point is set (all rates in cps)."""

    background: float
    background_var: float
    rise: float  # C_cal - B, decay-corrected
    rise_var: float
    zero: float  # C_0 - B, decay-corrected
    zero_var: float
    k: float
    shine: float  # S = C_0 - C_cal, the circuit's shine-through (0 when not corrected)
    drift: float  # slope of the calibration plateau, cps/s (0 when not corrected)
    drift_var: float
    t_zero: float  # middle of the zero window: where the drift is extrapolated from

    def zero_at(self, t: float) -> float:
        """The no-leak level at ``t``: ``C_0`` plus the plateau's drift since the zero window."""
        return self.zero + self.drift * (t - self.t_zero)


_EVENT_KINDS = ("calibration_dose", "perfusion_dose", "washout_start", "washout_end", "isolation_end", "session_end")


class LeakageEstimator:
    """The leakage of one session. Feed counts and events in any order; ``update`` returns new points."""

    def __init__(self, params: EstimatorParams | None = None) -> None:
        self.params = params or EstimatorParams()
        self._lam: float | None = None
        self.events: dict[str, tuple[float, float | None]] = {}  # type -> (t, activity)
        # The samples in time order, as C doubles (8 bytes each, not a float object of 32: a
        # 4-hour session's counts take 0.4 MB, not 1.5).
        self._t = array("d")
        self._n = array("d")
        self._dt = array("d")
        self._ok = array("b")  # 0: a probe fault, kept out of every estimate
        self._stuck_times: set[float] = set()
        self.duplicates = 0
        self._emitted_until = -math.inf
        self._reset()

    # -- input ----------------------------------------------------------------------

    def set_isotope(self, isotope: str) -> None:
        lam = decay_constant_per_s(isotope)
        if lam != self._lam:
            self._lam = lam
            self._reset()

    def add_event(self, kind: str, t: float, activity_mbq: float | None = None) -> bool:
        """Record an event; a repeated one of the same kind is ignored. Returns whether it was new."""
        if kind not in _EVENT_KINDS or kind in self.events:
            return False
        self.events[kind] = (t, activity_mbq)
        if self._done and t <= self._t[self._done - 1]:
            self._recompute_from(t)  # a late event changes phases already processed
        return True

    def add_counts(self, t: float, counts: float, dt: float) -> bool:
        """Add one count interval ending at ``t``; a repeated ``t`` (to the stored ms) is ignored."""
        i = bisect.bisect_left(self._t, t - DUPLICATE_S)
        if i < len(self._t) and self._t[i] <= t + DUPLICATE_S:
            self.duplicates += 1
            return False
        self._t.insert(i, t)
        self._n.insert(i, counts)
        self._dt.insert(i, dt)
        self._ok.insert(i, True)
        if i < self._done:
            self._recompute_from(t)  # a late sample
        return True

    def reference(self) -> dict[str, float] | None:
        """What the formula used, once the zero point is set, for a record that can be audited:
        ``background_cps`` (B), ``calibration_cps`` (C_cal) and ``zero_cps`` (C_0), decay-corrected
        to the calibration time; ``k``; the plateau (``plateau_start_t`` to ``plateau_end_t``, the
        circuit dose) and the zero window (``zero_start_t``, ``zero_end_t``); ``shine_cps``."""
        ref, start, t_perf = self._ref, self._plateau_start, self._event_t("perfusion_dose")
        if ref is None or start is None or t_perf is None:
            return None
        return {
            "background_cps": ref.background,
            "calibration_cps": ref.background + ref.rise,
            "zero_cps": ref.background + ref.zero,
            "k": ref.k,
            "shine_cps": ref.shine,
            "plateau_start_t": start,
            "plateau_end_t": t_perf,
            "zero_start_t": t_perf + self.params.zero_start_s,
            "zero_end_t": t_perf + self.params.zero_end_s,
        }

    # -- processing --------------------------------------------------------------------

    def _reset(self) -> None:
        self._done = 0
        self._plateau_start: float | None = None
        self._ref: _Reference | None = None
        self._filter: TrendFilter | None = None
        self._fast: TrendFilter | None = None

    def _recompute_from(self, t: float) -> None:
        """Recompute everything, and emit again the points from ``t`` on: they were wrong.

        (Storage overwrites a point with the same time, so the record ends up right.)
        """
        self._reset()
        self._emitted_until = min(self._emitted_until, t - self.params.output_interval_s)

    def update(self) -> list[Leakage]:
        """Process every sample not processed yet; return the points at times not emitted before."""
        out: list[Leakage] = []
        while self._done < len(self._t):
            i = self._done
            fault = self._probe_fault(i)
            if fault == "constant counts" and self._t[i] not in self._stuck_times:
                self._stuck_times.add(self._t[i])
                if self._t[i - 1] not in self._stuck_times:
                    # The run that proved the probe stuck was used before it was known:
                    # take it back out and recompute (once per fault; points stay as emitted).
                    self._stuck_times.update(self._t[i - STUCK_RUN + 1 : i])
                    self._reset()
                    continue
            self._ok[i] = fault is None
            point = self._step(i)
            if fault is not None:
                point = Leakage(t=point.t, state=point.state, probe_fault=fault)
            self._done += 1
            t = self._t[i]
            if t >= self._emitted_until + self.params.output_interval_s - 1e-9:
                out.append(point)
                self._emitted_until = t
        return out

    def _probe_fault(self, i: int) -> ProbeFault | None:
        """A disconnected probe reads zero where tens of counts are expected; a saturated or
        stuck one repeats one value, which Poisson counts of 50 or more practically never do
        five times running (probability below 1e-6)."""
        n = self._n[i]
        if self._t[i] in self._stuck_times:
            return "constant counts"
        last_ok = next((j for j in range(i - 1, max(i - 3600, 0) - 1, -1) if self._ok[j]), None)
        if n == 0 and last_ok is not None:
            expected = self._n[last_ok] / self._dt[last_ok] * self._dt[i]
            if expected >= MIN_COUNTS_FOR_FAULT:
                return "no counts"
        if n >= 50 and i >= STUCK_RUN - 1 and all(self._n[j] == n for j in range(i - STUCK_RUN + 1, i)):
            return "constant counts"
        return None

    def _event_t(self, kind: str) -> float | None:
        e = self.events.get(kind)
        return e[0] if e else None

    def _phase_state(self, t: float) -> LeakageState:
        # After the clamps come off the reading is the tracer released from the organ, not a
        # leak: ``released`` from ``isolation_end`` on, also after ``session_end``.
        phases: tuple[tuple[str, LeakageState], ...] = (
            ("isolation_end", "released"),
            ("session_end", "ended"),
            ("washout_end", "monitoring"),
            ("washout_start", "washout"),
        )
        for kind, state in phases:
            te = self._event_t(kind)
            if te is not None and t >= te:
                return state
        return "monitoring"

    def _step(self, i: int) -> Leakage:
        t = self._t[i]
        t_cal = self._event_t("calibration_dose")
        if t_cal is None or t <= t_cal or self._lam is None:
            return Leakage(t=t, state="background" if t_cal is None or t <= t_cal else "calibrating")
        if self._plateau_start is None:
            self._plateau_start = self._find_plateau(i, t_cal)
            if self._plateau_start is None:
                return Leakage(t=t, state="calibrating")
        t_perf = self._event_t("perfusion_dose")
        if t_perf is None or t < t_perf + self.params.zero_end_s:
            return Leakage(t=t, state="calibrated")
        if self._ref is None:
            self._ref = self._reference(t_cal, t_perf)
            if self._ref is None:
                return Leakage(t=t, state="calibrated")
            self._filter = TrendFilter(t=t_perf + self.params.zero_end_s)
            self._fast = TrendFilter(t=t_perf + self.params.zero_end_s, p11=0.0)
        assert self._filter is not None
        if not self._ok[i]:
            return Leakage(t=t, state=self._phase_state(t))  # no reading: nothing to update
        return self._filter_step(i, t_cal, self._ref, self._filter)

    # -- calibration ---------------------------------------------------------------------

    def _corrected_rise(self, lo: int, hi: int, t_cal: float, background: float) -> tuple[np.ndarray, ...]:
        """Times, decay-corrected rise above background (cps), its Poisson variance and weights for samples lo:hi."""
        assert self._lam is not None
        ok = np.asarray(self._ok[lo:hi], dtype=bool)
        t = np.asarray(self._t[lo:hi])[ok]
        n = np.asarray(self._n[lo:hi])[ok]
        dt = np.asarray(self._dt[lo:hi])[ok]
        mid = t - dt / 2
        corr = np.exp(self._lam * (mid - t_cal))
        rise = (n / dt - background) * corr
        var = np.maximum(n, 1.0) / dt**2 * corr**2
        return mid, rise, var, dt

    def _background(self, t_cal: float) -> tuple[float, float]:
        j = bisect.bisect_right(self._t, t_cal)
        n = sum(x for x, ok in zip(self._n[:j], self._ok[:j], strict=True) if ok)
        dt = sum(x for x, ok in zip(self._dt[:j], self._ok[:j], strict=True) if ok)
        if dt <= 0:
            return 0.0, math.inf
        return n / dt, max(n, 1.0) / dt**2

    def _find_plateau(self, i: int, t_cal: float) -> float | None:
        p = self.params
        t = self._t[i]
        if t - t_cal < p.plateau_min_wait_s + p.plateau_window_s:
            return None
        background, _ = self._background(t_cal)
        lo = bisect.bisect_left(self._t, t - p.plateau_window_s)
        mid, rise, var, _ = self._corrected_rise(lo, i + 1, t_cal, background)
        if mid.size < 10:
            return None
        level, slope, slope_var = line_fit(mid, rise, var)
        slope_se = math.sqrt(slope_var)
        if level <= 0:
            return None
        change = abs(slope) * p.plateau_window_s / level
        if abs(slope) <= 2.0 * slope_se and change <= p.plateau_max_change:
            return t - p.plateau_window_s
        return None

    def _mean_rise(self, t0: float, t1: float, t_cal: float, background: float) -> tuple[float, float] | None:
        lo = bisect.bisect_right(self._t, t0)
        hi = bisect.bisect_right(self._t, t1)
        _, rise, var, dt = self._corrected_rise(lo, hi, t_cal, background)
        if rise.size < 3:
            return None
        total = float(np.sum(dt))
        mean = float(np.sum(rise * dt)) / total
        return mean, float(np.sum(var * dt**2)) / total**2

    def _reference(self, t_cal: float, t_perf: float) -> _Reference | None:
        assert self._lam is not None and self._plateau_start is not None
        p = self.params
        a_cal = self.events["calibration_dose"][1]
        a_perf = self.events["perfusion_dose"][1]
        if not a_cal or not a_perf:
            return None
        background, background_var = self._background(t_cal)
        cal = self._mean_rise(self._plateau_start, t_perf, t_cal, background)
        zero = self._mean_rise(t_perf + p.zero_start_s, t_perf + p.zero_end_s, t_cal, background)
        if cal is None or zero is None or cal[0] <= 0:
            return None
        k = activity_ratio(a_perf, a_cal, self._lam, t_perf, t_cal)
        shine = zero[0] - cal[0] if p.shine_through_correction else 0.0
        drift = drift_var = 0.0
        if p.calibration_drift_correction:
            lo = bisect.bisect_right(self._t, self._plateau_start)
            hi = bisect.bisect_left(self._t, t_perf)
            mid, rise, var, _ = self._corrected_rise(lo, hi, t_cal, background)
            if mid.size >= 10:
                _, drift, drift_var = line_fit(mid, rise, var)
        return _Reference(
            background,
            background_var,
            cal[0],
            cal[1] + background_var,
            zero[0],
            zero[1],
            k,
            shine,
            drift,
            drift_var,
            t_perf + (p.zero_start_s + p.zero_end_s) / 2,
        )

    # -- monitoring ------------------------------------------------------------------------

    def _filter_step(self, i: int, t_cal: float, ref: _Reference, f: TrendFilter) -> Leakage:
        assert self._lam is not None and self._fast is not None
        p = self.params
        t, n, dt = self._t[i], self._n[i], self._dt[i]
        scale = 100.0 / (ref.k * ref.rise - ref.shine)  # % per cps of corrected rise

        # The reading from this interval, its variance from the expected counts.
        mid = t - dt / 2
        corr = math.exp(self._lam * (mid - t_cal))
        b = ref.background
        y = leakage_percent(
            decay_corrected_rate(n / dt, b, self._lam, mid, t_cal), b + ref.zero_at(mid), b + ref.rise, b, ref.k
        )
        y = shine_through_corrected_percent(y, ref.k, ref.rise, ref.shine)
        expected_rate = ref.background + (ref.zero_at(mid) + (f.level + f.rate * (t - f.t)) / scale) / corr
        r_var = max(expected_rate, 1.0 / dt) / dt * (corr * scale) ** 2

        kalman_step(f, t, y, r_var, p.q_rate, p.q_level)
        kalman_step(self._fast, t, y, r_var, 0.0, p.fast_q_level)

        # A fast local-level filter runs alongside; when the two disagree beyond
        # chance, the level has stepped: the slow filter takes the fast one's
        # level (not a rate: a step is a change of level) and lets its own rate adapt.
        step = False
        fast = self._fast
        gap = fast.level - f.level
        if abs(gap) > p.switch_z * math.sqrt(fast.p00 + f.p00):
            step = gap > 0
            f.level = fast.level
            f.p00, f.p01, f.p11 = fast.p00, 0.0, f.p11 + p.step_rate_var

        zero_var = ref.zero_var + ref.drift_var * (t - ref.t_zero) ** 2
        var = f.p00 + zero_var * scale**2 + (f.level**2) * ref.rise_var / ref.rise**2
        half = Z95 * math.sqrt(var)
        return Leakage(
            t=t,
            state=self._phase_state(t),
            percent=f.level,
            ci_low=f.level - half,
            ci_high=f.level + half,
            rate_pct_min=f.rate * 60.0,
            rate_se_pct_min=math.sqrt(max(f.p11, 0.0)) * 60.0,
            step=step,
        )
