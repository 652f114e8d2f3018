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

from isoperf.codec import encode
from isoperf.influx import LineSink, RowReader
from isoperf.messages import Inbound, Readings
from isoperf.outbox import Emitter
from isoperf.points import leakage_line, record_lines
from isoperf.queries import session_where
from isoperf.runtime import Handler
from isoperf.schemas import SERIES_MAX_POINTS, Event, Leakage, LeakageSeries, SessionMeta
from isoperf.sources import Publisher
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


class LeakageHandler(Handler):
    kinds: tuple[str, ...] = ("meta", "event", "raw/counts")

    def __init__(
        self,
        topics: Topics,
        publisher: Publisher,
        writer: LineSink,
        influx: RowReader | None,
        params: EstimatorParams,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics = topics
        self.emitter = Emitter(publisher, writer)
        self.influx = influx
        self.params = params
        self.clock = clock
        self.sessions: dict[tuple[str, str], _Session] = {}
        self.isotopes: dict[tuple[str, str], str] = {}
        # Points computed and not yet emitted, per session: published when the inbox is drained
        # (at once when idle; under load, the points of many messages of counts in one series).
        self._unsent: dict[tuple[str, str], list[Leakage]] = {}

    async def handle(self, message: Inbound) -> None:
        key, body = message.key, message.body
        if isinstance(body, Readings):
            sess = await self._session(key)
            for r in body.readings:
                sess.estimator.add_counts(r.t, r.v, r.dt)
        elif isinstance(body, Event):
            sess = await self._session(key)
            sess.estimator.add_event(body.type, body.t, body.activity_mbq)
        elif isinstance(body, SessionMeta):
            # Retained: every past session's meta arrives at start-up. Remember
            # the isotope; rebuild a session only when its counts or events come.
            self.isotopes[key] = body.isotope
            known = self.sessions.get(key)
            if known is None:
                return
            sess = known
            sess.estimator.set_isotope(body.isotope)
        else:
            return
        if self.influx is not None:
            # What this session is rebuilt from is in storage before its input is acknowledged:
            # another instance taking it over (or this one restarted) cannot miss an input the
            # recorder has not stored yet (the same points as the recorder's: one in storage).
            self.emitter.sink.add(record_lines(*key, body))
        sess.last_seen = self.clock()
        points = sess.estimator.update()
        if points:
            self._unsent.setdefault(key, []).extend(points)

    async def drained(self) -> None:
        """Every message received is handled: publish the points they yielded (the live path
        first: before anything is stored)."""
        self._emit_unsent()
        await self.emitter.send()

    def _emit_unsent(self) -> None:
        unsent, self._unsent = self._unsent, {}
        for key, points in unsent.items():
            self._emit(key, points)

    def _emit(self, key: tuple[str, str], points: list[Leakage]) -> None:
        """Queue points for publication (QoS 1) and storage: one point alone on ``leakage``, more
        than one (a batch of counts, or the counts of several messages) as ``leakage/series``
        messages, each point once."""
        if not points:
            return
        if len(points) == 1:
            self.emitter.emit(self.topics.session(*key, "leakage"), encode(points[0]), [leakage_line(*key, points[0])])
            return
        topic = self.topics.session(*key, "leakage/series")
        for i in range(0, len(points), SERIES_MAX_POINTS):
            chunk = points[i : i + SERIES_MAX_POINTS]
            self.emitter.emit(topic, encode(LeakageSeries(points=chunk)), [leakage_line(*key, p) for p in chunk])

    async def flush(self) -> None:
        """Store the points; publish those not yet published (a flush under load, or a lost connection)."""
        self._emit_unsent()
        await self.emitter.flush()
        now = self.clock()
        for key in [k for k, sess in self.sessions.items() if sess.evictable(now) and not len(self.emitter)]:
            log.info("session %s/%s released from memory", *key)
            del self.sessions[key]

    async def _session(self, key: tuple[str, str]) -> _Session:
        sess = self.sessions.get(key)
        if sess is None:
            sess = _Session(LeakageEstimator(self.params), self.clock())
            self.sessions[key] = sess
            log.info("session %s/%s taken", *key)
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
        missing = [p for p in sess.estimator.update() if last_t is None or p.t > last_t + 0.0005]
        self._emit(key, missing)
        if n:
            log.info(
                "rebuilt %s/%s from %d stored counts; %d points were missing from storage",
                theatre,
                session,
                n,
                len(missing),
            )
