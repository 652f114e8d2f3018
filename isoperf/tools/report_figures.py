"""The report's plots and the figures computed for it from the stored record.

Every plot runs on one clock: minutes elapsed from a stated zero (the ``session_start`` event),
with the local wall time in the hospital's time zone under each tick. The isolation window is
shaded; every event is a numbered line, the numbers staggered where events are close, and
listed with their names in the report's event table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

from isoperf.domain.isotopes import HALF_LIFE_S, decay_constant_per_s
from isoperf.schemas import ISOLATION_STATES, Event, LabSample, SessionMeta
from isoperf.tools.boards import LEVEL_COLOURS
from services.alerts.rules import AlertRules
from services.leakage.estimator import LeakageEstimator
from services.pk import nca
from services.pk.session import PkSession

SEVERITY_COLOURS = LEVEL_COLOURS
EVENT_COLOUR = "#6C3483"
ISOLATION_FILL = "#FCF3CF"
RELEASE_COLOUR = "#8C8C8C"
WIDTH_IN = 7.4  # the A4 text width at the report's margins
plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7})


@dataclass(frozen=True)
class Clock:
    """Elapsed minutes from ``zero`` (UTC), shown with the local wall time in ``tz``."""

    zero: pd.Timestamp
    tz: ZoneInfo
    zero_what: str

    def minutes(self, index: Any) -> np.ndarray:
        return np.asarray((pd.DatetimeIndex(index) - self.zero).total_seconds() / 60.0, dtype=float)

    def at(self, minutes: float) -> pd.Timestamp:
        return self.zero + pd.Timedelta(minutes=minutes)

    def local(self, t: pd.Timestamp, seconds: bool = True) -> str:
        return str(t.tz_convert(self.tz).strftime("%H:%M:%S" if seconds else "%H:%M"))

    def elapsed(self, t: pd.Timestamp) -> str:
        s = round((t - self.zero).total_seconds())
        sign, s = ("-" if s < 0 else ""), abs(s)
        return f"{sign}{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"

    def zone(self) -> str:
        return f"{self.zero.tz_convert(self.tz).tzname()} ({self.tz.key})"

    def axis(self, ax: Axes) -> None:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.0f}\n{self.local(self.at(x), False)}"))
        ax.set_xlabel(f"minutes from {self.zero_what} (above), local time {self.zone()} (below)", fontsize=7)


@dataclass(frozen=True)
class Context:
    data: dict[str, pd.DataFrame]
    clock: Clock
    span: tuple[float, float]  # minutes shown on every plot
    isolation: tuple[float, float] | None  # minutes
    events: pd.DataFrame  # numbered, in time order (column "no")
    rules: AlertRules


def numbered_events(events: pd.DataFrame) -> pd.DataFrame:
    if events.empty:
        return events.assign(no=pd.Series(dtype=int))
    out = events.sort_index(kind="stable").copy()
    out["no"] = range(1, len(out) + 1)
    return out


def event_time(events: pd.DataFrame, kind: str) -> pd.Timestamp | None:
    if events.empty or "type" not in events:
        return None
    hit = events.index[events["type"] == kind]
    return hit[0] if len(hit) else None


def _stagger(xs: Sequence[float], width: float, levels: int = 4) -> list[int]:
    """A level per label so that labels closer than ``width`` do not overlap."""
    last: list[float] = [-math.inf] * levels
    out = []
    for x in xs:
        level = next((i for i in range(levels) if x - last[i] >= width), int(np.argmin(last)))
        last[level] = x
        out.append(level)
    return out


def frame(ctx: Context, ax: Axes, labels: bool = True) -> None:
    """Shade the isolation window, draw the numbered event lines, set the shared time axis."""
    lo, hi = ctx.span
    if ctx.isolation:
        ax.axvspan(*ctx.isolation, color=ISOLATION_FILL, zorder=0, lw=0)
    ev = ctx.events
    xs = list(ctx.clock.minutes(ev.index)) if len(ev) else []
    levels = _stagger(xs, (hi - lo) * 0.028)
    for x, level, no in zip(xs, levels, ev["no"] if len(ev) else [], strict=True):
        ax.axvline(x, color=EVENT_COLOUR, lw=0.6, alpha=0.55, zorder=1)
        if labels:
            ax.annotate(
                str(no),
                (x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 2 + 9 * level),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=6,
                color=EVENT_COLOUR,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": EVENT_COLOUR, "lw": 0.5},
                annotation_clip=False,
            )
    ax.set_xlim(lo, hi)
    ctx.clock.axis(ax)
    ax.grid(alpha=0.25, lw=0.4)


def _frame_legend() -> list[Any]:
    return [
        Rectangle((0, 0), 1, 1, fc=ISOLATION_FILL, ec="none", label="isolation (clamps on to clamps off)"),
        Line2D([], [], color=EVENT_COLOUR, lw=0.8, label="event n (table of events)"),
    ]


def _figure(rows: int, height: float, sharex: bool = True) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(rows, 1, figsize=(WIDTH_IN, height), sharex=sharex, squeeze=False)
    return fig, axes[:, 0]


def leakage_plot(ctx: Context) -> Figure:
    leak, rules = ctx.data["leakage"], ctx.rules
    fig, (ax,) = _figure(1, 3.9)
    if "percent" in leak and "state" in leak:
        during = leak[leak["state"].isin(ISOLATION_STATES)].dropna(subset=["percent"])
        released = leak[leak["state"] == "released"].dropna(subset=["percent"])
        x = ctx.clock.minutes(during.index)
        ax.fill_between(
            x, during["ci_low"].astype(float), during["ci_high"].astype(float), color="tab:blue", alpha=0.22, lw=0
        )
        ax.plot(x, during["percent"].astype(float), color="tab:blue", lw=1.1)
        ax.plot(
            ctx.clock.minutes(released.index), released["percent"].astype(float), color=RELEASE_COLOUR, lw=1.0, ls="--"
        )
    levels = [(name, float(getattr(rules, name))) for name in SEVERITY_COLOURS]
    top = max([lv for _, lv in levels if lv <= 10.0] + [float(leak["ci_high"].max()) if "ci_high" in leak else 0.0])
    for name, level in levels:
        ax.axhline(level, color=SEVERITY_COLOURS[name], lw=0.8, ls=":")
        ax.annotate(
            f"{name} {level:g} %",
            (1.0, level),
            xycoords=("axes fraction", "data"),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=6.5,
            color=SEVERITY_COLOURS[name],
            annotation_clip=False,
        )
    frame(ctx, ax)
    ax.set_ylim(min(-0.5, ax.get_ylim()[0]), top * 1.08 + 0.2)
    ax.set_ylabel("systemic leakage, % of the circuit tracer")
    handles = [
        Line2D([], [], color="tab:blue", lw=1.1, label="leakage during isolation"),
        Rectangle((0, 0), 1, 1, fc="tab:blue", alpha=0.22, label="95 % interval (its lower bound raises alarms)"),
        Line2D([], [], color=RELEASE_COLOUR, ls="--", label="after release: tracer from the organ, not a leak"),
        *_frame_legend(),
    ]
    ax.legend(handles=handles, loc="upper left", ncol=2, framealpha=0.9)
    fig.tight_layout()
    return fig


def counts_plot(ctx: Context, audit: dict[str, Any]) -> Figure:
    readings, leak = ctx.data["reading"], ctx.data["leakage"]
    fig, (ax,) = _figure(1, 3.6)
    if "counts" in readings:
        counts = readings["counts"].dropna()
        rate = counts.astype(float) / audit["interval_s"]
        ax.plot(ctx.clock.minutes(counts.index), rate.values, lw=0.4, color="#555555")
    ref = audit.get("reference")
    if ref is not None:
        lam = audit["lambda_per_s"]
        t_cal = audit["t_cal"]

        def seg(t0: float, t1: float, corrected: float, colour: str, label: str) -> None:
            # Drawn as counted (the reference is decay-corrected to the calibration time).
            ts = np.linspace(t0, t1, 20)
            level = ref["background_cps"] + (corrected - ref["background_cps"]) * np.exp(-lam * (ts - t_cal))
            x = ctx.clock.minutes(pd.to_datetime(ts, unit="s", utc=True))
            ax.plot(x, level, color=colour, lw=2.2, label=label, solid_capstyle="butt")

        start = ctx.clock.at(ctx.span[0]).timestamp()
        seg(start, t_cal, ref["background_cps"], "#1E8449", f"B, background {ref['background_cps']:.1f} cps")
        seg(
            ref["plateau_start_t"],
            ref["plateau_end_t"],
            ref["calibration_cps"],
            "#D35400",
            f"calibration plateau C_cal {ref['calibration_cps']:.1f} cps",
        )
        seg(
            ref["zero_start_t"],
            ref["zero_end_t"],
            ref["zero_cps"],
            "#C0392B",
            f"zero point C_0 {ref['zero_cps']:.1f} cps (k = {ref['k']:.2f})",
        )
    if "probe_fault" in leak:
        faults = leak.dropna(subset=["probe_fault"])
        for i, t in enumerate(faults.index):
            x = float(ctx.clock.minutes([t])[0])
            ax.axvspan(
                x - 0.5 / 60, x + 0.5 / 60, color="#E74C3C", alpha=0.5, lw=0, label="probe fault" if i == 0 else None
            )
    frame(ctx, ax)
    ax.set_ylabel("count rate as counted, counts/s")
    ax.set_ylim(bottom=0)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + _frame_legend(), loc="lower right", ncol=2, framealpha=0.9)
    fig.tight_layout()
    return fig


CIRCUIT = (
    ("flow", "pump flow, mL/min"),
    ("pressure", "pressure, mmHg"),
    ("temperature", "perfusate, °C"),
    ("reservoir", "reservoir, mL"),
)


def circuit_plot(ctx: Context) -> Figure:
    readings = ctx.data["reading"]
    fig, axes = _figure(len(CIRCUIT), 7.2)
    for i, (ax, (signal, label)) in enumerate(zip(axes, CIRCUIT, strict=True)):
        if signal in readings:
            series = readings[signal].dropna()
            ax.plot(ctx.clock.minutes(series.index), series.values.astype(float), lw=0.6, color="tab:blue")
        frame(ctx, ax, labels=i == 0)
        ax.set_ylabel(label)
        if i < len(CIRCUIT) - 1:
            ax.set_xlabel("")
    axes[0].legend(handles=_frame_legend(), loc="lower right", framealpha=0.9)
    fig.tight_layout()
    return fig


def pk_session(data: dict[str, pd.DataFrame]) -> PkSession | None:
    """The pk service's session rebuilt from the record: the final refit of the circuit model."""
    meta_rows, events, samples = data["session"], data["event"], data["sample"]
    if meta_rows.empty or events.empty:
        return None
    m = meta_rows.iloc[-1]
    try:
        meta = SessionMeta(
            t=float(meta_rows.index[-1].timestamp()) if isinstance(meta_rows.index, pd.DatetimeIndex) else 0.0,
            procedure=m["procedure"],
            isotope=m["isotope"],
            weight_kg=float(m["weight_kg"]),
            circuit_volume_ml=float(m["circuit_volume_ml"]),
            melphalan_mg_per_kg=float(m["melphalan_mg_per_kg"]),
        )
    except (KeyError, ValueError, TypeError):
        return None
    sess = PkSession(meta=meta)
    for t, row in events.iterrows():
        fields = {
            k: row[k]
            for k in ("activity_mbq", "dose_mg", "mode", "duration_s", "volume_ml", "text")
            if k in row and pd.notna(row[k])
        }
        try:
            sess.add_event(Event.model_validate({"t": t.timestamp(), "type": row["type"], **fields}))
        except ValueError:
            continue
    for t, row in samples.iterrows():
        sid = row.get("sample_id")
        sess.add_sample(
            LabSample(
                t=t.timestamp(),
                site=row["site"],
                melphalan_ug_ml=float(row["melphalan_ug_ml"]),
                sample_id=sid if isinstance(sid, str) else None,
            )
        )
    return sess if sess.t0 is not None else None


def pk_plot(ctx: Context, sess: PkSession | None) -> Figure:
    pk, samples = ctx.data["pk"], ctx.data["sample"]
    fig, (circ, body) = _figure(2, 5.4)
    if "circuit_ug_ml" in pk:
        live = pk.dropna(subset=["circuit_ug_ml"])
        x = ctx.clock.minutes(live.index)
        circ.fill_between(
            x,
            live["circuit_low_ug_ml"].astype(float),
            live["circuit_high_ug_ml"].astype(float),
            alpha=0.18,
            lw=0,
            label="95 % prediction interval (live)",
        )
        circ.plot(
            x, live["circuit_ug_ml"].astype(float), lw=0.9, label="predicted live (fit of the samples known then)"
        )
    fit = sess.fit() if sess is not None else None
    if sess is not None and fit is not None and sess.t0 is not None:
        end = event_time(ctx.events, "isolation_end")
        end_min = (end.timestamp() - sess.t0) / 60 if end is not None else 120.0
        grid = np.linspace(0.0, end_min, 400)
        c, _, _ = fit.predict(grid, sess.schedule())
        x = ctx.clock.minutes(pd.to_datetime(sess.t0 + grid * 60, unit="s", utc=True))
        circ.plot(x, c, color="black", lw=1.0, ls="-.", label="final refit of the circuit model")
    if "systemic_ug_ml" in pk:
        s = pk.dropna(subset=["systemic_ug_ml"])
        body.plot(
            ctx.clock.minutes(s.index), s["systemic_ug_ml"].astype(float), lw=0.9, label="estimated from the leak"
        )
    for ax, site in ((circ, "circuit"), (body, "systemic")):
        if len(samples):
            _lab_points(ctx, ax, samples[samples["site"] == site], "lab samples (at draw time)")
        frame(ctx, ax, labels=ax is circ)
        ax.set_ylabel(f"{site} melphalan, µg/mL")
        ax.legend(loc="upper right" if ax is circ else "upper left", framealpha=0.9)
    circ.set_xlabel("")
    fig.tight_layout()
    return fig


def _lab_points(ctx: Context, ax: Axes, samples: pd.DataFrame, label: str) -> None:
    """Lab samples as red dots at their draw times."""
    x = ctx.clock.minutes(samples.index)
    ax.plot(x, samples["melphalan_ug_ml"].astype(float), "o", ms=3.5, color="tab:red", label=label)


def release_plot(ctx: Context) -> Figure:
    """The pk service's last prediction of the systemic curve after the release (``pk_release``) with its
    95 % interval, the predicted peak as it stood at each estimate, and the systemic lab samples; from
    just before the release to an hour after it (or the last systemic sample, if later)."""
    curve, pk, samples = ctx.data.get("pk_release", pd.DataFrame()), ctx.data["pk"], ctx.data["sample"]
    systemic = samples[samples["site"] == "systemic"] if len(samples) else samples
    fig, (ax,) = _figure(1, 3.4)
    frame(ctx, ax)
    lo, hi = ctx.span
    if "ug_ml" in curve and len(curve):
        x, c = ctx.clock.minutes(curve.index), curve["ug_ml"].astype(float).to_numpy()
        after = c > 0
        if after.any():
            start = float(x[after].min())
            last = float(ctx.clock.minutes(systemic.index).max()) if len(systemic) else start
            lo, hi = start - 5.0, max(start + 60.0, last + 5.0)
        shown = (x >= lo) & (x <= hi)
        ax.fill_between(
            x[shown],
            curve["low_ug_ml"].astype(float).to_numpy()[shown],
            curve["high_ug_ml"].astype(float).to_numpy()[shown],
            alpha=0.18,
            lw=0,
            label="95 % prediction interval",
        )
        n = int(float(curve["n_release"].iloc[-1])) if "n_release" in curve else 0
        ax.plot(x[shown], c[shown], lw=0.9, label=f"predicted (the last prediction; {n} samples after the release)")
    if "release_peak_ug_ml" in pk:
        peak = pk.dropna(subset=["release_peak_ug_ml"])
        ax.plot(
            ctx.clock.minutes(peak.index),
            peak["release_peak_ug_ml"].astype(float),
            color=RELEASE_COLOUR,
            lw=0.8,
            ls="--",
            label="predicted peak, as it stood at each estimate",
        )
    if len(systemic):
        _lab_points(ctx, ax, systemic, "systemic lab samples (at draw time)")
    ax.set_xlim(lo, hi)
    ax.set_ylabel("systemic melphalan, µg/mL")
    ax.legend(loc="upper right", framealpha=0.9)
    fig.tight_layout()
    return fig


ALARM_MARKS = {
    "new": ("v", "raised (colour: severity)"),
    "escalated": ("v", "escalated to a higher level"),
    "eased": ("^", "eased to a lower level"),
    "repeat": (".", "reminder (not a new alarm)"),
    "unacknowledged": ("D", "unacknowledged: sent to further channels"),
    "resolved": ("^", "resolved"),
}


def timeline_plot(ctx: Context) -> Figure:
    alerts, acks = ctx.data["alert"], ctx.data["alert_ack"]
    fig, (ax,) = _figure(1, 2.9)
    rows = {"acknowledged": 0, "reminders": 1, "alarms": 2}
    if len(alerts) and "kind" in alerts:
        for t, row in alerts.iterrows():
            kind = str(row.get("kind"))
            marker, _ = ALARM_MARKS.get(kind, ("x", ""))
            x = float(ctx.clock.minutes([t])[0])
            if kind == "repeat":
                ax.plot([x], [rows["reminders"]], marker, color=SEVERITY_COLOURS.get(str(row["severity"]), "k"), ms=6)
            else:
                colour = "#1E8449" if kind == "resolved" else SEVERITY_COLOURS.get(str(row["severity"]), "k")
                ax.plot([x], [rows["alarms"]], marker, color=colour, ms=6, mfc=colour if kind != "eased" else "white")
    if len(acks):
        ax.plot(ctx.clock.minutes(acks.index), [rows["acknowledged"]] * len(acks), "P", color="black", ms=6)
    frame(ctx, ax)
    ax.set_yticks(list(rows.values()), list(rows.keys()))
    ax.set_ylim(-0.7, 2.7)
    handles = [
        Line2D([], [], ls="", marker="v", color=c, label=f"{name} raised") for name, c in SEVERITY_COLOURS.items()
    ] + [
        Line2D([], [], ls="", marker="^", color="#1E8449", label="resolved"),
        Line2D([], [], ls="", marker="^", mfc="white", color="grey", label="eased"),
        Line2D([], [], ls="", marker="D", color="grey", label="unacknowledged: further channels"),
        Line2D([], [], ls="", marker=".", color="grey", ms=8, label="reminder (same alarm)"),
        Line2D([], [], ls="", marker="P", color="black", label="acknowledged"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.42), ncol=5, fontsize=6.5, frameon=False)
    fig.tight_layout()
    return fig


# -- figures computed for the record ----------------------------------------------------------------


def counts_audit(data: dict[str, pd.DataFrame], isotope: str) -> dict[str, Any]:
    """Re-run the leakage estimator on the stored counts and events: the reference it used (B,
    C_cal, C_0, k), the counting interval, the decay correction, the peak it finds."""
    readings, events = data["reading"], data["event"]
    counts = readings["counts"].dropna() if "counts" in readings else pd.Series(dtype=float)
    t = np.asarray([ts.timestamp() for ts in counts.index])
    interval = float(np.median(np.diff(t))) if t.size > 1 else 1.0
    out: dict[str, Any] = {
        "interval_s": interval,
        "lambda_per_s": decay_constant_per_s(isotope),
        "half_life_h": HALF_LIFE_S[isotope] / 3600,
        "t_cal": None,
        "reference": None,
        "recomputed_peak_pct": None,
    }
    est = LeakageEstimator()
    est.set_isotope(isotope)
    for ts, row in events.iterrows():
        activity = row.get("activity_mbq")
        est.add_event(str(row["type"]), ts.timestamp(), float(activity) if pd.notna(activity) else None)
    cal = est.events.get("calibration_dose")
    out["t_cal"] = cal[0] if cal else None
    peak = None
    for ts, n in zip(t, counts.to_numpy(dtype=float), strict=True):
        est.add_counts(float(ts), float(n), interval)
        for p in est.update():
            if p.percent is not None and p.state in ISOLATION_STATES:
                peak = p.percent if peak is None else max(peak, p.percent)
    out["reference"] = est.reference() if out["t_cal"] is not None else None
    out["recomputed_peak_pct"] = peak
    out["params"] = est.params
    return out


def matching_auc(data: dict[str, pd.DataFrame], t0: pd.Timestamp | None) -> dict[str, Any] | None:
    """Regional and systemic AUC over the window both sites were sampled (linear-up/log-down)."""
    samples = data["sample"]
    if t0 is None or samples.empty:
        return None
    prof = {}
    for site in ("circuit", "systemic"):
        mine = samples[samples["site"] == site].sort_index()
        if len(mine) < 2:
            return None
        prof[site] = (list((mine.index - t0).total_seconds() / 60), list(mine["melphalan_ug_ml"].astype(float)))
    start = max(prof["circuit"][0][0], prof["systemic"][0][0])
    end = min(prof["circuit"][0][-1], prof["systemic"][0][-1])
    if end <= start:
        return None
    reg = nca.auc_window(*prof["circuit"], start, end, "linlog")
    sys_ = nca.auc_window(*prof["systemic"], start, end, "linlog")
    return {
        "start_min": start,
        "end_min": end,
        "regional": reg,
        "systemic": sys_,
        "ratio": nca.ratio(reg, sys_),
        "windows": {site: (p[0][0], p[0][-1]) for site, p in prof.items()},
    }
