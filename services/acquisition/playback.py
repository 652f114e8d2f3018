"""Plays a device's timeline onto the bus: paced by a speed factor, batched per signal.

Within one publishing tick, consecutive readings of a signal go out as one
batch; an event closes the batches before it, so the bus carries everything in
event-time order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from isoperf.codec import encode
from isoperf.mqtt import Outbox
from isoperf.schemas import Event, LabSample, Reading, ReadingBatch, SessionMeta
from isoperf.topics import Topics

Item = tuple[float, str, Event | Reading | LabSample]


class Playback:
    def __init__(self, topics: Topics, outbox: Outbox, theatre: str, session: str) -> None:
        self.topics, self.outbox, self.theatre, self.session = topics, outbox, theatre, session
        self.published_readings = 0
        self.published_events = 0
        self.published_samples = 0

    def publish_meta(self, meta: SessionMeta) -> None:
        self.outbox.put(self.topics.session(self.theatre, self.session, "meta"), encode(meta), retain=True)

    def _flush_batches(self, batches: dict[str, list[Reading]]) -> None:
        for signal, readings in batches.items():
            if not readings:
                continue
            topic = self.topics.raw(self.theatre, self.session, signal)
            if len(readings) == 1:
                payload = encode(readings[0])
            else:
                payload = encode(ReadingBatch(samples=[(r.t, r.v) for r in readings], dt=readings[0].dt))
            self.outbox.put(topic, payload)
            self.published_readings += len(readings)
        batches.clear()

    def emit(self, items: Iterable[Item]) -> None:
        batches: dict[str, list[Reading]] = {}
        for _, kind, item in items:
            if isinstance(item, Event | LabSample):
                self._flush_batches(batches)
                self.outbox.put(self.topics.session(self.theatre, self.session, kind), encode(item))
                if isinstance(item, Event):
                    self.published_events += 1
                else:
                    self.published_samples += 1
            else:
                batch = batches.setdefault(kind, [])
                if batch and batch[0].dt != item.dt:
                    self._flush_batches(batches)
                    batch = batches.setdefault(kind, [])
                batch.append(item)
        self._flush_batches(batches)

    async def run(self, timeline: Iterable[Item], t0: float, speed: float, tick_s: float, stop: asyncio.Event) -> None:
        """Emit items when they are due: item time ``t`` is due ``(t - t0) / speed`` after start.

        A speed of 0 emits as fast as the outbox drains (keeping it short, so a
        run never holds the whole session in memory unsent).
        """
        start = time.monotonic()
        pending: list[Item] = []
        it = iter(timeline)
        nxt = next(it, None)
        while nxt is not None and not stop.is_set():
            if speed > 0:
                horizon = t0 + (time.monotonic() - start + tick_s) * speed
            else:
                horizon = nxt[0] + 60.0  # one simulated minute per tick
            while nxt is not None and nxt[0] <= horizon:
                pending.append(nxt)
                nxt = next(it, None)
            self.emit(pending)
            pending.clear()
            if speed > 0:
                await _wait(stop, tick_s)
            else:
                while len(self.outbox) > 200 and not stop.is_set():
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
