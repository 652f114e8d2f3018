"""The gateway's side of store and forward: messages into the journal, out to the broker, and out of
the journal when the recorder confirms them (``journal.py`` says why and how)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from pydantic import BaseModel

from isoperf.codec import encode
from isoperf.messages import Inbound
from isoperf.runtime import Handler, ServiceLoop
from isoperf.schemas import DeviceState, GatewayStatus, Stored
from isoperf.sources import Publisher
from isoperf.topics import Topics
from services.acquisition.journal import Journal

log = logging.getLogger(__name__)

Outgoing = tuple[str, BaseModel, bool]  # topic, message (with a ``journal_seq`` field), retained


class ResendWait:
    """How long a published message waits for its confirmation before it is published again.

    At least ``base_s`` (``ISOPERF_JOURNAL_RESEND_AFTER_S``). A recorder that is slow, not lost
    (a loaded server, a long backlog), confirms late: copies sent after a fixed wait would only
    add to its load, and under load they come back late too, so the backlog grows on itself. So,
    as TCP sets its retransmission timeout: each confirmation brings the wait to twice the time
    it took (never below ``base_s``, and never falling faster than a tenth a confirmation); each
    timed resend doubles it; ``max_factor`` times ``base_s`` at most.
    """

    def __init__(self, base_s: float, max_factor: float = 20.0) -> None:
        self.base_s, self.max_s = base_s, base_s * max_factor
        self.wait_s = base_s

    def confirmed(self, took_s: float) -> None:
        self.wait_s = min(self.max_s, max(self.base_s, 2.0 * took_s, 0.9 * self.wait_s))

    def resent(self) -> None:
        self.wait_s = min(self.max_s, 2.0 * self.wait_s)


class Gateway(Handler):
    """Journals what the devices say, publishes it, and forgets it once stored.

    As a handler it takes the recorder's ``stored`` confirmations of its own theatre; as the
    service loop's sender it publishes the journal, again after every reconnection.
    """

    kinds: tuple[str, ...] = ("stored",)

    def __init__(
        self, journal: Journal, topics: Topics, theatre: str, resend_after_s: float = 30.0, warn_fraction: float = 0.8
    ) -> None:
        self.journal, self.topics, self.theatre = journal, topics, theatre
        self.resend_after_s, self.warn_fraction = resend_after_s, warn_fraction
        self.resend_wait = ResendWait(resend_after_s)
        self.filling = False
        self.published = 0
        self.confirmed = 0

    # -- in -------------------------------------------------------------------------------------

    def put(self, items: Iterable[Outgoing]) -> None:
        """Journal messages (one transaction), each stamped with its sequence number."""
        rows = self._rows(list(items))
        self.journal.add(rows)
        if rows:
            self._watch_fill(rows[-1][2])

    def _rows(self, batch: list[Outgoing]) -> list[tuple[int, str, str, str, bytes, bool]]:
        """Journal rows for messages, each payload stamped with its sequence number."""
        rows = []
        for seq, (topic, message, retain) in zip(self.journal.next_seqs(len(batch)), batch, strict=True):
            where = self.topics.parse(topic)
            payload = encode(message.model_copy(update={"journal_seq": seq}))
            rows.append((seq, where.theatre, where.session, topic, payload, retain))
        return rows

    def _watch_fill(self, session: str) -> None:
        """Past ``warn_fraction`` of its bound the journal says so on the ``device`` topic (an alarm),
        and again when it is back below."""
        fill = self.journal.fill
        if (fill >= self.warn_fraction) == self.filling:
            return
        self.filling = not self.filling
        state: DeviceState = "journal_filling" if self.filling else "journal_ok"
        reason = f"gateway journal {fill:.0%} full ({self.journal.path})"
        (log.error if self.filling else log.info)("%s", reason)
        status = GatewayStatus(t=time.time(), source="journal", state=state, reason=reason, fill=min(fill, 1.0))
        topic = self.topics.session(self.theatre, session, "device")
        self.journal.add(self._rows([(topic, status, False)]), force=True)  # even when full: it says so

    async def wait_below(self, unsent: int) -> None:
        """Back-pressure for a source that could outrun the broker (a replay, a backlog)."""
        while self.journal.backlog().unsent > unsent:
            self.journal.changed.clear()
            await self.journal.changed.wait()

    # -- the handler of confirmations -------------------------------------------------------------

    async def handle(self, message: Inbound) -> None:
        if message.theatre != self.theatre or not isinstance(message.body, Stored):
            return
        done = self.journal.confirm(message.theatre, message.session, message.body.seqs)
        self.confirmed += done.removed
        if done.oldest_sent_at is not None:
            self.resend_wait.confirmed(time.time() - done.oldest_sent_at)

    async def flush(self) -> None:
        pass

    # -- the sender -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.journal.backlog().messages

    async def drain_to(self, publisher: Publisher) -> None:
        """Publish the journal in order while connected; what was published on an earlier
        connection and is not confirmed goes again."""
        resent = self.journal.resend()
        if resent:
            log.info("resending %d unconfirmed messages from the journal", resent)
        next_check = time.monotonic() + self.resend_after_s / 2
        while True:
            if time.monotonic() >= next_check:  # also while data flows: a confirmation may never come
                next_check = time.monotonic() + self.resend_after_s / 2
                waited = self.resend_wait.wait_s
                n = self.journal.resend(older_than=time.time() - waited)
                if n:
                    self.resend_wait.resent()
                    log.warning(
                        "%d messages unconfirmed for %.0f s: sending them again (the next wait %.0f s)",
                        n,
                        waited,
                        self.resend_wait.wait_s,
                    )
            entries = self.journal.unsent()
            if not entries:
                self.journal.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_check - time.monotonic())):
                        await self.journal.changed.wait()
                continue
            for e in entries:
                await publisher.publish(e.topic, e.payload, retain=e.retain)
            self.journal.mark_sent(e.seq for e in entries)
            self.published += len(entries)

    async def wait_empty(self) -> None:
        """Until everything journalled is confirmed stored."""
        while len(self):
            self.journal.changed.clear()
            await self.journal.changed.wait()


async def run_gateway(
    loop: ServiceLoop, work: Coroutine[Any, Any, None], stop: asyncio.Event, journal: Journal
) -> None:
    """Run the service loop while ``work`` (the devices, the simulator, a replay) feeds the journal.

    If the work fails, that is logged and the gateway stops (what is journalled stays for the next
    start); at the end the work is cancelled and awaited before the journal closes.
    """

    def failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the gateway's input failed; stopping", exc_info=task.exception())
            stop.set()

    task = asyncio.create_task(work)
    task.add_done_callback(failed)
    try:
        await loop.run(stop)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        journal.close()
