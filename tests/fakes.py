"""In-memory fakes for unit tests of handlers and of the runtime (never for integration tests)."""

from __future__ import annotations

from collections.abc import Iterable

from isoperf.codec import DEFAULT_MAX_PAYLOAD_BYTES
from isoperf.messages import MessageParser
from isoperf.outbox import Emitter
from isoperf.runtime import Handler
from isoperf.topics import Topics

TOPICS = Topics()


class FakeWriter:
    """A line sink: ``flush`` moves what was added to ``stored``."""

    def __init__(self) -> None:
        self.buffer: list[str] = []
        self.stored: list[str] = []

    def add(self, lines: Iterable[str]) -> None:
        self.buffer.extend(lines)

    async def flush(self) -> None:
        self.stored.extend(self.buffer)
        self.buffer.clear()


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.sent.append((topic, payload))


async def deliver(
    handler: Handler, topic: str, payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, service: str = "test"
) -> None:
    """What the runtime does with one delivery: parse it for this handler's kinds, handle it, and
    (the inbox is empty then) tell the handler it is drained.

    Raises ``ValueError`` (with the reason) where the runtime would keep the message aside."""
    message = MessageParser(TOPICS, service, handler.kinds, max_bytes).parse(topic, payload)
    await handler.handle(message)
    drained = getattr(handler, "drained", None)
    if drained is not None:
        await drained()
    await published(handler)


async def published(handler: object) -> None:
    """Until what the handler's emitter started publishing in the background has reached the broker."""
    emitter = getattr(handler, "emitter", None)
    if isinstance(emitter, Emitter):
        await emitter.sent()
