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
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from isoperf.domain.melphalan import Constants, Dose, Schedule, Washout, concentration, systemic_from_leak
from isoperf.schemas import Event, LabSample, Pk, SessionMeta
from services.pk import nca
from services.pk.model import Fit, prior_fit, refit

GRID_STEP_MIN = 0.25
WASHOUT_FLOW_ML_MIN = 200.0  # IHHP pump flow (docs/clinical-background.md: tens to a few hundred mL/min)
GRID_HORIZON_MIN = 240.0

LeakBasis = tuple[np.ndarray, np.ndarray, float]  # the circuit curve (grid, ug/mL) and volume it was fitted to


@dataclass
class PkSession:
    meta: SessionMeta | None = None
    events: dict[str, Event] = field(default_factory=dict)  # first of each type
    samples: dict[str, LabSample] = field(default_factory=dict)  # by sample id: a correction replaces
    leak_t: list[float] = field(default_factory=list)
    leak_pct: list[float] = field(default_factory=list)
    _fit: Fit | None = None
    _grid: tuple[np.ndarray, np.ndarray] | None = None

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

    def add_sample(self, s: LabSample) -> None:
        self.samples[s.sample_id or f"{s.site}@{s.t:.3f}"] = s
        self._invalidate()

    def add_leakage(self, t: float, percent: float) -> None:
        i = bisect.bisect_left(self.leak_t, t)
        if i < len(self.leak_t) and self.leak_t[i] == t:
            self.leak_pct[i] = percent  # a repeated point (a redelivery, a rebuild)
            return
        self.leak_t.insert(i, t)
        self.leak_pct.insert(i, percent)

    def _invalidate(self) -> None:
        self._fit, self._grid = None, None

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
        out |= self._nca()
        out |= {
            "v_ml": fit.constants.v_ml,
            "v_se_ml": fit.v_se_ml,
            "k_uptake_min": fit.constants.k_uptake_min,
            "k_uptake_se_min": fit.k_uptake_se_min,
        }
        return Pk.model_validate(out)

    def _systemic_from_leak(self, now: float, grid: np.ndarray, curve: np.ndarray, v_ml: float) -> dict[str, object]:
        times = [self._min(t) for t in self.leak_t]
        n = bisect.bisect_right(times, now)
        if n < 2:
            return {}
        c_sys, amount, auc = systemic_from_leak(times[:n], self.leak_pct[:n], grid, curve, v_ml)
        return {"systemic_ug_ml": float(c_sys[-1]), "leaked_mg": amount / 1000.0, "leak_auc_systemic": auc}

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
        return self._systemic_from_leak(self._min(t), *basis)

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
        notes = [f"{site} samples: {p.note}" for site, p in (("circuit", reg), ("systemic", sys_)) if p.note]
        if notes:
            out["note"] = "; ".join(notes)
        return out
