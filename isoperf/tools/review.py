"""Stored sessions after the fact, from Python and from the command line.

    from isoperf.tools.review import Store
    store = Store()                       # ISOPERF_INFLUX_* settings, as the services use
    store.sessions()                      # one row per stored session (a DataFrame)
    data = store.load("theatre-1", "s-1") # a DataFrame per measurement (time-indexed, UTC)
    store.summary("theatre-1", "s-1")     # the figures of the record

``isoperf sessions``, ``isoperf summary``, ``isoperf export`` (CSV or Parquet) and
``isoperf report`` (HTML, and PDF through headless Chromium) are built on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
from tqdm import tqdm

from isoperf.influx import InfluxClient, InfluxError, public_url
from isoperf.queries import DURING_ISOLATION, session_where
from isoperf.schemas import ISOLATION_STATES
from isoperf.settings import ServiceSettings

# Measurement -> fields to load (tags come along); readings are pivoted, one column per signal.
TABLES: dict[str, str] = {
    "event": '"label", "type", "activity_mbq", "dose_mg", "mode", "duration_s", "volume_ml", "text"',
    "sample": '"site", "melphalan_ug_ml", "sample_id", "reported_t"',
    "leakage": '"percent", "ci_low", "ci_high", "rate_pct_min", "state", "probe_fault"',
    "pk": "*",
    "pk_release": '"ug_ml", "low_ug_ml", "high_ug_ml", "predicted_at", "projected", "n_release"',
    "alert": '"rule", "severity", "kind", "status", "value", "threshold", "message", "id", "silenced"',
    "alert_ack": '"id", "acknowledged_by", "matched"',
    "alert_silence": '"rule", "duration_s", "reason", "silenced_by"',
    "alert_delivery": '"id", "channel", "kind", "outcome", "attempts", "sent_at"',
}
READING_CHUNK = 20_000  # rows per query, under any max-row-limit a server may set


class ReviewError(Exception):
    """A clear reason why a stored session cannot be listed, shown or exported."""


@dataclass
class Store:
    settings: ServiceSettings | None = None

    def __post_init__(self) -> None:
        self.settings = self.settings or ServiceSettings()

    # -- queries -------------------------------------------------------------------------------

    def _rows(self, queries: list[str]) -> list[list[dict[str, Any]]]:
        assert self.settings is not None
        settings = self.settings

        async def run() -> list[list[dict[str, Any]]]:
            async with InfluxClient(settings) as influx:
                return [await influx.rows(q) for q in queries]

        url = public_url(settings.influx_url)
        try:
            return asyncio.run(run())
        except InfluxError as exc:
            if "database not found" in str(exc):
                raise ReviewError(f"no database {settings.influx_database!r} at {url}: nothing stored yet") from None
            raise ReviewError(f"InfluxDB at {url} refused the query: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ReviewError(f"cannot reach InfluxDB at {url}: {exc}") from None

    def sessions(self) -> pd.DataFrame:
        """Every stored session: start, theatre, session, procedure, duration, peak leakage during isolation, alarms."""
        by = 'GROUP BY "theatre", "session"'
        meta, first, last, peak, alarms = self._rows(
            [
                'SELECT last("procedure") AS "procedure", last("isotope") AS "isotope" FROM "session" ' + by,
                'SELECT first("label") FROM "event" ' + by,
                'SELECT last("label") FROM "event" ' + by,
                f'SELECT max("percent") FROM "leakage" WHERE {DURING_ISOLATION} ' + by,
                """SELECT count("message") FROM "alert" WHERE "kind" = 'new' """ + by,
            ]
        )
        columns = [
            "start",
            "theatre",
            "session",
            "procedure",
            "isotope",
            "duration_min",
            "peak_leakage_isolation_pct",
            "alarms",
        ]
        if not meta:
            return pd.DataFrame(columns=columns)

        def index(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
            return {(r["theatre"], r["session"]): r for r in rows}

        f, la, pe, al = index(first), index(last), index(peak), index(alarms)
        out = []
        for m in meta:
            key = (m["theatre"], m["session"])
            t0 = f[key]["time"] if key in f else None
            t1 = la[key]["time"] if key in la else None
            out.append(
                {
                    "start": pd.to_datetime(t0, unit="ms", utc=True) if t0 is not None else pd.NaT,
                    "theatre": key[0],
                    "session": key[1],
                    "procedure": m["procedure"],
                    "isotope": m["isotope"],
                    "duration_min": (t1 - t0) / 60_000 if t0 is not None and t1 is not None else None,
                    "peak_leakage_isolation_pct": pe[key]["max"] if key in pe else None,
                    "alarms": int(al[key]["count"]) if key in al else 0,
                }
            )
        return pd.DataFrame(out, columns=columns).sort_values("start", ignore_index=True)

    def load(
        self, theatre: str, session: str, progress: Callable[[str], None] | None = None
    ) -> dict[str, pd.DataFrame]:
        """A DataFrame per measurement of one session, indexed by UTC time; ``reading`` is wide."""
        w = session_where(theatre, session)
        meta = self._rows([f'SELECT * FROM "session" WHERE {w} ORDER BY time DESC LIMIT 1'])[0]
        if not meta:
            raise ReviewError(f"no session {theatre}/{session} is stored")
        out: dict[str, pd.DataFrame] = {"session": _frame(meta)}
        for name, fields in TABLES.items():
            if progress:
                progress(name)
            out[name] = _frame(self._rows([f'SELECT {fields} FROM "{name}" WHERE {w}'])[0])
        if progress:
            progress("reading")
        out["reading"] = self._readings(w)
        return out

    def _readings(self, w: str) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            chunk = self._rows(
                [f'SELECT "value", "signal" FROM "reading" WHERE {w} LIMIT {READING_CHUNK} OFFSET {offset}']
            )[0]
            rows += chunk
            offset += READING_CHUNK
            if len(chunk) < READING_CHUNK:
                break
        if not rows:
            return pd.DataFrame()
        long = _frame(rows)
        return long.pivot_table(index=long.index, columns="signal", values="value", aggfunc="last").rename_axis(
            columns=None
        )

    def summary(self, theatre: str, session: str, data: dict[str, pd.DataFrame] | None = None) -> dict[str, Any]:
        """The figures of the record for one session."""
        d = data or self.load(theatre, session)
        meta = d["session"].iloc[-1]
        events, leak, pk, alerts = d["event"], d["leakage"], d["pk"], d["alert"]
        times = {
            e: events.index[events["type"] == e]
            for e in ("session_start", "session_end", "isolation_start", "isolation_end")
        }
        start = (
            times["session_start"][0] if len(times["session_start"]) else (events.index.min() if len(events) else None)
        )
        end = times["session_end"][0] if len(times["session_end"]) else (events.index.max() if len(events) else None)
        during, released = leak, leak.iloc[0:0]
        if "state" in leak:
            during = leak[leak["state"].isin(ISOLATION_STATES)]
            released = leak[leak["state"] == "released"]
        last_pk = pk.iloc[-1] if len(pk) else pd.Series(dtype=object)
        new = alerts[alerts["kind"] == "new"] if "kind" in alerts else alerts
        return {
            "theatre": theatre,
            "session": session,
            "procedure": meta.get("procedure"),
            "isotope": meta.get("isotope"),
            "weight_kg": meta.get("weight_kg"),
            "start": start,
            "end": end,
            "duration_min": (end - start).total_seconds() / 60 if start is not None and end is not None else None,
            "peak_leakage_isolation_pct": _max(during, "percent"),  # the headline
            "peak_leakage_isolation_ci_low_pct": _at_max(during, "percent", "ci_low"),
            "peak_leakage_isolation_ci_high_pct": _at_max(during, "percent", "ci_high"),
            "release_peak_pct": _max(released, "percent"),  # tracer from the organ after release: not a leak
            "regional_peak_ug_ml": last_pk.get("cmax_circuit"),
            "regional_auc": last_pk.get("auc_circuit"),
            "systemic_auc": last_pk.get("auc_systemic"),
            "auc_ratio": last_pk.get("auc_ratio"),
            "systemic_peak_after_isolation_ug_ml": last_pk.get("systemic_peak_after_isolation"),
            "alarms": len(new),
            "acknowledgements": len(d["alert_ack"]),
            "readings": int(d["reading"].count().sum()) if len(d["reading"]) else 0,
            "lab_samples": len(d["sample"]),
        }

    def export(
        self, theatre: str, session: str, out_dir: Path, fmt: str = "csv", show_progress: bool = True
    ) -> list[Path]:
        """One file per table (CSV or Parquet) in ``out_dir``; returns the files written."""
        if fmt not in ("csv", "parquet"):
            raise ReviewError(f"unknown format {fmt!r}: csv or parquet")
        steps = ["session", *TABLES, "reading"]
        with tqdm(
            total=len(steps) * 2, desc=f"export {theatre}/{session}", unit="step", disable=not show_progress
        ) as bar:

            def reading(name: str) -> None:
                bar.set_postfix_str(f"reading {name}")
                bar.update()

            data = self.load(theatre, session, progress=reading)
            bar.update()  # the session metadata
            out_dir.mkdir(parents=True, exist_ok=True)
            written = []
            for name, frame in data.items():
                bar.set_postfix_str(f"writing {name}")
                path = out_dir / f"{theatre}_{session}_{name}.{fmt}"
                if fmt == "csv":
                    frame.to_csv(path, index_label="time")
                else:
                    frame.to_parquet(path)
                written.append(path)
                bar.update()
        return written


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    df.index = pd.to_datetime(df.pop("time"), unit="ms", utc=True)
    df.index.name = "time"
    return df.drop(columns=[c for c in ("theatre", "session") if c in df])


def _max(df: pd.DataFrame, column: str) -> float | None:
    if column not in df or df[column].dropna().empty:
        return None
    return float(df[column].max())


def _at_max(df: pd.DataFrame, column: str, other: str) -> float | None:
    """``other`` on the row where ``column`` peaks."""
    if column not in df or other not in df or df[column].dropna().empty:
        return None
    return float(df[other].loc[df[column].astype(float).idxmax()])
