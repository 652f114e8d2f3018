"""The leakage service's handler: counts, events and metadata in; leakage points out.

Per session it keeps one :class:`LeakageEstimator`. The first time it sees a
session (at start-up, or after a restart or crash) it rebuilds that estimator
from what the recorder stored in InfluxDB, and emits only the points after the
last leakage point already stored: the series continues with no gap and no
seam, because the estimator is deterministic in event time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from isoperf.codec import decode, encode
from isoperf.influx import InfluxClient, InfluxWriter
from isoperf.mqtt import Outbox, Publisher
from isoperf.points import leakage_line
from isoperf.queries import session_where
from isoperf.schemas import Event, Leakage, SessionMeta, check_signal_range, parse_reading_payload, readings_of
from isoperf.topics import Topics
from services.leakage.estimator import EstimatorParams, LeakageEstimator
from services.leakage.history import load_session

log = logging.getLogger(__name__)


# Sessions leave memory once ended and quiet, or after a long silence; a late
# message for one rebuilds it from storage (as after a restart).
EVICT_ENDED_AFTER_S = 600.0
EVICT_SILENT_AFTER_S = 6 * 3600.0


@dataclass
class _Session:
    estimator: LeakageEstimator
    last_seen: float

    def evictable(self, now: float) -> bool:
        quiet = now - self.last_seen
        ended = "session_end" in self.estimator.events
        return quiet > EVICT_SILENT_AFTER_S or (ended and quiet > EVICT_ENDED_AFTER_S)


class LeakageHandler:
    def __init__(
        self,
        topics: Topics,
        publisher: Publisher,
        writer: InfluxWriter,
        influx: InfluxClient | None,
        params: EstimatorParams,
        max_payload_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics = topics
        self.publisher = publisher
        self.writer = writer
        self.influx = influx
        self.params = params
        self.max_payload_bytes = max_payload_bytes
        self.clock = clock
        self.sessions: dict[tuple[str, str], _Session] = {}
        self.isotopes: dict[tuple[str, str], str] = {}
        self.outbox = Outbox()

    def subscriptions(self) -> list[str]:
        return [self.topics.subscription(k) for k in ("meta", "event", "raw/counts")]

    async def handle(self, topic: str, payload: bytes) -> None:
        where = self.topics.parse(topic)
        data = decode(payload, self.max_payload_bytes)
        key = (where.theatre, where.session)
        # Validate before touching state, so bad input changes nothing.
        if where.kind == "raw" and where.signal == "counts":
            readings = readings_of(parse_reading_payload(data))
            check_signal_range("counts", readings)
            sess = await self._session(key)
            for r in readings:
                sess.estimator.add_counts(r.t, r.v, r.dt)
        elif where.kind == "event":
            event = Event.model_validate(data)
            sess = await self._session(key)
            sess.estimator.add_event(event.type, event.t, event.activity_mbq)
        elif where.kind == "meta":
            # Retained: every past session's meta arrives at start-up. Remember
            # the isotope; rebuild a session only when its counts or events come.
            meta = SessionMeta.model_validate(data)
            self.isotopes[key] = meta.isotope
            known = self.sessions.get(key)
            if known is None:
                return
            sess = known
            sess.estimator.set_isotope(meta.isotope)
        else:
            raise ValueError(f"the leakage service does not take {where.kind!r} messages")
        self._collect(key, sess)
        await self.outbox.send(self.publisher)  # the live path first: before anything is stored

    def _collect(self, key: tuple[str, str], sess: _Session) -> None:
        sess.last_seen = self.clock()
        for point in sess.estimator.update():
            self._emit(key, point)

    def _emit(self, key: tuple[str, str], point: Leakage) -> None:
        """Queue a point for publication (QoS 1) and storage."""
        self.outbox.put(self.topics.session(key[0], key[1], "leakage"), encode(point))
        self.writer.add([leakage_line(key[0], key[1], point)])

    async def flush(self) -> None:
        """Store the points; publish any a lost connection held back."""
        await self.writer.flush()
        await self.outbox.send(self.publisher)
        now = self.clock()
        for key in [k for k, sess in self.sessions.items() if sess.evictable(now) and not len(self.outbox)]:
            log.info("session %s/%s released from memory", *key)
            del self.sessions[key]

    async def _session(self, key: tuple[str, str]) -> _Session:
        sess = self.sessions.get(key)
        if sess is None:
            sess = _Session(LeakageEstimator(self.params), self.clock())
            self.sessions[key] = sess
            if key in self.isotopes:
                sess.estimator.set_isotope(self.isotopes[key])
            if self.influx is not None:
                await self._rebuild(key, sess)
        return sess

    async def _rebuild(self, key: tuple[str, str], sess: _Session) -> None:
        """Replay the stored session; keep only points after the last stored leakage point."""
        assert self.influx is not None
        theatre, session = key
        n = await load_session(self.influx, theatre, session, sess.estimator, isotope_known=key in self.isotopes)
        last = await self.influx.rows(f"SELECT last(state) FROM leakage WHERE {session_where(theatre, session)}")
        last_t = last[0]["time"] / 1000.0 if last else None
        missing = 0
        for point in sess.estimator.update():
            if last_t is None or point.t > last_t + 0.0005:
                self._emit(key, point)
                missing += 1
        if n:
            log.info(
                "rebuilt %s/%s from %d stored counts; %d points were missing from storage",
                theatre,
                session,
                n,
                missing,
            )
