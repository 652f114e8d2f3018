"""Plays a device's timeline onto the bus: paced by a speed factor, batched per signal.

Within one publishing tick, consecutive readings of a signal go out as one
batch; an event closes the batches before it, so the bus carries everything in
event-time order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from isoperf.backoff import wait_or_stop
from isoperf.schemas import Event, LabSample, Reading, ReadingBatch, SessionMeta
from isoperf.topics import Topics
from services.acquisition.gateway import Gateway, Outgoing

Item = tuple[float, str, Event | Reading | LabSample]


class Playback:
    def __init__(self, topics: Topics, gateway: Gateway, theatre: str, session: str) -> None:
        self.topics, self.gateway, self.theatre, self.session = topics, gateway, theatre, session
        self.published_readings = 0
        self.published_events = 0
        self.published_samples = 0
        self._out: list[Outgoing] = []

    def publish_meta(self, meta: SessionMeta) -> None:
        self.gateway.put([(self.topics.session(self.theatre, self.session, "meta"), meta, True)])

    def _flush_batches(self, batches: dict[str, list[Reading]]) -> None:
        for signal, readings in batches.items():
            if not readings:
                continue
            topic = self.topics.raw(self.theatre, self.session, signal)
            if len(readings) == 1:
                self._out.append((topic, readings[0], False))
            else:
                self._out.append(
                    (topic, ReadingBatch(samples=[(r.t, r.v) for r in readings], dt=readings[0].dt), False)
                )
            self.published_readings += len(readings)
        batches.clear()

    def emit(self, items: Iterable[Item]) -> None:
        batches: dict[str, list[Reading]] = {}
        for _, kind, item in items:
            if isinstance(item, Event | LabSample):
                self._flush_batches(batches)
                self._out.append((self.topics.session(self.theatre, self.session, kind), item, False))
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
        if self._out:
            self.gateway.put(self._out)
            self._out = []

    async def run(self, timeline: Iterable[Item], t0: float, speed: float, tick_s: float, stop: asyncio.Event) -> None:
        """Emit items when they are due: item time ``t`` is due ``(t - t0) / speed`` after start.

        A speed of 0 emits as fast as the broker takes it (the journal holds at most a few
        hundred messages not yet published).
        """
        start = time.monotonic()
        pending: list[Item] = []
        it = iter(timeline)
        nxt = next(it, None)
        while nxt is not None and not stop.is_set():
            # Paced by the speed, or one simulated minute per tick as fast as the outbox drains.
            horizon = t0 + (time.monotonic() - start + tick_s) * speed if speed > 0 else nxt[0] + 60.0
            while nxt is not None and nxt[0] <= horizon:
                pending.append(nxt)
                nxt = next(it, None)
            self.emit(pending)
            pending.clear()
            if speed > 0:
                await wait_or_stop(stop, tick_s)
            else:
                await self.gateway.wait_below(200)
