"""Feeding a stored session back into an estimator: after a restart, and for re-analysis."""

from __future__ import annotations

from isoperf.influx import RowReader
from isoperf.queries import session_where
from services.leakage.estimator import LeakageEstimator


async def load_session(
    influx: RowReader, theatre: str, session: str, est: LeakageEstimator, *, isotope_known: bool = False
) -> int:
    """Add the session's stored metadata, events and counts to ``est``; return how many counts."""
    where = session_where(theatre, session)
    if not isotope_known:
        meta = await influx.rows(f"SELECT last(isotope) AS isotope FROM session WHERE {where}")
        if meta and meta[0].get("isotope"):
            est.set_isotope(str(meta[0]["isotope"]))
    # Select the always-present label: InfluxQL leaves out rows whose selected fields are all null.
    for row in await influx.rows(f"SELECT label, activity_mbq, type FROM event WHERE {where} ORDER BY time"):
        est.add_event(str(row["type"]), row["time"] / 1000.0, row.get("activity_mbq"))
    rows = await influx.rows(f"SELECT value, dt FROM reading WHERE {where} AND signal='counts' ORDER BY time")
    # InfluxDB keeps each field apart: a point being written as this query runs may show its dt
    # without its value. Such a row is no reading yet; the point's message comes on the bus too.
    counts = [r for r in rows if r.get("value") is not None]
    for row in counts:
        est.add_counts(row["time"] / 1000.0, float(row["value"]), float(row["dt"] or 1.0))
    return len(counts)
