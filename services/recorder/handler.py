"""Stores every reading, event, lab sample and session metadata published on the bus, and every
service's ``online``/``offline`` status (measurement ``service_status``, stamped on receipt: a
status carries no time of its own), so boards can show which services are running."""

from __future__ import annotations

import time

from isoperf.codec import decode
from isoperf.influx import InfluxWriter, line
from isoperf.points import event_line, reading_lines, sample_line, session_line
from isoperf.schemas import Event, LabSample, SessionMeta, check_signal_range, parse_reading_payload, readings_of
from isoperf.topics import Topics


class RecorderHandler:
    """Validates each message at the edge and buffers its points; ``flush`` stores them."""

    def __init__(self, topics: Topics, writer: InfluxWriter, max_payload_bytes: int) -> None:
        self.topics = topics
        self.writer = writer
        self.max_payload_bytes = max_payload_bytes
        self.stored_readings = 0

    def subscriptions(self) -> list[str]:
        return [
            *(self.topics.subscription(k) for k in ("raw/+", "event", "sample", "meta")),
            self.topics.status_subscription(),
        ]

    async def handle(self, topic: str, payload: bytes) -> None:
        service = self.topics.parse_status(topic)
        if service is not None:
            status = self.topics.status_payload(service, payload)
            name, instance = service.split("/")
            self.writer.add(
                [line("service_status", {"service": name, "instance": instance}, {"status": status}, time.time())]
            )
            return
        where = self.topics.parse(topic)
        data = decode(payload, self.max_payload_bytes)
        th, se = where.theatre, where.session
        if where.kind == "raw":
            assert where.signal is not None
            readings = readings_of(parse_reading_payload(data))
            check_signal_range(where.signal, readings)
            self.writer.add(reading_lines(th, se, where.signal, readings))
            self.stored_readings += len(readings)
        elif where.kind == "event":
            self.writer.add([event_line(th, se, Event.model_validate(data))])
        elif where.kind == "sample":
            self.writer.add([sample_line(th, se, LabSample.model_validate(data))])
        elif where.kind == "meta":
            self.writer.add([session_line(th, se, SessionMeta.model_validate(data))])
        else:
            raise ValueError(f"the recorder does not store {where.kind!r} messages")

    async def flush(self) -> None:
        await self.writer.flush()
