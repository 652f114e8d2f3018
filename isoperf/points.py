"""The InfluxDB points of the public interface, one function per measurement.

Every point carries the tags ``theatre`` and ``session`` and is stamped with
the message's own event time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from isoperf.influx import FieldValue, line, number, series_key
from isoperf.messages import Readings
from isoperf.schemas import (
    Alert,
    AlertAck,
    AlertSilence,
    Event,
    GatewayStatus,
    LabSample,
    Leakage,
    LeakageSeries,
    Pk,
    PkRelease,
    Reading,
    Sample,
    SessionMeta,
)


def _tags(theatre: str, session: str, **extra: str) -> dict[str, str]:
    return {"theatre": theatre, "session": session, **extra}


def reading_lines(theatre: str, session: str, signal: str, readings: Sequence[Sample | Reading]) -> list[str]:
    """Every reading of a batch: ``value``, ``dt`` (counts only) and ``seq`` (if given) as floats.

    The series key is formatted once a batch (the hot path of the recorder: see ``line``)."""
    key = series_key("reading", _tags(theatre, session, signal=signal))
    is_counts = signal == "counts"
    out = []
    for r in readings:
        value = f"value={number(float(r.v))}"
        if r.seq is not None:  # fields in the order of their names, as InfluxDB's own clients write them
            value = f"seq={number(float(r.seq))},{value}"
        fields = f"dt={number(float(r.dt))},{value}" if is_counts else value
        out.append(f"{key} {fields} {round(r.t * 1000)}")
    return out


def event_line(theatre: str, session: str, event: Event) -> str:
    fields = event.model_dump(exclude={"t", "type", "journal_seq"}, exclude_none=True)
    fields["label"] = event.label()  # always present: an event may have no other field
    return line("event", _tags(theatre, session, type=event.type), fields, event.t)


def sample_line(theatre: str, session: str, sample: LabSample) -> str:
    fields = {"melphalan_ug_ml": sample.melphalan_ug_ml, "sample_id": sample.sample_id, "reported_t": sample.reported_t}
    return line("sample", _tags(theatre, session, site=sample.site), fields, sample.t)


def session_line(theatre: str, session: str, meta: SessionMeta) -> str:
    """Extension of contract v1: the ``session`` measurement holds each session's metadata."""
    fields: dict[str, float | str | None] = {
        "procedure": meta.procedure,
        "isotope": meta.isotope,
        "weight_kg": meta.weight_kg,
        "circuit_volume_ml": meta.circuit_volume_ml,
        "melphalan_mg_per_kg": meta.melphalan_mg_per_kg,
        "thresholds": json.dumps(meta.thresholds) if meta.thresholds else None,
    }
    return line("session", _tags(theatre, session), fields, meta.t)


def leakage_line(theatre: str, session: str, leakage: Leakage) -> str:
    return line("leakage", _tags(theatre, session), leakage.model_dump(exclude={"t"}), leakage.t)


Recorded = Readings | Event | LabSample | SessionMeta | GatewayStatus | Leakage | LeakageSeries


def record_lines(theatre: str, session: str, body: Recorded) -> list[str]:
    """The points a message of the session is kept as in the record: the recorder's, and those a
    stateful service writes of its own inputs (the same points, so written twice they are one)."""
    if isinstance(body, Readings):
        return reading_lines(theatre, session, body.signal, body.readings)
    if isinstance(body, Event):
        return [event_line(theatre, session, body)]
    if isinstance(body, LabSample):
        return [sample_line(theatre, session, body)]
    if isinstance(body, SessionMeta):
        return [session_line(theatre, session, body)]
    if isinstance(body, GatewayStatus):
        return [device_status_line(theatre, session, body)]
    if isinstance(body, Leakage):
        return [leakage_line(theatre, session, body)]
    return [leakage_line(theatre, session, p) for p in body.points]


def pk_line(theatre: str, session: str, pk: Pk) -> str:
    return line("pk", _tags(theatre, session), pk.model_dump(exclude={"t"}), pk.t)


def pk_release_lines(theatre: str, session: str, r: PkRelease) -> list[str]:
    """Extension (measurement ``pk_release``): one point per time of the predicted post-release
    curve, stamped at that time; a newer prediction replaces the older point for point (the grid
    is fixed from the drug start), so the measurement holds the latest prediction."""
    common: dict[str, FieldValue] = {
        "predicted_at": r.t,
        "release_t": r.release_t,
        "projected": r.projected,
        "n_release": r.n_release,
    }
    return [
        line("pk_release", _tags(theatre, session), {"ug_ml": c, "low_ug_ml": lo, "high_ug_ml": hi, **common}, t)
        for t, c, lo, hi in r.points
    ]


def alert_line(theatre: str, session: str, a: Alert) -> str:
    fields: dict[str, FieldValue] = {
        "status": a.status,
        "value": a.value,
        "threshold": a.threshold,
        "message": a.message,
        "id": a.id,
        "kind": a.kind,
        "silenced": bool(a.silenced),
        "late": bool(a.late),
    }
    return line("alert", _tags(theatre, session, rule=a.rule, severity=a.severity), fields, a.t)


def alert_state_line(theatre: str, session: str, state: str, t: float) -> str:
    """A session's alert state (JSON), for another instance to carry on from (one point a session:
    each write at the same ``t`` replaces the last)."""
    return line("alert_state", _tags(theatre, session), {"state": state}, t)


def alert_ack_line(theatre: str, session: str, ack: AlertAck, matched: bool) -> str:
    """Extension: every acknowledgement, ``matched`` false when no such alert was firing."""
    fields: dict[str, FieldValue] = {"id": ack.id, "acknowledged_by": ack.by, "matched": matched}
    return line("alert_ack", _tags(theatre, session), fields, ack.t)


def alert_delivery_line(
    theatre: str, session: str, a: Alert, channel: str, delivered: bool, attempts: int, sent_at: float
) -> str:
    """Extension: what became of one alert notice on one notification channel (``channel`` names
    the kind and its number, never a webhook URL, which holds a secret). Stamped with the
    alert's event time; ``sent_at`` is the wall clock when it went out or was given up."""
    fields: dict[str, FieldValue] = {
        "id": a.id,
        "outcome": "delivered" if delivered else "failed",
        "attempts": attempts,
        "sent_at": sent_at,
    }
    return line("alert_delivery", _tags(theatre, session, channel=channel, kind=a.kind or a.status), fields, a.t)


def alert_silence_line(theatre: str, session: str, s: AlertSilence) -> str:
    """Extension: every silence, with its reason and who set it."""
    fields: dict[str, FieldValue] = {
        "duration_s": s.duration_s,
        "until": s.t + s.duration_s,
        "reason": s.reason,
        "silenced_by": s.by,
    }
    return line("alert_silence", _tags(theatre, session, rule=s.rule or "*"), fields, s.t)


def device_status_line(theatre: str, session: str, s: GatewayStatus) -> str:
    """Extension: what the gateway said of a device or of its journal (measurement ``device_status``)."""
    fields: dict[str, FieldValue] = {"state": s.state, "reason": s.reason, "offset_s": s.offset_s, "fill": s.fill}
    return line("device_status", _tags(theatre, session, source=s.source), fields, s.t)


def service_status_line(service: str, online: bool, t: float) -> str:
    """Extension: a service instance's status (``service/instance``), stamped on receipt."""
    name, instance = service.split("/")
    status = "online" if online else "offline"
    return line("service_status", {"service": name, "instance": instance}, {"status": status}, t)
