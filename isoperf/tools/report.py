"""A stored session as a clinical record: one HTML page (plots embedded, nothing fetched), and an
A4 PDF of it printed by headless Chromium, with the session id and the page number on every page.
``isoperf report THEATRE SESSION [--out FILE] [--pdf]``.

Times are shown twice: elapsed from the ``session_start`` event, and the local wall time in the
hospital's time zone (``ISOPERF_TIMEZONE``, an IANA name; UTC by default).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import matplotlib.pyplot as plt
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure
from tqdm import tqdm

import isoperf
from isoperf.tools import report_figures as rf
from isoperf.tools.review import ReviewError, Store
from services.alerts.rules import AlertRules

TEMPLATE = jinja2.Template((Path(__file__).with_name("report.html.j2")).read_text(encoding="utf-8"), autoescape=True)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "not available"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], empty: str, cls: str = "") -> Markup:
    """An HTML table without an index column; ``empty`` says in words that there is nothing."""
    if not rows:
        return Markup('<p class="empty">{}</p>').format(empty)
    head = Markup("").join(Markup("<th>{}</th>").format(h) for h in header)
    body = Markup("").join(
        Markup("<tr>{}</tr>").format(Markup("").join(Markup("<td>{}</td>").format("" if c is None else c) for c in r))
        for r in rows
    )
    return Markup('<table class="{}"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>').format(cls, head, body)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReviewError(
            f"unknown time zone {name!r} (ISOPERF_TIMEZONE): an IANA name such as Europe/Amsterdam"
        ) from None


def _context(data: dict[str, pd.DataFrame], tz: ZoneInfo, rules: AlertRules) -> rf.Context:
    events = rf.numbered_events(data["event"])
    start = rf.event_time(events, "session_start")
    times = [
        i
        for name in ("event", "reading", "leakage")
        for i in (data[name].index.min(), data[name].index.max())
        if len(data[name])
    ]
    zero = start if start is not None else min(times)
    clock = rf.Clock(zero, tz, "session start" if start is not None else "the first record")
    lo, hi = clock.minutes([min(times)])[0], clock.minutes([max(times)])[0]
    i0 = rf.event_time(events, "isolation_start")
    i1 = rf.event_time(events, "isolation_end")
    isolation = None
    if i0 is not None and i1 is not None:
        isolation = (float(clock.minutes([i0])[0]), float(clock.minutes([i1])[0]))
    return rf.Context(data, clock, (float(lo), float(hi) + 0.5), isolation, events, rules)


def _when(clock: rf.Clock, t: pd.Timestamp | None) -> str:
    return f"{clock.elapsed(t)} ({clock.local(t)})" if t is not None else "not recorded"


def _duration(a: pd.Timestamp | None, b: pd.Timestamp | None) -> str:
    return f"{(b - a).total_seconds() / 60:.0f} min" if a is not None and b is not None else "not available"


def _rules(meta: pd.Series) -> tuple[AlertRules, dict[str, float]]:
    raw = meta.get("thresholds")
    overrides: dict[str, float] = json.loads(raw) if isinstance(raw, str) and raw else {}
    rules = AlertRules()
    known = {f.name for f in dataclasses.fields(rules)}
    return dataclasses.replace(rules, **{k: v for k, v in overrides.items() if k in known}), overrides


def _header(ctx: rf.Context, meta: pd.Series, s: dict[str, Any]) -> list[tuple[str, str]]:
    ev, c = ctx.events, ctx.clock
    t = {
        k: rf.event_time(ev, k)
        for k in (
            "session_start",
            "isolation_start",
            "perfusion_dose",
            "drug_start",
            "drug_stop",
            "washout_start",
            "washout_end",
            "isolation_end",
            "session_end",
        )
    }
    dose_mg = ev.loc[ev["type"] == "drug_start", "dose_mg"].dropna() if "dose_mg" in ev else pd.Series(dtype=float)
    weight = meta.get("weight_kg")
    dose = "not recorded"
    if len(dose_mg):
        mg = float(dose_mg.iloc[0])
        dose = f"{mg:g} mg melphalan = {mg / float(weight):.2f} mg/kg" if weight else f"{mg:g} mg melphalan"
        mode = ev.loc[ev["type"] == "drug_start"].iloc[0]
        if mode.get("mode") == "infusion" and pd.notna(mode.get("duration_s")):
            dose += f", infused over {float(mode['duration_s']) / 60:g} min"
        elif isinstance(mode.get("mode"), str):
            dose += f", {mode['mode']}"
    if meta.get("melphalan_mg_per_kg"):
        dose += f" (prescribed {float(meta['melphalan_mg_per_kg']):g} mg/kg)"
    return [
        ("Procedure, tracer", f"{meta.get('procedure')}, {meta.get('isotope')}"),
        (
            "Patient weight, circuit volume",
            f"{_fmt(weight, ' kg', 0)}, {_fmt(meta.get('circuit_volume_ml'), ' mL', 0)}",
        ),
        ("Dose", dose),
        (
            "Time zero",
            f"{c.zero_what}: {c.zero.tz_convert(c.tz):%Y-%m-%d %H:%M:%S} {c.zone()}; times are elapsed h:mm:ss (local)",
        ),
        (
            "Isolation (clamps on to clamps off)",
            f"{_when(c, t['isolation_start'])} to {_when(c, t['isolation_end'])}: {_duration(t['isolation_start'], t['isolation_end'])}",
        ),
        (
            "Drug in circuit",
            f"{_when(c, t['drug_start'])} to the washout start {_when(c, t['washout_start'])}: {_duration(t['drug_start'], t['washout_start'])}",
        ),
        (
            "Washout",
            f"{_when(c, t['washout_start'])} to {_when(c, t['washout_end'])}: {_duration(t['washout_start'], t['washout_end'])}",
        ),
        ("Clamps off", _when(c, t["isolation_end"])),
        (
            "Session",
            f"{_when(c, t['session_start'])} to {_when(c, t['session_end'])}: {_fmt(s['duration_min'], ' min', 0)}",
        ),
    ]


def _alarm_record(ctx: rf.Context) -> tuple[Markup, Markup]:
    alerts, acks, silences, c = ctx.data["alert"], ctx.data["alert_ack"], ctx.data["alert_silence"], ctx.clock
    rows = []
    if len(alerts) and "id" in alerts:
        for aid, group in alerts.sort_index().groupby("id", sort=False):
            g = group.sort_index()
            kinds = list(g["kind"]) if "kind" in g else []
            raised = g.index[0]
            resolved = g.index[g["kind"] == "resolved"] if "kind" in g else []
            ack = acks[acks["id"] == aid] if len(acks) and "id" in acks else acks
            ack_text = ack_delay = "not acknowledged"
            if len(ack):
                ack_text = f"{ack['acknowledged_by'].iloc[0]} at {_when(c, ack.index[0])}"
                ack_delay = f"{(ack.index[0] - raised).total_seconds() / 60:.1f} min"
            levels = (
                " → ".join(dict.fromkeys(str(x) for x in g.loc[g["kind"] != "resolved", "severity"]))
                if "kind" in g
                else ""
            )
            rows.append(
                [
                    _when(c, raised),
                    f"{g['rule'].iloc[0]} ({levels})",
                    g["message"].iloc[0],
                    kinds.count("repeat"),
                    kinds.count("escalated") + kinds.count("unacknowledged"),
                    _when(c, resolved[0]) if len(resolved) else "still firing at the end of the record",
                    ack_text,
                    ack_delay,
                ]
            )
    record = table(
        [
            "raised",
            "rule (levels)",
            "first message",
            "reminders",
            "escalations",
            "resolved",
            "acknowledged by, at",
            "time to ack",
        ],
        rows,
        "No alarm was raised in this session.",
        "small",
    )
    srows = []
    if len(silences):
        for t, row in silences.sort_index().iterrows():
            srows.append(
                [
                    _when(c, t),
                    row.get("rule"),
                    f"{float(row.get('duration_s') or 0) / 60:g} min",
                    row.get("silenced_by"),
                    row.get("reason"),
                ]
            )
    return record, table(
        ["from", "rule", "for", "by", "reason"], srows, "No alarm was silenced in this session.", "small"
    )


def _deliveries(ctx: rf.Context) -> Markup:
    """Each notice on each channel: delivered or given up, after how many attempts, when."""
    d, c = ctx.data["alert_delivery"], ctx.clock
    rows = []
    for t, r in d.sort_index().iterrows() if len(d) else []:
        sent = pd.Timestamp(float(r["sent_at"]), unit="s", tz="UTC")
        rows.append(
            [
                _when(c, t),
                r.get("id"),
                r.get("kind"),
                r.get("channel"),
                r.get("outcome"),
                int(r["attempts"]),
                f"{c.local(sent)} ({(sent - t).total_seconds():.1f} s after)",
            ]
        )
    return table(
        ["alert at", "alert id", "notice", "channel", "outcome", "attempts", "sent (local)"],
        rows,
        "No notice went to a webhook or e-mail channel (none configured, or none recorded).",
        "small",
    )


def _melphalan(
    ctx: rf.Context, s: dict[str, Any], pk_last: pd.Series, dose_mg: float | None
) -> tuple[list[tuple[str, str]], Markup]:
    samples, c = ctx.data["sample"], ctx.clock
    t_drug = rf.event_time(ctx.events, "drug_start")
    match = rf.matching_auc(ctx.data, t_drug)

    def window(site: str) -> str:
        """The window the stored AUC covers: the first to the last sample the pk service had."""
        try:
            n = int(pk_last.get(f"n_{site}"))
        except (TypeError, ValueError):
            return ""
        mine = samples[samples["site"] == site].sort_index() if len(samples) else samples
        if t_drug is None or n < 2 or len(mine) < n:
            return ""
        used = mine.iloc[:n]
        a, b = ((used.index[[0, -1]] - t_drug).total_seconds() / 60).tolist()
        text = f" over {a:.0f} to {b:.0f} min after the drug start (first to last {site} sample)"
        if n < len(mine):
            text += f"; computed from {n} of the {len(mine)} samples stored"
        return text

    leaked = pk_last.get("leaked_mg")
    leaked_text = _fmt(leaked, " mg", 2)
    if dose_mg and isinstance(leaked, float) and pd.notna(leaked):
        leaked_text += f" = {100 * leaked / dose_mg:.2f} % of the dose (from the tracer leakage, an estimate)"
    fig = [
        ("Dose", _fmt(dose_mg, " mg", 0) if dose_mg else "not recorded"),
        ("Regional (circuit) AUC, linear-up/log-down", _fmt(s["regional_auc"], " µg·min/mL", 0) + window("circuit")),
        (
            "Perfusion-window circuit AUC (drug start to drug stop)",
            _fmt(pk_last.get("auc_circuit_perfusion"), " µg·min/mL", 0),
        ),
        ("Systemic AUC, linear-up/log-down", _fmt(s["systemic_auc"], " µg·min/mL", 2) + window("systemic")),
    ]
    if match:
        fig.append(
            (
                f"Regional / systemic AUC over the same window, {match['start_min']:.0f} to {match['end_min']:.0f} min",
                f"{_fmt(match['regional'], '', 0)} / {_fmt(match['systemic'], '', 2)} µg·min/mL = {_fmt(match['ratio'], '', 0)}",
            )
        )
    fig += [
        ("Regional / systemic ratio of the stored AUCs (unlike windows)", _fmt(s["auc_ratio"], "", 0)),
        (
            "Circuit Cmax, Tmax",
            f"{_fmt(pk_last.get('cmax_circuit'), ' µg/mL', 1)} at {_fmt(pk_last.get('tmax_circuit_min'), ' min', 0)} after the drug start",
        ),
        (
            "Systemic Cmax, Tmax",
            f"{_fmt(pk_last.get('cmax_systemic'), ' µg/mL', 3)} at {_fmt(pk_last.get('tmax_systemic_min'), ' min', 0)}",
        ),
        ("Systemic peak after the isolation", _fmt(s["systemic_peak_after_isolation_ug_ml"], " µg/mL", 3)),
        *_release_figures(pk_last),
        ("Drug leaked to the body", leaked_text),
        (
            "Circuit model, refitted to the circuit samples",
            (
                f"V = {_fmt(pk_last.get('v_ml'), '', 0)} ± {_fmt(pk_last.get('v_se_ml'), ' mL', 0)}, "
                f"tissue uptake k = {_fmt(pk_last.get('k_uptake_min'), '', 4)} "
                f"± {_fmt(pk_last.get('k_uptake_se_min'), ' /min', 4)} "
                f"({int(pk_last['n_circuit']) if pd.notna(pk_last.get('n_circuit')) else 0} samples)"
            ),
        ),
    ]
    rows = []
    for t, row in samples.sort_index().iterrows():
        reported = row.get("reported_t")
        rep = (
            _when(c, pd.Timestamp(float(reported), unit="s", tz="UTC"))
            if isinstance(reported, float) and pd.notna(reported)
            else "not recorded"
        )
        rows.append(
            [
                row.get("sample_id") if isinstance(row.get("sample_id"), str) else "",
                row["site"],
                f"{float(row['melphalan_ug_ml']):.3g}",
                _when(c, t),
                rep,
            ]
        )
    lab = table(
        ["sample id", "site", "melphalan, µg/mL", "drawn", "reported"],
        rows,
        "No lab results are stored for this session.",
        "small",
    )
    return fig, lab


def _release_figures(pk_last: pd.Series) -> list[tuple[str, str]]:
    """After the release: the release model's predicted peak (the last estimate's), the lab's, and the
    regional/systemic ratios over their stated windows (docs/melphalan.md)."""
    lo, hi = pk_last.get("release_peak_low_ug_ml"), pk_last.get("release_peak_high_ug_ml")
    interval = f" (95 % PI {_fmt(lo, '', 2)} to {_fmt(hi, ' µg/mL', 2)})" if lo is not None and pd.notna(lo) else ""
    n = pk_last.get("n_release")
    basis = f", refitted to {int(n)} systemic samples after the release" if n is not None and pd.notna(n) else ""
    iso_end, exp_end = pk_last.get("ratio_isolation_end_min"), pk_last.get("ratio_exposure_end_min")
    return [
        (
            "Systemic peak after the release, predicted (release model)",
            _fmt(pk_last.get("release_peak_ug_ml"), " µg/mL", 2) + interval + basis,
        ),
        (
            "Systemic Cmax, Tmax after the release (lab)",
            (
                f"{_fmt(pk_last.get('cmax_systemic_release'), ' µg/mL', 2)}"
                f" at {_fmt(pk_last.get('tmax_systemic_release_min'), ' min', 0)} after the drug start"
            ),
        ),
        (
            "Systemic AUC after the release (lab, linear-up/log-down, from the isolation end)",
            _fmt(pk_last.get("auc_systemic_release"), " µg·min/mL", 1),
        ),
        (
            "Regional / systemic AUC ratio over the isolation"
            + (f" (drug start to {_fmt(iso_end, ' min', 0)})" if iso_end is not None and pd.notna(iso_end) else ""),
            _fmt(pk_last.get("auc_ratio_isolation"), "", 0),
        ),
        (
            "Regional / systemic AUC ratio, each site's whole exposure"
            + (f" (systemic to {_fmt(exp_end, ' min', 0)})" if exp_end is not None and pd.notna(exp_end) else ""),
            _fmt(pk_last.get("auc_ratio_exposure"), "", 1),
        ),
    ]


def _appendix(
    audit: dict[str, Any], rules: AlertRules, overrides: dict[str, float], tz: ZoneInfo
) -> list[tuple[str, Markup]]:
    params = audit["params"]
    est = ", ".join(f"{f.name} = {getattr(params, f.name)}" for f in dataclasses.fields(params))
    rule = ", ".join(f"{f.name} = {getattr(rules, f.name)}" for f in dataclasses.fields(rules))
    return [
        ("Software", Markup("isoperf {}").format(isoperf.__version__)),
        ("Leakage estimator parameters", Markup("<code>{}</code>").format(est)),
        ("Alert rule parameters in force", Markup("<code>{}</code>").format(rule)),
        (
            "Of which this session's own thresholds",
            Markup("<code>{}</code>").format(overrides or "none: the protocol's defaults"),
        ),
        ("Time zone", Markup("{}").format(tz.key)),
        ("AUC method", Markup("linear-up/log-down (the linear trapezoid is stored as well)")),
    ]


def render(
    store: Store, theatre: str, session: str, out: Path, pdf: bool = False, show_progress: bool = True
) -> list[Path]:
    """Write the HTML report (and its A4 PDF); returns the files written."""
    assert store.settings is not None
    tz = _zone(store.settings.timezone)
    with tqdm(total=10 + int(pdf), desc=f"report {theatre}/{session}", unit="step", disable=not show_progress) as bar:
        bar.set_postfix_str("loading the session")
        data = store.load(theatre, session)
        s = store.summary(theatre, session, data)
        meta = data["session"].iloc[-1]
        rules, overrides = _rules(meta)
        ctx = _context(data, tz, rules)
        bar.update()
        audit = rf.counts_audit(data, str(meta.get("isotope")))
        sess = rf.pk_session(data)
        bar.update()
        steps: list[tuple[str, str, Callable[[], Figure]]] = [
            ("leakage", "Leakage during isolation, the alert levels, and the release", lambda: rf.leakage_plot(ctx)),
            ("circuit", "Circuit: flow, pressure, temperature, reservoir", lambda: rf.circuit_plot(ctx)),
            ("melphalan", "Melphalan: predicted, refitted and measured", lambda: rf.pk_plot(ctx, sess)),
            (
                "release",
                "Systemic melphalan after the release: predicted and measured",
                lambda: rf.release_plot(ctx),
            ),
            (
                "counts",
                "Probe counts, with what the leakage formula took from them",
                lambda: rf.counts_plot(ctx, audit),
            ),
            ("timeline", "Alarms and acknowledgements in time", lambda: rf.timeline_plot(ctx)),
        ]
        plots = {}
        for key, title, make in steps:
            bar.set_postfix_str(title)
            plots[key] = (title, _png(make()))
            bar.update()
        ev = ctx.events
        dose = ev.loc[ev["type"] == "drug_start", "dose_mg"].dropna() if "dose_mg" in ev else pd.Series(dtype=float)
        dose_mg = float(dose.iloc[0]) if len(dose) else None
        pk_last = data["pk"].iloc[-1] if len(data["pk"]) else pd.Series(dtype=object)
        melphalan, lab = _melphalan(ctx, s, pk_last, dose_mg)
        alarms, silences = _alarm_record(ctx)
        ref = audit["reference"]
        events = table(
            ["no.", "elapsed", "local time", "event"],
            [
                [int(r["no"]), ctx.clock.elapsed(t), ctx.clock.local(t), r.get("label") or r.get("type")]
                for t, r in ev.iterrows()
            ],
            "No events are stored for this session.",
        )
        faults = (
            data["leakage"].dropna(subset=["probe_fault"])
            if "probe_fault" in data["leakage"]
            else data["leakage"].iloc[0:0]
        )
        page = TEMPLATE.render(
            s=s,
            header=_header(ctx, meta, s),
            headline=[
                (
                    "Peak leakage during isolation",
                    _fmt(s["peak_leakage_isolation_pct"], " %")
                    + (
                        f" (95 % interval {s['peak_leakage_isolation_ci_low_pct']:.2f} to {s['peak_leakage_isolation_ci_high_pct']:.2f} %)"
                        if s["peak_leakage_isolation_ci_low_pct"] is not None
                        else ""
                    ),
                ),
                (
                    "After release (tracer from the organ reaching the body: expected, not a leak)",
                    _fmt(s["release_peak_pct"], " % at most"),
                ),
                ("Alarms raised / acknowledgements", f"{s['alarms']} / {s['acknowledgements']}"),
                ("Readings / lab samples", f"{s['readings']:,} / {s['lab_samples']}"),
            ],
            levels=[(name, getattr(rules, name)) for name in rf.SEVERITY_COLOURS],
            plots=plots,
            events=events,
            melphalan=melphalan,
            lab=lab,
            alarms=alarms,
            silences=silences,
            audit=audit,
            ref=ref,
            plateau_from=_when(ctx.clock, pd.Timestamp(ref["plateau_start_t"], unit="s", tz="UTC")) if ref else "",
            plateau_to=_when(ctx.clock, pd.Timestamp(ref["plateau_end_t"], unit="s", tz="UTC")) if ref else "",
            faults=table(
                ["elapsed", "local time", "fault"],
                [[ctx.clock.elapsed(t), ctx.clock.local(t), r["probe_fault"]] for t, r in faults.iterrows()],
                "No probe fault was detected.",
                "small",
            ),
            appendix=_appendix(audit, rules, overrides, tz),
            version=isoperf.__version__,
            generated=pd.Timestamp.now(tz=tz).strftime("%Y-%m-%d %H:%M %Z"),
            rules=rules,
            deliveries=_deliveries(ctx),
        )
        bar.update()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
        written = [out]
        if pdf:
            bar.set_postfix_str("printing the PDF")
            written.append(print_pdf(out, out.with_suffix(".pdf")))
            bar.update()
        bar.update()
    return written


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise ReviewError("the PDF needs Chromium (Debian: apt-get install chromium); the HTML report is written")


def headless(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a throw-away profile."""
    with tempfile.TemporaryDirectory() as profile:
        argv = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            *args,
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)


def print_pdf(page: Path, pdf: Path) -> Path:
    done = headless("--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.resolve().as_uri())
    if done.returncode != 0 or not pdf.exists():
        raise ReviewError(f"Chromium could not print {page}: {html.escape(done.stderr[-500:])}")
    return pdf
