"""Accuracy benchmark of the leakage estimator over simulated sessions with known truth.

For each scenario, over ``--seeds`` sessions, on every point from the zero
point to the start of the washout (readings during the washout are confounded
by the circuit emptying, and flagged by the state):

* absolute error against the simulator's truth: median and p95 (pooled);
* coverage: how often the truth lies inside the 95 % interval;
* delay from the truth crossing 1 % (and 2 %) to the interval's lower bound
  crossing it (median over sessions; a level counts as crossed by the truth
  within 0.01 pp, so a 2 % step that approaches 2 % counts);
* false confident crossings of 1 % (lower bound above 1 %) in a 10-hour
  perfusion without any leak, counted as separate episodes.

The estimator is the service's own code, fed the simulator's counts and events
in order, exactly as the leakage service is (deterministic in event time).

Usage:  .venv/bin/python scripts/bench_accuracy.py [--seeds 10] [--output docs/accuracy.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isoperf.schemas import Leakage
from services.acquisition.simulator import LeakScenario, SimConfig, SimulatedSession, simulate
from services.leakage.estimator import EstimatorParams, LeakageEstimator

NO_RELEASE = LeakScenario(release_pct=0.0)


@dataclass(frozen=True)
class Scenario:
    name: str
    config: SimConfig


def scenarios() -> list[Scenario]:
    base = SimConfig(leak=NO_RELEASE)
    steady = dataclasses.replace(NO_RELEASE, kind="steady", rate_pct_min=0.3)
    sudden = dataclasses.replace(NO_RELEASE, kind="step", step_pct=2.0, step_tau_s=5.0)
    mixing = dataclasses.replace(NO_RELEASE, kind="step", step_pct=2.0, step_tau_s=90.0)
    r = dataclasses.replace
    return [
        Scenario("no leak, Tc-99m", base),
        Scenario("no leak, I-131", r(base, isotope="I-131")),
        Scenario("steady 0.3 %/min, Tc-99m", r(base, leak=steady)),
        Scenario("steady 0.3 %/min, I-131", r(base, isotope="I-131", leak=steady)),
        Scenario("2 % sudden step (5 s), Tc-99m", r(base, leak=sudden)),
        Scenario("2 % step mixing in (90 s), Tc-99m", r(base, leak=mixing)),
        Scenario("2 % sudden step, I-131", r(base, isotope="I-131", leak=sudden)),
        Scenario("steady, shine-through 30 %", r(base, leak=steady, shine_through_fraction=0.3)),
        Scenario("steady, k = 37", r(base, leak=steady, activity_ratio=37.0)),
        Scenario("2 % sudden step, k = 37", r(base, leak=sudden, activity_ratio=37.0)),
        Scenario("steady, low count rate (rise 100 cps)", r(base, leak=steady, calibration_rise_cps=100.0)),
        Scenario("2 % sudden step, low count rate", r(base, leak=sudden, calibration_rise_cps=100.0)),
    ]


def run_estimator(session: SimulatedSession, params: EstimatorParams) -> list[Leakage]:
    est = LeakageEstimator(params)
    est.set_isotope(session.config.isotope)
    for e in session.events:
        est.add_event(e.type, e.t, e.activity_mbq)
    points: list[Leakage] = []
    dt = session.config.counts_dt_s
    for t, v in session.readings["counts"]:
        est.add_counts(t, v, dt)
        points.extend(est.update())
    return points


def _crossing_delay(times: np.ndarray, truth: np.ndarray, low: np.ndarray, level: float) -> float | None:
    hit = np.nonzero(truth >= level - 0.01)[0]
    if hit.size == 0:
        return None
    t_true = times[hit[0]]
    conf = np.nonzero((low > level) & (times >= t_true - 600))[0]
    return float(times[conf[0]] - t_true) if conf.size else float("inf")


@dataclass
class Result:
    errors: list[float]
    covered: int
    n: int
    delays: dict[float, list[float]]


def evaluate(cfg: SimConfig, seeds: Sequence[int], params: EstimatorParams) -> Result:
    res = Result([], 0, 0, {1.0: [], 2.0: []})
    for seed in seeds:
        session = simulate(cfg, seed)
        truth = dict(session.truth)
        washout = cfg.start_t + cfg.drug_stop_at_s
        pts = [p for p in run_estimator(session, params) if p.percent is not None and p.t < washout]
        t = np.array([p.t for p in pts])
        est = np.array([p.percent for p in pts], dtype=float)
        low = np.array([p.ci_low for p in pts], dtype=float)
        high = np.array([p.ci_high for p in pts], dtype=float)
        tr = np.array([truth[p.t] for p in pts])
        res.errors.extend(np.abs(est - tr).tolist())
        res.covered += int(np.sum((low <= tr) & (tr <= high)))
        res.n += len(pts)
        for level in res.delays:
            d = _crossing_delay(t, tr, low, level)
            if d is not None:
                res.delays[level].append(d)
    return res


def false_crossings(seeds: Sequence[int], params: EstimatorParams, hours: float = 10.0) -> tuple[int, int]:
    """Confident crossings of 1 % (lower bound above it) during ``hours`` of perfusion without a leak."""
    cfg = SimConfig(leak=NO_RELEASE, perfusion_s=hours * 3600.0, observation_s=0.0)
    episodes = points = 0
    for seed in seeds:
        session = simulate(cfg, seed)
        washout = cfg.start_t + cfg.drug_stop_at_s
        above = [p.ci_low is not None and p.ci_low > 1.0 for p in run_estimator(session, params) if p.t < washout]
        points += len(above)
        episodes += sum(1 for a, b in zip([False, *above], above, strict=False) if b and not a)
    return episodes, points


def _fmt_delay(values: list[float]) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    missed = sum(1 for v in values if v == float("inf"))
    text = "never" if med == float("inf") else f"{med:.0f} s"
    return text + (f" ({missed} of {len(values)} never)" if missed and med != float("inf") else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--long-seeds", type=int, default=3, help="10-hour no-leak sessions for false crossings")
    ap.add_argument("--output", type=Path, help="also write the table as Markdown here")
    args = ap.parse_args()
    params = EstimatorParams()
    seeds = range(args.seeds)
    started = time.monotonic()
    lines = [
        (
            "| scenario | abs error median | abs error p95 | 95 % interval coverage "
            "| delay to confident 1 % | delay to confident 2 % |"
        ),
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for sc in scenarios():
        r = evaluate(sc.config, seeds, params)
        err = np.array(r.errors)
        lines.append(
            f"| {sc.name} | {np.median(err):.3f} pp | {np.percentile(err, 95):.3f} pp | {r.covered / r.n:.1%} "
            f"| {_fmt_delay(r.delays[1.0])} | {_fmt_delay(r.delays[2.0])} |"
        )
        print(lines[-1], flush=True)
    episodes, n = false_crossings(range(args.long_seeds), params)
    hours = args.long_seeds * 10
    summary = (
        "\nA 2 % step never gives a confident crossing of 2 % (the lower bound of an interval that covers a"
        " truth of 2 % stays below 2 %): that column is for leaks that pass 2 %.\n"
        f"\nNo leak, Tc-99m, {hours} simulated hours of perfusion ({args.long_seeds} sessions of 10 h, {n} points): "
        f"{episodes} false confident crossings of 1 %."
    )
    print(summary)
    header = (
        f"Defaults: calibration rise 300 cps over a 40 cps background, k = 10, counts every 1 s; "
        f"{args.seeds} seeds per scenario; points from the zero point to the washout. "
        f"Run time {time.monotonic() - started:.0f} s.\n\n"
    )
    if args.output:
        args.output.write_text(
            "# Leakage accuracy\n\nMeasured by `scripts/bench_accuracy.py` (see its docstring for the definitions).\n"
            + header
            + "\n".join(lines)
            + "\n"
            + summary
            + "\n"
        )


if __name__ == "__main__":
    main()
