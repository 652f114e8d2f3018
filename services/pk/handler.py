"""The PK service's handler: metadata, events, lab samples and leakage in; ``pk`` estimates and the
post-release curve out.

An estimate is published (at once, QoS 1) and stored at the first leakage point of every
``interval_s`` of event time, on every procedure event once the drug has started, and on
every lab sample (late, out of order, or a correction of one already given: same
``sample_id``). With it, whenever the predicted post-release curve has changed, that curve
(``pk/release``, measurement ``pk_release``). The first time a session is seen (at
start-up, after a restart) it is rebuilt from what the recorder and the leakage service
stored, so a late lab result days after the session still finds its whole context.

Inputs are applied in event-time order (:mod:`isoperf.eventtime`): the leakage points are
derived from the counts and come later than the events and samples of the same moment,
so an event or sample is held until the leakage has passed its time, for at most
``hold_s`` of the service's clock (then it goes on, logged). A lab sample is ordered at
its report time (``reported_t``; without one, the latest time of the session's inputs
when it comes), not at its draw time: the lab reports it later. An estimate sent before
the leakage had passed its time is corrected when the leakage comes: sent again, for the
same ``t``, with the systemic exposure of the complete leakage (the stored point is
replaced), and with it its post-release curve when the leak's share changes that. A curve
is made from the inputs up to its event time only, and never sent for an event time before
that of the latest one sent (the later one is the newer prediction, or is corrected in its
turn). So a session played at any pace, or with the leakage service stopped for a while,
ends with the same stored estimates and post-release curve.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from isoperf.codec import encode
from isoperf.eventtime import EventTimeOrder, Released
from isoperf.influx import LineSink, RowReader
from isoperf.messages import Inbound
from isoperf.outbox import Emitter
from isoperf.points import pk_line, pk_release_lines, record_lines
from isoperf.queries import session_where
from isoperf.runtime import Handler
from isoperf.schemas import Event, LabSample, Leakage, LeakageSeries, Pk, PkRelease, SessionMeta
from isoperf.sources import ConnectionLost, Publisher
from isoperf.topics import Topics
from services.pk.history import stored_inputs, stored_queries
from services.pk.session import LeakBasis, PkSession, ReleaseBasis, ReleaseKey

log = logging.getLogger(__name__)

Key = tuple[str, str]
Ordered = Event | LabSample | Leakage
# Events and lab samples come from the gateway in order; the leakage is derived from its counts.
STREAMS = ("inputs", "leakage")
HOLD_S = 30.0
MAX_CORRECTIONS = 2_000  # estimates per session awaiting their leakage (then the oldest is given up)


@dataclass(frozen=True, slots=True)
class _Sent:
    """An estimate sent before the leakage had passed its time, and what it was computed from."""

    pk: Pk
    basis: LeakBasis
    release: tuple[ReleaseBasis, ReleaseKey] | None  # once the clamps are off: the leak's share is in it


class PkHandler(Handler):
    # The counts are not used: they move the session's time window (isoperf/timewindow.py) as in every
    # other service. Without them only events and leakage would, and an event 25 minutes after the
    # last of either (the drug stop after the drug start, while the leakage service is behind or
    # away: a replay, an outage) was kept aside as a wild time.
    kinds: tuple[str, ...] = ("meta", "event", "sample", "leakage", "leakage/series", "raw/counts")

    def __init__(
        self,
        topics: Topics,
        publisher: Publisher,
        writer: LineSink,
        influx: RowReader | None,
        interval_s: float = 15.0,
        hold_s: float = HOLD_S,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = 1.0,
    ) -> None:
        self.topics, self.influx = topics, influx
        self.emitter = Emitter(publisher, writer)
        self.interval_s, self.hold_s, self.clock, self.tick_s = interval_s, hold_s, clock, tick_s
        self.sessions: dict[Key, PkSession] = {}
        self.metas: dict[Key, SessionMeta] = {}
        self.last_leak: dict[Key, float] = {}  # event time of the latest leakage point applied
        self.orders: dict[Key, EventTimeOrder[Ordered]] = {}
        self.uncorrected: dict[Key, dict[float, _Sent]] = {}
        self._forcing: set[Key] = set()
        self._quiet_until: dict[Key, float] = {}  # while rebuilding: estimates up to here are stored
        self.last_release: dict[Key, PkRelease] = {}  # the post-release curve last sent (or stored)
        self._release_key: dict[Key, ReleaseKey] = {}  # the prediction it was last compared with
        self._flush_lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_forever())

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()

    async def handle(self, message: Inbound) -> None:
        key, body = message.key, message.body
        if isinstance(body, SessionMeta):  # retained: remembered; a session starts with its first other message
            self.metas[key] = body
            if key in self.sessions:
                self.sessions[key].set_meta(body)
            return
        if not isinstance(body, Event | LabSample | Leakage | LeakageSeries):
            return
        order = self._order(key)
        await self._session(key)
        if self.influx is not None:  # stored before it is acknowledged: what a takeover rebuilds from
            self.emitter.sink.add(record_lines(*key, body))
        now = self.clock()
        if isinstance(body, Leakage | LeakageSeries):
            order.expect("leakage")
            for point in body.points if isinstance(body, LeakageSeries) else (body,):
                order.add("leakage", point.t, point, now)  # a series' points one by one
        elif isinstance(body, Event):
            order.add("inputs", body.t, body, now)
        else:  # a lab result enters the session when it was reported
            reported = body.reported_t if body.reported_t is not None else max(body.t, *order.watermarks.values())
            order.add("inputs", reported, body, now)
        self._release(key)
        await self.emitter.send()  # the live path first: before anything is stored

    # -- event-time order ----------------------------------------------------------------------

    def _order(self, key: Key) -> EventTimeOrder[Ordered]:
        order = self.orders.get(key)
        if order is None:
            order = self.orders[key] = EventTimeOrder(STREAMS, self.hold_s)
        return order

    def _release(self, key: Key) -> int:
        """Apply what the leakage has passed (or what was held too long); correct what it now covers.

        Returns how many estimates that sent."""
        order, sess = self.orders[key], self.sessions[key]
        released = order.ready(self.clock())
        forced = [r for r in released if r.forced]
        if forced and key not in self._forcing:
            self._forcing.add(key)
            log.warning(
                "%s/%s: leakage behind at t=%.3f; inputs held %.0f s go on without it (ISOPERF_PK_HOLD_S);"
                " their estimates are corrected when it comes",
                *key,
                forced[-1].t,
                self.hold_s,
            )
        elif key in self._forcing and not order.behind(order.released_until):
            self._forcing.discard(key)
            log.info("%s/%s: the leakage has caught up", *key)
        sent = sum(self._apply(key, sess, r) for r in released)
        return sent + self._correct(key, sess, order)

    def _apply(self, key: Key, sess: PkSession, r: Released[Ordered]) -> int:
        body = r.item
        if isinstance(body, Event):
            return self._emit(key, sess, body.t) if sess.add_event(body) else 0
        if isinstance(body, LabSample):
            sess.add_sample(body, r.t)
            return self._emit(key, sess, r.t)
        if body.percent is None:
            return 0
        sess.add_leakage(body.t, body.percent)
        previous = self.last_leak.get(key)
        self.last_leak[key] = body.t if previous is None else max(previous, body.t)
        # The first point of each interval of event time: the same points whatever the pace.
        if previous is None or math.floor(body.t / self.interval_s) > math.floor(previous / self.interval_s):
            return self._emit(key, sess, body.t)
        return 0

    def _correct(self, key: Key, sess: PkSession, order: EventTimeOrder[Ordered]) -> int:
        """Send again, with the complete leakage, the estimates sent before the leakage passed their time."""
        pending = self.uncorrected.get(key)
        if not pending:
            return 0
        done = [t for t in pending if not order.behind(t)]
        sent = 0
        for t in sorted(done):
            was = pending.pop(t)
            update = sess.leak_fields(t, was.basis)
            curve = None
            if was.release is not None and (
                again := sess.corrected_release(t, was.release[0], was.basis, was.release[1])
            ):
                fields, curve = again
                update |= fields
            pk = was.pk.model_copy(update=update)
            if pk != was.pk:
                self._send(key, pk)
                sent += 1
            if curve is not None and self._send_curve(key, curve):
                self._release_key.pop(key, None)  # the next estimate's prediction is compared with it
        if done:
            log.info("%s/%s: %d estimates corrected with the leakage that came late", *key, sent)
        return sent

    # -- output --------------------------------------------------------------------------------

    def _emit(self, key: Key, sess: PkSession, t: float) -> int:
        if sess.t0 is None or t < sess.t0:  # before the drug start (a late point of a drug start forced on)
            return 0
        if t <= self._quiet_until.get(key, -math.inf):
            self._release_curve(key, sess, t, quiet=True)  # stored then: what a new one is compared with
            return 0
        # A late leakage point, after inputs past it went on without it: the session as it stood then.
        view = sess if sess.latest_input() <= t else sess.as_of(t)
        pk = view.estimate(t)
        if pk is None:
            return 0
        self._send(key, pk)
        self._release_curve(key, sess, t)
        order = self._order(key)
        basis = view.leak_basis()
        if order.behind(t) and basis is not None:
            pending = self.uncorrected.setdefault(key, {})
            release, revision = view.release_basis(), view.release_key()
            pending[t] = _Sent(
                pk,
                basis,
                (release, revision) if release is not None and revision is not None and not release.projected else None,
            )
            if len(pending) > MAX_CORRECTIONS:
                oldest = min(pending)
                del pending[oldest]
                log.warning("%s/%s: estimate at t=%.3f not corrected (leakage too far behind)", *key, oldest)
        return 1

    def _send(self, key: Key, pk: Pk) -> None:
        self.emitter.emit(self.topics.session(*key, "pk"), encode(pk), [pk_line(*key, pk)])

    def _release_curve(self, key: Key, sess: PkSession, t: float, quiet: bool = False) -> None:
        """The post-release curve with the estimate at ``t``, when its prediction has changed."""
        revision = sess.release_key()
        if revision is None or revision == self._release_key.get(key):
            return
        last = self.last_release.get(key)
        if last is not None and t < last.t:
            return  # an input that came late: the newer prediction stands (its estimate is corrected)
        curve = sess.release_message(t)
        if curve is not None:
            self._send_curve(key, curve, quiet)
        self._release_key[key] = revision

    def _send_curve(self, key: Key, curve: PkRelease, quiet: bool = False) -> bool:
        """Send ``curve`` unless it is the one last sent, or older than it (a correction of an estimate
        before it: the later one stands, or is corrected in its turn); whether it was taken. Quiet: only
        taken (it is stored already)."""
        last = self.last_release.get(key)
        if last is not None and (curve.t < last.t or curve.model_copy(update={"t": last.t}) == last):
            return False
        self.last_release[key] = curve
        if not quiet:
            topic = self.topics.session(*key, "pk/release")
            self.emitter.emit(topic, encode(curve), pk_release_lines(*key, curve))
        return True

    async def flush(self) -> None:
        async with self._flush_lock:
            await self.emitter.flush()

    def tick(self) -> int:
        """Release what was held too long; returns how many estimates that sent."""
        return sum(self._release(key) for key, order in list(self.orders.items()) if len(order))

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                if self.tick():
                    await self.emitter.send()
                    await self.flush()
            except ConnectionLost:
                pass  # sent by the flush after reconnecting
            except Exception:
                log.exception("pk clock tick failed")

    # -- sessions ------------------------------------------------------------------------------

    async def _session(self, key: Key) -> PkSession:
        sess = self.sessions.get(key)
        if sess is None:
            sess = PkSession(meta=self.metas.get(key))
            self.sessions[key] = sess
            if self.influx is not None:
                await self._rebuild(key, sess)
        return sess

    async def _rebuild(self, key: Key, sess: PkSession) -> None:
        """What was stored of the session, applied as it came in event time: the session as it would
        be had this service never stopped; estimates after the last one stored are sent (while this
        service was away, the broker may have dropped inputs it held for it)."""
        assert self.influx is not None
        inputs: list[tuple[float, int, Ordered]] = []
        for kind, q in stored_queries(*key).items():
            for x in stored_inputs(kind, await self.influx.rows(q)):
                if isinstance(x, SessionMeta):
                    if sess.meta is None:
                        sess.set_meta(x)
                elif isinstance(x, LabSample):
                    inputs.append((x.reported_t if x.reported_t is not None else x.t, 0, x))
                else:
                    inputs.append((x.t, 1 if isinstance(x, Leakage) else 0, x))
        last = await self.influx.rows(f"SELECT last(v_ml) FROM pk WHERE {session_where(*key)}")
        self._quiet_until[key] = last[0]["time"] / 1000.0 if last else -math.inf
        order = self._order(key)
        before = len(self.emitter)
        for t, _, x in sorted(inputs, key=lambda i: (i[0], i[1])):
            order.advance("leakage" if isinstance(x, Leakage) else "inputs", t)
            self._apply(key, sess, Released(t, "leakage" if isinstance(x, Leakage) else "inputs", x))
        del self._quiet_until[key]
        if inputs:
            log.info(
                "rebuilt %s/%s: %d events, %d samples, %d leakage points; %d estimates were missing",
                *key,
                len(sess.events),
                len(sess.samples),
                len(sess.leak_t),
                len(self.emitter) - before,
            )
