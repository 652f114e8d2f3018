"""One session's pharmacokinetics: the circuit model refitted to its circuit samples, the
systemic exposure implied by the leak, and the NCA of its lab samples. Pure, no I/O.

Times inside are minutes from the (first) ``drug_start``; messages carry Unix seconds.

Systemic exposure from the leak (docs/clinical-background.md): the leakage ``L(t)`` (% of the
circuit's tracer now in the body) rises by ``dL`` while the circuit carries ``C(t)``;
that moves ``C * V * dL / 100`` of drug into the body, which eliminates it with
melphalan's terminal half-life (46 to 108 min published; 75 min here) and spreads
it over the systemic volume (about 40 L). Increments are signed, so the noise of
the leakage estimate cancels instead of piling up. After the isolation ends the
release carries the concentration the circuit had at its end (after the washout).
This is the equilibrated concentration: right after a release the drug is still in
a smaller volume, so early measured systemic peaks run higher than this estimate.

After the release (``services.pk.release``, docs/melphalan.md): the release model predicts the
systemic concentration once the clamps come off, from the drug the refitted circuit model
leaves in the organ, with a 95 % prediction interval; refitted to the systemic samples drawn
after the release. Until ``isolation_end`` the release is projected: the perfusion taken to
last the procedure's usual time after the drug start (until ``drug_stop`` or
``washout_start``), the washout its usual volume and flow (until its events), the clamps off
a minute after the washout; the drug leaked during the isolation is added from the isolation's
end on. Lab samples are analysed apart: systemic ones drawn during the isolation and after
it, and the regional/systemic ratios over stated windows (``_nca``).
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass, field

import numpy as np

from isoperf.domain.melphalan import (
    PROCEDURES,
    Constants,
    Dose,
    LeakExposure,
    Release,
    Schedule,
    Washout,
    amounts,
    concentration,
    systemic_from_leak,
    typical_release,
)
from isoperf.schemas import Event, LabSample, Pk, PkRelease, SessionMeta
from services.pk import nca
from services.pk.model import Fit, prior_fit, refit
from services.pk.release import ReleaseFit, ReleasePrediction, predict_release, prior_release_fit, refit_release

GRID_STEP_MIN = 0.25
WASHOUT_FLOW_ML_MIN = 200.0  # IHHP pump flow (docs/clinical-background.md: tens to a few hundred mL/min)
GRID_HORIZON_MIN = 240.0
BODY_UG_NIL = 50.0  # leaked drug in the body at the release below this: nil (0.001 ug/mL over 40 L)
CORRECTIONS_KEPT = 8  # post-release predictions made again for corrections, kept
RELEASE_CURVE_STEP_MIN = 0.5  # the published post-release curve: every 30 s from the drug start to the horizon


LeakBasis = tuple[np.ndarray, np.ndarray, float]  # the circuit curve (grid, ug/mL) and volume it was fitted to
ReleaseKey = tuple[int, float]  # the revision of the inputs, the leaked drug in the body at the release (ug)


@dataclass(frozen=True)
class ReleaseBasis:
    """What the post-release prediction is made from as of one revision of the inputs, but for the
    leak's share (to make it again later, as it was then, with leakage points that came late)."""

    revision: int
    fit: Fit
    release_min: float
    projected: bool
    schedule: Schedule
    typical: Release
    systemic: tuple[tuple[float, ...], tuple[float, ...]]  # minutes from the drug start, ug/mL


@dataclass(frozen=True)
class _ReleaseState:
    """The post-release fit and prediction, as of one revision of the inputs and one leak's share."""

    key: ReleaseKey
    fit: ReleaseFit
    prediction: ReleasePrediction


@dataclass
class PkSession:
    meta: SessionMeta | None = None
    events: dict[str, Event] = field(default_factory=dict)  # first of each type
    samples: dict[str, LabSample] = field(default_factory=dict)  # by sample id: a correction replaces
    entered: dict[str, float] = field(default_factory=dict)  # when each sample entered (its report time)
    # The leakage points in time order, as C doubles (a 4-hour session's take 0.2 MB, not 0.9).
    leak_t: array[float] = field(default_factory=lambda: array("d"))
    leak_pct: array[float] = field(default_factory=lambda: array("d"))
    _fit: Fit | None = None
    _grid: tuple[np.ndarray, np.ndarray] | None = None
    _basis: ReleaseBasis | None = None
    _release: _ReleaseState | None = None
    _body: tuple[tuple[int, int, int], float] | None = None
    _revision: int = 0
    _leak_edits: int = 0  # leakage points inserted before others or replaced
    _exposure: LeakExposure | None = None  # the systemic exposure of the latest estimate, carried on
    _exposure_edits: int = 0  # ``_leak_edits`` when it was begun
    _corrections: dict[ReleaseKey, _ReleaseState] = field(default_factory=dict)

    # -- input ---------------------------------------------------------------------------------

    def set_meta(self, meta: SessionMeta) -> None:
        self.meta = meta
        self._invalidate()

    def add_event(self, e: Event) -> bool:
        """Record an event; a repeated one of the same type is ignored. Returns whether it was new."""
        if e.type in self.events:
            return False
        self.events[e.type] = e
        self._invalidate()
        return True

    def add_sample(self, s: LabSample, at: float | None = None) -> None:
        """Record a lab result that entered the session at event time ``at`` (its report; default: drawn)."""
        key = s.sample_id or f"{s.site}@{s.t:.3f}"
        self.samples[key] = s
        self.entered[key] = s.t if at is None else at
        self._invalidate()

    def latest_input(self) -> float:
        """The event time of the latest event or lab result."""
        return max([*(e.t for e in self.events.values()), *self.entered.values()], default=-math.inf)

    def as_of(self, t: float) -> PkSession:
        """The session as it stood at event time ``t``: its events up to ``t`` and the lab results
        entered by then (to estimate ``t`` when later inputs went on without waiting for the leakage)."""
        kept = {k: at for k, at in self.entered.items() if at <= t}
        return PkSession(
            meta=self.meta,
            events={k: e for k, e in self.events.items() if e.t <= t},
            samples={k: self.samples[k] for k in kept},
            entered=kept,
            leak_t=self.leak_t,
            leak_pct=self.leak_pct,
        )

    def add_leakage(self, t: float, percent: float) -> None:
        i = bisect.bisect_left(self.leak_t, t)
        if i < len(self.leak_t) and self.leak_t[i] == t:
            if self.leak_pct[i] != percent:
                self._leak_edits += 1
            self.leak_pct[i] = percent  # a repeated point (a redelivery, a rebuild)
            return
        if i < len(self.leak_t):
            self._leak_edits += 1  # a late point, before others
        self.leak_t.insert(i, t)
        self.leak_pct.insert(i, percent)

    def _invalidate(self) -> None:
        self._fit, self._grid, self._basis, self._release = None, None, None, None
        self._revision += 1

    # -- the model -----------------------------------------------------------------------------

    @property
    def t0(self) -> float | None:
        e = self.events.get("drug_start")
        return e.t if e else None

    def _min(self, t: float) -> float:
        assert self.t0 is not None
        return (t - self.t0) / 60.0

    def schedule(self) -> Schedule:
        start = self.events.get("drug_start")
        if start is None or start.dose_mg is None:
            return Schedule()
        duration = (start.duration_s or 0.0) / 60.0 if start.mode == "infusion" else 0.0
        doses = (Dose(0.0, start.dose_mg * 1000.0, duration),)
        w0, w1 = self.events.get("washout_start"), self.events.get("washout_end")
        washouts: tuple[Washout, ...] = ()
        if w0 is not None and w0.volume_ml:
            # Until its end is known, a washout is taken to run at the usual pump flow.
            end = (
                self._min(w1.t)
                if w1 is not None and w1.t > w0.t
                else self._min(w0.t) + w0.volume_ml / WASHOUT_FLOW_ML_MIN
            )
            washouts = (Washout(self._min(w0.t), end, w0.volume_ml),)
        return Schedule(doses, washouts)

    def _isolation_end_min(self) -> float | None:
        e = self.events.get("isolation_end")
        return self._min(e.t) if e is not None and self.t0 is not None else None

    def _profile(self, site: str) -> tuple[list[float], list[float]]:
        pts = sorted((s.t, s.melphalan_ug_ml) for s in self.samples.values() if s.site == site)
        return [self._min(t) for t, _ in pts], [c for _, c in pts]

    def fit(self) -> Fit | None:
        if self.meta is None or self.t0 is None:
            return None
        if self._fit is None:
            prior = Constants.default(self.meta.circuit_volume_ml, self.meta.weight_kg)
            times, conc = self._profile("circuit")
            end = self._isolation_end_min()
            kept = [(t, c) for t, c in zip(times, conc, strict=True) if t >= 0 and (end is None or t <= end)]
            self._fit = (
                refit(prior, self.schedule(), [t for t, _ in kept], [c for _, c in kept]) if kept else prior_fit(prior)
            )
        return self._fit

    def _circuit_grid(self, fit: Fit) -> tuple[np.ndarray, np.ndarray]:
        """The fitted circuit curve on a grid; held at its last value after the isolation ends."""
        if self._grid is None:
            end = self._isolation_end_min()
            horizon = end if end is not None else GRID_HORIZON_MIN
            grid = np.arange(0.0, horizon + GRID_STEP_MIN, GRID_STEP_MIN)
            if end is not None:
                grid = np.append(grid[grid < end], end)
            self._grid = (grid, concentration(grid, fit.constants, self.schedule()))
        return self._grid

    # -- after the release ----------------------------------------------------------------------

    def release_time(self) -> tuple[float, bool, Schedule] | None:
        """``(release, projected, schedule)``: the release in minutes from the drug start (the
        isolation's end, or its projection) and the schedule with the washout up to it
        (projected too while its events are missing)."""
        start = self.events.get("drug_start")
        if self.meta is None or start is None or start.dose_mg is None:
            return None
        p = PROCEDURES[self.meta.procedure]
        actual = self.schedule()
        end = self._isolation_end_min()
        if actual.washouts:
            washout = actual.washouts[0]
        else:
            stop = self.events.get("drug_stop")
            w_start = self._min(stop.t) if stop is not None else p.perfusion_min
            if end is not None:
                w_start = min(w_start, end)
            duration = p.washout_ml / p.washout_flow_ml_min
            washout = Washout(w_start, w_start + duration, p.washout_ml)
        if end is not None:
            return end, False, Schedule(actual.doses, (washout,) if washout.start_min < end else ())
        return washout.end_min + p.release_after_washout_min, True, Schedule(actual.doses, (washout,))

    def release_basis(self) -> ReleaseBasis | None:
        """The post-release prediction's inputs as of now, but for the leak's share (None before the
        drug start and the metadata)."""
        if self._basis is None:
            fit, when = self.fit(), self.release_time()
            if fit is None or when is None or self.meta is None:
                return None
            release_min, projected, schedule = when
            st, sc = self._profile("systemic")
            self._basis = ReleaseBasis(
                self._revision,
                fit,
                release_min,
                projected,
                schedule,
                typical_release(self.meta.procedure, self.meta.weight_kg),
                (tuple(st), tuple(sc)),
            )
        return self._basis

    def release_body(self, basis: ReleaseBasis, leak: LeakBasis) -> float:
        """Drug in the body from the leak at the release (ug): from the leakage points known now before
        the release, over the circuit curve ``leak``; nil while the release is projected (it is added
        once the isolation has ended) and below ``BODY_UG_NIL``."""
        if basis.projected or self.t0 is None:
            return 0.0
        n = bisect.bisect_left(self.leak_t, self.t0 + 60.0 * basis.release_min)
        if n < 2:
            return 0.0
        grid, curve, v_ml = leak
        times = [self._min(t) for t in self.leak_t[:n]]
        _, body, _ = systemic_from_leak(times, self.leak_pct[:n], grid, curve, v_ml)
        return body if body >= BODY_UG_NIL else 0.0

    def _body_now(self, basis: ReleaseBasis) -> float:
        """``release_body`` with the current circuit curve, kept until the inputs or the leakage points
        before the release change."""
        fit = self.fit()
        if fit is None or self.t0 is None:
            return 0.0
        n = 0 if basis.projected else bisect.bisect_left(self.leak_t, self.t0 + 60.0 * basis.release_min)
        key = (self._revision, n, self._leak_edits)
        if self._body is None or self._body[0] != key:
            self._body = (key, self.release_body(basis, (*self._circuit_grid(fit), fit.constants.v_ml)))
        return self._body[1]

    def _release_for(self, basis: ReleaseBasis, body: float) -> _ReleaseState:
        """The release constants refitted to the systemic samples after the release, and the prediction
        on the published grid (the latest one kept)."""
        key = (basis.revision, body)
        if self._release is not None and self._release.key == key:
            return self._release
        if (earlier := self._corrections.get(key)) is not None:
            return earlier
        if basis.projected:
            rfit = prior_release_fit(basis.typical)
        else:
            a_c, a_t = amounts([basis.release_min], basis.fit.constants, basis.schedule)[0]
            st, sc = basis.systemic
            rfit = refit_release(basis.typical, basis.release_min, (float(a_c), float(a_t)), body, st, sc)
        grid = np.arange(0.0, GRID_HORIZON_MIN + 1e-9, RELEASE_CURVE_STEP_MIN)
        prediction = predict_release(basis.fit, basis.schedule, rfit, basis.release_min, body, grid, basis.projected)
        state = _ReleaseState(key, rfit, prediction)
        if basis.revision == self._revision:
            self._release = state
        else:  # a correction: the estimates awaiting their leakage mostly share their inputs
            self._corrections[key] = state
            while len(self._corrections) > CORRECTIONS_KEPT:
                del self._corrections[next(iter(self._corrections))]
        return state

    def _release_state(self) -> _ReleaseState | None:
        basis = self.release_basis()
        return self._release_for(basis, self._body_now(basis)) if basis is not None else None

    def release_prediction(self) -> ReleasePrediction | None:
        """The post-release curve on the published grid with its summary, refitted to the systemic
        samples drawn after the release (None before the drug start and the metadata)."""
        state = self._release_state()
        return state.prediction if state is not None else None

    def release_key(self) -> ReleaseKey | None:
        """Changes whenever the post-release prediction may have (to publish its curve when it has)."""
        state = self._release_state()
        return state.key if state is not None else None

    def release_message(self, t: float) -> PkRelease | None:
        """The predicted post-release curve as published on ``pk/release`` (prediction made at ``t``)."""
        state = self._release_state()
        return self._curve(state.prediction, t) if state is not None else None

    def corrected_release(
        self, t: float, basis: ReleaseBasis, leak: LeakBasis, was: ReleaseKey
    ) -> tuple[dict[str, object], PkRelease] | None:
        """The post-release fields of the estimate at ``t`` and its curve, made from ``basis`` and
        ``leak`` (the inputs as they were at ``t``) with the leakage points known now; None when those
        give the prediction ``was`` (made with the leakage known then)."""
        body = self.release_body(basis, leak)
        if (basis.revision, body) == was:
            return None
        state = self._release_for(basis, body)
        return self._release_fields(state, self._min(t)), self._curve(state.prediction, t)

    def _curve(self, pred: ReleasePrediction, t: float) -> PkRelease:
        assert self.t0 is not None
        points = [
            (round(self.t0 + 60.0 * m, 3), float(c), float(lo), float(hi))
            for m, c, lo, hi in zip(pred.times_min, pred.c, pred.low, pred.high, strict=True)
        ]
        return PkRelease(
            t=t,
            release_t=round(self.t0 + 60.0 * pred.release_min, 3),
            projected=pred.projected,
            n_release=pred.n,
            peak_ug_ml=pred.peak,
            peak_low_ug_ml=pred.peak_low,
            peak_high_ug_ml=pred.peak_high,
            points=points,
        )

    @staticmethod
    def _release_fields(state: _ReleaseState, now: float) -> dict[str, object]:
        """The post-release figures of an estimate at ``now`` (minutes from the drug start)."""
        pred = state.prediction
        out: dict[str, object] = {
            "release_min": pred.release_min,
            "release_projected": pred.projected,
            "release_peak_ug_ml": pred.peak,
            "release_peak_low_ug_ml": pred.peak_low,
            "release_peak_high_ug_ml": pred.peak_high,
            "release_tmax_min": pred.tmax_min,
            "release_auc_inf": pred.auc,
            "release_auc_inf_low": pred.auc_low,
            "release_auc_inf_high": pred.auc_high,
            "n_release": pred.n,
        }
        if not pred.projected and pred.release_min < now <= pred.times_min[-1]:
            # at ``now``: the published curve (every 30 s) interpolated, from zero at the release
            after = pred.times_min > pred.release_min
            ts = np.concatenate([[pred.release_min], pred.times_min[after]])

            def at(values: np.ndarray) -> float:
                return float(np.interp(now, ts, np.concatenate([[0.0], values[after]])))

            out |= {
                "release_ug_ml": at(pred.c),
                "release_low_ug_ml": at(pred.low),
                "release_high_ug_ml": at(pred.high),
            }
        if state.fit.n:
            out |= {
                "release_v1_ml": state.fit.release.v1_ml,
                "release_tissue_fraction": state.fit.release.tissue_fraction,
            }
        return out

    # -- output --------------------------------------------------------------------------------

    def estimate(self, t: float) -> Pk | None:
        """Everything known at event time ``t`` (None before the drug start and the metadata)."""
        fit = self.fit()
        if fit is None:
            return None
        now = self._min(t)
        grid, curve = self._circuit_grid(fit)
        end = self._isolation_end_min()
        out: dict[str, object] = {"t": t}
        if now >= 0 and (end is None or now <= end):
            c, lo, hi = fit.predict([now], self.schedule())
            out |= {"circuit_ug_ml": float(c[0]), "circuit_low_ug_ml": float(lo[0]), "circuit_high_ug_ml": float(hi[0])}
        upto = grid <= now
        if upto.sum() >= 2:
            out["model_auc_circuit"] = float(np.trapezoid(curve[upto], grid[upto]))
        out |= self._systemic_from_leak(now, grid, curve, fit.constants.v_ml)
        if (state := self._release_state()) is not None:
            out |= self._release_fields(state, now)
        out |= self._nca()
        out |= {
            "v_ml": fit.constants.v_ml,
            "v_se_ml": fit.v_se_ml,
            "k_uptake_min": fit.constants.k_uptake_min,
            "k_uptake_se_min": fit.k_uptake_se_min,
        }
        return Pk.model_validate(out)

    def _systemic_from_leak(
        self, now: float, grid: np.ndarray, curve: np.ndarray, v_ml: float, current: bool = True
    ) -> dict[str, object]:
        """The systemic-exposure fields at ``now`` (minutes from the drug start). With the current
        circuit curve (``current``) the exposure is carried on from the last estimate's; with another
        (an estimate corrected as it was then) it is computed afresh."""
        assert self.t0 is not None
        n = bisect.bisect_right(self.leak_t, now, key=self._min)
        if n < 2:
            return {}
        kept = self._exposure
        if (
            kept is not None
            and kept.grid is grid
            and kept.curve is curve
            and kept.v_ml == v_ml
            and kept.t0 == self.t0
            and self._exposure_edits == self._leak_edits
            and kept.n <= n
        ):
            exposure = kept
        else:
            exposure = LeakExposure(grid, curve, v_ml, self.t0)
            if current:
                self._exposure, self._exposure_edits = exposure, self._leak_edits
        c_sys, amount, auc = exposure.upto(self.leak_t, self.leak_pct, n)
        return {"systemic_ug_ml": float(c_sys), "leaked_mg": amount / 1000.0, "leak_auc_systemic": auc}

    def leak_basis(self) -> LeakBasis | None:
        """What ``estimate`` derives the systemic exposure from, as of now (to correct an estimate
        later, with leakage points that came late, as it was then)."""
        fit = self.fit()
        if fit is None:
            return None
        grid, curve = self._circuit_grid(fit)
        return grid, curve, fit.constants.v_ml

    def leak_fields(self, t: float, basis: LeakBasis) -> dict[str, object]:
        """The systemic-exposure fields of the estimate at ``t`` from the leakage known now."""
        return self._systemic_from_leak(self._min(t), *basis, current=False)

    def _nca(self) -> dict[str, object]:
        ct, cc = self._profile("circuit")
        st, sc = self._profile("systemic")
        reg, sys_ = nca.profile(ct, cc), nca.profile(st, sc)
        out: dict[str, object] = {
            "n_circuit": reg.n,
            "n_systemic": sys_.n,
            "auc_circuit": reg.auc_linlog,
            "auc_circuit_linear": reg.auc_linear,
            "cmax_circuit": reg.cmax,
            "tmax_circuit_min": reg.tmax,
            "auc_systemic": sys_.auc_linlog,
            "auc_systemic_linear": sys_.auc_linear,
            "cmax_systemic": sys_.cmax,
            "tmax_systemic_min": sys_.tmax,
            "auc_ratio": nca.ratio(reg.auc_linlog, sys_.auc_linlog),
            "peak_ratio": nca.ratio(reg.cmax, sys_.cmax),
        }
        stop = self.events.get("drug_stop")
        if stop is not None and len(ct) >= 2 and ct[0] <= 0.0 and ct[-1] >= self._min(stop.t):
            out["auc_circuit_perfusion"] = nca.auc_window(ct, cc, 0.0, self._min(stop.t), "linlog")
        end = self._isolation_end_min()
        if end is not None and (after := nca.peak_after(st, sc, end)) is not None:
            out["systemic_peak_after_isolation"] = after[0]
        if end is not None:
            out |= self._nca_apart(ct, cc, st, sc, end)
        notes = [f"{site} samples: {p.note}" for site, p in (("circuit", reg), ("systemic", sys_)) if p.note]
        if notes:
            out["note"] = "; ".join(notes)
        return out

    @staticmethod
    def _nca_apart(ct: list[float], cc: list[float], st: list[float], sc: list[float], end: float) -> dict[str, object]:
        """Systemic samples during the isolation and after the release apart, and the regional/
        systemic AUC ratios over their stated windows (docs/melphalan.md, minutes from the drug start):

        * ``auc_ratio_isolation``: both AUCs from the drug start to ``ratio_isolation_end_min``,
          the isolation's end or, if earlier, the last sample of either site before it;
        * ``auc_ratio_exposure``: the regional AUC over the isolation (drug start to its last
          circuit sample) over the systemic AUC from the drug start to ``ratio_exposure_end_min``
          (the last systemic sample): each site's whole exposure, the regional one ending when the
          circuit comes off, as the IHHP series compares them (2,382 / 275).

        Both profiles start from zero at the drug start when no sample was drawn then.
        """
        during = [(t, c) for t, c in zip(st, sc, strict=True) if t <= end]
        out: dict[str, object] = {"n_systemic_isolation": len(during), "n_systemic_release": len(st) - len(during)}
        iso = nca.profile([t for t, _ in during], [c for _, c in during])
        out |= {"cmax_systemic_isolation": iso.cmax, "auc_systemic_isolation": iso.auc_linlog}
        rel = nca.after_release(st, sc, end)
        if rel is not None:
            out |= {
                "cmax_systemic_release": rel.cmax,
                "tmax_systemic_release_min": rel.tmax,
                "auc_systemic_release": rel.auc_linlog,
                "auc_systemic_release_linear": rel.auc_linear,
            }
        reg_t, reg_c = nca.from_zero([t for t in ct if t <= end], [c for t, c in zip(ct, cc, strict=True) if t <= end])
        sys_t, sys_c = nca.from_zero(st, sc)
        sys_iso_t = [t for t in sys_t if t <= end]
        if len(reg_t) >= 2 and len(sys_iso_t) >= 2:
            w = min(end, reg_t[-1], sys_iso_t[-1])
            if w > 0:
                reg = nca.auc_window(reg_t, reg_c, 0.0, w, "linlog")
                sys_iso = nca.auc_window(sys_t, sys_c, 0.0, w, "linlog")
                out |= {"auc_ratio_isolation": nca.ratio(reg, sys_iso), "ratio_isolation_end_min": w}
        if len(reg_t) >= 2 and len(sys_t) >= 2 and sys_t[-1] > end:
            reg = nca.auc(reg_t, reg_c, "linlog")
            out |= {
                "auc_ratio_exposure": nca.ratio(reg, nca.auc(sys_t, sys_c, "linlog")),
                "ratio_exposure_end_min": sys_t[-1],
            }
        return out
