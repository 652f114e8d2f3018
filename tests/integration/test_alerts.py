"""The alerts service on the real stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.helpers import count, mosquitto_pub, rows, settled, where

pytestmark = pytest.mark.integration


def test_alerts_fire_are_recorded_acknowledged_and_survive_sigkill(stack, services, ids, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
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
    alert_id = first[0]["id"]  # type: ignore[index]

    # Acknowledged by hand, as a theatre screen would.
    ack = {"t": first[0]["time"] / 1000 + 1, "id": alert_id, "by": "perfusionist"}  # type: ignore[index]
    mosquitto_pub(stack, f"perfusion/{theatre}/{session}/alert/ack", json.dumps(ack).encode())
    acked = wait_for(lambda: rows(stack, f"SELECT id, acknowledged_by FROM alert_ack WHERE {w}"))
    assert acked[0]["acknowledged_by"] == "perfusionist"  # type: ignore[index]

    alerts.kill()
    services("alerts", ISOPERF_ALERTS_STATE_FILE=state, ISOPERF_INSTANCE=alerts.env["ISOPERF_INSTANCE"])
    assert acq.wait(timeout=120) == 0, acq.output()
    wait_for(lambda: settled(stack, theatre, session), timeout=90)
    # The release after the clamps come off (3 % + 7 %) escalates the same alert.
    escalated = wait_for(
        lambda: rows(stack, f"SELECT id, severity FROM alert WHERE {w} AND kind='escalated'"), timeout=30
    )
    assert {r["id"] for r in escalated} == {alert_id}  # type: ignore[union-attr]
    news = rows(stack, f"SELECT id FROM alert WHERE {w} AND kind='new' AND rule='leakage'")
    assert [r["id"] for r in news] == [alert_id], "a firing alert is neither lost nor sent again as new"
    assert count(stack, f"SELECT count(message) FROM alert WHERE {w}") >= 2
    saved = json.loads(Path(state).read_text())
    firing = next(s for s in saved["sessions"] if s["session"] == session)["firing"]
    assert firing["leakage"]["id"] == alert_id
