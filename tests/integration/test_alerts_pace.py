"""The same alarms at any pace (issue 11): simulated sessions as fast as possible,
at x60 and replayed from storage; and a session whose leakage service stops for 2 minutes."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import pytest

from isoperf.queries import PkSeries, pk_differences, pk_series
from tests.conftest import ServiceProcess, wait_for
from tests.helpers import replay, rows, settled, where
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration

COUNTING_INTERVAL_S = 1.0
START_T = 1_767_225_600.0  # 2026-01-01: fixed, so every play is the same session in event time
# (leak, isotope, simulator settings): a step, a steady leak and no leak; Tc-99m and I-131.
SCENARIOS: dict[str, dict[str, str]] = {
    "step-tc": {"ISOPERF_SIM_LEAK": "step", "ISOPERF_SIM_STEP_PCT": "3", "ISOPERF_SIM_ISOTOPE": "Tc-99m"},
    "steady-i131": {"ISOPERF_SIM_LEAK": "steady", "ISOPERF_SIM_ISOTOPE": "I-131"},
    "none-tc": {"ISOPERF_SIM_LEAK": "none", "ISOPERF_SIM_ISOTOPE": "Tc-99m"},
}

Alarm = tuple[str, str, str, int, float]  # rule, severity, kind, episode, event time (s)


def alarms(
    stack: ControlledStack, theatre: str, session: str, leave_out: tuple[str, ...] = ("offline:",)
) -> list[Alarm]:
    """Every alert but the reminders (their times follow the service's clock between inputs) and the
    services going offline (judged on the service's clock: the acquisition of one play ending is news
    to the other sessions too)."""
    found = rows(stack, f'SELECT id, "rule", severity, kind FROM alert WHERE {where(theatre, session)}')
    episodes: dict[str, int] = {}
    out = []
    for r in found:
        if r["kind"] == "repeat" or r["rule"].startswith(leave_out):
            continue
        episode = episodes.setdefault(r["id"], len(episodes) + 1)
        out.append((r["rule"], r["severity"], r["kind"], episode, r["time"] / 1000.0))
    return out


def same_alarms(a: list[Alarm], b: list[Alarm]) -> None:
    """Rule, severity, kind and episode equal; event times within one counting interval."""
    assert [x[:4] for x in a] == [x[:4] for x in b]
    tolerance = COUNTING_INTERVAL_S + 0.001  # stored in ms
    apart = [(x, y[4] - x[4]) for x, y in zip(a, b, strict=True) if abs(x[4] - y[4]) > tolerance]
    assert not apart, f"event times more than one counting interval apart: {apart}"


def play(services: Callable[..., ServiceProcess], theatre: str, session: str, speed: str, **sim: str) -> ServiceProcess:
    return services(
        "acquisition",
        ISOPERF_THEATRE=theatre,
        ISOPERF_SESSION=session,
        ISOPERF_SIM_SPEED=speed,
        ISOPERF_SIM_SEED="7",
        ISOPERF_SIM_START_T=str(START_T),
        **sim,
    )


def quiet(stack: ControlledStack, theatre: str, session: str, for_s: float = 10.0) -> list[Alarm]:
    """The session's alarms once the leakage alarm (if any) is closed and no new one has come for
    ``for_s`` (a busy machine may pause the alerts service for seconds)."""
    last: list[Alarm] | None = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        now = alarms(stack, theatre, session)
        leak_open = any(a[0] == "leakage" for a in now) and not any(
            a[0] == "leakage" and a[2] == "resolved" for a in now
        )
        if now == last and not leak_open:
            return now
        last = now
        time.sleep(for_s)
    pytest.fail(f"the alarms of {theatre}/{session} did not settle within 180 s")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_session_as_fast_as_possible_at_x60_and_replayed_raises_the_same_alerts(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str], scenario: str
) -> None:
    theatre, session = ids
    services("recorder")
    services("leakage")
    # Order, not the bound, is under test: a bound that a shared machine's leakage service cannot
    # miss (the leakage service stopped for longer than the bound is the next test).
    services("alerts", ISOPERF_ALERTS_HOLD_S="120")
    sim = SCENARIOS[scenario]
    plays = {speed: (f"{theatre}-{speed}", session) for speed in ("60", "0")}
    runs = [play(services, th, se, speed, **sim) for speed, (th, se) in plays.items()]
    for acq in runs:
        assert acq.wait(timeout=240) == 0, acq.output()[-3000:]
    found = {}
    for speed, (th, se) in plays.items():
        wait_for(functools.partial(settled, stack, th, se), timeout=120)
        found[speed] = quiet(stack, th, se)
    same_alarms(found["0"], found["60"])
    leakage = [(a[1], a[2]) for a in found["0"] if a[0] == "leakage"]
    if scenario == "step-tc":  # alarmed, escalated and closed when the isolation ends, at either pace
        assert leakage == [("advisory", "new"), ("warning", "escalated"), ("warning", "resolved")]
        # The session as stored, replayed as fast as the broker takes it.
        th, se = plays["0"]
        replay(stack, th, se, f"{se}-r")
        wait_for(functools.partial(settled, stack, th, f"{se}-r"), timeout=120)
        same_alarms(quiet(stack, th, f"{se}-r"), found["60"])
    elif scenario == "steady-i131":
        assert leakage and leakage[0] == ("advisory", "new")
    else:
        assert leakage == [], "no leak, no leakage alarm"


@pytest.mark.xfail(
    strict=False,
    reason="known, not yet fixed: in the as-fast-as-possible reference the last pk estimate sometimes lacks "
    "leak_auc_systemic and leaked_mg (pk's 30 s hold ran out before the leakage caught up, and the estimate is "
    "not redone when it does); failed twice in a row on 2026-12-03 after passing in the clean-clone CI run",
)
def test_the_leakage_service_stopped_for_2_minutes_mid_session_loses_no_alarm_and_changes_no_pk_figure(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str]
) -> None:
    """At x15 (the session takes 264 s) the leakage service is stopped from 30 s to 150 s: the leak
    step (at 15 min, 60 s in) comes while it is away. The alerts and pk services hold the readings,
    events and lab results 30 s, then go on without it; when the leakage catches up, the step's
    alarms are raised with their true event times and the pk estimates are those of an
    uninterrupted session."""
    theatre, session = ids
    services("recorder")
    leakage = services("leakage")
    services("alerts")
    services("pk")
    step = SCENARIOS["step-tc"]
    acq = play(services, theatre, session, "15", **step)
    time.sleep(30)
    leakage.stop()
    time.sleep(120)
    services("leakage", ISOPERF_INSTANCE=leakage.env["ISOPERF_INSTANCE"])  # its broker session kept the counts
    assert acq.wait(timeout=240) == 0, acq.output()[-3000:]
    wait_for(functools.partial(settled, stack, theatre, session), timeout=90)
    interrupted = quiet(stack, theatre, session)

    # The same session, uninterrupted (as fast as possible: the pace changes nothing, as shown above).
    reference = f"{theatre}-u"
    assert play(services, reference, session, "0", **step).wait(timeout=240) == 0
    wait_for(functools.partial(settled, stack, reference, session), timeout=90)
    same_alarms(interrupted, quiet(stack, reference, session))
    # Both sessions' pk estimates, once each has the estimate of its last lab report and neither
    # changes for 10 s. (The last report comes after the last leakage point: the pk service holds it
    # ISOPERF_PK_HOLD_S, 30 s, before it goes on without the leakage; ten seconds' calm alone can come
    # before that.)
    stable: list[tuple[PkSeries, PkSeries]] = []

    def reported_last(th: str) -> float:
        return float(rows(stack, f"SELECT max(reported_t) FROM sample WHERE {where(th, session)}")[0]["max"])

    last_report_ms = {th: round(reported_last(th) * 1000) for th in (theatre, reference)}
    assert last_report_ms[theatre] == last_report_ms[reference]

    def pk_settled() -> bool:
        stable.append((pk_series(stack, theatre, session), pk_series(stack, reference, session)))
        complete = all(series and max(series) >= last_report_ms[theatre] for series in stable[-1])
        return complete and len(stable) > 1 and stable[-1] == stable[-2]

    wait_for(pk_settled, timeout=120, interval=10)
    got, want = stable[-1]
    assert got == want, pk_differences(got, want, names=("interrupted", "uninterrupted"))[:12]
