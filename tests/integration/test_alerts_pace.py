"""The same alarms at any pace: one simulated session as fast as possible and at x60 (issue 11)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from tests.conftest import ServiceProcess, wait_for
from tests.helpers import rows, settled, where
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration

COUNTING_INTERVAL_S = 1.0
START_T = 1_767_225_600.0  # 2026-01-01: fixed, so both plays are the same session in event time

Alarm = tuple[str, str, str, int, float]  # rule, severity, kind, episode, event time (s)


def alarms(stack: ControlledStack, theatre: str, session: str) -> list[Alarm]:
    """Every alert but the reminders (their times follow the service's clock between inputs) and the
    services going offline (judged on the service's clock: the acquisition of one play ending is news
    to the other's session too)."""
    found = rows(stack, f'SELECT id, "rule", severity, kind FROM alert WHERE {where(theatre, session)}')
    episodes: dict[str, int] = {}
    out = []
    for r in found:
        if r["kind"] == "repeat" or r["rule"].startswith("offline:"):
            continue
        episode = episodes.setdefault(r["id"], len(episodes) + 1)
        out.append((r["rule"], r["severity"], r["kind"], episode, r["time"] / 1000.0))
    return out


def test_a_session_as_fast_as_possible_raises_the_alerts_it_raises_at_x60(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str]
) -> None:
    theatre, session = ids
    services("recorder")
    services("leakage")
    services("alerts")
    plays = {"0": (f"{theatre}-a", session), "60": (f"{theatre}-b", session)}
    runs = [
        services(
            "acquisition",
            ISOPERF_THEATRE=th,
            ISOPERF_SESSION=se,
            ISOPERF_SIM_SPEED=speed,
            ISOPERF_SIM_LEAK="step",
            ISOPERF_SIM_STEP_PCT="3",
            ISOPERF_SIM_SEED="7",
            ISOPERF_SIM_START_T=str(START_T),
        )
        for speed, (th, se) in plays.items()
    ]
    for acq in runs:
        assert acq.wait(timeout=120) == 0, acq.output()
    for th, se in plays.values():
        wait_for(functools.partial(settled, stack, th, se), timeout=60)

    def closed(th: str, se: str) -> list[Alarm] | None:
        found = alarms(stack, th, se)
        return found if any(a[0] == "leakage" and a[2] == "resolved" for a in found) else None

    fast, paced = (wait_for(functools.partial(closed, *p), timeout=15) for p in plays.values())
    assert [a[:4] for a in fast] == [a[:4] for a in paced]
    tolerance = COUNTING_INTERVAL_S + 0.001  # stored in ms
    apart = [(f, p[4] - f[4]) for f, p in zip(fast, paced, strict=True) if abs(f[4] - p[4]) > tolerance]
    assert not apart, f"event times more than one counting interval apart: {apart}"
    # The leak step is alarmed, escalated and closed when the isolation ends, at either pace.
    steps = [(a[1], a[2]) for a in fast if a[0] == "leakage"]
    assert steps == [("advisory", "new"), ("warning", "escalated"), ("warning", "resolved")]
