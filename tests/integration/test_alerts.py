"""The alerts service on the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from isoperf.tools.stack import LocalStack
from tests.conftest import ServiceProcess, wait_for
from tests.helpers import mosquitto_pub, rows, settled, where
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration


def test_alerts_fire_are_recorded_acknowledged_and_survive_sigkill(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str], tmp_path: Path
) -> None:
    theatre, session = ids
    state = str(tmp_path / "alerts-state.json")
    services("recorder")
    services("leakage")
    alerts = services("alerts", ISOPERF_ALERTS_STATE_FILE=state)
    acq = services(
        "acquisition",
        ISOPERF_THEATRE=theatre,
        ISOPERF_SESSION=session,
        ISOPERF_SIM_SPEED="150",
        ISOPERF_SIM_LEAK="step",
        ISOPERF_SIM_STEP_PCT="3",
    )
    w = where(theatre, session)
    first = wait_for(lambda: rows(stack, f"SELECT id, kind, status FROM alert WHERE {w} AND kind='new'"), timeout=90)
    alert_id = first[0]["id"]

    # Acknowledged by hand, as a theatre screen would.
    ack = {"t": first[0]["time"] / 1000 + 1, "id": alert_id, "by": "perfusionist"}
    mosquitto_pub(stack, f"perfusion/{theatre}/{session}/alert/ack", json.dumps(ack).encode())
    acked = wait_for(lambda: rows(stack, f"SELECT id, acknowledged_by FROM alert_ack WHERE {w}"))
    assert acked[0]["acknowledged_by"] == "perfusionist"

    alerts.kill()
    services("alerts", ISOPERF_ALERTS_STATE_FILE=state, ISOPERF_INSTANCE=alerts.env["ISOPERF_INSTANCE"])
    assert acq.wait(timeout=120) == 0, acq.output()
    wait_for(lambda: settled(stack, theatre, session), timeout=90)
    # A 3 % step: advisory, then warning on the same alert, each once; closed when the isolation ends.
    leakage = wait_for(
        lambda: (
            r
            if (r := rows(stack, f"SELECT id, kind, severity FROM alert WHERE {w} AND rule='leakage'"))
            and r[-1]["kind"] == "resolved"
            else None
        ),
        timeout=30,
    )
    steps = [(r["kind"], r["severity"]) for r in leakage if r["kind"] != "repeat"]
    assert steps == [("new", "advisory"), ("escalated", "warning"), ("resolved", "warning")]
    assert {r["id"] for r in leakage} == {alert_id}, "a firing alert is neither lost nor sent again as new"
    # The circuit was healthy and the isolation short: no other alarm.
    assert {r["rule"] for r in rows(stack, f'SELECT id, "rule" FROM alert WHERE {w}')} <= {"leakage", "leak_rate"}
    saved = json.loads(Path(state).read_text())
    assert [theatre, session] in saved["ended"], "an ended session leaves the alert state"
    assert not any(s["session"] == session for s in saved["sessions"])


def cli(stack: LocalStack, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "isoperf.tools.cli", *argv],
        env={**os.environ, **stack.env()},
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_stale_data_offline_service_silence_and_ack_from_the_command_line(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str], tmp_path: Path
) -> None:
    theatre, session = ids
    recorder = services("recorder")
    services("alerts", ISOPERF_ALERTS_STATE_FILE=str(tmp_path / "state.json"))
    root, w, t0 = f"perfusion/{theatre}/{session}", where(theatre, session), time.time()
    meta = {"t": t0, "procedure": "ILP", "isotope": "Tc-99m", "weight_kg": 70, "circuit_volume_ml": 500}
    meta |= {"melphalan_mg_per_kg": 1.0, "thresholds": {"stale_device_s": 2.0}}
    mosquitto_pub(stack, f"{root}/meta", json.dumps(meta).encode())
    mosquitto_pub(stack, f"{root}/raw/temperature", json.dumps({"t": t0, "v": 38.5}).encode())

    # Nothing more comes: the service's clock notices.
    stale = wait_for(lambda: rows(stack, f"SELECT id, message FROM alert WHERE {w} AND \"rule\"='stale_temperature'"))
    stale_id = stale[0]["id"]
    assert stale[0]["message"].startswith("No temperature readings for")

    # A service stops: its retained offline raises an alert; back online resolves it.
    recorder.stop()
    rule = f"offline:recorder/{recorder.env['ISOPERF_INSTANCE']}"
    q = f"SELECT kind, severity FROM alert WHERE {w} AND \"rule\"='{rule}'"
    assert [(r["kind"], r["severity"]) for r in wait_for(lambda: rows(stack, q))] == [("new", "critical")]
    services("recorder", ISOPERF_INSTANCE=recorder.env["ISOPERF_INSTANCE"])
    wait_for(lambda: [r["kind"] for r in rows(stack, q)] == ["new", "resolved"])

    # From the command line: list, acknowledge, silence.
    listed = cli(stack, "ack", theatre, session)
    assert stale_id in listed and "stale_temperature" in listed
    cli(stack, "ack", theatre, session, stale_id, "--by", "anaesthetist")
    acks = wait_for(lambda: rows(stack, f"SELECT id, acknowledged_by, matched FROM alert_ack WHERE {w}"))
    assert [(a["id"], a["acknowledged_by"], a["matched"]) for a in acks] == [(stale_id, "anaesthetist", True)]
    cli(
        stack,
        "silence",
        theatre,
        session,
        "--rule",
        "stale_temperature",
        "--minutes",
        "30",
        "--reason",
        "probe swap",
        "--by",
        "perf",
    )
    silences = wait_for(
        lambda: rows(stack, f'SELECT "rule", duration_s, reason, silenced_by FROM alert_silence WHERE {w}')
    )
    assert [(x["rule"], x["duration_s"], x["reason"]) for x in silences] == [
        ("stale_temperature", 1800.0, "probe swap")
    ]
