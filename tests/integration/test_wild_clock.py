"""One reading, one batch and one event with a wild time, injected mid-session (issue 19): the
stored readings, the leakage series and the alarms equal those of the same session without
them, as soon; each is kept aside with its reason; the alerts service raises a clock alarm."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from isoperf.codec import encode
from isoperf.schemas import T_MAX, Event, Reading, ReadingBatch
from isoperf.topics import Topics
from tests.conftest import ServiceProcess, wait_for
from tests.helpers import count, mosquitto_pub, rows, settled, where
from tests.integration.test_alerts_pace import SCENARIOS, START_T, alarms, play, quiet, same_alarms
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration

HOUR = 3600.0


def kept_aside(directory: Path, service: str) -> list[dict[str, object]]:
    path = directory / f"{service}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_wild_times_mid_session_change_nothing_and_raise_a_clock_alarm(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str], tmp_path: Path
) -> None:
    theatre, session = ids
    for name in ("recorder", "leakage", "alerts"):
        services(name)
    step = SCENARIOS["step-tc"]
    reference = f"{theatre}-ref"
    assert play(services, reference, session, "0", **step).wait(timeout=240) == 0
    acq = play(services, theatre, session, "60", **step)
    w = where(theatre, session)
    wait_for(
        lambda: count(stack, f"SELECT count(value) FROM reading WHERE {w} AND signal='counts'") > 1300, timeout=120
    )

    topics = Topics()
    counts, events = topics.raw(theatre, session, "counts"), topics.session(theatre, session, "event")
    wild = {
        "a reading hours ahead": (counts, encode(Reading(t=START_T + 6 * HOUR, v=5000.0))),
        "a batch all at one time hours behind": (
            counts,
            encode(ReadingBatch(samples=[(START_T - 3 * HOUR, 40.0)] * 50)),
        ),
        "an event at the end of the schema's range": (
            events,
            encode(Event(t=T_MAX - 86_400.0, type="isolation_end")),
        ),
    }
    for topic, payload in wild.values():
        mosquitto_pub(stack, topic, payload)
    assert acq.wait(timeout=240) == 0, acq.output()[-3000:]
    ended = time.monotonic()
    wait_for(functools.partial(settled, stack, theatre, session), timeout=120)
    settle_s = time.monotonic() - ended
    print(f"leakage series complete {settle_s:.1f} s after the session's last message")
    assert settle_s < 60, f"the leakage series took {settle_s:.0f} s to complete after the last message"
    wait_for(functools.partial(settled, stack, reference, session), timeout=60)

    def leakage(th: str) -> list[tuple[object, ...]]:
        return [
            (r["time"], r["state"], r["percent"])
            for r in rows(stack, f"SELECT state, percent FROM leakage WHERE {where(th, session)}")
        ]

    assert leakage(theatre) == leakage(reference)
    disturbed = quiet(stack, theatre, session)
    assert {a[0] for a in disturbed} >= {"clock:counts", "clock:event"}, "the clock jumps are alarmed"
    without_clock = alarms(stack, theatre, session, leave_out=("offline:", "clock:"))
    same_alarms(without_clock, quiet(stack, reference, session))
    events_stored = rows(stack, f"SELECT label FROM event WHERE {w} AND type='isolation_end'")
    assert len(events_stored) == 1, "the wild isolation_end was not stored"

    deadletters = tmp_path / "deadletter"
    for service in ("recorder", "leakage", "alerts"):
        reasons = [str(d["reason"]) for d in kept_aside(deadletters, service)]
        window = [r for r in reasons if "outside the session's time window" in r]
        assert len(window) == 3, f"{service} kept aside {reasons}"
        assert any("h after the session's latest input" in r for r in window), window
        assert any("h before the session's start" in r for r in window), window
        assert any("ahead of this service's clock" in r for r in window), window
