"""The one message path every service runs: connect, receive, parse, handle, store, acknowledge.

* Connect through a :class:`~isoperf.sources.Source`, subscribe to the kinds the
  handler takes, publish a retained ``online`` once subscribed (``offline`` on a
  clean exit; the source's last will covers a crash), reconnect with backoff.
* Every delivery goes through :class:`~isoperf.messages.MessageParser`: size,
  decoding, topic and validation. A bad one is kept aside with its reason
  (:class:`~isoperf.deadletter.DeadLetters`); a handler error is logged with its
  traceback and kept aside too; the service carries on either way.
* Every input's event time is judged against its session's window
  (:mod:`isoperf.timewindow`): a time far from the session's is kept aside with its
  reason (a batch sample by sample) and never reaches the handler; the handler's
  ``rejected`` (if it has one) hears of it (the alerts service raises a clock alarm, the
  recorder confirms the message to its gateway as handled).
* Messages are handled while the previous batch is being stored: a batch is
  acknowledged only when the handler's ``flush`` returned, i.e. once its results
  are stored, so a crash of any process loses nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from isoperf.backoff import Backoff, wait_or_stop
from isoperf.deadletter import DeadLetters
from isoperf.messages import STATUS, Inbound, MessageParser, Readings, subscriptions
from isoperf.outbox import retrieved
from isoperf.partition import read_theatres, theatres_in_share
from isoperf.schemas import Event, LabSample, Leakage, LeakageSeries, SessionMeta
from isoperf.settings import ServiceSettings
from isoperf.sources import Connection, ConnectionLost, Delivery, Publisher, Source
from isoperf.timewindow import Rejection, SessionWindows, WindowRules
from isoperf.topics import Topics

log = logging.getLogger(__name__)


class _HasTime(Protocol):
    @property
    def t(self) -> float: ...


_Timed = TypeVar("_Timed", bound=_HasTime)


class Handler(Protocol):
    """A service's logic between the message path and storage.

    ``handle`` gets validated messages of the ``kinds`` it names (raise ``ValueError``
    for input that is valid by the schema but wrong in context: it is kept aside).
    ``flush`` stores everything handled before it was called; ``handle`` may run while
    a flush is in progress (never two flushes at once), so a flush takes what it
    stores before its first ``await``. ``start`` runs once before the first message,
    ``close`` once after the last flush. A handler may also have
    ``async def rejected(message, rejections)``: told of the inputs of ``message`` stamped
    outside their session's time window (kept aside; what was inside goes to ``handle``); and
    ``async def drained()``: called once the messages already received are all handled, before
    the loop waits for more (and before a flush it starts then). A handler that collects what it
    derives over several inputs publishes it there: idle, each input's results go at once; under
    load, one publication carries the results of many inputs.
    """

    kinds: tuple[str, ...]

    async def start(self) -> None:
        """Nothing by default (a handler that subclasses ``Handler`` inherits this)."""
        return

    async def handle(self, message: Inbound) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None:
        """Nothing by default."""
        return


class Sender(Protocol):
    """What a producing service publishes while connected (the gateway's journal)."""

    def __len__(self) -> int: ...

    async def drain_to(self, publisher: Publisher) -> None:
        """Publish forever; raise ``ConnectionLost`` when the connection breaks."""
        ...

    async def wait_empty(self) -> None: ...


class Link:
    """The publisher a service holds across reconnections: the current connection, if any."""

    def __init__(self) -> None:
        self._connection: Connection | None = None

    def attach(self, connection: Connection) -> None:
        self._connection = connection

    def detach(self) -> None:
        self._connection = None

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if self._connection is None:
            raise ConnectionLost("not connected")
        await self._connection.publish(topic, payload, retain=retain)


async def _first(*aws: Awaitable[object] | None, timeout: float | None = None) -> None:  # noqa: ASYNC109
    """Wait until the first of ``aws`` finishes (or ``timeout``) and re-raise its exception.

    Coroutines are wrapped in tasks that are cancelled afterwards; tasks passed
    in belong to the caller and keep running.
    """
    owned = [asyncio.ensure_future(a) for a in aws if a is not None and not asyncio.isfuture(a)]
    given = [a for a in aws if asyncio.isfuture(a)]
    try:
        done, _ = await asyncio.wait([*owned, *given], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in owned:
            task.cancel()


class ServiceLoop:
    """Runs one service's connection until ``stop`` is set: a consumer (``handler``), a producer
    (``sender``), or both; a producer stops once what it holds is sent (or ``drain_timeout_s``)."""

    def __init__(
        self,
        settings: ServiceSettings,
        service: str,
        source: Source,
        *,
        handler: Handler | None = None,
        sender: Sender | None = None,
        deadletters: DeadLetters | None = None,
        link: Link | None = None,
        announce: bool = True,
        theatre: str | None = None,
    ) -> None:
        self.settings, self.service, self.source = settings, service, source
        self.topics = Topics(settings.mqtt_root)
        self.handler, self.sender = handler, sender
        self.link = link or Link()
        self.deadletters = deadletters or DeadLetters(settings.deadletter_dir, service)
        kinds = handler.kinds if handler is not None else ()
        self.parser = MessageParser(self.topics, service, kinds, settings.max_payload_bytes)
        self.subscriptions = service_subscriptions(settings, self.topics, kinds, theatre)
        self.status_topic = status_topic(settings, service) if announce else None
        rules = WindowRules(
            settings.window_before_s, settings.window_after_s, settings.window_ahead_s, settings.window_confirm_s
        )
        self.windows = SessionWindows(rules)
        self.handled = 0

    async def run(self, stop: asyncio.Event) -> None:
        if self.handler is not None:
            await self.handler.start()
        backoff = Backoff()
        while not stop.is_set():
            try:
                async with self.source.connect(self.subscriptions) as connection:
                    self.link.attach(connection)
                    log.info("%s connected to %s", self.service, self.source.name)
                    if self.handler is not None:
                        await self.handler.flush()  # results of messages handled before a lost connection
                    # Online means ready: subscribed, so nothing published from now on is missed.
                    if self.status_topic is not None:
                        await connection.publish(self.status_topic, b"online", retain=True)
                    backoff.reset()
                    beating = None
                    if self.status_topic is not None and not self.source.last_will:
                        beating = asyncio.ensure_future(self._beat(connection, self.status_topic))
                    try:
                        await self._connected(connection, stop)
                    finally:
                        if beating is not None:
                            beating.cancel()
                    if self.status_topic is not None:
                        await connection.publish(self.status_topic, b"offline", retain=True)
                    self.link.detach()
                    break
            except ConnectionLost as exc:
                self.link.detach()
                delay = backoff.next_delay()
                log.warning("%s: connection lost (%s); reconnecting in %.1f s", self.service, exc, delay)
                await wait_or_stop(stop, delay)
        if self.handler is not None:
            # Stopped while disconnected: store what was handled; the broker redelivers the rest.
            try:
                await self._drain(self.handler.flush())
            except ConnectionLost as exc:  # stored; what it would have published waits for the next start
                log.warning("%s: stopped while disconnected (%s)", self.service, exc)
            await self.handler.close()

    async def _beat(self, connection: Connection, topic: str) -> None:
        """While connected, without a last will: touch the health file and repeat ``online`` every
        heartbeat (a lost connection is the consume loop's to find; the beats just stop)."""
        alive = health_file(self.settings, self.service)
        alive.parent.mkdir(parents=True, exist_ok=True)
        while True:
            alive.touch()
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await connection.publish(topic, b"online", retain=True)
            except ConnectionLost:
                return

    async def _connected(self, connection: Connection, stop: asyncio.Event) -> None:
        sending = asyncio.ensure_future(self.sender.drain_to(self.link)) if self.sender is not None else None
        done = asyncio.ensure_future(self._until_done(stop, sending))
        try:
            if self.handler is not None:
                await self._consume(connection, self.handler, done)
            else:
                await done
            done.result()  # a sender that lost the connection ends it
        finally:
            for task in (sending, done):
                if task is not None:
                    # A sender that failed after the drain gave up on it (the connection gone at
                    # shutdown): what it held stays in its journal; no unretrieved task exception.
                    task.add_done_callback(retrieved)
                    task.cancel()

    async def _until_done(self, stop: asyncio.Event, sending: asyncio.Future[None] | None) -> None:
        """Until ``stop``; then, for a producer, until what it holds is sent (within the drain timeout)."""
        await _first(stop.wait(), sending)
        if sending is not None and self.sender is not None:
            await _first(self.sender.wait_empty(), sending, timeout=self.settings.drain_timeout_s)
            if len(self.sender):
                log.warning("%s: %d messages not yet confirmed at shutdown (kept)", self.service, len(self.sender))

    async def _drain(self, work: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(self.settings.drain_timeout_s):
                await work
        except TimeoutError:
            log.error("%s: drain did not finish within %.0f s", self.service, self.settings.drain_timeout_s)

    async def _consume(self, connection: Connection, handler: Handler, stopping: asyncio.Future[None]) -> None:
        """Handle messages while the previous batch is being stored: storage never holds up handling.

        One flush at a time, in order; a batch is acknowledged when its flush returned. Handling
        waits for a running flush only when a full batch is already waiting (back-pressure).
        """
        max_batch, max_delay = self.settings.flush_max_messages, self.settings.flush_max_delay_s
        pending: list[Delivery] = []
        first_pending = 0.0
        flushing: asyncio.Future[None] | None = None
        drained: Callable[[], Awaitable[None]] | None = getattr(handler, "drained", None)
        undrained = False  # handled messages since ``drained`` was last called

        async def start_flush() -> None:
            nonlocal flushing, pending
            flushing = asyncio.ensure_future(self._flush_and_ack(connection, handler, pending))
            # A flush abandoned at shutdown (storage or broker did not answer within the drain
            # timeout) may fail after the loop is gone: its messages come again, and its failure is
            # no unhandled error. Every path that awaits it still sees the failure.
            flushing.add_done_callback(retrieved)
            pending = []
            # Let the flush take what it stores (before its first await) before anything more is handled.
            await asyncio.sleep(0)

        try:
            while True:
                if flushing is not None and flushing.done():
                    flushing.result()  # a failed flush (connection lost) ends this connection
                    flushing = None
                if len(pending) >= max_batch and flushing is not None:
                    await flushing
                    continue
                if undrained and drained is not None and connection.backlog() == 0:
                    undrained = False
                    await drained()  # ConnectionLost ends this connection, as a failed flush does
                if (
                    pending
                    and flushing is None
                    and (
                        connection.backlog() == 0
                        or len(pending) >= max_batch
                        or time.monotonic() - first_pending > max_delay
                    )
                ):
                    await start_flush()
                if stopping.done():
                    break
                if connection.backlog():  # already received: taken without a task or a wait per message
                    await self._take(handler, await connection.receive(), pending)
                    undrained = True
                    if len(pending) == 1:
                        first_pending = time.monotonic()
                    continue
                receiving = asyncio.ensure_future(connection.receive())
                try:
                    while True:
                        waiting: set[asyncio.Future[Any]] = {receiving, stopping}
                        if flushing is not None:
                            waiting.add(flushing)
                        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                        if receiving in done or stopping in done:
                            break
                        # The flush finished first. If the inbox is idle, store what is pending now;
                        # otherwise the next message decides, so batches stay large under load.
                        assert flushing is not None
                        flushing.result()
                        flushing = None
                        if pending and connection.backlog() == 0:
                            await start_flush()
                except BaseException:
                    receiving.cancel()  # a failed flush ends the connection: receive nothing more on it
                    raise
                if receiving not in done:
                    receiving.cancel()
                    break
                await self._take(handler, receiving.result(), pending)
                undrained = True
                if len(pending) == 1:
                    first_pending = time.monotonic()
        finally:
            if flushing is not None and not flushing.done():
                await self._drain(asyncio.shield(flushing))
        if flushing is not None:
            if not flushing.done():  # storage did not answer within the drain timeout: acknowledge nothing more
                log.error("%s: a write still pending at shutdown; its messages come again", self.service)
                return
            flushing.result()
        await self._drain(self._flush_and_ack(connection, handler, pending))

    async def _take(self, handler: Handler, delivery: Delivery, pending: list[Delivery]) -> None:
        await self._handle(handler, delivery)
        pending.append(delivery)

    async def _handle(self, handler: Handler, delivery: Delivery) -> None:
        topic, payload = delivery.topic, delivery.payload
        try:
            message = self.parser.parse(topic, payload)
            inside, rejections = self._judge(message)
            if rejections:
                shown = "; ".join(r.reason for r in rejections[:3])
                more = f" (and {len(rejections) - 3} more samples)" if len(rejections) > 3 else ""
                self.deadletters.keep(topic, payload, f"outside the session's time window: {shown}{more}")
                hook = getattr(handler, "rejected", None)
                if hook is not None:
                    await hook(message, rejections)
            if inside is not None:
                await handler.handle(inside)
            self.handled += 1
        except ValueError as exc:
            self.deadletters.keep(topic, payload, str(exc).replace("\n", "; ")[:1000])
        except ConnectionLost:
            raise
        except Exception as exc:
            log.exception("%s: handler failed on %s", self.service, topic)
            self.deadletters.keep(topic, payload, f"handler error: {exc!r}"[:1000])

    def _judge(self, message: Inbound) -> tuple[Inbound | None, list[Rejection]]:
        """What of ``message`` lies inside its session's time window, and what does not."""
        key, body, now = message.key, message.body, time.time()
        if isinstance(body, SessionMeta):
            self.windows.started(key, body.t)
        elif isinstance(body, Readings):
            kept, out = self._split(key, body.readings, now)
            if out:  # what is inside goes on (maybe nothing: the message is still confirmed)
                return dataclasses.replace(message, body=dataclasses.replace(body, readings=kept)), out
        elif isinstance(body, LeakageSeries):
            inside, rejected = self._split(key, body.points, now)
            if rejected:  # a series has at least one point: with none inside, nothing is handled
                series = LeakageSeries.model_construct(points=inside)
                return (dataclasses.replace(message, body=series) if inside else None), rejected
        elif isinstance(body, Event | Leakage | LabSample):
            rejection = self.windows.judge(key, body.t, now, moves=not isinstance(body, LabSample))
            if rejection is not None:
                return None, [rejection]
        return message, []

    def _split(self, key: tuple[str, str], items: Sequence[_Timed], now: float) -> tuple[list[_Timed], list[Rejection]]:
        """The items of a batch inside the session's window, and the rejections of those outside;
        a batch wholly inside (the usual case) is judged at once."""
        times = [x.t for x in items]
        if not times or self.windows.take_all(key, times[0], min(times), max(times), now):
            return list(items), []
        inside: list[_Timed] = []
        rejected: list[Rejection] = []
        for x in items:
            rejection = self.windows.judge(key, x.t, now)
            if rejection is None:
                inside.append(x)
            else:
                rejected.append(rejection)
        return inside, rejected

    async def _flush_and_ack(self, connection: Connection, handler: Handler, pending: list[Delivery]) -> None:
        await handler.flush()
        connection.ack(pending)
        pending.clear()


def service_subscriptions(
    settings: ServiceSettings, topics: Topics, kinds: tuple[str, ...], theatre: str | None = None
) -> list[str]:
    """The topic filters of one instance: one theatre's (a gateway), the theatres of its share of the
    partitions (a stateful service of several instances; services' status only in share 0, so a
    service going offline is one alarm), or every theatre's; shared among the instances of
    ``share_group``."""
    index, count = settings.share_of()
    if theatre is not None:
        subs = subscriptions(topics, kinds, theatre)
    elif count > 1:
        listed = read_theatres(settings.theatres_file)
        mine = theatres_in_share(listed, settings.partitions, index, count)
        session_kinds = tuple(k for k in kinds if k != STATUS)
        subs = [s for t in mine for s in subscriptions(topics, session_kinds, t)]
        if STATUS in kinds and index == 0:
            subs.append(topics.status_subscription())
        log.info(
            "share %s of %d partitions: %d of the %d theatres of %s (%s)",
            settings.partition_share,
            settings.partitions,
            len(mine),
            len(listed),
            settings.theatres_file,
            ", ".join(mine) or "none",
        )
    else:
        subs = subscriptions(topics, kinds)
    if settings.share_group:
        subs = [f"$share/{settings.share_group}/{s}" for s in subs]
    return subs


def health_file(settings: ServiceSettings, service: str) -> Path:
    """The file a service without a last will touches every heartbeat while connected."""
    return settings.health_dir / f"{service}-{settings.instance}.alive"


def status_topic(settings: ServiceSettings, service: str) -> str:
    return Topics(settings.mqtt_root).status(service, settings.instance)
