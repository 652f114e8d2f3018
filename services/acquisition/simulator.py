"""A simulated isolated hepatic perfusion (IHHP): the theatre equipment in numbers.

Pure and deterministic for a given seed: ``simulate`` returns the whole session
(metadata, events, readings) plus the true leakage it simulated, which is kept
apart from the clinical data and never published on a clinical topic.

Physical model of the precordial probe (count rate, cps), with ``s`` the probe's
sensitivity to tracer spread homogeneously in the body (cps per MBq) and
``d(t) = exp(-lambda * t)`` physical decay::

    rate(t) = B
            + s * A_cal  * d(t - t_cal)  * m_cal(t)             calibration dose, mixing in
            + s * A_perf * d(t - t_perf) * L(t) / 100            circuit tracer leaked to the body
            + S *          d(t - t_perf) * c(t) * (1 - L/100)    shine-through of the circuit

``L(t)`` is the true leakage in percent (100 = all circuit tracer spread through
the body), ``S`` the shine-through step as seen right after the circuit dose,
``m_cal`` the calibration dose's first pass and mixing (plateau within about
7 minutes), ``c(t)`` the circuit's own mixing and its emptying during washout.
Counts in an interval ``dt`` are Poisson with mean ``rate * dt``.

Timeline (defaults, seconds from session start), after the IHHP series in
docs/clinical-background.md: 5 min background; calibration dose; isolation and circuit at
16 min; circuit tracer at 17 min; melphalan 1 mg/kg as a 10-minute infusion at
20 min; 25 minutes of drug perfusion; a 1 L washout; clamps off; 15 minutes of
observation after release.

Melphalan (``isoperf.domain.melphalan``): the circuit follows the circuit model with this
patient's constants; the systemic circulation gets the drug carried by the leak during the
isolation and, once the clamps come off, the drug the organ releases (the release model). The
patient's release is drawn for each seed from the procedure's population (between-patient
variability, docs/melphalan.md), from a random stream of its own, so the probe's counts of a
seed are the same as before; ``release_truth`` keeps it apart with the true systemic curve.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from isoperf.domain.isotopes import decay_constant_per_s
from isoperf.domain.melphalan import (
    Constants,
    Dose,
    Release,
    Schedule,
    Washout,
    amounts,
    concentration,
    draw_release,
    release_auc,
    release_curve,
    release_peak,
    systemic_from_leak,
    typical_release,
)
from isoperf.schemas import Event, LabSample, Reading, SessionMeta

LeakKind = Literal["none", "steady", "step"]


@dataclass(frozen=True)
class LeakScenario:
    """What leaks, when. Times are seconds after the circuit tracer (``perfusion_dose``).

    ``steady``: a constant leak of ``rate_pct_min`` from ``onset_s``.
    ``step``: ``step_pct`` at ``step_at_s``: a slug of perfusate entering the
    systemic circulation through a slipping clamp, mixing in with time constant
    ``step_tau_s``.
    ``release_pct``: the rise after the clamps come off (IHHP series: median 7 %,
    range 4 to 10 %), time constant ``release_tau_s``; 0 turns it off.
    """

    kind: LeakKind = "none"
    rate_pct_min: float = 0.3
    onset_s: float = 180.0
    step_pct: float = 2.0
    step_at_s: float = 900.0
    step_tau_s: float = 90.0
    release_pct: float = 7.0
    release_tau_s: float = 150.0

    def percent(self, t_rel: np.ndarray) -> np.ndarray:
        """True leakage (%) before release, at times relative to the circuit dose."""
        if self.kind == "steady":
            return self.rate_pct_min * np.clip(t_rel - self.onset_s, 0.0, None) / 60.0
        if self.kind == "step":
            since = np.clip(t_rel - self.step_at_s, 0.0, None)
            return self.step_pct * -np.expm1(-since / self.step_tau_s)
        return np.zeros_like(t_rel)


@dataclass(frozen=True)
class SimConfig:
    """A simulated session. Defaults follow an IHHP of the Erasmus MC series."""

    start_t: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z; the service uses the wall clock
    procedure: Literal["IHHP", "IHP", "ILP"] = "IHHP"
    isotope: Literal["Tc-99m", "I-131", "In-111"] = "Tc-99m"
    weight_kg: float = 75.0
    circuit_volume_ml: float = 220.0
    melphalan_mg_per_kg: float = 1.0
    drug_mode: Literal["infusion", "bolus"] = "infusion"  # the IHHP series: a bolus in its first 8 patients
    # Probe
    background_cps: float = 40.0
    calibration_rise_cps: float = 300.0
    calibration_activity_mbq: float = 20.0
    activity_ratio: float = 10.0  # k = A_perf / A_cal
    shine_through_fraction: float = 0.0  # step at the circuit dose, as a fraction of the calibration rise
    calibration_drift_pct_h: float = 0.0  # slow fall of the calibration plateau (albumin leaving)
    counts_dt_s: float = 1.0
    vitals_dt_s: float = 1.0
    # Timeline, seconds from start
    calibration_at_s: float = 300.0
    isolation_at_s: float = 960.0
    perfusion_dose_at_s: float = 1020.0
    drug_start_at_s: float = 1200.0
    infusion_s: float = 600.0
    perfusion_s: float = 1500.0
    washout_ml: float = 1000.0
    observation_s: float = 900.0
    # Circuit
    flow_ml_min: float = 200.0
    resistance_mmhg_per_ml_min: float = 0.35
    temperature_target_c: float = 39.0
    reservoir_ml: float = 150.0
    leak: LeakScenario = field(default_factory=LeakScenario)
    # Melphalan: this patient's true circuit constants, unlike the model's defaults;
    # lab results arrive ``lab_delay_s`` after the draw, with a proportional assay error.
    pk_v_factor: float = 1.1  # true distribution volume / the model's default
    pk_k_uptake_min: float = 0.013
    circuit_sample_every_s: float = 300.0
    systemic_sample_every_s: float = 600.0
    systemic_samples_after_end_s: tuple[float, ...] = (120.0, 300.0, 600.0)
    lab_delay_s: float = 600.0
    assay_cv: float = 0.08
    # After the release: this patient's release model; None draws one for the seed from the
    # procedure's population (isoperf.domain.melphalan.draw_release).
    pk_release: Release | None = None

    @property
    def drug_stop_at_s(self) -> float:
        return self.drug_start_at_s + self.perfusion_s

    @property
    def washout_s(self) -> float:
        return 60.0 * self.washout_ml / self.flow_ml_min

    @property
    def isolation_end_at_s(self) -> float:
        return self.drug_stop_at_s + self.washout_s + 60.0

    @property
    def duration_s(self) -> float:
        return self.isolation_end_at_s + self.observation_s


@dataclass(frozen=True)
class ReleaseTruth:
    """The simulated patient's release and the true systemic melphalan around it."""

    release: Release  # this patient's
    t_drug: float  # Unix s of the drug start; times below are minutes from it
    release_min: float  # the clamps come off (isolation end)
    organ_ug: tuple[float, float]  # circuit and tissue drug at the release
    body_ug: float  # drug in the body from the leak at the release
    leak_min: np.ndarray = field(repr=False)  # the leak-borne systemic curve until the release
    leak_ug_ml: np.ndarray = field(repr=False)

    def systemic(self, t_abs: np.ndarray | list[float]) -> np.ndarray:
        """True systemic concentration (ug/mL) at Unix times: the leak's during the isolation,
        then the release (with the leaked drug still in the body)."""
        m = (np.asarray(t_abs, dtype=float) - self.t_drug) / 60.0
        during = np.where(m >= 0, np.interp(m, self.leak_min, self.leak_ug_ml), 0.0)
        after = release_curve(m, self.release_min, self.organ_ug, self.release, self.body_ug)
        return np.where(m < self.release_min, during, after)

    def peak(self) -> tuple[float, float]:
        """``(peak ug/mL, its Unix time)`` after the release."""
        c, at = release_peak(self.release_min, self.organ_ug, self.release, self.body_ug)
        return c, self.t_drug + 60.0 * at

    def auc(self) -> float:
        """Systemic AUC from the release to infinity, ug*min/mL."""
        return release_auc(self.organ_ug, self.release, self.body_ug)


@dataclass
class SimulatedSession:
    """Everything the equipment would send, in event time, plus the truth kept apart."""

    config: SimConfig
    meta: SessionMeta
    events: list[Event]
    readings: dict[str, list[tuple[float, float]]]
    truth: list[tuple[float, float]]  # (t, true leakage %) at each counts sample
    samples: list[tuple[float, LabSample]] = field(default_factory=list)  # (arrival time, lab result)
    pk_truth: Constants | None = None
    release_truth: ReleaseTruth | None = None

    def timeline(self) -> Iterator[tuple[float, str, Event | Reading | LabSample]]:
        """Every event, reading and lab result in time order, as ``(t, kind, item)``; kind is
        ``event``, ``sample`` (at the time the lab reports it) or a signal.

        At equal times an event comes first, as a device would announce it.
        """
        items: list[tuple[float, int, str, Event | Reading | LabSample]] = [(e.t, 0, "event", e) for e in self.events]
        items.extend((t, 1, "sample", sample) for t, sample in self.samples)
        for signal, samples in self.readings.items():
            dt = self.config.counts_dt_s if signal == "counts" else self.config.vitals_dt_s
            items.extend((t, 1, signal, Reading(t=t, v=v, dt=dt)) for t, v in samples)
        items.sort(key=lambda x: (x[0], x[1]))
        for t, _, kind, item in items:
            yield t, kind, item


def _ramp(t: np.ndarray, start: float, tau: float) -> np.ndarray:
    """0 before ``start``, then ``1 - exp(-(t - start) / tau)``."""
    return -np.expm1(-np.clip(t - start, 0.0, None) / tau)


def _decay(t: np.ndarray, since: float, lam: float) -> np.ndarray:
    return np.exp(-lam * (t - since))


def true_count_rate(cfg: SimConfig, t_abs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected count rate (cps) and true leakage (%) at absolute times ``t_abs``."""
    lam = decay_constant_per_s(cfg.isotope)
    t = t_abs - cfg.start_t
    t_cal, t_perf = cfg.calibration_at_s, cfg.perfusion_dose_at_s
    s = cfg.calibration_rise_cps / cfg.calibration_activity_mbq
    a_cal = cfg.calibration_activity_mbq
    a_perf = cfg.activity_ratio * a_cal

    # Calibration dose: first pass over the heart (a bump peaking ~15 s after
    # injection), then mixing through the body (time constant 90 s).
    since_cal = np.clip(t - t_cal, 0.0, None)
    first_pass = 0.8 * (since_cal / 15.0) * np.exp(1.0 - since_cal / 15.0)
    m_cal = np.where(t >= t_cal, _ramp(t, t_cal, 90.0) + first_pass, 0.0)
    drift = 1.0 - cfg.calibration_drift_pct_h / 100.0 * np.clip(t - t_cal, 0.0, None) / 3600.0
    cal = s * a_cal * _decay(t, t_cal, lam) * m_cal * drift

    # Circuit tracer leaks only while the circuit holds it: the leak stops at the washout.
    leaking_until = np.minimum(t, cfg.drug_stop_at_s)
    leak_pct = np.where(t >= t_perf, cfg.leak.percent(leaking_until - t_perf), 0.0)
    if cfg.leak.release_pct > 0:
        leak_pct = leak_pct + cfg.leak.release_pct * _ramp(t, cfg.isolation_end_at_s, cfg.leak.release_tau_s)
    leak_pct = np.minimum(leak_pct, 100.0)
    perf_decay = np.where(t >= t_perf, _decay(t, t_perf, lam), 0.0)
    leaked = s * a_perf * perf_decay * leak_pct / 100.0

    # The circuit mixes within a minute; the washout replaces its volume ~5 times.
    washout_start = cfg.drug_stop_at_s
    washed = np.clip(t - washout_start, 0.0, cfg.washout_s) / cfg.washout_s
    circuit_left = np.exp(-3.0 * washed)
    circuit_left = np.where(t >= cfg.isolation_end_at_s, 0.0, circuit_left)
    shine = cfg.shine_through_fraction * cfg.calibration_rise_cps
    shine_term = shine * perf_decay * _ramp(t, t_perf, 15.0) * circuit_left * (1.0 - leak_pct / 100.0)

    return cfg.background_cps + cal + leaked + shine_term, leak_pct


def _events(cfg: SimConfig) -> list[Event]:
    t0 = cfg.start_t
    dose_mg = round(cfg.melphalan_mg_per_kg * cfg.weight_kg, 1)
    a_cal = cfg.calibration_activity_mbq
    return [
        Event(t=t0, type="session_start"),
        Event(t=t0 + cfg.calibration_at_s, type="calibration_dose", activity_mbq=a_cal),
        Event(t=t0 + cfg.isolation_at_s, type="isolation_start"),
        Event(t=t0 + cfg.perfusion_dose_at_s, type="perfusion_dose", activity_mbq=a_cal * cfg.activity_ratio),
        Event(
            t=t0 + cfg.drug_start_at_s,
            type="drug_start",
            dose_mg=dose_mg,
            mode=cfg.drug_mode,
            duration_s=cfg.infusion_s if cfg.drug_mode == "infusion" else None,
        ),
        Event(t=t0 + cfg.drug_stop_at_s, type="drug_stop"),
        Event(t=t0 + cfg.drug_stop_at_s, type="washout_start", volume_ml=cfg.washout_ml),
        Event(t=t0 + cfg.drug_stop_at_s + cfg.washout_s, type="washout_end", volume_ml=cfg.washout_ml),
        Event(t=t0 + cfg.isolation_end_at_s, type="isolation_end"),
        Event(t=t0 + cfg.duration_s, type="session_end"),
    ]


def _grid(cfg: SimConfig, dt: float) -> np.ndarray:
    n = math.floor(cfg.duration_s / dt)
    return cfg.start_t + dt * np.arange(1, n + 1)


def simulate(cfg: SimConfig, seed: int = 0) -> SimulatedSession:
    """Simulate one whole session."""
    rng = np.random.default_rng(seed)
    meta = SessionMeta(
        t=cfg.start_t,
        procedure=cfg.procedure,
        isotope=cfg.isotope,
        weight_kg=cfg.weight_kg,
        circuit_volume_ml=cfg.circuit_volume_ml,
        melphalan_mg_per_kg=cfg.melphalan_mg_per_kg,
    )

    # Probe: counts over the interval (t - dt, t], mean rate at its midpoint.
    tc = _grid(cfg, cfg.counts_dt_s)
    rate, _ = true_count_rate(cfg, tc - cfg.counts_dt_s / 2)
    counts = rng.poisson(rate * cfg.counts_dt_s).astype(float)
    _, truth = true_count_rate(cfg, tc)

    tv = _grid(cfg, cfg.vitals_dt_s)
    rel = tv - cfg.start_t
    pumping = (rel >= cfg.isolation_at_s) & (rel < cfg.drug_stop_at_s + cfg.washout_s)
    flow = np.where(pumping, cfg.flow_ml_min * _ramp(tv, cfg.start_t + cfg.isolation_at_s, 20.0), 0.0)
    flow = np.where(pumping, flow + rng.normal(0, 1.5, tv.size), 0.0)
    pulse = 3.0 * np.sin(2 * np.pi * rel / 7.3)  # roller-pump ripple, aliased by 1 Hz sampling
    pressure = np.where(
        pumping,
        flow * cfg.resistance_mmhg_per_ml_min + pulse + rng.normal(0, 1.5, tv.size),
        4.0 + rng.normal(0, 0.8, tv.size),
    )
    heating = _ramp(tv, cfg.start_t + cfg.isolation_at_s, 300.0)
    cooling = _ramp(tv, cfg.start_t + cfg.drug_stop_at_s, 240.0)
    temp = 36.5 + (cfg.temperature_target_c - 36.5) * heating * (1 - cooling) + rng.normal(0, 0.03, tv.size)
    _, leak_v = true_count_rate(cfg, tv)
    in_circuit = (rel >= cfg.isolation_at_s) & (rel < cfg.isolation_end_at_s)
    # Perfusate lost to the body shows as a falling bubble-trap level.
    lost_ml = np.where(in_circuit, leak_v / 100.0 * cfg.circuit_volume_ml, 0.0)
    reservoir = np.where(in_circuit, cfg.reservoir_ml - lost_ml, 0.0) + rng.normal(0, 0.8, tv.size)
    reservoir = np.clip(reservoir, 0.0, None)

    def pairs(t: np.ndarray, v: np.ndarray, digits: int) -> list[tuple[float, float]]:
        return [(round(float(a), 3), round(float(b), digits)) for a, b in zip(t, v, strict=True)]

    # The patient's release from its own stream: the counts above stay those of the seed.
    patient = cfg.pk_release or draw_release(
        typical_release(cfg.procedure, cfg.weight_kg), np.random.default_rng([seed, 17])
    )
    release = _release_truth(cfg, meta, tc, truth, patient)
    samples = _lab_samples(cfg, meta, release, rng)

    return SimulatedSession(
        config=cfg,
        meta=meta,
        events=_events(cfg),
        readings={
            "counts": pairs(tc, counts, 0),
            "flow": pairs(tv, flow, 1),
            "pressure": pairs(tv, pressure, 1),
            "temperature": pairs(tv, temp, 2),
            "reservoir": pairs(tv, reservoir, 1),
        },
        truth=pairs(tc, truth, 6),
        samples=samples,
        pk_truth=_pk_truth(cfg, meta),
        release_truth=release,
    )


def _pk_truth(cfg: SimConfig, meta: SessionMeta) -> Constants:
    default = Constants.default(meta.circuit_volume_ml, meta.weight_kg)
    return Constants(v_ml=default.v_ml * cfg.pk_v_factor, k_uptake_min=cfg.pk_k_uptake_min)


def _schedule(cfg: SimConfig) -> Schedule:
    washout = Washout(
        (cfg.drug_stop_at_s - cfg.drug_start_at_s) / 60,
        (cfg.drug_stop_at_s + cfg.washout_s - cfg.drug_start_at_s) / 60,
        cfg.washout_ml,
    )
    duration = cfg.infusion_s / 60 if cfg.drug_mode == "infusion" else 0.0
    return Schedule((Dose(0.0, cfg.melphalan_mg_per_kg * cfg.weight_kg * 1000.0, duration),), (washout,))


def _release_truth(
    cfg: SimConfig, meta: SessionMeta, tc: np.ndarray, leak_pct: np.ndarray, patient: Release
) -> ReleaseTruth:
    """The true systemic curve: the leak's while the circuit is isolated (the leak is held at its
    value from the release on: the rise the probe sees then is the release itself), then the
    release model's."""
    t_drug = cfg.start_t + cfg.drug_start_at_s
    schedule, truth = _schedule(cfg), _pk_truth(cfg, meta)
    end_min = (cfg.isolation_end_at_s - cfg.drug_start_at_s) / 60
    grid = np.append(np.arange(0.0, end_min, 0.25), end_min)
    curve = concentration(grid, truth, schedule)
    minutes = (tc - t_drug) / 60
    upto = minutes <= end_min
    c_sys, body_ug, _ = systemic_from_leak(list(minutes[upto]), list(leak_pct[upto]), grid, curve, truth.v_ml)
    a_c, a_t = amounts([end_min], truth, schedule)[0]
    return ReleaseTruth(patient, t_drug, end_min, (float(a_c), float(a_t)), body_ug, minutes[upto], c_sys)


def _lab_samples(
    cfg: SimConfig, meta: SessionMeta, release: ReleaseTruth, rng: np.random.Generator
) -> list[tuple[float, LabSample]]:
    """Circuit samples every few minutes from the drug start to the isolation end, systemic ones
    during the perfusion and after the release; measured with a proportional assay error."""
    t_drug = release.t_drug
    schedule, truth = _schedule(cfg), _pk_truth(cfg, meta)
    end_min = release.release_min
    circuit = np.arange(0.0, end_min * 60 + 1e-9, cfg.circuit_sample_every_s)
    systemic = np.concatenate(
        [
            np.arange(0.0, end_min * 60, cfg.systemic_sample_every_s),
            end_min * 60 + np.array(cfg.systemic_samples_after_end_s),
        ]
    )
    out = []
    sites: tuple[tuple[Literal["circuit", "systemic"], np.ndarray], ...] = (
        ("circuit", circuit),
        ("systemic", systemic),
    )
    for site, offsets in sites:
        for k, off in enumerate(offsets):
            t = t_drug + float(off)
            true = (
                float(concentration([off / 60], truth, schedule)[0])
                if site == "circuit"
                else float(release.systemic([t])[0])
            )
            measured = round(true * float(np.exp(rng.normal(0.0, cfg.assay_cv))), 4)
            reported = round(t + cfg.lab_delay_s, 3)
            sample = LabSample(
                t=round(t, 3),
                site=site,
                melphalan_ug_ml=measured,
                sample_id=f"{site[:3]}-{k + 1:02d}",
                reported_t=reported,
            )
            out.append((reported, sample))
    return out
