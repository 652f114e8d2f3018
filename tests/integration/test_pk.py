"""The PK service on the real stack: a simulated session, a crash mid-session, lab results by CSV."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from isoperf.tools.stack import LocalStack
from services.acquisition.simulator import SimConfig
from services.pk.history import feed, stored_queries
from services.pk.session import PkSession
from tests.conftest import ServiceProcess, wait_for
from tests.helpers import count, rows, where
from tests.stack import ControlledStack

pytestmark = pytest.mark.integration


def last_pk(stack: LocalStack, w: str) -> dict[str, Any] | None:
    got = rows(stack, f"SELECT * FROM pk WHERE {w} ORDER BY time DESC LIMIT 1")
    return got[0] if got else None


def test_a_session_with_a_crash_gives_the_same_figures_as_an_offline_computation(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str]
) -> None:
    theatre, session = ids
    services("recorder")
    services("leakage")
    pk = services("pk")
    acq = services(
        "acquisition", ISOPERF_THEATRE=theatre, ISOPERF_SESSION=session, ISOPERF_SIM_SPEED="150", ISOPERF_SIM_SEED="7"
    )
    w = where(theatre, session)
    wait_for(lambda: (p := last_pk(stack, w)) is not None and p["n_circuit"] >= 3, timeout=60)
    pk.kill()  # mid-session, with samples still to come
    services("pk", ISOPERF_INSTANCE=pk.env["ISOPERF_INSTANCE"])
    assert acq.wait(timeout=120) == 0, acq.output()
    final = wait_for(
        lambda: (p := last_pk(stack, w)) is not None and p["n_circuit"] == 7 and p["n_systemic"] == 7 and p, timeout=60
    )
    assert isinstance(final, dict)

    # The same inputs, as stored, through the same code offline.
    offline = PkSession()
    for kind, q in stored_queries(theatre, session).items():
        feed(offline, kind, rows(stack, q))
    expected = offline.estimate(final["time"] / 1000)
    assert expected is not None
    for name in (
        "auc_circuit",
        "auc_circuit_linear",
        "cmax_circuit",
        "auc_systemic",
        "auc_ratio",
        "v_ml",
        "k_uptake_min",
        "systemic_ug_ml",
    ):
        assert final[name] == pytest.approx(getattr(expected, name), rel=1e-6), name
    # A steady rate while leakage comes: one estimate per 15 s of event time at least.
    drug = rows(stack, f"SELECT label FROM event WHERE {w} AND type='drug_start'")[0]["time"]
    n = count(stack, f"SELECT count(v_ml) FROM pk WHERE {w} AND time >= {drug}ms")
    assert n >= (SimConfig().duration_s - SimConfig().drug_start_at_s) / 15 * 0.95
    live = rows(
        stack, f"SELECT circuit_ug_ml, circuit_low_ug_ml, circuit_high_ug_ml FROM pk WHERE {w} AND time >= {drug}ms"
    )
    assert all(r["circuit_low_ug_ml"] <= r["circuit_ug_ml"] <= r["circuit_high_ug_ml"] for r in live)
    assert max(r["circuit_ug_ml"] for r in live) > 30


def isoperf(stack: LocalStack, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env()}
    return subprocess.run(
        [sys.executable, "-m", "isoperf.tools.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lab_results_from_a_csv_all_or_nothing(
    stack: ControlledStack, services: Callable[..., ServiceProcess], ids: tuple[str, str], tmp_path: Path
) -> None:
    theatre, session = ids
    services("recorder")
    w = where(theatre, session)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "draw_time,site,melphalan_ug_ml,sample_id\n"
        "2026-11-22T10:20:00Z,circuit,0,c-01\n"
        "2026-11-22T10:25:00Z,circuit,forty,c-02\n"
        "2026-11-22T10:30:00Z,circuit,55.1,c-03\n"
    )
    done = isoperf(stack, "import-samples", theatre, session, str(bad))
    assert (
        done.returncode == 2 and "nothing imported" in done.stderr and "row 3: melphalan_ug_ml 'forty'" in done.stderr
    )
    good = tmp_path / "good.csv"
    good.write_text(bad.read_text().replace("forty", "41.5"))
    done = isoperf(stack, "import-samples", theatre, session, str(good))
    assert done.returncode == 0, done.stderr
    stored = wait_for(
        lambda: r if len(r := rows(stack, f"SELECT melphalan_ug_ml, sample_id FROM sample WHERE {w}")) == 3 else None
    )
    assert [(r["sample_id"], r["melphalan_ug_ml"]) for r in stored] == [("c-01", 0.0), ("c-02", 41.5), ("c-03", 55.1)]
    assert count(stack, f"SELECT count(melphalan_ug_ml) FROM sample WHERE {w}") == 3, "the bad file stored nothing"
    done = isoperf(
        stack,
        "sample",
        theatre,
        session,
        "--drawn",
        "2026-11-22T10:35:00Z",
        "--site",
        "systemic",
        "--ug-ml",
        "0.04",
        "--id",
        "s-01",
    )
    assert done.returncode == 0, done.stderr
    wait_for(lambda: count(stack, f"SELECT count(melphalan_ug_ml) FROM sample WHERE {w} AND site='systemic'") == 1)
