"""Plot a simulated IHHP's circuit melphalan: lab samples against the live prediction.

The live prediction is what the PK service published at each moment (refitted
to the circuit samples the lab had reported by then), with its 95 % prediction
interval; the dots are the samples at their draw times, and the dashed line the
curve refitted to all of them afterwards. No stack needed: the same code as the
service, fed in event-time order.

Usage:  .venv/bin/python scripts/plot_pk.py [--seed 1] [--out docs/pk.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from isoperf.domain.melphalan import concentration
from isoperf.schemas import Event, LabSample
from services.acquisition.simulator import SimConfig, simulate
from services.pk.session import PkSession


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("docs/pk.png"))
    args = ap.parse_args()
    cfg = SimConfig()
    s = simulate(cfg, args.seed)
    pk = PkSession(meta=s.meta)
    t_drug = cfg.start_t + cfg.drug_start_at_s
    live: list[tuple[float, float, float, float, int]] = []
    for t, kind, item in s.timeline():
        if isinstance(item, Event):
            pk.add_event(item)
        elif isinstance(item, LabSample):
            pk.add_sample(item)
        elif kind == "counts" and int(t) % 15 == 0:
            est = pk.estimate(t)
            if est is not None and est.circuit_ug_ml is not None:
                assert est.circuit_low_ug_ml is not None and est.circuit_high_ug_ml is not None
                live.append(
                    (
                        (t - t_drug) / 60,
                        est.circuit_ug_ml,
                        est.circuit_low_ug_ml,
                        est.circuit_high_ug_ml,
                        est.n_circuit or 0,
                    )
                )
    m, c, lo, hi, _ = map(np.array, zip(*live, strict=True))
    fit = pk.fit()
    assert fit is not None
    grid = np.linspace(0, m.max(), 300)
    refitted = concentration(grid, fit.constants, pk.schedule())
    samples = sorted((x for _, x in s.samples if x.site == "circuit"), key=lambda x: x.t)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.fill_between(m, lo, hi, color="tab:blue", alpha=0.18, label="live 95 % prediction interval")
    ax.plot(m, c, color="tab:blue", lw=1.8, label="live prediction (as published)")
    ax.plot(grid, refitted, "--", color="tab:gray", lw=1.2, label=f"refitted to all {len(samples)} samples")
    ax.plot(
        [(x.t - t_drug) / 60 for x in samples],
        [x.melphalan_ug_ml for x in samples],
        "o",
        color="tab:red",
        label="circuit samples (lab)",
    )
    for x in samples:
        ax.annotate(
            "",
            xy=((x.t + cfg.lab_delay_s - t_drug) / 60, 2),
            xytext=((x.t - t_drug) / 60, 2),
            arrowprops={"arrowstyle": "-", "color": "tab:red", "alpha": 0.3},
        )
    ax.axvspan(0, cfg.infusion_s / 60, color="tab:orange", alpha=0.08, label="infusion (1 mg/kg, 10 min)")
    wash0 = (cfg.drug_stop_at_s - cfg.drug_start_at_s) / 60
    ax.axvspan(wash0, wash0 + cfg.washout_s / 60, color="tab:green", alpha=0.08, label="washout")
    ax.set_xlabel("minutes from drug start")
    ax.set_ylabel("melphalan in the circuit (ug/mL)")
    ax.set_title("Simulated IHHP: circuit samples against the live model (lines at the bottom: lab delay)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(
        f"wrote {args.out}; refitted V {fit.constants.v_ml:.0f} +- {fit.v_se_ml:.0f} mL"
        f" (true {s.pk_truth.v_ml if s.pk_truth else 0:.0f}),"
        f" uptake {fit.constants.k_uptake_min:.4f} +- {fit.k_uptake_se_min:.4f} /min"
        f" (true {s.pk_truth.k_uptake_min if s.pk_truth else 0:.4f})"
    )


if __name__ == "__main__":
    main()
