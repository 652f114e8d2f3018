"""AMQP on a RabbitMQ cluster through aio-pika: quorum queues, manual acknowledgement after
storage, a prefetch, publisher confirms (docs/scaling.md).

Gateways keep publishing MQTT to any node; RabbitMQ's MQTT plugin puts their messages into
``amq.topic`` with the topic as routing key (``/`` becomes ``.``). The topology (declared by
:func:`declare_routing` and :func:`declare_service`, from ``isoperf topology declare``):

* ``isoperf.partition.{i}``: one topic exchange per partition; each theatre is bound to the
  partition :func:`isoperf.partition.partition_of` gives it (``{root}.{theatre}.#`` from
  ``isoperf.theatres``). ``isoperf.theatres`` takes every session message from ``amq.topic``;
  a theatre with no binding goes to its alternate exchange, into ``isoperf.unbound``.
* a catch-all consumer (the recorder) reads one quorum queue ``isoperf.{service}`` bound to
  ``amq.topic`` with its topic filters: its instances compete, and nothing routed is left
  unstored, enrolled theatre or not.
* a stateful consumer (leakage, pk, alerts) reads a quorum queue per partition,
  ``isoperf.{service}.{i}``, with single active consumer: each instance takes its share of the
  partitions first and stands by for the others, which it gets when their consumer dies.

A :class:`Delivery`'s token is the AMQP delivery tag. Publishing goes to ``amq.topic`` with a
publisher confirm, through the same bindings as the gateways' messages. Retained publishes
(service status) are published but not retained: AMQP has no retained messages.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pamqp.common import FieldTable

from isoperf.partition import share
from isoperf.settings import ServiceSettings
from isoperf.sources import Connection, ConnectionLost, Delivery
from isoperf.tls import client_context

log = logging.getLogger(__name__)

# Consumers that keep per-session state read one queue per partition (single active consumer).
PARTITIONED = ("leakage", "pk", "alerts")
THEATRES_EXCHANGE = "isoperf.theatres"
UNBOUND_EXCHANGE = "isoperf.unbound"
UNBOUND_QUEUE = "isoperf.unbound"
QUORUM: FieldTable = {"x-queue-type": "quorum"}
_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, OSError, asyncio.TimeoutError)


class _Reasons(logging.Filter):
    """aiormq logs a lost connection with its traceback, at ERROR: the reason is enough (the runtime
    logs it and reconnects), as a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]!r}"
            record.args, record.exc_info, record.exc_text = None, None, None
        if record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("aiormq.connection").addFilter(_Reasons())


def routing_key(topic: str) -> str:
    """The AMQP routing key of an MQTT topic, as RabbitMQ's MQTT plugin maps it."""
    return topic.replace("/", ".")


def topic_of(key: str) -> str:
    return key.replace(".", "/")


def binding_key(subscription: str) -> str:
    """The AMQP binding key of an MQTT topic filter (``+`` is ``*``, ``#`` is ``#``)."""
    return ".".join("*" if part == "+" else part for part in subscription.split("/"))


def partition_exchange(index: int) -> str:
    return f"isoperf.partition.{index}"


def service_queue(service: str, partition: int | None = None) -> str:
    return f"isoperf.{service}" if partition is None else f"isoperf.{service}.{partition}"


def theatre_binding(root: str, theatre: str) -> str:
    return f"{root}.{theatre}.#"


async def declare_routing(channel: AbstractChannel, root: str, partitions: int, theatres: dict[str, int]) -> None:
    """The exchanges, the unbound queue and the binding of every theatre to its partition (idempotent).
    ``theatres``: theatre -> partition."""
    source = await channel.get_exchange("amq.topic", ensure=False)
    unbound = await channel.declare_exchange(UNBOUND_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    queue = await channel.declare_queue(UNBOUND_QUEUE, durable=True, arguments=QUORUM)
    await queue.bind(unbound)
    hub = await channel.declare_exchange(
        THEATRES_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True, arguments={"alternate-exchange": UNBOUND_EXCHANGE}
    )
    await hub.bind(source, f"{root}.*.*.#")
    for i in range(partitions):
        exchange = await channel.declare_exchange(partition_exchange(i), aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.bind(hub, f"{root}.status.#")  # service status: every partition hears it
    for theatre, partition in theatres.items():
        if not 0 <= partition < partitions:
            raise ValueError(f"partition {partition} of {theatre} is not one of 0 .. {partitions - 1}")
        exchange = await channel.get_exchange(partition_exchange(partition), ensure=False)
        await exchange.bind(hub, theatre_binding(root, theatre))


async def declare_service(
    channel: AbstractChannel, service: str, subscriptions: Sequence[str], partitions: int
) -> list[AbstractQueue]:
    """The queues of one consumer and their bindings (idempotent); the queues, partition by partition."""
    keys = [binding_key(s) for s in subscriptions]
    if service not in PARTITIONED:
        queue = await channel.declare_queue(service_queue(service), durable=True, arguments=QUORUM)
        source = await channel.get_exchange("amq.topic", ensure=False)
        for key in keys:
            await queue.bind(source, key)
        return [queue]
    queues = []
    for i in range(partitions):
        exchange = await channel.declare_exchange(partition_exchange(i), aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(
            service_queue(service, i), durable=True, arguments={**QUORUM, "x-single-active-consumer": True}
        )
        for key in keys:
            await queue.bind(exchange, key)
        queues.append(queue)
    return queues


def node_name(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 5672}"


def _tls(url: str, ca_file: Path | None) -> ssl.SSLContext | None:
    """The verifying TLS context of an ``amqps://`` URL (``None`` for ``amqp://``)."""
    return client_context(ca_file) if urlsplit(url).scheme == "amqps" else None


@asynccontextmanager
async def connect_any(
    urls: Sequence[str], name: str, ca_file: Path | None = None
) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A connection to the first node of ``urls`` that answers (``ConnectionLost`` if none does)."""
    reasons = []
    for url in urls:
        try:
            connection = await aio_pika.connect(
                url, client_properties={"connection_name": name}, timeout=5, ssl_context=_tls(url, ca_file)
            )
        except _ERRORS as exc:
            reasons.append(f"{node_name(url)}: {exc or type(exc).__name__}")
            continue
        try:
            yield connection
        finally:
            with suppress(*_ERRORS, RuntimeError):
                await connection.close()
        return
    raise ConnectionLost("no node of the cluster answered: " + "; ".join(reasons))


class AmqpConnection:
    """One live channel: deliveries from this service's queues in, acknowledgements and confirmed publications out."""

    def __init__(
        self, channel: AbstractChannel, exchange: aio_pika.abc.AbstractExchange, closed: asyncio.Event
    ) -> None:
        self._channel, self._exchange, self._closed = channel, exchange, closed
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._acking: set[asyncio.Task[None]] = set()
        self._acked = 0  # every delivery tag up to this one is acknowledged

    async def deliver(self, message: AbstractIncomingMessage) -> None:
        await self._inbox.put(message)

    def backlog(self) -> int:
        return self._inbox.qsize()

    async def receive(self) -> Delivery:
        if self._closed.is_set() and self._inbox.empty():
            raise ConnectionLost("the AMQP channel closed")
        getting = asyncio.ensure_future(self._inbox.get())
        closing = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({getting, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not getting.done():
                getting.cancel()
        if not getting.done() or getting.cancelled():
            raise ConnectionLost("the AMQP channel closed")
        message = getting.result()
        return Delivery(topic_of(message.routing_key or ""), message.body, message.delivery_tag or 0, 1)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        tags = sorted(d.token for d in deliveries if d.token)
        if not tags:
            return
        task = asyncio.ensure_future(self._ack(tags))
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def _ack(self, tags: list[int]) -> None:
        underlay = await self._channel.get_underlay_channel()
        try:
            if tags == list(range(self._acked + 1, self._acked + 1 + len(tags))):
                await underlay.basic_ack(tags[-1], multiple=True)  # a contiguous batch: one frame
            else:
                for tag in tags:
                    await underlay.basic_ack(tag)
            self._acked = max(self._acked, tags[-1])
        except (*_ERRORS, aiormq.exceptions.ChannelInvalidStateError, RuntimeError) as exc:
            # Not acknowledged: the broker delivers them again (storage is idempotent).
            log.warning("acknowledgement of %d deliveries lost (%s); they come again", len(tags), exc)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        message = aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        try:
            await self._exchange.publish(message, routing_key(topic), mandatory=False, timeout=30)
        except (*_ERRORS, aiormq.exceptions.ChannelInvalidStateError, RuntimeError) as exc:
            raise ConnectionLost(f"publish of {topic} not confirmed: {exc or type(exc).__name__}") from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this publisher is being stopped
            # The client cancelled the confirmation it awaited (its channel closed: a node went
            # down): a publication to repeat, not a stop of the service.
            raise ConnectionLost(f"publish of {topic} cancelled: the channel closed") from exc


class AmqpSource:
    """Connections of one consumer service to the cluster named in its settings."""

    def __init__(self, settings: ServiceSettings, service: str) -> None:
        self.settings, self.service = settings, service
        self.urls = settings.amqp_url_list()
        self.last_will = False  # AMQP has none: the runtime sends heartbeats instead
        self.name = "amqp cluster " + ", ".join(node_name(u) for u in self.urls)

    @asynccontextmanager
    async def connect(self, subscriptions: Sequence[str]) -> AsyncIterator[Connection]:
        s = self.settings
        try:
            name = f"isoperf-{self.service}-{s.instance}"
            async with connect_any(self.urls, name, s.amqp_ca_file) as connection:
                closed = asyncio.Event()
                connection.close_callbacks.add(lambda *_: closed.set())
                channel = await connection.channel(publisher_confirms=True)
                channel.close_callbacks.add(lambda *_: closed.set())
                await channel.set_qos(prefetch_count=s.amqp_prefetch)
                exchange = await channel.get_exchange("amq.topic", ensure=False)
                queues = await declare_service(channel, self.service, subscriptions, s.partitions)
                conn = AmqpConnection(channel, exchange, closed)
                standby: asyncio.Task[None] | None = None
                if len(queues) == 1:
                    await queues[0].consume(conn.deliver)
                else:
                    first = share(len(queues), *s.share_of())
                    for p in first:
                        await queues[p].consume(conn.deliver)
                    rest = [queues[p] for p in range(len(queues)) if p not in first]
                    standby = asyncio.ensure_future(self._stand_by(rest, conn))
                log.info("%s consuming %d queue(s) on %s", self.service, len(queues), self.name)
                try:
                    yield conn
                finally:
                    if standby is not None:
                        standby.cancel()
        except ConnectionLost:
            raise
        except (*_ERRORS, aiormq.exceptions.ChannelInvalidStateError) as exc:
            raise ConnectionLost(f"{self.name}: {exc or type(exc).__name__}") from exc

    async def _stand_by(self, queues: list[AbstractQueue], conn: AmqpConnection) -> None:
        """After a delay (so that each instance's own share goes to it first), register for the
        other partitions too: their active consumer stays theirs until it goes."""
        await asyncio.sleep(self.settings.amqp_standby_delay_s)
        try:
            for queue in queues:
                await queue.consume(conn.deliver)
        except (*_ERRORS, aiormq.exceptions.ChannelInvalidStateError) as exc:
            log.warning("%s: standing by failed (%s)", self.service, exc)
