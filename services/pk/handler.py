"""The PK service's handler: metadata, events, lab samples and leakage in; ``pk`` estimates out.

An estimate is published (at once, QoS 1) and stored every ``interval_s`` of event
time while leakage points come, on every procedure event once the drug has started,
and on every lab sample (late, out of order, or a correction of one already given:
same ``sample_id``). With it, whenever the predicted post-release curve has changed, that curve
(``pk/release``, measurement ``pk_release``). The first time a session is seen (at start-up, after a
restart) it is rebuilt from what the recorder and the leakage service stored, so
a late lab result days after the session still finds its whole context.
"""

from __future__ import annotations

import logging

from isoperf.codec import encode
from isoperf.influx import LineSink, RowReader
from isoperf.messages import Inbound
from isoperf.outbox import Emitter
from isoperf.points import pk_line, pk_release_lines
from isoperf.queries import session_where
from isoperf.runtime import Handler
from isoperf.schemas import Event, LabSample, Leakage, SessionMeta
from isoperf.sources import Publisher
from isoperf.topics import Topics
from services.pk.history import feed, stored_queries
from services.pk.session import PkSession

log = logging.getLogger(__name__)

Key = tuple[str, str]


class PkHandler(Handler):
    kinds: tuple[str, ...] = ("meta", "event", "sample", "leakage")

    def __init__(
        self,
        topics: Topics,
        publisher: Publisher,
        writer: LineSink,
        influx: RowReader | None,
        interval_s: float = 15.0,
    ) -> None:
        self.topics, self.influx = topics, influx
        self.emitter = Emitter(publisher, writer)
        self.interval_s = interval_s
        self.sessions: dict[Key, PkSession] = {}
        self.metas: dict[Key, SessionMeta] = {}
        self.last_emit: dict[Key, float] = {}
        self.last_release: dict[Key, tuple[int, int] | None] = {}  # the post-release curve last published

    async def handle(self, message: Inbound) -> None:
        key, body = message.key, message.body
        if isinstance(body, SessionMeta):  # retained: remembered; a session starts with its first other message
            self.metas[key] = body
            if key in self.sessions:
                self.sessions[key].set_meta(body)
            return
        if isinstance(body, Event):
            sess = await self._session(key)
            if sess.add_event(body):
                self._emit(key, sess, body.t)
        elif isinstance(body, LabSample):
            sess = await self._session(key)
            sess.add_sample(body)
            latest = max([body.t, *sess.leak_t[-1:], *(e.t for e in sess.events.values())])
            self._emit(key, sess, latest)
        elif isinstance(body, Leakage):
            sess = await self._session(key)
            if body.percent is None:
                return
            sess.add_leakage(body.t, body.percent)
            if body.t - self.last_emit.get(key, float("-inf")) >= self.interval_s:
                self._emit(key, sess, body.t)
        await self.emitter.send()  # the live path first: before anything is stored

    def _emit(self, key: Key, sess: PkSession, t: float) -> None:
        pk = sess.estimate(t)
        if pk is None:
            return
        self.last_emit[key] = max(t, self.last_emit.get(key, t))
        self.emitter.emit(self.topics.session(*key, "pk"), encode(pk), [pk_line(*key, pk)])
        if (revision := sess.release_key()) != self.last_release.get(key) and (curve := sess.release_message(t)):
            self.last_release[key] = revision
            self.emitter.emit(self.topics.session(*key, "pk/release"), encode(curve), pk_release_lines(*key, curve))

    async def flush(self) -> None:
        await self.emitter.flush()

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
