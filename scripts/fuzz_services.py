"""Hostile input against the running services: the full run whose figures are in the README.

Starts Mosquitto and InfluxDB (the local stack, in a temporary directory) and the recorder,
leakage, alerts and pk services, each its own process; draws ``--per-kind`` payloads for every
topic they subscribe to with hypothesis (``tests/hostile.py``: wrong types in every field,
non-finite numbers, times out of range, deep nesting, enormous batches, garbage, odd unicode and
oversized ids in the topic; valid readings mixed in), publishes them all, then counts: valid
readings stored, bad messages kept aside with a reason by every service that takes them,
services alive and answering, tracebacks in their logs.

    .venv/bin/python scripts/fuzz_services.py                 # 13 topics x 800 = 10,400 payloads
    .venv/bin/python scripts/fuzz_services.py --per-kind 100  # a quick one
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.hostile

from isoperf.queries import count, session_where
from isoperf.tools.stack import LocalStack, spawn_service
from tests.hostile import KINDS, Figures, Planned, draw_probes, figures, plan, publish

SERVICES = ("recorder", "leakage", "alerts", "pk")


def _spawn(stack: LocalStack, name: str, directory: Path) -> subprocess.Popen[bytes]:
    env = {
        **stack.env(),
        "ISOPERF_INSTANCE": f"fuzz-{name}",
        "ISOPERF_DEADLETTER_DIR": str(directory / "deadletter"),
        "ISOPERF_ALERTS_STATE_FILE": str(directory / "alerts-state.json"),
    }
    return spawn_service(name, env, directory / f"{name}.log")


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def run(per_kind: int, seed: int, timeout_s: float, keep: Path | None) -> int:
    theatre, session = "fuzz-theatre", f"fuzz-{seed}"
    with tempfile.TemporaryDirectory(prefix="isoperf-fuzz-") as tmp, LocalStack(Path(keep or tmp) / "stack") as stack:
        directory = Path(keep or tmp)
        procs = {name: _spawn(stack, name, directory) for name in SERVICES}
        for name in SERVICES:
            if not stack.wait_status(name, f"fuzz-{name}", timeout_s=60):
                print(f"{name} did not come online", file=sys.stderr)
                return 1
        t0 = time.monotonic()
        planned: list[Planned] = plan(draw_probes(per_kind, seed), theatre, session)
        t_drawn = time.monotonic()
        published = asyncio.run(publish(stack.host, stack.mqtt_port, planned, f"fuzz-publisher-{os.getpid()}"))
        t_published = time.monotonic()
        w = session_where(theatre, session)

        def stored() -> int:
            return count(stack, f"SELECT count(value) FROM reading WHERE {w}")

        valid = sum(m.probe.n_readings for m in planned if not m.probe.bad)
        _wait(lambda: stored() >= valid, timeout_s)
        _wait(lambda: figures(planned, valid, directory / "deadletter").all_kept, timeout_s)
        t_done = time.monotonic()
        f: Figures = figures(planned, stored(), directory / "deadletter")
        alive = [name for name, p in procs.items() if p.poll() is None]
        online = [name for name in SERVICES if stack.wait_status(name, f"fuzz-{name}", timeout_s=5)]
        for p in procs.values():
            p.terminate()
        codes = {name: p.wait(timeout=60) for name, p in procs.items()}
        logs = {n: (directory / f"{n}.log").read_text(errors="replace") for n in SERVICES}
        tracebacks = [n for n in SERVICES if "Traceback (most recent call last)" in logs[n]]
        for n in tracebacks:
            at = logs[n].index("Traceback (most recent call last)")
            print(f"--- {n}:\n{logs[n][max(0, at - 300) : at + 1500]}", file=sys.stderr)
        sizes = sorted(len(m.payload) for m in planned)
        by_how = collections.Counter(m.probe.how.split(" ")[0] if m.probe.how.startswith("wrong") else m.probe.how
                                     for m in planned)  # fmt: skip

    print(f"payloads published: {published:,} on {len(KINDS)} kinds of topic ({per_kind} each, seed {seed})")
    print(f"  largest {sizes[-1]:,} bytes; by construction: " + ", ".join(f"{k} {v}" for k, v in by_how.most_common()))
    print(f"valid messages: {f.valid_messages:,} carrying {f.valid_readings:,} readings; stored: {f.stored_readings:,}")
    print(f"bad messages (distinct): {f.bad_messages:,}")
    for service, (want, found) in f.aside.items():
        print(f"  {service:9s} had to keep aside {want:,}; kept with a reason: {found:,}")
    print(f"services alive: {len(alive)} of {len(SERVICES)}; online: {len(online)}; exit codes {codes}")
    print(f"tracebacks in service logs: {tracebacks or 'none'}")
    print(
        f"time: drawing {t_drawn - t0:.0f} s, publishing {t_published - t_drawn:.0f} s, "
        f"until everything was stored or kept aside {t_done - t_published:.0f} s"
    )
    ok = (
        f.stored_readings == f.valid_readings
        and f.all_kept
        and len(alive) == len(online) == len(SERVICES)
        and not tracebacks
        and set(codes.values()) == {0}
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-kind", type=int, default=800, help="payloads per kind of topic (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the services (default: 900)")
    ap.add_argument("--keep", type=Path, help="run in this directory and keep the logs and dead letters")
    args = ap.parse_args()
    return run(args.per_kind, args.seed, args.timeout, args.keep)


if __name__ == "__main__":
    sys.exit(main())
