"""What a service sends: an outbox that keeps each message until the broker has it, and the one
way derived results leave a service, published at once and stored with the next flush."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterable

from isoperf.influx import LineSink
from isoperf.sources import Publisher

WINDOW = 100  # publications in flight at once (the MQTT client's own limit: max_inflight_messages)


class Outbox:
    """Messages waiting to be published, in order, each kept until the broker acknowledged it."""

    def __init__(self) -> None:
        self._items: deque[tuple[str, bytes, bool]] = deque()
        self._lock = asyncio.Lock()

    def put(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self._items.append((topic, payload, retain))

    def __len__(self) -> int:
        return len(self._items)

    async def send(self, publisher: Publisher) -> None:
        """Publish what is queued, in order, removing each message only once the broker has it.

        Up to ``WINDOW`` publications are in flight at once (one round trip to the broker each would
        otherwise bound a service to about a thousand messages a second). A message is removed only
        when it and every one before it were acknowledged; after a lost connection the rest go again
        (a message the broker had is then sent twice: every derived point is idempotent, same time)."""
        async with self._lock:
            while self._items:
                window = list(itertools.islice(self._items, WINDOW))
                results = await asyncio.gather(
                    *(publisher.publish(topic, payload, retain=retain) for topic, payload, retain in window),
                    return_exceptions=True,
                )
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
                    self._items.popleft()


class Emitter:
    """Derived results (leakage, pk, alerts): on the bus at once, in the record with the next flush.

    The live path never waits for storage; the input is acknowledged only after ``flush``
    returned, so a crash before it loses nothing (the input comes again). Publishing runs in the
    background: ``send`` starts it and returns, so the next input is handled while the broker
    acknowledges (one round trip to the broker per input would otherwise bound a service to a few
    hundred inputs a second); ``flush`` waits for it.
    """

    def __init__(self, publisher: Publisher, sink: LineSink) -> None:
        self.publisher, self.sink = publisher, sink
        self.outbox = Outbox()
        self._sending: asyncio.Task[None] | None = None

    def emit(self, topic: str, payload: bytes, lines: Iterable[str]) -> None:
        self.outbox.put(topic, payload)
        self.sink.add(lines)

    async def send(self) -> None:
        """Publish what was emitted, starting now (a sender already running takes it too)."""
        if self._sending is None or self._sending.done():
            if self._sending is not None:
                self._sending.exception()  # ConnectionLost: the next flush sends it again
            self._sending = asyncio.ensure_future(self.outbox.send(self.publisher))
            self._sending.add_done_callback(retrieved)
        await asyncio.sleep(0)  # the sender starts before the next input is handled

    async def sent(self) -> None:
        """Until what ``send`` started is acknowledged by the broker (or its failure raised)."""
        if self._sending is not None:
            sending, self._sending = self._sending, None
            await sending

    async def flush(self) -> None:
        """Store what was emitted; publish what is left (anything a lost connection held back)."""
        await self.sink.flush()
        await self.sent()
        await self.outbox.send(self.publisher)

    def __len__(self) -> int:
        """Emitted and not yet published."""
        return len(self.outbox)


def retrieved(task: asyncio.Future[None]) -> None:
    """A done callback: a failed background task (a send whose messages stay in the outbox, a flush
    whose messages come again) is not an unhandled error."""
    if not task.cancelled():
        task.exception()
