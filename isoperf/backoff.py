"""One exponential backoff with jitter, for every retry loop: reconnections, writes, notifications."""

from __future__ import annotations

import asyncio
import contextlib
import random


class Backoff:
    """Delays from ``first`` doubling up to ``cap`` seconds, each drawn in ``[delay / 2, delay]``.

    The jitter keeps many clients that lost the same server from coming back in step.
    """

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"backoff needs 0 < first <= cap, got {first} and {cap}")
        self.first, self.cap, self._next = first, cap, first

    def reset(self) -> None:
        self._next = self.first

    def next_delay(self) -> float:
        delay = self._next * (0.5 + random.random() / 2)
        self._next = min(self._next * 2, self.cap)
        return delay


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
