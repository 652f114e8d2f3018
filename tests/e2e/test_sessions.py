"""Whole simulated sessions through every service on the real stack, checked against the simulator's truth."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServiceProcess, wait_for
from tests.helpers import rows, settled, where
from tests.stack import ControlledStack

pytestmark = pytest.mark.e2e

TOLERANCE_PP = 0.5


@pytest.mark.parametrize("isotope", ["Tc-99m", "I-131"])
@pytest.mark.parametrize("leak", ["steady", "step"])
def test_stored_leakage_tracks_truth(
    stack: ControlledStack,
    services: Callable[..., ServiceProcess],
    ids: tuple[str, str],
    tmp_path: Path,
    leak: str,
    isotope: str,
) -> None:
    theatre, session = ids
    services("recorder")
    services("leakage")
    truth_file = tmp_path / "truth.jsonl"
    acq = services(
        "acquisition",
        ISOPERF_THEATRE=theatre,
        ISOPERF_SESSION=session,
        ISOPERF_SIM_SPEED="0",
        ISOPERF_SIM_LEAK=leak,
        ISOPERF_SIM_ISOTOPE=isotope,
        ISOPERF_SIM_SEED="11",
        ISOPERF_SIM_TRUTH_FILE=str(truth_file),
    )
    assert acq.wait(timeout=120) == 0, acq.output()
    wait_for(lambda: settled(stack, theatre, session), timeout=60)

    w = where(theatre, session)
    events = {r["type"]: r["time"] for r in rows(stack, f"SELECT label, type FROM event WHERE {w}")}
    truth = {round(r["t"] * 1000): r["leakage_pct"] for r in map(json.loads, truth_file.read_text().splitlines())}
    leak_rows = rows(
        stack,
        f"SELECT percent, ci_low, ci_high FROM leakage WHERE {w} AND time >= {events['calibration_dose']}ms"
        f" AND time <= {events['isolation_end']}ms",
    )
    numbered = [r for r in leak_rows if r["percent"] is not None]
    # Numbers start two minutes after the circuit dose (the zero point) and run to isolation end.
    assert numbered[0]["time"] == events["perfusion_dose"] + 120_000
    assert len(numbered) >= (events["isolation_end"] - events["perfusion_dose"]) / 1000 - 125
    errors = [abs(r["percent"] - truth[r["time"]]) for r in numbered]
    assert max(errors) <= TOLERANCE_PP, f"max error {max(errors):.3f} pp"
    # The truth moved: this is not a flat line matched against a flat line.
    assert max(truth[r["time"]] for r in numbered) >= 1.9
