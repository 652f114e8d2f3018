"""Event-time order across input streams: pure, no I/O.

A service that combines several inputs (the alerts service: readings, events and the
leakage derived from the readings) must apply them in the order of their event time,
not of their arrival: a session published as fast as the broker takes it brings its
``isolation_end`` long before the leakage service has computed the points before it.

Each input stream has a *watermark*: how far in event time it is complete (the time
of its latest input, or what its producer says of its progress). An input is held
until every stream that is *expected* (one that a service waits for: it has spoken,
or it is known to come) has passed its time; inputs then go out in event-time order.
A stream not expected yet holds nothing back.

A bound keeps a slow or stopped stream from holding the rest for ever: an input held
for ``hold_s`` of the caller's clock goes on anyway (``Released.forced``), with every
input held before it in event time. An input older than what was already released goes
at once (``Released.late``): holding it would not restore the order.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Released(Generic[T]):
    t: float
    stream: str
    item: T
    forced: bool = False  # the bound ran out: not every expected stream had passed ``t``
    late: bool = False  # older than an input already released


@dataclass(order=True, slots=True)
class _Held(Generic[T]):
    t: float
    seq: int
    stream: str = field(compare=False)
    item: T = field(compare=False)
    arrived: float = field(compare=False)


class EventTimeOrder(Generic[T]):
    """The inputs of one session, held until every expected stream has passed their time."""

    def __init__(self, streams: Iterable[str], hold_s: float) -> None:
        self.watermarks: dict[str, float] = dict.fromkeys(streams, -math.inf)
        self.expected: set[str] = set()
        self.hold_s = hold_s
        self.released_until = -math.inf  # the latest event time released so far
        self._held: list[_Held[T]] = []
        self._seq = itertools.count()

    # -- input -----------------------------------------------------------------------------

    def expect(self, stream: str) -> None:
        """From now on ``stream`` holds the others back until it has passed their time."""
        self._check(stream)
        self.expected.add(stream)

    def advance(self, stream: str, t: float) -> None:
        """``stream`` is complete up to ``t`` (watermarks only move forward)."""
        self._check(stream)
        self.watermarks[stream] = max(self.watermarks[stream], t)

    def add(self, stream: str, t: float, item: T, now: float) -> None:
        """An input of ``stream`` at event time ``t``, arrived at ``now`` (the caller's clock)."""
        self.advance(stream, t)
        heapq.heappush(self._held, _Held(t, next(self._seq), stream, item, now))

    # -- output ----------------------------------------------------------------------------

    @property
    def frontier(self) -> float:
        """Up to where every expected stream is complete."""
        return min((self.watermarks[s] for s in self.expected), default=math.inf)

    def behind(self, t: float) -> list[str]:
        """The expected streams that have not passed ``t``."""
        return sorted(s for s in self.expected if self.watermarks[s] < t)

    def __len__(self) -> int:
        return len(self._held)

    def oldest_wait(self, now: float) -> float:
        """How long the input held longest has waited (0 when none is held)."""
        return max((now - h.arrived for h in self._held), default=0.0)

    def ready(self, now: float) -> list[Released[T]]:
        """The inputs that may go on, in event-time order (ties in arrival order)."""
        frontier = self.frontier
        expired = [h.t for h in self._held if now - h.arrived >= self.hold_s]
        forced_until = max(expired, default=-math.inf)
        out: list[Released[T]] = []
        while self._held:
            h = self._held[0]
            if h.t <= frontier or h.t <= self.released_until:
                forced = False
            elif h.t <= forced_until:
                forced = True
            else:
                break
            heapq.heappop(self._held)
            out.append(Released(h.t, h.stream, h.item, forced, h.t < self.released_until))
            self.released_until = max(self.released_until, h.t)
        return out

    def held(self) -> list[tuple[str, float, T]]:
        """What is held, in event-time order: ``(stream, t, item)`` (to save it)."""
        return [(h.stream, h.t, h.item) for h in sorted(self._held)]

    def _check(self, stream: str) -> None:
        if stream not in self.watermarks:
            raise KeyError(f"unknown stream {stream!r}; known: {sorted(self.watermarks)}")
