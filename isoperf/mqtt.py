"""The MQTT loop every service shares: connect, reconnect with backoff, resubscribe,
consume with acknowledgement after storage, and publish from an outbox.

Guarantees:

* QoS 1 and a persistent session (``clean_session=False`` and a fixed client
  id), so the broker keeps what a service has not acknowledged while it is
  away or restarting.
* A message is acknowledged only after the handler's ``flush`` returned, i.e.
  after its results are stored and published. aiomqtt 2.x has no public
  manual-ack API yet; we use paho's ``manual_ack_set``/``ack`` on the wrapped
  client, the workaround its maintainers point to (aiomqtt issue #345).
* Bad input never stops a service: decode and validation errors go to the
  dead letters, any other handler exception is logged with its traceback.
* A retained ``online`` status on connect, ``offline`` on a clean exit, and
  ``offline`` as the last will for a crash.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, Protocol

import aiomqtt

from isoperf.deadletter import DeadLetters
from isoperf.settings import ServiceSettings
from isoperf.topics import Topics

log = logging.getLogger(__name__)


def tool_client(settings: ServiceSettings) -> aiomqtt.Client:
    """A short-lived client for command-line tools (ack, silence, samples, health checks),
    with the broker address and credentials of ``settings``."""
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
    return aiomqtt.Client(settings.mqtt_host, settings.mqtt_port, username=settings.mqtt_username, password=password)


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


class Handler(Protocol):
    """A consumer: ``handle`` one message (raise ``ValueError`` for bad input), ``flush`` results.

    ``flush`` must store everything handled before it was called; ``handle`` runs
    while a flush is in progress (never two flushes at once), so a flush takes
    what it stores before its first ``await``.
    """

    def subscriptions(self) -> list[str]: ...

    async def handle(self, topic: str, payload: bytes) -> None: ...

    async def flush(self) -> None: ...


class MqttLink:
    """The publisher a service holds across reconnections; publishes at QoS 1."""

    def __init__(self) -> None:
        self._client: aiomqtt.Client | None = None

    def attach(self, client: aiomqtt.Client) -> None:
        self._client = client

    def detach(self) -> None:
        self._client = None

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if self._client is None:
            raise aiomqtt.MqttError("not connected")
        await self._client.publish(topic, payload, qos=1, retain=retain)


class Outbox:
    """Messages waiting to be published, kept until the broker acknowledged them."""

    def __init__(self) -> None:
        self._items: deque[tuple[str, bytes, bool]] = deque()
        self._nonempty = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._lock = asyncio.Lock()

    def put(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._items.append((topic, payload, retain))
        self._nonempty.set()
        self._empty.clear()

    def __len__(self) -> int:
        return len(self._items)

    async def send(self, publisher: Publisher) -> None:
        """Publish what is queued, in order, removing each message only once the broker has it."""
        async with self._lock:
            while self._items:
                topic, payload, retain = self._items[0]
                await publisher.publish(topic, payload, retain=retain)
                self._items.popleft()

    async def drain_to(self, link: MqttLink) -> None:
        """Publish forever."""
        while True:
            await self._nonempty.wait()
            await self.send(link)
            self._nonempty.clear()
            self._empty.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()


class Backoff:
    """Exponential backoff with jitter, from ``first`` up to ``cap`` seconds."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap, self._next = first, cap, first

    def reset(self) -> None:
        self._next = self.first

    def next_delay(self) -> float:
        delay = self._next * (0.5 + random.random() / 2)
        self._next = min(self._next * 2, self.cap)
        return delay


async def _first(*aws: Awaitable[object] | None, timeout: float | None = None) -> None:
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


async def _wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


class MqttService:
    """Runs one service's MQTT connection until ``stop`` is set."""

    def __init__(
        self,
        settings: ServiceSettings,
        service: str,
        *,
        handler: Handler | None = None,
        outbox: Outbox | None = None,
        deadletters: DeadLetters | None = None,
        link: MqttLink | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.topics = Topics(settings.mqtt_root)
        self.handler = handler
        self.outbox = outbox
        self.link = link or MqttLink()
        self.deadletters = deadletters or DeadLetters(settings.deadletter_dir, service)
        self.client_id = f"isoperf-{service}-{settings.instance}"
        self.status_topic = self.topics.status(service, settings.instance)
        self.handled = 0

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        client = aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            username=s.mqtt_username,
            password=s.mqtt_password.get_secret_value() if s.mqtt_password else None,
            identifier=self.client_id,
            clean_session=False,
            keepalive=s.mqtt_keepalive_s,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            max_inflight_messages=100,
            # Nagle's algorithm would hold each small reading back ~40 ms.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        # See the module docstring: acknowledge after storage, not on receipt.
        client._client.manual_ack_set(True)
        return client

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        while not stop.is_set():
            try:
                async with self._client() as client:
                    self.link.attach(client)
                    log.info("%s connected to %s:%d", self.service, self.settings.mqtt_host, self.settings.mqtt_port)
                    if self.handler is not None:
                        for sub in self.handler.subscriptions():
                            await client.subscribe(sub, qos=1)
                        # Results of messages handled before a lost connection.
                        await self.handler.flush()
                    # Online means ready: subscribed, so nothing published from now on is missed.
                    await client.publish(self.status_topic, b"online", qos=1, retain=True)
                    backoff.reset()
                    await self._connected(client, stop)
                    await client.publish(self.status_topic, b"offline", qos=1, retain=True)
                    self.link.detach()
                    return
            except aiomqtt.MqttError as exc:
                self.link.detach()
                delay = backoff.next_delay()
                log.warning("%s: MQTT connection lost (%s); reconnecting in %.1f s", self.service, exc, delay)
                await _wait_or_stop(stop, delay)
        if self.handler is not None:
            # Stopped while disconnected: store what was handled; the broker redelivers the rest.
            await self._drain(self.handler.flush())

    async def _connected(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        sender = asyncio.ensure_future(self.outbox.drain_to(self.link)) if self.outbox is not None else None
        try:
            if self.handler is not None:
                await self._consume(client, self.handler, stop)
            else:
                await _first(stop.wait(), sender)
            if sender is not None and self.outbox is not None:
                await _first(self.outbox.wait_empty(), sender, timeout=self.settings.drain_timeout_s)
                if len(self.outbox):
                    log.error("%s: %d messages left unsent at shutdown", self.service, len(self.outbox))
        finally:
            if sender is not None:
                sender.cancel()

    async def _drain(self, work: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(self.settings.drain_timeout_s):
                await work
        except TimeoutError:
            log.error("%s: drain did not finish within %.0f s", self.service, self.settings.drain_timeout_s)

    async def _consume(self, client: aiomqtt.Client, handler: Handler, stop: asyncio.Event) -> None:
        """Handle messages while the previous batch is being stored: storage never holds up handling.

        One flush at a time, in order; a batch is acknowledged when its flush returned. Handling
        waits for a running flush only when a full batch is already waiting (back-pressure).
        """
        pending: list[aiomqtt.Message] = []
        first_pending = 0.0
        flushing: asyncio.Future[None] | None = None
        messages = client.messages
        it = aiter(messages)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                if flushing is not None and flushing.done():
                    flushing.result()  # a failed flush (connection lost) ends this connection
                    flushing = None
                if pending and len(pending) >= self.settings.flush_max_messages and flushing is not None:
                    await flushing
                    continue
                if (
                    pending
                    and flushing is None
                    and (
                        len(messages) == 0
                        or len(pending) >= self.settings.flush_max_messages
                        or time.monotonic() - first_pending > self.settings.flush_max_delay_s
                    )
                ):
                    flushing = asyncio.ensure_future(self._flush_and_ack(client, handler, pending))
                    pending = []
                receiving = asyncio.ensure_future(anext(it))
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
                    if pending and len(messages) == 0:
                        flushing = asyncio.ensure_future(self._flush_and_ack(client, handler, pending))
                        pending = []
                if receiving not in done:
                    receiving.cancel()
                    break
                message = receiving.result()
                await self._handle(handler, message)
                if not pending:
                    first_pending = time.monotonic()
                pending.append(message)
        finally:
            stopping.cancel()
            if flushing is not None and not flushing.done():
                await self._drain(asyncio.shield(flushing))
        if flushing is not None:
            flushing.result()
        await self._drain(self._flush_and_ack(client, handler, pending))

    async def _handle(self, handler: Handler, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        try:
            await handler.handle(topic, bytes(payload))
            self.handled += 1
        except ValueError as exc:
            self.deadletters.keep(topic, bytes(payload), str(exc).replace("\n", "; ")[:1000])
        except aiomqtt.MqttError:
            raise
        except Exception as exc:
            log.exception("%s: handler failed on %s", self.service, topic)
            self.deadletters.keep(topic, bytes(payload), f"handler error: {exc!r}"[:1000])

    async def _flush_and_ack(self, client: aiomqtt.Client, handler: Handler, pending: list[aiomqtt.Message]) -> None:
        await handler.flush()
        for message in pending:
            if message.qos > 0:
                client._client.ack(message.mid, message.qos)
        pending.clear()
