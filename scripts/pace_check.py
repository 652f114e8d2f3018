"""The same alarms at any pace, in real time: one simulated session played at ``--speed`` (1:
real time, 66 minutes) and the same session as fast as possible, through the recorder, leakage,
alerts and pk services on the local stack; then their alarms (rule, severity, kind, episode,
event time) and pk series are compared. The suite checks x60 against as fast as possible and a
replay (tests/integration/test_alerts_pace.py); this is the real-time run it cannot hold.

Usage:  .venv/bin/python scripts/pace_check.py [--speed 1] [--leak step] [--isotope Tc-99m]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from isoperf.queries import pk_differences, pk_series, session_where
from isoperf.tools.stack import LocalStack, spawn_service

START_T = 1_767_225_600.0
SERVICES = ("recorder", "leakage", "alerts", "pk")
N_COUNTS = 3960


def spawn(stack: LocalStack, name: str, logs: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        **stack.env(),
        "ISOPERF_INSTANCE": "pace",
        "ISOPERF_ALERTS_STATE_FILE": str(logs / "alerts-state.json"),
        "ISOPERF_JOURNAL_DIR": str(logs / "journal"),
        **extra,
    }
    return spawn_service(name, env, logs / f"{name}-{extra.get('ISOPERF_THEATRE', '')}.log")


def alarms(stack: LocalStack, theatre: str, session: str) -> list[tuple[str, str, str, int, float]]:
    """As the suite compares them: reminders and services going offline left out."""
    q = f'SELECT id, "rule", severity, kind FROM alert WHERE {session_where(theatre, session)}'
    episodes: dict[str, int] = {}
    out = []
    for r in stack.rows(q):
        if r["kind"] == "repeat" or str(r["rule"]).startswith("offline:"):
            continue
        episode = episodes.setdefault(str(r["id"]), len(episodes) + 1)
        out.append((str(r["rule"]), str(r["severity"]), str(r["kind"]), episode, float(r["time"]) / 1000.0))
    return out


def settled(stack: LocalStack, theatre: str, session: str) -> bool:
    q = f"SELECT count(state) FROM leakage WHERE {session_where(theatre, session)}"
    got = stack.rows(q)
    return bool(got) and got[0].get("count") == N_COUNTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed", default="1")
    ap.add_argument("--leak", default="step", choices=["step", "steady", "none"])
    ap.add_argument("--isotope", default="Tc-99m", choices=["Tc-99m", "I-131", "In-111"])
    ap.add_argument("--keep", help="keep the stack's data and the services' logs in this directory")
    args = ap.parse_args()
    sim = {
        "ISOPERF_SESSION": "pace",
        "ISOPERF_SIM_SEED": "7",
        "ISOPERF_SIM_START_T": str(START_T),
        "ISOPERF_SIM_LEAK": args.leak,
        "ISOPERF_SIM_STEP_PCT": "3",
        "ISOPERF_SIM_ISOTOPE": args.isotope,
    }
    with contextlib.ExitStack() as cleanup:
        tmp = args.keep or cleanup.enter_context(tempfile.TemporaryDirectory())
        stack = cleanup.enter_context(LocalStack(Path(tmp) / "stack"))
        logs = Path(tmp)
        procs = [spawn(stack, name, logs) for name in SERVICES]
        try:
            for name in SERVICES:
                assert stack.wait_status(name, "pace", timeout_s=120), f"{name} did not come online"
            started = time.monotonic()
            plays = {
                speed: spawn(stack, "acquisition", logs, ISOPERF_THEATRE=f"pace-{i}", ISOPERF_SIM_SPEED=speed, **sim)
                for i, speed in enumerate((args.speed, "0"))
            }
            for speed, p in plays.items():
                if p.wait() != 0:
                    sys.exit(f"the play at speed {speed} failed: see {logs}")
            deadline = time.monotonic() + 300
            while not all(settled(stack, f"pace-{i}", "pace") for i in range(2)) and time.monotonic() < deadline:
                time.sleep(2)
            time.sleep(40)  # inputs held after the session's last leakage point go after the hold bound
            found = [alarms(stack, f"pace-{i}", "pace") for i in range(2)]
            series = [pk_series(stack, f"pace-{i}", "pace") for i in range(2)]
        finally:
            for p in procs:
                p.terminate()
                p.wait()
    paced, fast = found
    print(f"\nisoperf pace check: {args.leak} leak, {args.isotope}, speed {args.speed} vs as fast as possible")
    print(f"  played in {time.monotonic() - started:.0f} s; {len(paced)} and {len(fast)} alarms")
    for a, b in zip(paced, fast, strict=False):
        times = f"t {a[4] - START_T:8.1f} s  vs  {b[4] - START_T:8.1f} s"
        print(f"  {a[0]:<12} {a[1]:<9} {a[2]:<12} episode {a[3]}  {times}")
    same = [x[:4] for x in paced] == [x[:4] for x in fast]
    apart = max((abs(a[4] - b[4]) for a, b in zip(paced, fast, strict=False)), default=0.0)
    print(f"  same rule, severity, kind, episode: {same}; largest event-time difference {apart:.3f} s")
    print(f"  pk series equal: {series[0] == series[1]} ({len(series[0])} and {len(series[1])} estimates)")
    for line in pk_differences(series[0], series[1], names=("paced play", "fast play"))[:12]:
        print(f"    {line}")
    if not same or apart > 1.001 or series[0] != series[1]:
        sys.exit(1)


if __name__ == "__main__":
    main()
