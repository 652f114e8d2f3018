"""Benchmark: one workload, side by side, on Mosquitto and on a local 3-node RabbitMQ cluster.

The workload: ``--theatres`` simulated sessions played at full speed at once (each its own
gateway process, publishing MQTT), stored by the recorder with leakage computed. Measured:
readings per second from the first publication until every reading is stored and every
leakage point is written, and that nothing was lost, in three set-ups, in turn, ``--repeats``
times (medians reported):

1. Mosquitto (the default transport): one recorder, one leakage.
2. The cluster (AMQP consumers, gateways spread over the nodes): one recorder, one leakage.
3. The cluster: two recorders (competing on the catch-all queue), two leakage instances
   (each taking half of the partitions).

Usage:  .venv/bin/python scripts/bench_cluster.py [--theatres 4] [--repeats 3] [--partitions 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from isoperf.queries import count
from isoperf.tools.cluster import LocalCluster
from isoperf.tools.stack import LocalStack, spawn_service

READINGS_PER_SESSION = 3960 * 5
COUNTS_PER_SESSION = 3960
START_T = 1_767_225_600.0
GATEWAY_TIMEOUT_S = 900  # a session at full speed takes well under a minute; one that cannot connect, never


def _spawn(env: dict[str, str], name: str, log: Path) -> subprocess.Popen[bytes]:
    return spawn_service(name, {"ISOPERF_LOG_LEVEL": "WARNING", **env}, log)


def _wait_log(log: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{log.name}: {text!r} not seen within {timeout} s")


def wait_stored(stack: LocalStack, prefix: str, n: int, timeout: float = 1200.0) -> float:
    expected = n * READINGS_PER_SESSION
    deadline = time.monotonic() + timeout
    readings = leak = 0
    while time.monotonic() < deadline:
        readings = count(stack, f"SELECT count(value) FROM reading WHERE theatre =~ /^{prefix}-/")
        leak = count(stack, f"SELECT count(state) FROM leakage WHERE theatre =~ /^{prefix}-/")
        if readings >= expected and leak >= n * COUNTS_PER_SESSION:
            return time.monotonic()
        time.sleep(0.1)
    raise RuntimeError(f"{prefix}: not all stored within {timeout} s: {readings}/{expected} readings, {leak} leakage")


def run_once(
    stack: LocalStack,
    logs: Path,
    prefix: str,
    n: int,
    consumers: list[tuple[str, dict[str, str]]],
    gateway_env: Callable[[int], dict[str, str]],
    ready: str,
) -> tuple[float, int]:
    """Start the consumers, play ``n`` sessions at full speed; readings/s and how many were stored."""
    procs = []
    try:
        for i, (name, env) in enumerate(consumers):
            log = logs / f"{prefix}-{name}-{i}.log"
            procs.append(_spawn({**stack.env(), **env, "ISOPERF_INSTANCE": f"{prefix}-{i}"}, name, log))
            if ready:
                _wait_log(log, ready)
            elif not stack.wait_status(name, f"{prefix}-{i}"):
                raise RuntimeError(f"{name} did not come online")
        time.sleep(3.0)  # every instance subscribed (and, on the cluster, standing by)
        t0 = time.monotonic()
        gateways = [
            _spawn(
                {
                    **stack.env(),
                    **gateway_env(i),
                    "ISOPERF_THEATRE": f"{prefix}-{i}",
                    "ISOPERF_SESSION": f"{prefix}-{i}",
                    "ISOPERF_SIM_SPEED": "0",
                    "ISOPERF_SIM_SEED": str(i),
                    "ISOPERF_SIM_START_T": str(START_T),
                    "ISOPERF_INSTANCE": f"{prefix}-gw{i}",
                    "ISOPERF_JOURNAL_DIR": str(logs / "journal"),
                },
                "acquisition",
                logs / f"{prefix}-acq{i}.log",
            )
            for i in range(n)
        ]
        procs.extend(gateways)  # stopped with the consumers if the run fails
        for g in gateways:
            try:
                g.wait(timeout=GATEWAY_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{prefix}: a gateway ran over {GATEWAY_TIMEOUT_S} s (see its log)") from None
        t1 = wait_stored(stack, prefix, n)
        stored = count(stack, f"SELECT count(value) FROM reading WHERE theatre =~ /^{prefix}-/")
        return n * READINGS_PER_SESSION / (t1 - t0), stored
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--theatres", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=8)
    args = ap.parse_args()
    n = args.theatres
    results: dict[str, list[float]] = {"mosquitto": [], "cluster, 1 instance": [], "cluster, 2 instances": []}
    lost: dict[str, int] = dict.fromkeys(results, 0)
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        with LocalStack(logs / "stack") as stack, LocalCluster(logs / "cluster") as cluster:
            amqp = {**cluster.env(), "ISOPERF_PARTITIONS": str(args.partitions), "ISOPERF_LOG_LEVEL": "INFO"}

            def on_node(i: int) -> dict[str, str]:
                """A gateway's MQTT on node ``i``, in the protocol version the cluster's plugin speaks."""
                node = cluster.nodes[i % len(cluster.nodes)]
                protocol = cluster.env()["ISOPERF_MQTT_PROTOCOL"]
                return {"ISOPERF_MQTT_PORT": str(node.mqtt_port), "ISOPERF_MQTT_PROTOCOL": protocol}

            for r in range(args.repeats):
                prefixes = {name: f"r{r}{'mqa'[k]}" for k, name in enumerate(results)}
                theatres = logs / f"theatres-{r}.txt"
                theatres.write_text("".join(f"{p}-{i}\n" for p in prefixes.values() for i in range(n)))
                subprocess.run(
                    [sys.executable, "-m", "isoperf.tools.cli", "topology", "declare", "--theatres", str(theatres)],
                    env={**os.environ, **amqp},
                    check=True,
                    capture_output=True,
                )
                setups: dict[str, tuple[list[tuple[str, dict[str, str]]], Callable[[int], dict[str, str]], str]] = {
                    "mosquitto": ([("recorder", {}), ("leakage", {})], lambda i: {}, ""),
                    "cluster, 1 instance": ([("recorder", amqp), ("leakage", amqp)], on_node, "consuming"),
                    "cluster, 2 instances": (
                        [
                            ("recorder", amqp),
                            ("recorder", amqp),
                            ("leakage", {**amqp, "ISOPERF_PARTITION_SHARE": "0/2"}),
                            ("leakage", {**amqp, "ISOPERF_PARTITION_SHARE": "1/2"}),
                        ],
                        on_node,
                        "consuming",
                    ),
                }
                for name, (consumers, gateway_env, ready) in setups.items():
                    rate, stored = run_once(stack, logs, prefixes[name], n, consumers, gateway_env, ready)
                    results[name].append(rate)
                    lost[name] += n * READINGS_PER_SESSION - stored
                    print(f"run {r + 1}, {name}: {rate:,.0f} readings/s, {stored} stored", flush=True)

    print(f"\nisoperf transports side by side ({os.cpu_count()} cores): {n} sessions x {READINGS_PER_SESSION} readings")
    print("at full speed, publication to storage with leakage computed; medians of", args.repeats)
    for name, rates in results.items():
        print(
            f"  {name:22s} {statistics.median(rates):8,.0f} readings/s  "
            f"(runs: {', '.join(f'{x:,.0f}' for x in rates)}; lost: {lost[name]})"
        )


if __name__ == "__main__":
    main()
