"""Soak: a session played in real time while the broker is SIGKILLed three times within 4 s, every
``--every`` seconds, for ``--minutes``; then checks that every reading the gateway read is stored.

Too long for the test suite (the tests do the same at full speed and at x200). The broker runs
with the production settings (persistence, autosave every 5 s) and is restarted on its own
persistence each time.

Usage:  .venv/bin/python scripts/soak_broker_kills.py [--minutes 10] [--every 120]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from isoperf.queries import count, session_where
from isoperf.tools.stack import LocalStack, spawn_service
from services.acquisition.settings import AcquisitionSettings
from services.acquisition.simulator import simulate


def kill_broker(stack: LocalStack) -> None:
    proc = stack.process("mosquitto")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=15)
    stack.spawn_broker()
    stack.wait_ready(lambda: stack.tcp_open(stack.mqtt_port), "mosquitto", time.monotonic() + 20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=120.0, help="seconds between rounds of three kills")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp)) as stack:
        env = {**stack.env(), "ISOPERF_LOG_LEVEL": "WARNING"}
        start_t = time.time()
        procs = {
            name: spawn_service(name, {**env, **extra}, Path(tmp) / f"{name}.log")
            for name, extra in {
                "recorder": {"ISOPERF_INSTANCE": "soak"},
                "acquisition": {
                    "ISOPERF_THEATRE": "soak",
                    "ISOPERF_SESSION": "soak-1",
                    "ISOPERF_SIM_SPEED": "1",
                    "ISOPERF_SIM_START_T": str(start_t),
                },
            }.items()
        }
        deadline = time.monotonic() + args.minutes * 60
        rounds = 0
        while time.monotonic() + args.every < deadline:
            time.sleep(args.every)
            began = time.monotonic()
            for _ in range(3):
                kill_broker(stack)
                time.sleep(0.5)
            rounds += 1
            print(f"round {rounds}: three kills in {time.monotonic() - began:.1f} s")
        time.sleep(max(0.0, deadline - time.monotonic()))
        procs["acquisition"].send_signal(signal.SIGTERM)  # stop reading; the journal is flushed first
        procs["acquisition"].wait(timeout=120)
        w = session_where("soak", "soak-1")
        time.sleep(10)
        stored = count(stack, f"SELECT count(value) FROM reading WHERE {w}")
        last = stack.rows(f"SELECT last(value) FROM reading WHERE {w}")
        last_t = last[0]["time"] / 1000.0 if last else start_t
        # What the simulated devices said up to the last stored reading: the same session, computed here.
        session = simulate(AcquisitionSettings(sim_start_t=start_t).sim_config(), 0)
        expected = sum(1 for samples in session.readings.values() for t, _ in samples if t <= last_t + 0.0005)
        print(f"{args.minutes:g} min in real time, {rounds} rounds of three broker kills:")
        print(f"  readings stored {stored} of the {expected} the devices gave until the last one stored")
        procs["recorder"].send_signal(signal.SIGTERM)
        procs["recorder"].wait(timeout=30)
        return 0 if stored == expected else 1


if __name__ == "__main__":
    sys.exit(main())
