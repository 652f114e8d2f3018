"""The edge every inbound message passes, in every service: topic, size, decoding, validation.

``parse`` turns a topic and its raw payload into an :class:`Inbound` with a typed
body, or raises ``ValueError`` with the reason (the runtime keeps such a message
aside as a dead letter). Handlers therefore never see bytes, and cannot forget
the size limit, the schema or the range check.

A handler names the kinds it takes: a session kind of ``schemas.SESSION_MESSAGES``
(``"event"``, ``"leakage"``, ...), ``"raw/+"`` or ``"raw/{signal}"`` for readings,
and ``"status"`` for the services' ``online``/``offline`` status.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from isoperf.codec import DEFAULT_MAX_PAYLOAD_BYTES, decode
from isoperf.schemas import (
    SESSION_MESSAGES,
    Sample,
    check_signal_range,
    parse_reading_payload,
    readings_of,
)
from isoperf.topics import Topics

STATUS = "status"


@dataclass(frozen=True, slots=True)
class Readings:
    """The body of a ``raw/{signal}`` message: one reading or a whole batch, flattened."""

    signal: str
    readings: list[Sample]
    journal_seq: int | None = None  # the gateway's journal sequence number of the message


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """The body of a ``{root}/status/{service}/{instance}`` message."""

    service: str  # ``service/instance``
    online: bool


Body = BaseModel | Readings | ServiceStatus


@dataclass(frozen=True, slots=True)
class Inbound:
    """A validated message: where it came from and what it says."""

    topic: str
    kind: str  # a key of SESSION_MESSAGES, "raw" or "status"
    theatre: str
    session: str
    body: Body

    @property
    def key(self) -> tuple[str, str]:
        return self.theatre, self.session


def subscriptions(topics: Topics, kinds: tuple[str, ...], theatre: str | None = None) -> list[str]:
    """The topic filters for the kinds a handler takes: of every theatre, or of one."""
    return [topics.status_subscription() if k == STATUS else topics.subscription(k, theatre) for k in kinds]


def _takes(kinds: tuple[str, ...], kind: str, signal: str | None) -> bool:
    if kind == "raw":
        return "raw/+" in kinds or f"raw/{signal}" in kinds
    return kind in kinds


class MessageParser:
    """Parses what one service takes; everything else is refused with the reason."""

    def __init__(
        self, topics: Topics, service: str, kinds: tuple[str, ...], max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    ) -> None:
        self.topics, self.service, self.kinds, self.max_bytes = topics, service, kinds, max_bytes

    def parse(self, topic: str, payload: bytes) -> Inbound:
        service = self.topics.parse_status(topic)
        if service is not None:
            if STATUS not in self.kinds:
                raise ValueError(f"the {self.service} service does not take status messages")
            status = self.topics.status_payload(service, payload)
            return Inbound(topic, STATUS, "", "", ServiceStatus(service, status == "online"))
        where = self.topics.parse(topic)
        if not _takes(self.kinds, where.kind, where.signal):
            shown = f"raw/{where.signal}" if where.kind == "raw" else where.kind
            raise ValueError(f"the {self.service} service does not take {shown!r} messages")
        data = decode(payload, self.max_bytes)
        body: Body
        if where.kind == "raw":
            assert where.signal is not None
            raw = parse_reading_payload(data)
            readings = readings_of(raw)
            check_signal_range(where.signal, readings)
            body = Readings(where.signal, readings, raw.journal_seq)
        else:
            body = SESSION_MESSAGES[where.kind].model_validate(data)
        return Inbound(topic, where.kind, where.theatre, where.session, body)
