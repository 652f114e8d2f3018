"""Validation of the release model against the IHHP series, over simulated patients.

Draws a cohort like the Erasmus MC IHHP series (docs/melphalan.md): melphalan 1 mg/kg in 20
of 24 patients, 1.5 and 2 mg/kg in 2 each, a bolus in 8 of 24 and a 10-minute infusion in
the rest; body weight log-normal around 75 kg (SD 0.15 on the log scale, 50 to 110 kg: a
choice, the series' weights are not in the docs). Each patient is one simulated session
(``services.acquisition.simulator.simulate``, seed = the patient's number: the release is
drawn from the procedure's population for that seed), with systemic samples 1, 2, 5, 10, 15,
30, 60, 90 and 120 minutes after the release. No servers: the domain model, the simulator and
the pk service's own session code are called directly.

Reported, beside the series' figures:

* post-release systemic peak: the simulated truth (the release model's continuous maximum)
  and the observed Cmax of the samples after the release (with the assay error);
* systemic AUC after the release: by NCA of the samples (linear-up/log-down, isolation end to
  120 minutes) and the model's to infinity;
* regional peak (observed Cmax of the circuit samples) and regional AUC (NCA of the circuit
  samples over the isolation, and the circuit model's to infinity);
* the prediction: the pk service's predicted post-release peak with its 95 % prediction
  interval, made at the isolation's end with every circuit sample and the systemic samples of
  the isolation but none after the release ("withheld"); how often it holds the true peak and
  the observed Cmax; its median width, and again with the first systemic sample after the
  release (the simulator's default first, 2 minutes after the release).

Also the default simulated patient (75 kg, 1 mg/kg as a 10-minute infusion) over as many
seeds, and one limb perfusion check (ILP: 60 minutes, a steady leak of 0.3 %/min).

Usage:  .venv/bin/python scripts/validate_release.py [--patients 200] [--output docs/melphalan-validation.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isoperf.schemas import LabSample
from services.acquisition.simulator import LeakScenario, SimConfig, SimulatedSession, simulate
from services.pk import nca
from services.pk.session import PkSession

AFTER_S = (60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 5400.0, 7200.0)
FIRST_DEFAULT_S = SimConfig().systemic_samples_after_end_s[0]
# The IHHP series (docs/melphalan.md)
SERIES_PEAK = (4.2, 3.00, 18.33)  # median, range
SERIES_AUC_AFTER = 275.0
SERIES_REGIONAL_PEAK = (68.04, 42.3, 256.99)
SERIES_REGIONAL_AUC = 2382.0
SERIES_DOSES = ((1.0, 20), (1.5, 2), (2.0, 2))
SERIES_BOLUS = (8, 24)


@dataclass
class Patient:
    weight_kg: float
    mg_per_kg: float
    mode: str
    true_peak: float
    sample_peak: float
    auc_after_nca: float
    auc_after_model: float
    regional_peak: float
    regional_auc_nca: float
    regional_auc_model: float
    systemic_auc_total: float  # drug start to the last sample, linear-up/log-down
    covers_true: bool = False
    covers_sample: bool = False
    width_before: float = 0.0
    width_after: float = 0.0
    covers_true_after: bool = False


def cohort(n: int) -> list[SimConfig]:
    rng = np.random.default_rng(2008)
    doses = [d for d, k in SERIES_DOSES for _ in range(k)]
    out = []
    for _ in range(n):
        weight = float(np.clip(75.0 * np.exp(0.15 * rng.standard_normal()), 50.0, 110.0))
        dose = float(doses[rng.integers(len(doses))])
        bolus = rng.random() < SERIES_BOLUS[0] / SERIES_BOLUS[1]
        out.append(
            SimConfig(
                weight_kg=round(weight, 1),
                melphalan_mg_per_kg=dose,
                drug_mode="bolus" if bolus else "infusion",
                systemic_samples_after_end_s=AFTER_S,
            )
        )
    return out


def minutes(s: SimulatedSession, t: float) -> float:
    return (t - s.config.start_t - s.config.drug_start_at_s) / 60.0


def feed(s: SimulatedSession, samples: list[LabSample]) -> PkSession:
    """The pk service's session fed the events, the simulated (true) leakage and ``samples``."""
    pk = PkSession(meta=s.meta)
    for e in s.events:
        pk.add_event(e)
    for t, leak in s.truth[::5]:
        pk.add_leakage(t, leak)
    for x in samples:
        pk.add_sample(x)
    return pk


def patient(cfg: SimConfig, seed: int, predict: bool) -> Patient:
    s = simulate(cfg, seed)
    rt = s.release_truth
    assert rt is not None and s.pk_truth is not None
    end = rt.release_min
    lab = sorted((x for _, x in s.samples), key=lambda x: x.t)
    circuit = [(minutes(s, x.t), x.melphalan_ug_ml) for x in lab if x.site == "circuit"]
    systemic = [(minutes(s, x.t), x.melphalan_ug_ml) for x in lab if x.site == "systemic"]
    after = nca.after_release([t for t, _ in systemic], [c for _, c in systemic], end)
    assert after is not None and after.cmax is not None and after.auc_linlog is not None
    reg = nca.profile([t for t, _ in circuit], [c for _, c in circuit])
    assert reg.cmax is not None and reg.auc_linlog is not None
    # The circuit's own curve to infinity, as if never washed out: dose / (V (k_uptake + k_deg)).
    truth = s.pk_truth
    dose_ug = cfg.melphalan_mg_per_kg * cfg.weight_kg * 1000.0
    regional_inf = dose_ug / (truth.v_ml * (truth.k_uptake_min + truth.k_deg_min))
    p = Patient(
        weight_kg=cfg.weight_kg,
        mg_per_kg=cfg.melphalan_mg_per_kg,
        mode=cfg.drug_mode,
        true_peak=rt.peak()[0],
        sample_peak=after.cmax,
        auc_after_nca=after.auc_linlog,
        auc_after_model=rt.auc(),
        regional_peak=reg.cmax,
        regional_auc_nca=reg.auc_linlog,
        regional_auc_model=regional_inf,
        systemic_auc_total=nca.auc(*nca.from_zero([t for t, _ in systemic], [c for _, c in systemic]), "linlog"),
    )
    if predict:
        withheld = [x for x in lab if not (x.site == "systemic" and minutes(s, x.t) >= end)]
        t_end = s.config.start_t + s.config.isolation_end_at_s
        before = feed(s, withheld).estimate(t_end)
        assert before is not None and before.release_peak_low_ug_ml is not None
        lo, hi = before.release_peak_low_ug_ml, before.release_peak_high_ug_ml
        assert hi is not None
        p.covers_true = lo <= p.true_peak <= hi
        p.covers_sample = lo <= p.sample_peak <= hi
        p.width_before = hi - lo
        first = next(
            x for x in lab if x.site == "systemic" and abs(minutes(s, x.t) - end - FIRST_DEFAULT_S / 60) < 1e-6
        )
        with_first = feed(s, [*withheld, first]).estimate(first.t)
        assert with_first is not None and with_first.release_peak_low_ug_ml is not None
        lo2, hi2 = with_first.release_peak_low_ug_ml, with_first.release_peak_high_ug_ml
        assert hi2 is not None
        p.width_after = hi2 - lo2
        p.covers_true_after = lo2 <= p.true_peak <= hi2
    return p


def dist(xs: list[float], digits: int = 2) -> str:
    q5, q95 = np.percentile(xs, [5, 95])
    return (
        f"{statistics.median(xs):,.{digits}f} ({min(xs):,.{digits}f} to {max(xs):,.{digits}f}; "
        f"5th-95th {q5:,.{digits}f} to {q95:,.{digits}f})"
    )


def inside(xs: list[float], lo: float, hi: float) -> str:
    return f"{100 * sum(lo <= x <= hi for x in xs) / len(xs):.1f} %"


def within(x: float, ref: float) -> str:
    return f"{100 * (x / ref - 1):+.1f} %"


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def pct(k: int, n: int) -> str:
    return f"{k} of {n} ({100 * k / n:.1f} %)"


def report(n: int) -> str:
    t0 = time.time()
    ps = [patient(cfg, i, True) for i, cfg in enumerate(cohort(n))]
    plain = dataclasses.replace(SimConfig(), systemic_samples_after_end_s=AFTER_S)
    default = [patient(plain, i, False) for i in range(n)]
    ilp_cfg = SimConfig(
        procedure="ILP",
        perfusion_s=3600.0,
        leak=LeakScenario(kind="steady", rate_pct_min=0.3, release_pct=0.0),
        systemic_samples_after_end_s=AFTER_S,
    )
    ilp = [patient(ilp_cfg, i, False) for i in range(20)]
    elapsed = time.time() - t0
    peak_med, peak_lo, peak_hi = SERIES_PEAK
    rp_med, rp_lo, rp_hi = SERIES_REGIONAL_PEAK
    auc_ref, reg_auc_ref = SERIES_AUC_AFTER, SERIES_REGIONAL_AUC
    peak_ref = f"median {peak_med} (range {peak_lo:.2f} to {peak_hi})"
    lines = [
        "# Release model: validation against the IHHP series",
        "",
        (
            f"Made by `scripts/validate_release.py --patients {n}` (its docstring defines every figure); "
            f"run time {elapsed:.0f} s. Simulated figures: median (range; 5th to 95th percentile)."
        ),
        "",
        f"## {n} simulated IHHP patients, dosed as the series",
        "",
        row("figure", "IHHP series", "simulated", "check"),
        row("---", "---", "---", "---"),
    ]
    for label, xs in (
        ("post-release systemic peak, ug/mL: true", [p.true_peak for p in ps]),
        ("post-release systemic peak, ug/mL: samples' Cmax", [p.sample_peak for p in ps]),
    ):
        check = f"median {within(statistics.median(xs), peak_med)}; {inside(xs, peak_lo, peak_hi)} inside 3.0 to 18.3"
        lines.append(row(label, peak_ref, dist(xs), check))
    for label, xs in (
        ("systemic AUC after the release, ug*min/mL: NCA to 120 min", [p.auc_after_nca for p in ps]),
        ("systemic AUC after the release, ug*min/mL: model to infinity", [p.auc_after_model for p in ps]),
    ):
        lines.append(row(label, f"{auc_ref:g}", dist(xs, 0), f"median {within(statistics.median(xs), auc_ref)}"))
    rp = [p.regional_peak for p in ps]
    check = f"median {within(statistics.median(rp), rp_med)}; {inside(rp, rp_lo, rp_hi)} inside the range"
    lines.append(
        row(
            "regional peak, ug/mL (circuit samples' Cmax)",
            f"median {rp_med} (range {rp_lo} to {rp_hi})",
            dist(rp, 1),
            check,
        )
    )
    for label, xs in (
        (
            "regional AUC, ug*min/mL: NCA of the circuit samples (drug start to 30 min)",
            [p.regional_auc_nca for p in ps],
        ),
        ("regional AUC, ug*min/mL: circuit model to infinity, no washout", [p.regional_auc_model for p in ps]),
    ):
        lines.append(
            row(label, f"{reg_auc_ref:,.0f}", dist(xs, 0), f"median {within(statistics.median(xs), reg_auc_ref)}")
        )
    ratio = [p.regional_peak / p.true_peak for p in ps]
    exposure = [p.regional_auc_nca / p.systemic_auc_total for p in ps]
    lines += [
        row("regional peak / post-release systemic peak (true)", "68.04 / 4.2 = 16.2", dist(ratio, 1), ""),
        row(
            "regional AUC over the isolation / systemic AUC from the drug start to 120 min after the release",
            "2,382 / 275 = 8.7",
            dist(exposure, 1),
            "",
        ),
        "",
        (
            f"Doses drawn: {sum(p.mg_per_kg == 1.0 for p in ps)} at 1 mg/kg, {sum(p.mg_per_kg == 1.5 for p in ps)} "
            f"at 1.5, {sum(p.mg_per_kg == 2.0 for p in ps)} at 2; {sum(p.mode == 'bolus' for p in ps)} boluses; "
            f"weights {dist([p.weight_kg for p in ps], 1)} kg."
        ),
        "",
        "## The pk service's prediction of the post-release peak, systemic samples after the release withheld",
        "",
        row("", "value"),
        row("---", "---"),
        row("true peak inside the predicted 95 % interval", pct(sum(p.covers_true for p in ps), n)),
        row("samples' Cmax inside it", pct(sum(p.covers_sample for p in ps), n)),
        row("median width of the interval, withheld", f"{statistics.median([p.width_before for p in ps]):.2f} ug/mL"),
        row(
            f"median width with the first systemic sample ({FIRST_DEFAULT_S / 60:g} min after the release)",
            f"{statistics.median([p.width_after for p in ps]):.2f} ug/mL",
        ),
        row("patients whose interval narrowed with it", f"{sum(p.width_after < p.width_before for p in ps)} of {n}"),
        row("true peak inside the interval with the first sample", pct(sum(p.covers_true_after for p in ps), n)),
        "",
        f"## The default simulated patient (75 kg, 1 mg/kg as a 10-minute infusion), seeds 0 to {n - 1}",
        "",
        row("figure", "IHHP series", "simulated"),
        row("---", "---", "---"),
        row(
            "post-release systemic peak, true, ug/mL",
            peak_ref,
            f"{dist([p.true_peak for p in default])}; "
            f"{inside([p.true_peak for p in default], peak_lo, peak_hi)} inside",
        ),
        row(
            "post-release systemic peak, samples' Cmax, ug/mL",
            f"median {peak_med}",
            dist([p.sample_peak for p in default]),
        ),
        row(
            "systemic AUC after the release, NCA to 120 min",
            f"{auc_ref:g}",
            dist([p.auc_after_nca for p in default], 0),
        ),
        row("regional peak, ug/mL", f"median {rp_med}", dist([p.regional_peak for p in default], 1)),
        "",
        "## Limb perfusion (ILP), 20 simulated sessions: 60 minutes, a steady leak of 0.3 %/min",
        "",
        row("figure", "published", "simulated"),
        row("---", "---", "---"),
        row(
            "perfusate/systemic AUC ratio (regional AUC over the perfusion / systemic AUC from the drug start to "
            "120 min after the release)",
            "median 37.8",
            dist([p.regional_auc_nca / p.systemic_auc_total for p in ilp], 1),
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    text = report(args.patients)
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
