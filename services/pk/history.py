"""Feeding a stored session back into a :class:`PkSession`: after a restart, and to check the
service against an offline computation. The queries and the row conversions live here; the
caller runs the queries (asynchronously in the service, synchronously in the tests)."""

from __future__ import annotations

from typing import Any

from isoperf.queries import session_where
from isoperf.schemas import Event, LabSample, Leakage, SessionMeta
from services.pk.session import PkSession

META_FIELDS = ("procedure", "isotope", "weight_kg", "circuit_volume_ml", "melphalan_mg_per_kg")
# ``label`` is always present: InfluxQL leaves out rows whose selected fields are all null.
EVENT_FIELDS = ("type", "activity_mbq", "dose_mg", "mode", "duration_s", "volume_ml", "text")


def stored_queries(theatre: str, session: str) -> dict[str, str]:
    """The InfluxQL for each kind of stored input, in the order to feed them."""
    w = session_where(theatre, session)
    events = ", ".join(f'"{f}"' for f in ("label", *EVENT_FIELDS))
    return {
        "meta": f'SELECT {", ".join(META_FIELDS)} FROM "session" WHERE {w} ORDER BY time DESC LIMIT 1',
        "event": f'SELECT {events} FROM "event" WHERE {w} ORDER BY time',
        "sample": f'SELECT "melphalan_ug_ml", "sample_id", "site", "reported_t" FROM "sample" WHERE {w} ORDER BY time',
        "leakage": f'SELECT "percent" FROM "leakage" WHERE {w} ORDER BY time',
    }


def stored_inputs(kind: str, rows: list[dict[str, Any]]) -> list[SessionMeta | Event | LabSample | Leakage]:
    """The rows of one ``stored_queries`` query (time in epoch ms) as the messages they were."""
    out: list[SessionMeta | Event | LabSample | Leakage] = []
    for r in rows:
        t = r["time"] / 1000.0
        if kind == "meta":
            out.append(SessionMeta.model_validate({"t": t, **{f: r[f] for f in META_FIELDS}}))
        elif kind == "event":
            out.append(Event.model_validate({"t": t, **{f: r[f] for f in EVENT_FIELDS if r.get(f) is not None}}))
        elif kind == "sample":
            sample = {
                "t": t,
                "site": r["site"],
                "melphalan_ug_ml": float(r["melphalan_ug_ml"]),
                "sample_id": r.get("sample_id"),
                "reported_t": r.get("reported_t"),
            }
            out.append(LabSample.model_validate(sample))
        elif kind == "leakage":
            out.append(Leakage(t=t, state="monitoring", percent=float(r["percent"])))
    return out


def feed(sess: PkSession, kind: str, rows: list[dict[str, Any]]) -> None:
    """Add the rows of one ``stored_queries`` query to ``sess``."""
    for x in stored_inputs(kind, rows):
        if isinstance(x, SessionMeta):
            if sess.meta is None:
                sess.set_meta(x)
        elif isinstance(x, Event):
            sess.add_event(x)
        elif isinstance(x, LabSample):
            sess.add_sample(x)
        elif x.percent is not None:
            sess.add_leakage(x.t, x.percent)
