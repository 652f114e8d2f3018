"""Hostile input into a real session: a valid simulated session (I-131, a leak step) played as
fast as possible while thousands of hostile payloads, wild times among them, go to its own
topics; beside it the same session undisturbed. Every valid reading must be stored, every bad
message kept aside with a reason by every service that takes it, and the leakage series and
the alarms must equal those of the undisturbed session, complete as soon after the last message.

    .venv/bin/python scripts/hostile_session.py                 # 12 kinds x 1000: over 10,000, and 300 wild times
    .venv/bin/python scripts/hostile_session.py --per-kind 100  # a quick one
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.hostile

from isoperf.codec import encode
from isoperf.queries import count, session_where
from isoperf.schemas import T_MAX, Event, Reading, ReadingBatch
from isoperf.tools.stack import LocalStack, spawn_service
from tests.hostile import Planned, Probe, draw_probes, figures, plan, publish

SERVICES = ("recorder", "leakage", "alerts", "pk")
START_T = 1_767_225_600.0
SESSION = "hostile"
N_COUNTS, N_READINGS = 3960, 3960 * 5
HOUR = 3600.0
SIM = {
    "ISOPERF_SESSION": SESSION,
    "ISOPERF_SIM_SPEED": "0",
    "ISOPERF_SIM_SEED": "11",
    "ISOPERF_SIM_START_T": str(START_T),
    "ISOPERF_SIM_ISOTOPE": "I-131",
    "ISOPERF_SIM_LEAK": "step",
    "ISOPERF_SIM_STEP_PCT": "3",
}


def spawn(stack: LocalStack, name: str, directory: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        **stack.env(),
        "ISOPERF_INSTANCE": f"hostile-{name}",
        "ISOPERF_DEADLETTER_DIR": str(directory / "deadletter"),
        "ISOPERF_ALERTS_STATE_FILE": str(directory / "alerts-state.json"),
        "ISOPERF_JOURNAL_DIR": str(directory / "journal"),
        **extra,
    }
    return spawn_service(name, env, directory / f"{name}{extra.get('ISOPERF_THEATRE', '')}.log")


def wild(theatre: str) -> list[Planned]:
    """Valid by the schema, stamped far from the session's time: readings hours ahead, batches all at
    one time hours before the start, events at the end of the schema's range."""
    base = f"perfusion/{theatre}/{SESSION}"
    out = []
    for i in range(100):
        for kind, body in (
            ("raw/counts", Reading(t=START_T + 6 * HOUR + i, v=5000.0)),
            ("raw/flow", ReadingBatch(samples=[(START_T - 3 * HOUR, 1.0)] * 20)),
            ("event", Event(t=T_MAX - 86_400.0 - i, type="isolation_end")),
        ):
            payload = encode(body)
            out.append(Planned(f"{base}/{kind}", payload, Probe(kind, "wild time", payload)))
    return out


def wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def series(stack: LocalStack, theatre: str) -> list[tuple[Any, ...]]:
    q = f"SELECT state, percent FROM leakage WHERE {session_where(theatre, SESSION)}"
    return [(r["time"], r["state"], r["percent"]) for r in stack.rows(q)]


def alarms(stack: LocalStack, theatre: str) -> list[tuple[Any, ...]]:
    q = f'SELECT id, "rule", severity, kind FROM alert WHERE {session_where(theatre, SESSION)}'
    episodes: dict[str, int] = {}
    out = []
    for r in stack.rows(q):
        if r["kind"] == "repeat" or str(r["rule"]).startswith(("offline:", "clock:")):
            continue
        out.append(
            (r["rule"], r["severity"], r["kind"], episodes.setdefault(str(r["id"]), len(episodes) + 1), r["time"])
        )
    return out


def play(stack: LocalStack, directory: Path, theatre: str, hostile: list[Planned]) -> float:
    """Play the session (with ``hostile`` published meanwhile); seconds from the last message to a
    complete leakage series."""
    acq = spawn(stack, "acquisition", directory, ISOPERF_THEATRE=theatre, **SIM)
    w = session_where(theatre, SESSION)
    if hostile and not wait(lambda: count(stack, f"SELECT count(value) FROM reading WHERE {w}") > 0, 120):
        sys.exit(f"the {theatre} session did not start")
    sent = threading.Thread(target=lambda: asyncio.run(publish(stack.host, stack.mqtt_port, hostile, "hostile-pub")))
    sent.start()
    sent.join()
    if acq.wait(timeout=600) != 0:
        sys.exit(f"the {theatre} session failed: see {directory}")
    last = time.monotonic()
    if not wait(lambda: count(stack, f"SELECT count(state) FROM leakage WHERE {w}") >= N_COUNTS, 600):
        sys.exit(f"the leakage series of {theatre} did not complete")
    return time.monotonic() - last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-kind", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="isoperf-hostile-") as tmp, LocalStack(Path(tmp) / "stack") as stack:
        directory = Path(tmp)
        procs = [spawn(stack, name, directory) for name in SERVICES]
        for name in SERVICES:
            if not stack.wait_status(name, f"hostile-{name}", timeout_s=120):
                sys.exit(f"{name} did not come online")
        undisturbed = play(stack, directory, "calm", [])
        bad = [p for p in draw_probes(args.per_kind, args.seed) if p.bad and p.kind != "status"]
        hostile = plan(bad, "stormy", SESSION) + wild("stormy")
        disturbed = play(stack, directory, "stormy", hostile)
        time.sleep(35)  # what the alerts service holds at the end goes after its bound
        stored = count(stack, f"SELECT count(value) FROM reading WHERE {session_where('stormy', SESSION)}")
        wait(lambda: figures(hostile, stored, directory / "deadletter").all_kept, 300)
        f = figures(hostile, stored, directory / "deadletter")
        same_series = series(stack, "stormy") == series(stack, "calm")
        same_alarms = alarms(stack, "stormy") == alarms(stack, "calm")
        clock = stack.rows(
            f'SELECT count(value) FROM alert WHERE {session_where("stormy", SESSION)} AND "rule" =~ /^clock:/'
        )
        alive = [p.poll() is None for p in procs]
        for p in procs:
            p.terminate()
        codes = [p.wait(timeout=60) for p in procs]
        logs = "".join((directory / f"{n}.log").read_text(errors="replace") for n in SERVICES)
    print(f"hostile payloads into the session: {len(hostile):,} ({len(hostile) - 300} generated, 300 wild times)")
    print(f"valid readings stored: {stored:,} of {N_READINGS:,}")
    for service, (want, found) in f.aside.items():
        print(f"  {service:9s} had to keep aside {want:,}; kept with a reason: {found:,}")
    print(f"leakage series equal to the undisturbed session's: {same_series}; alarms equal: {same_alarms}")
    print(f"clock alarms raised: {clock[0]['count'] if clock else 0}")
    print(f"leakage complete after the last message: {disturbed:.1f} s (undisturbed {undisturbed:.1f} s)")
    print(f"services alive: {sum(alive)} of {len(SERVICES)}; exit codes {codes}; tracebacks: {'Traceback' in logs}")
    ok = stored == N_READINGS and f.all_kept and same_series and same_alarms and all(alive) and set(codes) == {0}
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
