"""Re-analysis of a stored session, on the real stack."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from isoperf.tools.stack import LocalStack
from services.leakage.commands import parse_overrides
from services.leakage.estimator import EstimatorParams
from tests.conftest import ServiceProcess, wait_for
from tests.helpers import rows, settled, where
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration


def reanalyse(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, **stack.env()}
    return subprocess.run(
        [sys.executable, "-m", "isoperf.tools.cli", "reanalyse", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_reanalysis_reproduces_the_live_series_and_keeps_it_apart(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str]
) -> None:
    theatre, session = ids
    services("recorder")
    services("leakage")
    acq = services(
        "acquisition",
        ISOPERF_THEATRE=theatre,
        ISOPERF_SESSION=session,
        ISOPERF_SIM_SPEED="0",
        ISOPERF_SIM_LEAK="step",
        ISOPERF_SIM_SEED="5",
    )
    assert acq.wait(timeout=60) == 0
    wait_for(lambda: settled(stack, theatre, session), timeout=60)
    w = where(theatre, session)
    live = {r["time"]: r for r in rows(stack, f"SELECT percent, ci_low, state FROM leakage WHERE {w}")}

    same = reanalyse(stack, theatre, session, "--name", "same")
    assert same.returncode == 0, same.stderr
    again = {
        r["time"]: r
        for r in rows(stack, f"SELECT percent, ci_low, state FROM leakage_reanalysis WHERE {w} AND analysis='same'")
    }
    assert again.keys() == live.keys()
    numbered = [t for t, r in live.items() if r["percent"] is not None]
    assert len(numbered) > 2000
    assert max(abs(again[t]["percent"] - live[t]["percent"]) for t in numbered) < 1e-9
    differ = [(t, live[t]["state"], again[t]["state"]) for t in live if again[t]["state"] != live[t]["state"]]
    assert not differ, differ[:3]
    assert "largest difference 0 pp" in same.stdout

    other = reanalyse(
        stack, theatre, session, "--name", "late-zero", "--set", "zero_start_s=120", "--set", "zero_end_s=240"
    )
    assert other.returncode == 0, other.stderr
    moved = rows(stack, f"SELECT percent FROM leakage_reanalysis WHERE {w} AND analysis='late-zero' AND percent > -100")
    assert moved[0]["time"] > min(numbered)  # its numbers start later: the zero window ends later
    # (InfluxQL returns only rows in which a selected field is set: the numbered ones here.)
    after = {r["time"]: r["percent"] for r in rows(stack, f"SELECT percent FROM leakage WHERE {w}")}
    assert after == {t: live[t]["percent"] for t in numbered}, "the live record is untouched"


def test_reanalysis_of_an_unknown_session_says_so(stack: ControlledStack) -> None:
    result = reanalyse(stack, "nowhere", "nothing")
    assert result.returncode == 1 and "no stored counts for nowhere/nothing" in result.stderr


def test_parameter_overrides() -> None:
    p = parse_overrides(EstimatorParams(), ["zero_end_s=150", "calibration_drift_correction=yes", "switch_z=3.5"])
    assert (p.zero_end_s, p.calibration_drift_correction, p.switch_z) == (150.0, True, 3.5)
    for bad, message in (
        (["zero_end=1"], "expected NAME=VALUE"),
        (["zero_end_s"], "expected NAME=VALUE"),
        (["shine_through_correction=maybe"], "is true or false"),
        (["switch_z=high"], "could not convert string to float"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_overrides(EstimatorParams(), bad)
