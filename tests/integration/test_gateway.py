"""Store and forward at the gateway, on the real stack: a message leaves the journal only when the
recorder confirms it stored it, so broker crashes and a gateway crash lose nothing."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from tests.conftest import ServiceProcess, wait_for
from tests.helpers import SESSION_COUNTS, count, replay, settled, where
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration

N_READINGS = 3960 * 5  # the default simulated session: 66 min, 5 signals at 1 Hz


def stored_readings(stack: ControlledStack, theatre: str, session: str) -> int:
    return count(stack, f"SELECT count(value) FROM reading WHERE {where(theatre, session)}")


def kill_the_broker_three_times_within_4_s(stack: ControlledStack) -> None:
    started = time.monotonic()
    for _ in range(3):
        stack.kill_broker()
        stack.restart_broker()
        time.sleep(0.5)
    assert time.monotonic() - started < 4.0


def all_stored_and_confirmed(stack: ControlledStack, acq: ServiceProcess, theatre: str, session: str) -> None:
    wait_for(lambda: stored_readings(stack, theatre, session) == N_READINGS, timeout=180)
    assert acq.wait(timeout=120) == 0, acq.output()[-3000:]
    assert "not yet confirmed" not in acq.output() and "unconfirmed after" not in acq.output()


def test_three_broker_kills_within_4_s_lose_nothing_of_a_backlog_the_broker_held(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str]
) -> None:
    """The gateway flushes a whole session as fast as the broker takes it (speed 0) while the
    recorder is away: the broker acknowledges every message and holds it for the recorder's
    persistent session, in memory (the production settings save every 5 s). Three SIGKILLs later
    the journal, not the broker's acknowledgement, must bring every reading in."""
    theatre, session = ids
    recorder_env = {"ISOPERF_INSTANCE": f"r{session[-6:]}"}  # the same client id: the same broker session
    services("recorder", **recorder_env).stop()
    acq = services("acquisition", ISOPERF_THEATRE=theatre, ISOPERF_SESSION=session, ISOPERF_SIM_SPEED="0")
    wait_for(lambda: "waiting for the recorder to confirm them" in acq.output(), timeout=60)
    kill_the_broker_three_times_within_4_s(stack)
    assert stored_readings(stack, theatre, session) == 0, "nothing was stored before the kills"
    services("recorder", **recorder_env)
    all_stored_and_confirmed(stack, acq, theatre, session)


def test_three_broker_kills_within_4_s_lose_nothing_of_a_session_in_flight(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str]
) -> None:
    """A session played at x200 with the recorder storing as it goes: the kills come while
    readings are between the devices, the broker and the recorder."""
    theatre, session = ids
    services("recorder")
    acq = services("acquisition", ISOPERF_THEATRE=theatre, ISOPERF_SESSION=session, ISOPERF_SIM_SPEED="200")
    wait_for(lambda: stored_readings(stack, theatre, session) > 1000, timeout=60)
    assert stored_readings(stack, theatre, session) < N_READINGS, "the kills come while the session is in flight"
    kill_the_broker_three_times_within_4_s(stack)
    all_stored_and_confirmed(stack, acq, theatre, session)


def journal_readings(path: Path) -> set[tuple[str, float]]:
    """(signal, event time in ms) of every reading a journal file holds."""
    held: set[tuple[str, float]] = set()
    with sqlite3.connect(path) as db:
        for topic, payload in db.execute("SELECT topic, payload FROM journal"):
            if "/raw/" not in topic:
                continue
            signal, data = topic.rsplit("/", 1)[1], msgpack.unpackb(payload)
            times = [t for t, _ in data["samples"]] if "samples" in data else [data["t"]]
            held.update((signal, round(t * 1000)) for t in times)
    return held


def test_a_gateway_killed_while_the_broker_is_down_loses_nothing_it_had_read(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str], tmp_path: Path
) -> None:
    """Paced at x200 so that the session is in flight when the broker stops (at speed 0 the
    whole session may be stored before it does)."""
    theatre, session = ids
    services("recorder")
    journal_dir = tmp_path / "journal"
    env = {"ISOPERF_THEATRE": theatre, "ISOPERF_SIM_SPEED": "200", "ISOPERF_JOURNAL_DIR": str(journal_dir)}
    acq = services("acquisition", ISOPERF_SESSION=session, **env)
    w = where(theatre, session)

    def stored() -> set[tuple[str, float]]:
        return {(r["signal"], r["time"]) for r in stack.rows(f"SELECT value FROM reading WHERE {w} GROUP BY signal")}

    wait_for(lambda: stored_readings(stack, theatre, session) > 1000, timeout=60)
    stack.stop_broker()
    time.sleep(2)  # the simulated devices go on (400 s of session): what they say goes into the journal
    acq.kill()
    held = journal_readings(journal_dir / f"{theatre}.sqlite")
    assert held - stored(), "the journal held readings the broker never took"
    stack.restart_broker()
    # A new gateway process on the same journal (here with a new session of its own) sends the old ones first.
    again = services("acquisition", ISOPERF_SESSION=f"{session}-b", **env)
    wait_for(lambda: not held - stored(), timeout=90)
    assert again.wait(timeout=180) == 0, again.output()[-3000:]
    assert not journal_readings(journal_dir / f"{theatre}.sqlite"), "the journal is empty once all is confirmed"


def test_a_stored_session_replayed_as_fast_as_possible_gives_the_same_readings_and_leakage(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str], tmp_path: Path
) -> None:
    theatre, session = ids
    services("recorder")
    services("leakage")
    acq = services("acquisition", ISOPERF_THEATRE=theatre, ISOPERF_SESSION=session, ISOPERF_SIM_SPEED="0")
    assert acq.wait(timeout=120) == 0, acq.output()[-3000:]
    wait_for(lambda: settled(stack, theatre, session), timeout=120)
    new = f"{session}-r"
    printed = replay(stack, theatre, session, new)
    assert f"replaying {theatre}/{session} as {theatre}/{new}: {N_READINGS} readings" in printed
    wait_for(lambda: settled(stack, theatre, new), timeout=120)

    def series(s: str, q: str) -> dict[tuple[str, int], tuple[object, object]]:
        rows = stack.rows(q.format(w=where(theatre, s)))
        return {(str(r.get("signal", "")), r["time"]): (r["a"], r.get("b")) for r in rows}

    readings = 'SELECT value AS a FROM reading WHERE {w} GROUP BY "signal"'
    assert series(new, readings) == series(session, readings)
    leakage = "SELECT state AS a, percent AS b FROM leakage WHERE {w}"
    original = series(session, leakage)
    assert len(original) == SESSION_COUNTS and series(new, leakage) == original
