"""Benchmark: readings through acquisition, broker, recorder, leakage and storage on the local stack.

Reports, in one run on one machine:

1. Sustained throughput: ``--theatres`` simulated sessions played at full speed
   at once (each its own acquisition process), readings per second from the
   first publication until every reading is stored and every leakage point is
   written; checks that nothing was lost.
2. Latency from a reading's publication to its leakage point on the bus:
   single counts readings published one by one into a calibrated session,
   median and p99, on an idle stack and again under a sustained load
   (``--theatres`` sessions at ``--load-speed`` times real time).

Usage:  .venv/bin/python scripts/bench_pipeline.py [--theatres 4] [--probes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiomqtt

from isoperf.codec import decode, encode
from isoperf.queries import count
from isoperf.schemas import Reading
from isoperf.tools.stack import LocalStack, spawn_service

READINGS_PER_SESSION = 3960 * 5


def _env(stack: LocalStack, **extra: str) -> dict[str, str]:
    return {**stack.env(), "ISOPERF_LOG_LEVEL": "WARNING", **extra}


def _spawn(stack: LocalStack, name: str, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    return spawn_service(name, _env(stack, **extra), log)


def play_sessions(
    stack: LocalStack, logs: Path, prefix: str, n: int, start_t: float, speed: float = 0.0
) -> list[subprocess.Popen[bytes]]:
    return [
        _spawn(
            stack,
            "acquisition",
            logs / f"acq-{prefix}{i}.log",
            ISOPERF_THEATRE=f"{prefix}{i}",
            ISOPERF_SESSION=f"{prefix}{i}",
            ISOPERF_SIM_SPEED=str(speed),
            ISOPERF_SIM_SEED=str(i),
            ISOPERF_SIM_START_T=str(start_t),
            ISOPERF_INSTANCE=f"{prefix}{i}",
        )
        for i in range(n)
    ]


def wait_stored(stack: LocalStack, prefix: str, n: int, timeout: float = 600.0) -> float:
    """Wait until every reading of the sessions is stored and leakage has caught up; return when."""
    expected = n * READINGS_PER_SESSION
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readings = count(stack, f"SELECT count(value) FROM reading WHERE theatre =~ /^{prefix}/")
        leak = count(stack, f"SELECT count(state) FROM leakage WHERE theatre =~ /^{prefix}/")
        if readings >= expected and leak >= n * 3960:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"not all stored within {timeout} s: {readings}/{expected} readings, {leak} leakage points")


async def probe_latency(
    stack: LocalStack, theatre: str, session: str, t_start: float, n: int, hz: float
) -> list[float]:
    """Publish ``n`` single counts readings; time each until its leakage point arrives."""
    sent: dict[int, float] = {}
    latencies: list[float] = []
    base = f"perfusion/{theatre}/{session}"
    async with aiomqtt.Client(stack.host, stack.mqtt_port, identifier=f"bench-probe-{os.getpid()}-{theatre}") as client:
        await client.subscribe(f"{base}/leakage", qos=1)

        async def receive() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                t_ms = round(float(decode(payload)["t"]) * 1000)
                if t_ms in sent:
                    latencies.append(time.perf_counter() - sent.pop(t_ms))
                    if len(latencies) == n:
                        return

        receiver = asyncio.create_task(receive())
        for i in range(n):
            t = t_start + i + 1.0
            sent[round(t * 1000)] = time.perf_counter()
            await client.publish(f"{base}/raw/counts", encode(Reading(t=t, v=345.0)), qos=1)
            await asyncio.sleep(1.0 / hz)
        await asyncio.wait_for(receiver, timeout=60)
    return latencies


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--theatres", type=int, default=4, help="sessions played at once for the throughput load")
    ap.add_argument("--probes", type=int, default=300, help="readings timed for latency, per phase")
    ap.add_argument("--probe-hz", type=float, default=20.0)
    ap.add_argument(
        "--load-speed", type=float, default=10.0, help="speed of the sessions played during the loaded latency phase"
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp) / "stack") as stack:
        logs = Path(tmp)
        procs = [
            _spawn(stack, name, logs / f"{name}.log", ISOPERF_INSTANCE="bench") for name in ("recorder", "leakage")
        ]
        for name in ("recorder", "leakage"):
            assert stack.wait_status(name, "bench"), f"{name} did not come online"
        try:
            start_t = 1_767_225_600.0
            # A calibrated session for the latency probe.
            for p in play_sessions(stack, logs, "probe", 1, start_t):
                p.wait()
            wait_stored(stack, "probe", 1)
            end_t = start_t + 3960.0

            idle = asyncio.run(probe_latency(stack, "probe0", "probe0", end_t, args.probes, args.probe_hz))

            # Latency under a sustained load the stack keeps up with: sessions at a
            # speed factor, i.e. theatres x speed sessions' worth of real-time data.
            busy = play_sessions(stack, logs, "busy", args.theatres, start_t, speed=args.load_speed)
            time.sleep(3.0)  # past start-up, into steady publishing
            loaded = asyncio.run(
                probe_latency(stack, "probe0", "probe0", end_t + args.probes + 10, args.probes, args.probe_hz)
            )
            for p in busy:
                p.terminate()
                p.wait()

            # Throughput: sessions at full speed, until everything is stored.
            t0 = time.monotonic()
            for p in play_sessions(stack, logs, "load", args.theatres, start_t):
                p.wait()
            t1 = wait_stored(stack, "load", args.theatres)
            stored = count(stack, "SELECT count(value) FROM reading WHERE theatre =~ /^load/")
        finally:
            for p in procs:
                p.terminate()
                p.wait()

    total = args.theatres * READINGS_PER_SESSION
    print(f"\nisoperf pipeline benchmark ({os.cpu_count()} cores)")
    print(f"  throughput: {args.theatres} sessions x {READINGS_PER_SESSION} readings at full speed")
    print(f"    {total} readings published, {stored} stored ({total - stored} lost), in {t1 - t0:.1f} s")
    print(f"    sustained {total / (t1 - t0):,.0f} readings/s (publication to storage, leakage included)")
    rate = args.theatres * args.load_speed * 5
    for label, lat in (
        ("idle", idle),
        (f"while {args.theatres} sessions play at x{args.load_speed:g} ({rate:g} readings/s)", loaded),
    ):
        print(f"  latency reading -> leakage point, {label} ({len(lat)} readings at {args.probe_hz:g}/s):")
        print(f"    median {statistics.median(lat) * 1000:.1f} ms, p99 {_pct(lat, 0.99) * 1000:.1f} ms")
    print(f"  latency ratio loaded/idle (median): {statistics.median(loaded) / statistics.median(idle):.2f}")


if __name__ == "__main__":
    main()
