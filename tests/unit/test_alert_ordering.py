"""The alerts handler applies readings, events and leakage in event-time order (issue 11)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from isoperf.codec import decode, encode
from isoperf.schemas import Event, Leakage, LeakageSeries, ReadingBatch
from services.alerts.handler import AlertsHandler
from services.alerts.rules import AlertRules
from tests.fakes import TOPICS, FakePublisher, FakeWriter, deliver

T = 1_767_225_600.0
KEY = ("or-1", "s-1")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def handler(tmp_path: Path, clock: Clock, pub: FakePublisher, hold_s: float = 30.0) -> AlertsHandler:
    state = tmp_path / "alerts-state.json"
    return AlertsHandler(TOPICS, pub, FakeWriter(), AlertRules(), state, clock=clock, hold_s=hold_s)


async def counts(h: AlertsHandler, first: int, last: int) -> None:
    batch = ReadingBatch(samples=[(T + i, 400.0) for i in range(first, last + 1)], dt=1.0)
    await deliver(h, TOPICS.raw(*KEY, "counts"), encode(batch))


async def leakage(h: AlertsHandler, first: int, last: int, pct: float = 3.0, series: bool = False) -> None:
    """Points at ``first`` to ``last`` s: one message each, or (``series``) all in one ``leakage/series``."""
    points = [
        Leakage(t=T + i, state="monitoring", percent=pct, ci_low=pct - 0.5, ci_high=pct + 0.5)
        for i in range(first, last + 1)
    ]
    if series:
        await deliver(h, TOPICS.session(*KEY, "leakage/series"), encode(LeakageSeries(points=points)))
        return
    for leak in points:
        await deliver(h, TOPICS.session(*KEY, "leakage"), encode(leak))


async def event(h: AlertsHandler, kind: str, i: int) -> None:
    await deliver(h, TOPICS.session(*KEY, "event"), encode(Event(t=T + i, type=kind)))  # type: ignore[arg-type]


def sent(pub: FakePublisher) -> list[tuple[str, str, float]]:
    return [(a["rule"], a["kind"], a["t"] - T) for a in map(decode, (p for _, p in pub.sent))]


@pytest.mark.parametrize("series", [False, True], ids=["points", "series"])
async def test_an_event_is_held_until_the_leakage_derived_from_the_counts_before_it_has_come(
    tmp_path: Path, series: bool
) -> None:
    clock, pub = Clock(), FakePublisher()
    h = handler(tmp_path, clock, pub)
    await counts(h, 1, 10)
    await event(h, "isolation_end", 8)  # the producer is ahead: the leakage service has not caught up
    await event(h, "session_end", 10)
    await leakage(h, 1, 5, series=series)
    assert sent(pub) == [("leakage", "new", 1.0)], "the isolation has not ended yet in event time"
    clock.now += 5.0
    h.tick()
    assert len(h.orders[KEY]) == 3, "the events wait, and the counts batch that ends after them"
    await leakage(h, 6, 9, series=series)  # a point after the isolation's end changes nothing
    assert sent(pub) == [("leakage", "new", 1.0), ("leakage", "resolved", 8.0)]
    await h.flush()
    assert KEY in h.sessions, "not closed before every input has passed its end"
    await leakage(h, 10, 10)
    await h.flush()
    assert KEY not in h.sessions and KEY in h.ended, "closed once the leakage has passed the session's end"
    await h.close()


async def test_a_stream_that_stays_behind_holds_the_rest_only_for_the_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, pub = Clock(), FakePublisher()
    h = handler(tmp_path, clock, pub, hold_s=30.0)
    await counts(h, 1, 10)
    await leakage(h, 1, 3)
    await event(h, "isolation_end", 8)
    clock.now += 8.0
    await counts(h, 11, 18)  # the counts go on (no stale data); the leakage service does not
    clock.now += 21.0
    assert h.tick() == 0 and sent(pub) == [("leakage", "new", 1.0)]
    clock.now += 2.0
    with caplog.at_level(logging.WARNING, logger="services.alerts.handler"):
        assert h.tick() == 1
    await h.flush()  # what the clock task does after a tick that raised alerts
    assert sent(pub)[-1] == ("leakage", "resolved", 8.0), "the true event time of the isolation's end"
    assert "leakage behind" in caplog.text and "ISOPERF_ALERTS_HOLD_S" in caplog.text
    assert len(h.orders[KEY]) == 1, "the later counts have their own bound"
    await leakage(h, 4, 9)  # comes after all: too late to hold anything, the isolation has ended
    assert len(pub.sent) == 2
    await h.close()


async def test_readings_without_counts_are_not_held(tmp_path: Path) -> None:
    clock, pub = Clock(), FakePublisher()
    h = handler(tmp_path, clock, pub)
    batch = ReadingBatch(samples=[(T + i, 1.0) for i in range(1, 40)], dt=1.0)
    await event(h, "isolation_start", 0)
    await deliver(h, TOPICS.raw(*KEY, "flow"), encode(ReadingBatch(samples=[(T, 250.0)], dt=1.0)))
    await deliver(h, TOPICS.raw(*KEY, "pressure"), encode(batch))
    assert not h.orders[KEY], "no leakage to wait for: everything applied at once"
    assert [r for r, _, _ in sent(pub)] == ["pressure_low"]
    await h.close()


async def test_what_is_held_survives_a_restart(tmp_path: Path) -> None:
    clock, pub = Clock(), FakePublisher()
    h = handler(tmp_path, clock, pub)
    await counts(h, 1, 10)
    await leakage(h, 1, 5)
    await event(h, "isolation_end", 8)
    await h.flush()  # acknowledged from here on: the held event is in the saved state
    await h.close()
    again = handler(tmp_path, clock, pub)
    assert len(again.orders[KEY]) == 2
    await leakage(again, 6, 8)
    assert sent(pub)[-1] == ("leakage", "resolved", 8.0)
    await again.close()


async def test_an_alarm_raised_after_the_bound_carries_its_true_time_and_says_it_is_late(tmp_path: Path) -> None:
    clock, pub = Clock(), FakePublisher()
    h = handler(tmp_path, clock, pub, hold_s=30.0)
    await counts(h, 1, 10)
    await leakage(h, 1, 3, pct=0.2)  # no leak yet
    await counts(h, 11, 40)  # the counts go on; the leakage service has stopped
    clock.now += 31.0
    h.tick()  # the counts went on without it
    await leakage(h, 4, 40)  # it comes back: the leak began at 4
    alerts = [decode(p) for _, p in pub.sent]
    leak = [(a["kind"], a["t"] - T, a.get("late")) for a in alerts if a["rule"] == "leakage"]
    assert leak == [("new", 4.0, True)]
    await h.close()
