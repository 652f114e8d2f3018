"""Every query of every board, run against a real InfluxDB holding a simulated session."""

from __future__ import annotations

import json
from typing import Any

import pytest

from isoperf import boards
from isoperf.stack import StackError
from tests.conftest import wait_for
from tests.helpers import mosquitto_pub, rows, settled, where

pytestmark = pytest.mark.integration


def fill(query: str, theatre: str, session: str, start_ms: int, end_ms: int) -> str:
    """What Grafana sends for this query with the variables set to the session and its time range."""
    return (
        query.replace("$theatre", theatre)
        .replace("$session", session)
        .replace("$timeFilter", f"time >= {start_ms}ms AND time <= {end_ms}ms")
        .replace("$__interval", "10s")
    )


def test_every_panel_annotation_and_variable_returns_data(stack, services, ids) -> None:  # type: ignore[no-untyped-def]
    theatre, session = ids
    for name in ("recorder", "leakage", "alerts", "pk"):
        services(name)
    acq = services(
        "acquisition",
        ISOPERF_THEATRE=theatre,
        ISOPERF_SESSION=session,
        ISOPERF_SIM_SPEED="150",
        ISOPERF_SIM_LEAK="step",
        ISOPERF_SIM_STEP_PCT="3",
    )
    w = where(theatre, session)
    first = wait_for(lambda: rows(stack, f"SELECT id FROM alert WHERE {w} AND kind='new'"), timeout=90)
    ack = {"t": first[0]["time"] / 1000 + 1, "id": first[0]["id"], "by": "perfusionist"}  # type: ignore[index]
    mosquitto_pub(stack, f"perfusion/{theatre}/{session}/alert/ack", json.dumps(ack).encode())
    assert acq.wait(timeout=120) == 0, acq.output()
    wait_for(lambda: settled(stack, theatre, session), timeout=90)
    wait_for(lambda: rows(stack, f"SELECT n_systemic FROM pk WHERE {w} AND n_systemic = 7"), timeout=60)
    times = [r["time"] for r in rows(stack, f"SELECT label FROM event WHERE {w}")]
    start, end = min(times), max(times) + 15 * 60_000  # the last lab results come after the session's end

    empty: list[str] = []
    for build in boards.BOARDS.values():
        board: dict[str, Any] = build()
        checks = [
            (f"{board['uid']}: {p['title']} [{t['refId']}]", t["query"]) for p in board["panels"] for t in p["targets"]
        ]
        checks += [(f"{board['uid']}: annotation {a['name']}", a["query"]) for a in board["annotations"]["list"]]
        checks += [(f"{board['uid']}: variable {v['name']}", v["query"]) for v in board["templating"]["list"]]
        for label, query in checks:
            try:
                series = stack.influxql(fill(query, theatre, session, start, end))
            except StackError as exc:
                empty.append(f"{label}: error {exc}")
                continue
            if not any(s.get("values") for s in series):
                empty.append(f"{label}: no data")
            if "variable theatre" in label:
                assert [theatre] in [v[1:] for s in series for v in s["values"]]
    assert empty == []
