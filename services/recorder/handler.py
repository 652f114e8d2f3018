"""Stores every reading, event, lab sample and session metadata published on the bus, and every
service's ``online``/``offline`` status (measurement ``service_status``, stamped on receipt: a
status carries no time of its own), so boards can show which services are running.

End-to-end confirmation: a message that carries its gateway's journal sequence number ``journal_seq``
is confirmed on the session's ``stored`` topic once it is stored, so the gateway can forget it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from isoperf.codec import encode
from isoperf.influx import LineSink
from isoperf.messages import Inbound, Readings, ServiceStatus
from isoperf.points import record_lines, service_status_line
from isoperf.runtime import Handler
from isoperf.schemas import Event, GatewayStatus, LabSample, SessionMeta, Stored
from isoperf.sources import Publisher
from isoperf.timewindow import Rejection
from isoperf.topics import Topics

Key = tuple[str, str]
log = logging.getLogger(__name__)


def ranges(seqs: set[int]) -> list[tuple[int, int]]:
    """``{1, 2, 3, 7, 8}`` -> ``[(1, 3), (7, 8)]``."""
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


class RecorderHandler(Handler):
    """Turns each validated message into points; ``flush`` stores them, then confirms their ``journal_seq``."""

    kinds: tuple[str, ...] = ("raw/+", "event", "sample", "meta", "device", "status")

    def __init__(self, writer: LineSink, topics: Topics | None = None, publisher: Publisher | None = None) -> None:
        self.writer, self.topics, self.publisher = writer, topics, publisher
        self.stored_readings = 0
        self._seqs: dict[Key, set[int]] = defaultdict(set)

    async def handle(self, message: Inbound) -> None:
        th, se, body = message.theatre, message.session, message.body
        if isinstance(body, ServiceStatus):
            self.writer.add([service_status_line(body.service, body.online, time.time())])
        elif isinstance(body, Readings | Event | LabSample | SessionMeta | GatewayStatus):
            self.writer.add(record_lines(th, se, body))
            if isinstance(body, Readings):
                self.stored_readings += len(body.readings)
        seq: int | None = getattr(body, "journal_seq", None)  # what a gateway journalled: confirmed after flush
        if seq is not None:
            self._seqs[message.key].add(seq)

    async def close(self) -> None:
        log.info("recorder: %d readings stored since start", self.stored_readings)

    async def rejected(self, message: Inbound, rejections: list[Rejection]) -> None:
        """Kept aside as outside its session's time window: confirmed to its gateway as handled (it
        would send it again for ever otherwise)."""
        seq: int | None = getattr(message.body, "journal_seq", None)
        if seq is not None:
            self._seqs[message.key].add(seq)

    async def flush(self) -> None:
        stored, self._seqs = self._seqs, defaultdict(set)  # before the first await: what this flush stores
        await self.writer.flush()
        if self.publisher is None or self.topics is None:
            return
        for (theatre, session), seqs in stored.items():
            confirmation = Stored(t=time.time(), seqs=ranges(seqs))
            await self.publisher.publish(self.topics.session(theatre, session, "stored"), encode(confirmation))
