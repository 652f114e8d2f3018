"""Bus to storage on the real stack: every service as its own process."""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tests.conftest import ServiceProcess, wait_for
from tests.helpers import count, mosquitto_pub, rows, settled, where
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration

N_READINGS = 3960 * 5  # the default simulated session: 66 min, 5 signals at 1 Hz


def run_session(services: Callable[..., ServiceProcess], theatre: str, session: str, **sim: str) -> ServiceProcess:
    env = {"ISOPERF_THEATRE": theatre, "ISOPERF_SESSION": session, "ISOPERF_SIM_SPEED": "0", **sim}
    return services("acquisition", **env)


def test_hand_published_json_reading_is_stored_and_moves_leakage(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str]
) -> None:
    theatre, session = ids
    services("recorder")
    services("leakage")
    acq = run_session(services, theatre, session, ISOPERF_SIM_START_T="1767225600", ISOPERF_SIM_RELEASE_PCT="0")
    assert acq.wait(timeout=60) == 0, acq.output()
    w = where(theatre, session)
    wait_for(lambda: settled(stack, theatre, session))
    before = rows(stack, f"SELECT last(percent) FROM leakage WHERE {w}")[0]
    t_last = before["time"] / 1000.0
    # A perfusionist types a reading in by hand: 5000 counts, far above the ~340 cps level.
    reading = {"t": t_last + 1.0, "v": 5000, "dt": 1.0}
    mosquitto_pub(stack, f"perfusion/{theatre}/{session}/raw/counts", json.dumps(reading).encode())
    stored = wait_for(
        lambda: rows(stack, f"SELECT value FROM reading WHERE {w} AND time = {int(reading['t'] * 1000)}ms")
    )
    assert stored[0]["value"] == 5000.0
    after = wait_for(
        lambda: rows(stack, f"SELECT percent FROM leakage WHERE {w} AND time = {int(reading['t'] * 1000)}ms")
    )
    assert after[0]["percent"] > before["last"] + 1.0


def test_garbage_on_every_topic_costs_no_valid_reading(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str], tmp_path: Path
) -> None:
    theatre, session = ids
    recorder = services("recorder")
    leakage = services("leakage")
    alerts = services("alerts")
    pk = services("pk")
    base = f"perfusion/{theatre}/{session}"
    rng = random.Random(7)
    t0 = 1_767_225_600.0
    garbage = [
        bytes(rng.getrandbits(8) for _ in range(64)),
        b"",
        b'{"t": 1767225600, "v": NaN}',
        b'{"t": "yesterday", "v": 3}',
        json.dumps({"t": t0, "v": "12"}).encode(),
        json.dumps({"t": t0, "type": "calibration_dose"}).encode(),
        json.dumps({"samples": [[t0, 1], [t0, None]]}).encode(),
        msgpack.packb([1, 2, 3]),
        b"{" + b" " * (10 * 1024 * 1024) + b"}",  # 10 MB
    ]
    topics = [f"{base}/raw/{s}" for s in ("counts", "flow", "pressure", "temperature", "reservoir")]
    topics += [f"{base}/event", f"{base}/sample", f"{base}/meta", f"perfusion/{theatre}/BAD-ID/raw/counts"]
    # Topics only the derived services take, and a status topic.
    derived = [f"{base}/leakage", f"{base}/alert/ack", f"{base}/alert/silence", "perfusion/status/recorder/junk"]
    for topic in derived:
        for junk in garbage:
            mosquitto_pub(stack, topic, junk)
    valid = 0
    for i, topic in enumerate(topics):
        for junk in garbage:
            mosquitto_pub(stack, topic, junk)
        if "/raw/" in topic and "BAD" not in topic:
            mosquitto_pub(stack, topic, json.dumps({"t": t0 + i, "v": 30.0 + i}).encode())  # plausible for each signal
            valid += 1
    w = where(theatre, session)
    wait_for(lambda: count(stack, f"SELECT count(value) FROM reading WHERE {w}") == valid, timeout=60)
    assert recorder.alive() and leakage.alive()
    path = tmp_path / "deadletter" / "recorder.jsonl"

    def kept() -> list[dict[str, Any]]:
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    expected = {(topic, len(junk)) for topic in topics for junk in garbage}
    wait_for(lambda: expected <= {(k["topic"], k["size"]) for k in kept()})  # at least once each (QoS 1)
    reasons = " ".join(str(k["reason"]) for k in kept())
    for reason in (
        "exceeds the limit",
        "not MessagePack or JSON",
        "finite",
        "valid number",
        "empty payload",
        "expected a map",
        "must match",
    ):
        assert reason in reasons
    assert any(int(k["size"]) > 10_000_000 and k["truncated"] for k in kept())

    # The alerts and pk services kept every bad message aside and still work.
    def kept_aside(name: str, topic: str) -> bool:
        return topic in (tmp_path / "deadletter" / f"{name}.jsonl").read_text()

    for name, topic in (("alerts", f"{base}/alert/silence"), ("pk", f"{base}/sample"), ("alerts", f"{base}/leakage")):
        wait_for(functools.partial(kept_aside, name, topic))
    leak = {"t": t0 + 100, "state": "monitoring", "percent": 3.0, "ci_low": 2.6, "ci_high": 3.4}
    mosquitto_pub(stack, f"{base}/leakage", json.dumps(leak).encode())
    wait_for(lambda: rows(stack, f"SELECT id FROM alert WHERE {w} AND kind='new'"))
    assert all(s.alive() for s in (recorder, leakage, alerts, pk))
    assert [s.stop() for s in (recorder, leakage, alerts, pk)] == [0, 0, 0, 0]


def test_sigkill_of_leakage_mid_session_loses_nothing(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str]
) -> None:
    theatre, session = ids
    services("recorder")
    leakage = services("leakage")
    acq = run_session(services, theatre, session, ISOPERF_SIM_SPEED="150", ISOPERF_SIM_LEAK="steady")
    w = where(theatre, session)
    wait_for(lambda: count(stack, f"SELECT count(percent) FROM leakage WHERE {w}") > 200, timeout=60)
    leakage.kill()
    killed_at = rows(stack, f"SELECT last(state) FROM leakage WHERE {w}")[0]["time"]
    wait_for(lambda: count(stack, f"SELECT count(value) FROM reading WHERE {w} AND time > {killed_at}ms") > 300)
    services("leakage", ISOPERF_INSTANCE=leakage.env["ISOPERF_INSTANCE"])
    assert acq.wait(timeout=120) == 0, acq.output()
    wait_for(lambda: settled(stack, theatre, session), timeout=60)

    assert count(stack, f"SELECT count(value) FROM reading WHERE {w}") == N_READINGS
    counts_t = [r["time"] for r in rows(stack, f"SELECT value FROM reading WHERE {w} AND signal='counts'")]
    leak = rows(stack, f"SELECT percent, state FROM leakage WHERE {w}")
    assert [r["time"] for r in leak] == counts_t, "one leakage point per counting interval, no gap"
    pct = [r["percent"] for r in leak if r["percent"] is not None]
    jumps = [abs(b - a) for a, b in itertools.pairwise(pct)]
    assert max(jumps) < 0.3, "no jump where the service was killed"
    # No seam: the series matches an uninterrupted run over the same stored readings.
    env = {**os.environ, **stack.env()}
    done = subprocess.run(
        [sys.executable, "-m", "isoperf.tools.cli", "reanalyse", theatre, session, "--name", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    ref = {r["time"]: r["percent"] for r in rows(stack, f"SELECT percent FROM leakage_reanalysis WHERE {w}")}
    live = {r["time"]: r["percent"] for r in leak if r["percent"] is not None}
    assert ref.keys() == live.keys()
    assert max(abs(live[t] - ref[t]) for t in live) < 0.05


def test_sigterm_drains_and_leaves_a_retained_offline_status(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str]
) -> None:
    theatre, session = ids
    recorder = services("recorder")
    acq = run_session(services, theatre, session, ISOPERF_SIM_SPEED="0")
    assert acq.wait(timeout=60) == 0
    assert recorder.stop() == 0  # SIGTERM while the backlog is being stored
    assert "recorder stopped:" in recorder.output()
    assert stack.wait_status("recorder", recorder.env["ISOPERF_INSTANCE"], want="offline", timeout_s=5)
    # Whatever the recorder had not stored when it stopped, the broker kept: a new run stores the rest.
    services("recorder", ISOPERF_INSTANCE=recorder.env["ISOPERF_INSTANCE"])
    w = where(theatre, session)
    wait_for(lambda: count(stack, f"SELECT count(value) FROM reading WHERE {w}") == N_READINGS, timeout=60)


@pytest.mark.parametrize("outage", ["broker", "influxdb"])
def test_an_outage_mid_session_loses_nothing(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str], outage: str
) -> None:
    """The broker restarts (services reconnect and resubscribe; the acquisition holds what it cannot
    send), or InfluxDB goes away (nothing can be stored, so nothing is acknowledged): no reading is lost."""
    theatre, session = ids
    recorder = services("recorder")
    leakage = services("leakage")
    acq = run_session(services, theatre, session, ISOPERF_SIM_SPEED="200")
    w = where(theatre, session)
    wait_for(lambda: count(stack, f"SELECT count(value) FROM reading WHERE {w}") > 2000, timeout=60)
    if outage == "broker":
        stack.stop_broker()
        time.sleep(2.0)
        stored_while_down = count(stack, f"SELECT count(value) FROM reading WHERE {w}")
        stack.restart_broker()
        assert stored_while_down < N_READINGS
    else:
        stack.stop_influx()
        time.sleep(3.0)
        stack.restart_influx()
    assert acq.wait(timeout=120) == 0, acq.output()
    wait_for(lambda: settled(stack, theatre, session), timeout=120)
    assert count(stack, f"SELECT count(value) FROM reading WHERE {w}") == N_READINGS
    if outage == "broker":
        assert "reconnecting" in recorder.output() and "reconnecting" in leakage.output()
    else:
        assert "InfluxDB write failed" in recorder.output()
    assert recorder.alive() and leakage.alive()
