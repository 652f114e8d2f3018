"""The PK service's handler: metadata, events, lab samples and leakage in; ``pk`` estimates out.

An estimate is published (at once, QoS 1) and stored every ``interval_s`` of event
time while leakage points come, on every procedure event once the drug has started,
and on every lab sample (late, out of order, or a correction of one already given:
same ``sample_id``). The first time a session is seen (at start-up, after a
restart) it is rebuilt from what the recorder and the leakage service stored, so
a late lab result days after the session still finds its whole context.
"""

from __future__ import annotations

import logging

from isoperf.codec import decode, encode
from isoperf.influx import InfluxClient, InfluxWriter, line
from isoperf.mqtt import Outbox, Publisher
from isoperf.queries import session_where
from isoperf.schemas import Event, LabSample, Leakage, Pk, SessionMeta
from isoperf.topics import Topics
from services.pk.history import feed, stored_queries
from services.pk.session import PkSession

log = logging.getLogger(__name__)

Key = tuple[str, str]


def pk_line(theatre: str, session: str, pk: Pk) -> str:
    return line("pk", {"theatre": theatre, "session": session}, pk.model_dump(exclude={"t"}), pk.t)


class PkHandler:
    def __init__(
        self,
        topics: Topics,
        publisher: Publisher,
        writer: InfluxWriter,
        influx: InfluxClient | None,
        max_payload_bytes: int,
        interval_s: float = 15.0,
    ) -> None:
        self.topics, self.publisher, self.writer, self.influx = topics, publisher, writer, influx
        self.max_payload_bytes = max_payload_bytes
        self.interval_s = interval_s
        self.sessions: dict[Key, PkSession] = {}
        self.metas: dict[Key, SessionMeta] = {}
        self.last_emit: dict[Key, float] = {}
        self.outbox = Outbox()

    def subscriptions(self) -> list[str]:
        return [self.topics.subscription(k) for k in ("meta", "event", "sample", "leakage")]

    async def handle(self, topic: str, payload: bytes) -> None:
        where = self.topics.parse(topic)
        data = decode(payload, self.max_payload_bytes)
        key = (where.theatre, where.session)
        if where.kind == "meta":  # retained: remembered; a session starts with its first other message
            meta = SessionMeta.model_validate(data)
            self.metas[key] = meta
            if key in self.sessions:
                self.sessions[key].set_meta(meta)
            return
        if where.kind == "event":
            event = Event.model_validate(data)
            sess = await self._session(key)
            if sess.add_event(event):
                self._emit(key, sess, event.t)
        elif where.kind == "sample":
            sample = LabSample.model_validate(data)
            sess = await self._session(key)
            sess.add_sample(sample)
            latest = max([sample.t, *sess.leak_t[-1:], *(e.t for e in sess.events.values())])
            self._emit(key, sess, latest)
        elif where.kind == "leakage":
            leak = Leakage.model_validate(data)
            sess = await self._session(key)
            if leak.percent is None:
                return
            sess.add_leakage(leak.t, leak.percent)
            if leak.t - self.last_emit.get(key, float("-inf")) >= self.interval_s:
                self._emit(key, sess, leak.t)
        else:
            raise ValueError(f"the pk service does not take {where.kind!r} messages")
        await self.outbox.send(self.publisher)  # the live path first: before anything is stored

    def _emit(self, key: Key, sess: PkSession, t: float) -> None:
        pk = sess.estimate(t)
        if pk is None:
            return
        self.last_emit[key] = max(t, self.last_emit.get(key, t))
        self.outbox.put(self.topics.session(key[0], key[1], "pk"), encode(pk))
        self.writer.add([pk_line(key[0], key[1], pk)])

    async def flush(self) -> None:
        await self.writer.flush()
        await self.outbox.send(self.publisher)

    async def _session(self, key: Key) -> PkSession:
        sess = self.sessions.get(key)
        if sess is None:
            sess = PkSession(meta=self.metas.get(key))
            self.sessions[key] = sess
            if self.influx is not None:
                await self._rebuild(key, sess)
        return sess

    async def _rebuild(self, key: Key, sess: PkSession) -> None:
        assert self.influx is not None
        for kind, q in stored_queries(*key).items():
            feed(sess, kind, await self.influx.rows(q))
        where = session_where(*key)
        last = await self.influx.rows(f"SELECT last(v_ml) FROM pk WHERE {where}")
        if last:
            self.last_emit[key] = last[0]["time"] / 1000.0
        if sess.events or sess.samples:
            log.info(
                "rebuilt %s/%s: %d events, %d samples, %d leakage points",
                *key,
                len(sess.events),
                len(sess.samples),
                len(sess.leak_t),
            )
