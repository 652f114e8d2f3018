"""The InfluxDB points of the public interface, one function per measurement.

Every point carries the tags ``theatre`` and ``session`` and is stamped with
the message's own event time.
"""

from __future__ import annotations

import json

from isoperf.influx import FieldValue, line
from isoperf.schemas import (
    Alert,
    AlertAck,
    AlertSilence,
    Event,
    GatewayStatus,
    LabSample,
    Leakage,
    Pk,
    Reading,
    SessionMeta,
)


def _tags(theatre: str, session: str, **extra: str) -> dict[str, str]:
    return {"theatre": theatre, "session": session, **extra}


def reading_lines(theatre: str, session: str, signal: str, readings: list[Reading]) -> list[str]:
    is_counts = signal == "counts"
    tags = _tags(theatre, session, signal=signal)
    return [
        line("reading", tags, {"value": r.v, "dt": r.dt if is_counts else None, "seq": r.seq}, r.t) for r in readings
    ]


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


def pk_line(theatre: str, session: str, pk: Pk) -> str:
    return line("pk", _tags(theatre, session), pk.model_dump(exclude={"t"}), pk.t)


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
