"""Benchmark: alert latency on the MQTT topic under the load of many theatres.

The recorder, leakage and alerts services run on the local stack, each its own
process. ``--theatres`` simulated sessions play in real time (about 5
readings/s each, every message through broker, recorder, leakage and alerts)
from one load generator. Meanwhile a calibrated probe session repeatedly receives one counts
reading high enough to lift the leakage interval's lower bound over 1 %; the
time from publishing that reading to the ``new`` alert on the MQTT topic is
measured (median, p99), then ordinary readings bring the estimate back down
until the alert resolves, and the next round starts.

Usage:  .venv/bin/python scripts/bench_alerts.py [--theatres 50] [--rounds 60]
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
from typing import Any

import aiomqtt

from isoperf.codec import decode, encode
from isoperf.schemas import Reading, ReadingBatch
from isoperf.tools.stack import LocalStack, spawn_service
from services.acquisition.simulator import LeakScenario, SimConfig, SimulatedSession, simulate

START_T = 1_767_225_600.0
FAST_FORWARD_S = 1300.0  # past calibration and the zero point of the default timeline
WARM_UP_S = 15.0


def _spawn(stack: LocalStack, name: str, logs: Path) -> subprocess.Popen[bytes]:
    env = {
        **stack.env(),
        "ISOPERF_INSTANCE": "bench",
        "ISOPERF_LOG_LEVEL": "WARNING",
        "ISOPERF_ALERTS_STATE_FILE": str(logs / "alerts-state.json"),
    }
    return spawn_service(name, env, logs / f"{name}.log")


async def publish_window(client: aiomqtt.Client, name: str, s: SimulatedSession, t0: float, t1: float) -> None:
    """Publish everything of a session with t0 < t <= t1: events, then one batch per signal."""
    base = f"perfusion/{name}/{name}"
    for e in s.events:
        if t0 < e.t <= t1:
            await client.publish(f"{base}/event", encode(e), qos=1)
    for signal, samples in s.readings.items():
        chunk = [(t, v) for t, v in samples if t0 < t <= t1]
        if chunk:
            await client.publish(f"{base}/raw/{signal}", encode(ReadingBatch(samples=chunk)), qos=1)


async def load(client: aiomqtt.Client, sessions: dict[str, SimulatedSession], stop: asyncio.Event) -> None:
    for name, s in sessions.items():
        await client.publish(f"perfusion/{name}/{name}/meta", encode(s.meta), qos=1, retain=True)
    t = START_T - 1.0
    while not stop.is_set():  # real time: one second of every session each second
        began = time.monotonic()
        for name, s in sessions.items():
            await publish_window(client, name, s, t, t + 1.0)
        t += 1.0
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - began)))


def _payload(message: aiomqtt.Message) -> dict[str, Any]:
    return decode(message.payload if isinstance(message.payload, bytes) else b"")


def _latest(leakage: dict[str, Any]) -> dict[str, Any]:
    """A leakage point, or the last point of a series."""
    points = leakage.get("points")
    return points[-1] if isinstance(points, list) else leakage


async def probe(client: aiomqtt.Client, rounds: int) -> list[float]:
    name = "probe"
    s = simulate(SimConfig(start_t=START_T, leak=LeakScenario(release_pct=0.0), perfusion_s=36000.0), 99)
    base = f"perfusion/{name}/{name}"
    await client.subscribe(f"{base}/alert", qos=1)
    await client.subscribe(f"{base}/leakage/#", qos=1)  # a point alone, or a batch's points in a series
    await client.publish(f"{base}/meta", encode(s.meta), qos=1, retain=True)
    await publish_window(client, name, s, START_T - 1, START_T + FAST_FORWARD_S)
    counts = iter(s.readings["counts"][int(FAST_FORWARD_S) :])
    messages = aiter(client.messages)
    # The fast-forward is a backlog of 1,300 leakage points: let it clear before measuring.
    while not (backlog := await anext(messages)).topic.matches(f"{base}/leakage/#") or (
        float(_latest(_payload(backlog))["t"]) < START_T + FAST_FORWARD_S - 1
    ):
        pass
    await client.unsubscribe(f"{base}/leakage/#")
    latencies: list[float] = []
    for _ in range(rounds):
        for _ in range(5):  # ordinary readings between rounds
            t, v = next(counts)
            await client.publish(f"{base}/raw/counts", encode(Reading(t=t, v=v)), qos=1)
        t, _ = next(counts)
        sent = time.perf_counter()
        await client.publish(f"{base}/raw/counts", encode(Reading(t=t, v=6000.0)), qos=1)
        while True:  # the "new" alert for this round
            got = _payload(await anext(messages))
            if got.get("rule") == "leakage" and got.get("kind") == "new":
                latencies.append(time.perf_counter() - sent)
                break
        resolved = False
        while not resolved:  # back to normal until the alert resolves
            for _ in range(10):
                t, v = next(counts)
                await client.publish(f"{base}/raw/counts", encode(Reading(t=t, v=v)), qos=1)
            try:
                while True:
                    msg = await asyncio.wait_for(anext(messages), timeout=0.3)
                    got = _payload(msg)
                    if got.get("rule") == "leakage" and got.get("status") == "resolved":
                        resolved = True
            except TimeoutError:
                pass
    return latencies


async def run(stack: LocalStack, theatres: int, rounds: int) -> list[float]:
    sessions = {f"load-{i}": simulate(SimConfig(start_t=START_T, perfusion_s=36000.0), i) for i in range(theatres)}
    stop = asyncio.Event()
    async with (
        aiomqtt.Client(stack.host, stack.mqtt_port, identifier="bench-load") as load_client,
        aiomqtt.Client(stack.host, stack.mqtt_port, identifier="bench-probe") as probe_client,
    ):
        loader = asyncio.create_task(load(load_client, sessions, stop))
        # Warm-up: every load session has started (its first message makes the leakage service look it
        # up in storage), so rounds measure the steady state, not 50 sessions starting at once.
        await asyncio.sleep(WARM_UP_S)
        try:
            return await probe(probe_client, rounds)
        finally:
            stop.set()
            await loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--theatres", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp) / "stack") as stack:
        procs = [_spawn(stack, name, Path(tmp)) for name in ("recorder", "leakage", "alerts")]
        try:
            for name in ("recorder", "leakage", "alerts"):
                assert stack.wait_status(name, "bench"), f"{name} did not come online"
            lat = asyncio.run(run(stack, args.theatres, args.rounds))
        finally:
            for p in procs:
                p.terminate()
                p.wait()
    slow = [f"#{i + 1}: {x * 1000:.0f} ms" for i, x in enumerate(lat) if x > 0.1]
    lat.sort()
    print(f"\nisoperf alert latency ({os.cpu_count()} cores), {args.theatres} theatres playing in real time")
    print(f"  reading that lifts the lower bound over 1 % -> 'new' alert on MQTT, {len(lat)} rounds:")
    print(
        f"  median {statistics.median(lat) * 1000:.1f} ms,"
        f" p99 {lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000:.1f} ms,"
        f" max {lat[-1] * 1000:.1f} ms"
    )
    print(f"  rounds over 100 ms: {', '.join(slow) or 'none'}")


if __name__ == "__main__":
    main()
