"""Ingest benchmark, side by side in one run (issue 13).

``reference``: the reference workload of the Node-RED peer (``../shared/peers/nodered``: one JSON
reading per QoS 1 message, 20 theatres x 3 signals, the same Mosquitto with its defaults, the same
InfluxDB and publisher). First the Node-RED flow, then isoperf in its place: ``--recorders``
recorder processes sharing one subscription and the leakage service; for each offered rate, what
was stored and lost; the highest rate with nothing lost for each, and their ratio; the CPU of
isoperf's processes per stored message.

``batched``: the contract's batches (``--batch`` samples a message) of ``--theatres`` simulated
sessions (every signal; events and metadata first) published as fast as the broker takes them
through a raw-socket publisher, on the local stack with the production broker settings, to
``--recorders`` recorders sharing a subscription and ``--leakage`` leakage services partitioned by
theatre; readings/s from the first publication until every reading is stored and every leakage
point written; nothing may be lost. ``--repeat`` runs; the median is printed.

``estimator``: the leakage estimator's CPU per count, its filter step in scalars and in numpy's
2 x 2 matrices, alternated in one run.

``client``: the floor the MQTT client library sets: a bare aiomqtt subscriber (MQTT 5, the
services' Receive Maximum, acknowledging each message as it arrives, nothing else) taking the
reference workload's messages from the local broker as fast as they come; its CPU per message and
messages/s, ``--repeat`` runs, medians. No isoperf service can take messages faster than this.

``memory``: ``--theatres`` sessions of ``--hours`` each, played together at ``--speed`` times real
time through the recorder, leakage, alerts and pk services; the RSS of each over the sessions.

Usage:  .venv/bin/python scripts/bench_ingest.py reference [--rates 4000,8000,...] [--recorders 2]
        .venv/bin/python scripts/bench_ingest.py batched [--theatres 20] [--recorders 2] [--leakage 2]
        .venv/bin/python scripts/bench_ingest.py estimator
        .venv/bin/python scripts/bench_ingest.py client [--messages 200000] [--repeat 3]
        .venv/bin/python scripts/bench_ingest.py memory [--theatres 50] [--hours 4] [--speed 30]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

import services.leakage.estimator as estimator_module
from isoperf.codec import encode
from isoperf.partition import partition_of
from isoperf.queries import count
from isoperf.schemas import Reading, ReadingBatch
from isoperf.settings import ServiceSettings
from isoperf.sources.mqtt import MqttSource
from isoperf.sources.mqtt_ack import ManualAck
from isoperf.tools.stack import LocalStack, spawn_service
from services.acquisition.simulator import SimConfig, SimulatedSession, simulate
from services.leakage import filters
from services.leakage.estimator import LeakageEstimator

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spawn(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return spawn_service(name, {"ISOPERF_LOG_LEVEL": "WARNING", **env}, log, cwd=ROOT)


def isoperf_services(env: dict[str, str], logs: Path, recorders: int, leakage: int) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(recorders):
        extra = {"ISOPERF_INSTANCE": f"bench-recorder-{i}"}
        if recorders > 1:
            extra["ISOPERF_SHARE_GROUP"] = "bench-recorders"
        procs.append(spawn("recorder", {**env, **extra}, logs / f"recorder-{i}.log"))
    for i in range(leakage):
        extra = {"ISOPERF_INSTANCE": f"bench-leakage-{i}"}
        if leakage > 1:
            extra |= {"ISOPERF_PARTITIONS": str(leakage), "ISOPERF_PARTITION_SHARE": f"{i}/{leakage}"}
        procs.append(spawn("leakage", {**env, **extra}, logs / f"leakage-{i}.log"))
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=60)


def wait_online(host: str, port: int, services: list[str], timeout: float = 120.0) -> None:
    """Until every ``service/instance`` has published its retained ``online`` (it is subscribed then)."""
    online: set[str] = set()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-wait-{os.getpid()}")

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        if m.payload == b"online":
            online.add(m.topic.removeprefix("perfusion/status/"))

    client.on_message = on_message
    client.connect(host, port)
    client.subscribe("perfusion/status/#")
    client.loop_start()
    deadline = time.monotonic() + timeout
    try:
        while not set(services) <= online:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not online within {timeout:.0f} s: {sorted(set(services) - online)}")
            time.sleep(0.1)
    finally:
        client.loop_stop()
        client.disconnect()


# -- reference workload: the Node-RED peer's benchmark, then isoperf on the same servers ----------


def reference(args: argparse.Namespace) -> None:
    peer = Path(args.peer).resolve()
    run = Path(os.environ.get("RUN", "/tmp/nodered-peer"))  # noqa: S108  (the peer scripts' default)
    if not (run / "settings.js").exists():
        subprocess.run([peer / "setup.sh"], check=True)
    subprocess.run([peer / "stop.sh"], check=True, capture_output=True)
    subprocess.run([peer / "stop.sh"], check=True, capture_output=True, env={**os.environ, "CLEAN": "1"})
    subprocess.run([peer / "run.sh"], check=True)
    out = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    bench = [sys.executable, str(peer / "bench.py"), "--rates", args.rates, "--duration", str(args.duration)]
    try:
        print("\n== the Node-RED flow ==", flush=True)
        subprocess.run([*bench, "--out", str(out / "nodered.json")], check=True)
        os.kill(int((run / "nodered.pid").read_text()), signal.SIGTERM)
        time.sleep(2)
        env = {
            "ISOPERF_MQTT_PORT": "28830",
            "ISOPERF_INFLUX_URL": "http://127.0.0.1:28086",
            "ISOPERF_DEADLETTER_DIR": str(out / "deadletter"),
        }
        procs = isoperf_services(env, out, args.recorders, 1)
        (run / "nodered.pid").write_text(str(procs[0].pid))  # the peer's benchmark measures this one
        wait_online(
            "127.0.0.1",
            28830,
            [f"recorder/bench-recorder-{i}" for i in range(args.recorders)] + ["leakage/bench-leakage-0"],
        )
        cpu0 = sum(cpu_s(p.pid) for p in procs)
        print(f"\n== isoperf: {args.recorders} recorder(s) sharing a subscription, and the leakage service ==")
        subprocess.run([*bench, "--out", str(out / "isoperf.json")], check=True)
        cpu = sum(cpu_s(p.pid) for p in procs) - cpu0
        rss = [rss_mb(p.pid) for p in procs]
        stop(procs)
    finally:
        subprocess.run([peer / "stop.sh"], check=False, capture_output=True)
    results = {name: json.loads((out / f"{name}.json").read_text()) for name in ("nodered", "isoperf")}
    best = {}
    for name, r in results.items():
        clean = [run["rate"] for run in r["runs"] if run["lost"] == 0]
        best[name] = max(clean) if clean else 0
    stored = sum(run["stored"] for run in results["isoperf"]["runs"]) + 5  # and the 5 latency probes
    print(f"\nisoperf ingest benchmark, reference workload ({os.cpu_count()} cores), rates {args.rates}")
    for name in ("nodered", "isoperf"):
        lat = results[name]["idle_latency_s"]["median"] * 1000
        print(f"  {name:<8} highest rate with nothing lost: {best[name]:>6} msg/s; idle latency median {lat:.0f} ms")
    ratio = best["isoperf"] / best["nodered"] if best["nodered"] else float("nan")
    print(f"  ratio isoperf / Node-RED: {ratio:.2f}")
    print(
        f"  isoperf CPU: {cpu:.1f} s for {stored} stored messages ({cpu / stored * 1e6:.0f} us a message,"
        f" every process: recorders and leakage); RSS {', '.join(f'{m:.0f}' for m in rss)} MB"
    )
    print(f"  results: {out}")


# -- batched readings ------------------------------------------------------------------------------


class RawPublisher:
    """MQTT 3.1.1 QoS 1 publishes on a plain socket (the client library's per-message cost would
    starve the system under test); at most ``window`` unacknowledged."""

    def __init__(self, host: str, port: int, client_id: str, window: int = 2000) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(_packet(0x10, _str(b"MQTT") + b"\x04\x02\x00\x00" + _str(client_id.encode())))
        if self.sock.recv(4) != b"\x20\x02\x00\x00":
            raise RuntimeError("the broker refused the publisher")
        self.sent = self.acked = self.mid = 0
        self.window = window
        threading.Thread(target=self._count_acks, daemon=True).start()

    def _count_acks(self) -> None:
        pending = 0
        while data := self.sock.recv(65536):
            pending += len(data)
            self.acked += pending // 4
            pending %= 4

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        for i in range(0, len(messages), 200):
            while self.sent - self.acked > self.window:
                time.sleep(0.0005)
            out = bytearray()
            for topic, payload in messages[i : i + 200]:
                self.mid = self.mid % 65535 + 1
                out += _packet(0x32, _str(topic.encode()) + self.mid.to_bytes(2, "big") + payload)
                self.sent += 1
            self.sock.sendall(out)

    def wait_acked(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < self.sent and time.monotonic() < deadline:
            time.sleep(0.01)


def _packet(first: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


def _str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def session_messages(theatre: str, session: str, seed: int, batch: int) -> tuple[list[tuple[str, bytes]], int, int]:
    """A whole simulated session as the gateway would publish it: metadata, events, readings in
    batches of ``batch`` samples; and how many readings, and counts, it holds."""
    sim = simulate(SimConfig(start_t=1_767_225_600.0), seed=seed)
    base = f"perfusion/{theatre}/{session}"
    out = [(f"{base}/meta", encode(sim.meta))]
    out += [(f"{base}/event", encode(e)) for e in sim.events]
    n = 0
    for sig, samples in sim.readings.items():
        dt = sim.config.counts_dt_s if sig == "counts" else sim.config.vitals_dt_s
        for i in range(0, len(samples), batch):
            chunk = samples[i : i + batch]
            body = (
                ReadingBatch(samples=chunk, dt=dt) if len(chunk) > 1 else Reading(t=chunk[0][0], v=chunk[0][1], dt=dt)
            )
            out.append((f"{base}/raw/{sig}", encode(body)))
            n += len(chunk)
    return out, n, len(sim.readings["counts"])


def interleave(sessions: list[list[tuple[str, bytes]]]) -> list[tuple[str, bytes]]:
    """Metadata and events of every session first, then their readings round robin."""
    head = [m for s in sessions for m in s if "/raw/" not in m[0]]
    tails = [[m for m in s if "/raw/" in m[0]] for s in sessions]
    return head + [m for group in itertools.zip_longest(*tails) for m in group if m is not None]


def batched_once(args: argparse.Namespace, run: int) -> dict[str, Any]:
    theatres = [f"bench-{i}" for i in range(args.theatres)]
    prepared = [session_messages(t, f"run{run}", i, args.batch) for i, t in enumerate(theatres)]
    messages = interleave([m for m, _, _ in prepared])
    total, counts = sum(n for _, n, _ in prepared), sum(c for _, _, c in prepared)
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp) / "stack") as stack:
        logs = Path(tmp)
        listed = logs / "theatres.txt"
        listed.write_text("\n".join(theatres) + "\n")
        env = {**stack.env(), "ISOPERF_DEADLETTER_DIR": str(logs / "deadletter"), "ISOPERF_THEATRES_FILE": str(listed)}
        procs = isoperf_services(env, logs, args.recorders, args.leakage)
        for i in range(args.recorders):
            assert stack.wait_status("recorder", f"bench-recorder-{i}", timeout_s=60)
        for i in range(args.leakage):
            assert stack.wait_status("leakage", f"bench-leakage-{i}", timeout_s=60)
        cpu0 = [cpu_s(p.pid) for p in procs]
        pub = RawPublisher(stack.host, stack.mqtt_port, f"bench-pub-{run}")
        t0 = time.monotonic()
        pub.publish(messages)
        pub.wait_acked()
        t_pub = time.monotonic()
        deadline = t_pub + 600
        stored = leak = 0
        while time.monotonic() < deadline:
            stored = count(stack, f"SELECT count(value) FROM reading WHERE session = 'run{run}'")
            leak = count(stack, f"SELECT count(state) FROM leakage WHERE session = 'run{run}'")
            if stored >= total and leak >= counts:
                break
            time.sleep(0.05)
        t1 = time.monotonic()
        cpu = [cpu_s(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        rss = [rss_mb(p.pid) for p in procs]
        stop(procs)
    names = [f"recorder-{i}" for i in range(args.recorders)] + [f"leakage-{i}" for i in range(args.leakage)]
    return {
        "readings": total,
        "stored": stored,
        "leakage_points": leak,
        "expected_leakage_points": counts,
        "messages": len(messages),
        "seconds": t1 - t0,
        "publish_seconds": t_pub - t0,
        "rate": stored / (t1 - t0),
        "cpu_s": dict(zip(names, cpu, strict=True)),
        "rss_mb": dict(zip(names, rss, strict=True)),
        "split": {t: partition_of(t, args.leakage) for t in theatres},
    }


def batched(args: argparse.Namespace) -> None:
    runs = [batched_once(args, i) for i in range(args.repeat)]
    print(
        f"\nisoperf ingest benchmark, batched readings ({os.cpu_count()} cores): {args.theatres} sessions,"
        f" {args.batch} samples a message, {args.recorders} recorder(s), {args.leakage} leakage service(s)"
    )
    for r in runs:
        lost = r["readings"] - r["stored"]
        cpu = ", ".join(f"{k} {v:.1f} s" for k, v in r["cpu_s"].items())
        rss = ", ".join(f"{k} {v:.0f}" for k, v in r["rss_mb"].items())
        print(
            f"  {r['stored']:,} of {r['readings']:,} readings stored ({lost} lost), {r['leakage_points']:,} of"
            f" {r['expected_leakage_points']:,} leakage points, in {r['seconds']:.1f} s: {r['rate']:,.0f} readings/s;"
            f" CPU {cpu} ({sum(r['cpu_s'].values()) / r['stored'] * 1e6:.1f} us a reading); RSS MB {rss}"
        )
    print(f"  median {statistics.median(r['rate'] for r in runs):,.0f} readings/s stored, leakage computed")


# -- memory: every consumer over long sessions of many theatres ------------------------------------

MEMORY_SERVICES = ("recorder", "leakage", "alerts", "pk")


def long_session(seed: int, hours: float) -> SimulatedSession:
    """A session of ``hours`` from its start to its end: an hour of perfusion, the rest observation."""
    base = SimConfig(start_t=1_767_225_600.0, perfusion_s=3600.0)
    default_end = simulate(replace(base, observation_s=0.0), seed=seed).events[-1].t - base.start_t
    return simulate(replace(base, observation_s=max(0.0, hours * 3600.0 - default_end)), seed=seed)


def window_messages(theatre: str, s: SimulatedSession, t0: float, t1: float) -> list[tuple[str, bytes]]:
    """What a gateway publishes of one session for ``t0 < t <= t1``: its events and lab results (by
    when they are reported), then one batch per signal."""
    base = f"perfusion/{theatre}/{theatre}"
    out = [(f"{base}/event", encode(e)) for e in s.events if t0 < e.t <= t1]
    out += [(f"{base}/sample", encode(x)) for arrived, x in s.samples if t0 < arrived <= t1]
    for sig, samples in s.readings.items():
        chunk = [(t, v) for t, v in samples if t0 < t <= t1]
        if chunk:
            out.append((f"{base}/raw/{sig}", encode(ReadingBatch(samples=chunk))))
    return out


def memory(args: argparse.Namespace) -> None:
    """``--theatres`` sessions of ``--hours`` each, played together at ``--speed`` times real time
    (one window of ``speed`` simulated seconds of every session each second) through the recorder,
    leakage, alerts and pk services; the RSS of each sampled every ``--sample-s``."""
    theatres = [f"mem-{i}" for i in range(args.theatres)]
    print(f"simulating {len(theatres)} sessions of {args.hours:g} h ...", flush=True)
    sessions = {t: long_session(i, args.hours) for i, t in enumerate(theatres)}
    start = min(s.meta.t for s in sessions.values())
    end = max(s.events[-1].t for s in sessions.values()) + 1.0
    total = sum(len(v) for s in sessions.values() for v in s.readings.values())
    counts = sum(len(s.readings["counts"]) for s in sessions.values())
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in MEMORY_SERVICES}
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp) / "stack") as stack:
        logs = Path(tmp)
        env = {
            **stack.env(),
            "ISOPERF_DEADLETTER_DIR": str(logs / "deadletter"),
            "ISOPERF_ALERTS_STATE_FILE": str(logs / "alerts-state.json"),
        }
        procs = {
            name: spawn(name, {**env, "ISOPERF_INSTANCE": f"mem-{name}"}, logs / f"{name}.log")
            for name in MEMORY_SERVICES
        }
        for name in MEMORY_SERVICES:
            assert stack.wait_status(name, f"mem-{name}", timeout_s=60), name
        pub = RawPublisher(stack.host, stack.mqtt_port, "bench-memory")
        pub.publish([(f"perfusion/{t}/{t}/meta", encode(s.meta)) for t, s in sessions.items()])
        began = time.monotonic()
        next_sample = began
        t = start - 1.0
        while t < end:
            tick = time.monotonic()
            pub.publish([m for th, s in sessions.items() for m in window_messages(th, s, t, t + args.speed)])
            t += args.speed
            if tick >= next_sample:
                for name, proc in procs.items():
                    samples[name].append((t - start, rss_mb(proc.pid)))
                next_sample += args.sample_s
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        pub.wait_acked()
        played = time.monotonic() - began
        # Until every reading and leakage point is stored and the pk estimates and alerts stop
        # coming (the services have handled everything), sampling as before.
        deadline = time.monotonic() + 1800
        stored = leak = pk = alerts = 0
        last: tuple[int, ...] = ()
        steady_since = time.monotonic()
        while time.monotonic() < deadline:
            stored = count(stack, "SELECT count(value) FROM reading")
            leak = count(stack, "SELECT count(state) FROM leakage")
            pk = count(stack, "SELECT count(v_ml) FROM pk")
            alerts = count(stack, "SELECT count(status) FROM alert")
            now = time.monotonic()
            if (stored, leak, pk, alerts) != last:
                last, steady_since = (stored, leak, pk, alerts), now
            if stored >= total and leak >= counts and now - steady_since >= 15.0:
                break
            if now >= next_sample:
                for name, proc in procs.items():
                    samples[name].append((end - start, rss_mb(proc.pid)))
                next_sample += args.sample_s
            time.sleep(1.0)
        caught_up = steady_since - began - played
        for name, proc in procs.items():
            samples[name].append((end - start, rss_mb(proc.pid)))
        stop(list(procs.values()))
    print(
        f"\nisoperf memory over {args.hours:g} h sessions of {len(theatres)} theatres ({os.cpu_count()} cores),"
        f" played at x{args.speed:g} in {played:.0f} s (the services done {caught_up:.0f} s after the last"
        f" publication): {stored:,} of {total:,} readings stored, {leak:,} of {counts:,} leakage points,"
        f" {pk:,} pk estimates, {alerts:,} alert messages stored"
    )
    print("  RSS in MB at 0, 1/4, 1/2, 3/4 of the sessions and the end; peak:")
    for name, series in samples.items():
        rss = [v for _, v in series]
        marks = [rss[min(len(rss) - 1, round(q * (len(rss) - 1)))] for q in (0, 0.25, 0.5, 0.75, 1.0)]
        print(f"  {name:9} {' '.join(f'{m:6.0f}' for m in marks)}   peak {max(rss):.0f}")


# -- the leakage estimator per count: the filter in scalars against numpy's 2 x 2 matrices -------------


def estimator(args: argparse.Namespace) -> None:
    sim = simulate(SimConfig(), seed=1)
    dt = sim.config.counts_dt_s

    def per_count() -> float:
        est = LeakageEstimator()
        est.set_isotope(sim.meta.isotope)
        for e in sim.events:
            est.add_event(e.type, e.t, getattr(e, "activity_mbq", None))
        t0 = time.perf_counter()
        for t, v in sim.readings["counts"]:
            est.add_counts(t, v, dt)
            est.update()
        return (time.perf_counter() - t0) / len(sim.readings["counts"]) * 1e6

    timings: dict[str, list[float]] = {"scalar": [], "numpy": []}
    for _ in range(args.repeat):  # alternated, so both see the same machine
        for name, step in (("scalar", filters.kalman_step), ("numpy", filters.kalman_step_matrix)):
            setattr(estimator_module, "kalman_step", step)  # noqa: B010  (the estimator's own name for it)
            timings[name].append(per_count())
    setattr(estimator_module, "kalman_step", filters.kalman_step)  # noqa: B010
    s, n = statistics.median(timings["scalar"]), statistics.median(timings["numpy"])
    print(
        f"\nleakage estimator, one simulated session ({len(sim.readings['counts'])} counts), medians of {args.repeat}:"
    )
    print(f"  filter in scalars {s:.0f} us a count; with numpy 2 x 2 matrices {n:.0f} us; ratio {n / s:.1f}")


# -- the client library's floor --------------------------------------------------------------------


async def _bare_subscriber(port: int, n: int) -> None:
    """Take ``n`` messages with aiomqtt as the services connect (MQTT 5, persistent session, their
    Receive Maximum, manual acknowledgement) and acknowledge each at once; print CPU and time."""
    settings = ServiceSettings(mqtt_host="127.0.0.1", mqtt_port=port)
    options = MqttSource(settings, "bench-bare", None)._session_options()
    client = aiomqtt.Client("127.0.0.1", port, identifier="bench-bare", **options, max_inflight_messages=100)
    acks = ManualAck(client)
    async with client:
        await client.subscribe("perfusion/+/+/raw/#", qos=1)
        print("subscribed", flush=True)
        got, t0, c0 = 0, 0.0, 0.0
        async for message in client.messages:
            if got == 0:
                t0, c0 = time.monotonic(), time.process_time()
            acks.ack(message.mid, message.qos)
            got += 1
            if got == n:
                break
        print(json.dumps({"s": time.monotonic() - t0, "cpu": time.process_time() - c0, "n": got - 1}), flush=True)


def reference_messages(n: int) -> list[tuple[str, bytes]]:
    """The peer benchmark's messages: one JSON reading each, round robin over 20 theatres x 3 signals."""
    signals = ("counts", "flow", "pressure")
    return [
        (
            f"perfusion/th{i % 60 // 3:02d}/bench/raw/{signals[i % 3]}",
            json.dumps({"t": round(i / 60, 4), "v": i % 500, "dt": 1.0}).encode(),
        )
        for i in range(n)
    ]


def client(args: argparse.Namespace) -> None:
    messages = reference_messages(args.messages)
    runs = []
    for run in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp) / "stack") as stack:
            sub = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "client-subscriber",
                    "--port",
                    str(stack.mqtt_port),
                    "--n",
                    str(len(messages)),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            assert sub.stdout is not None
            assert sub.stdout.readline().strip() == "subscribed"
            pub = RawPublisher(stack.host, stack.mqtt_port, f"bench-pub-{run}", window=20000)
            pub.publish(messages)
            result = json.loads(sub.stdout.readline())
            sub.wait(timeout=60)
        runs.append(result)
        us = result["cpu"] / result["n"] * 1e6
        print(
            f"  run {run + 1}: {result['n'] / result['s']:,.0f} msg/s, {us:.1f} us of CPU a message"
            f" ({result['cpu'] / result['s']:.0%} of a core)",
            flush=True,
        )
    rate = statistics.median(r["n"] / r["s"] for r in runs)
    us = statistics.median(r["cpu"] / r["n"] * 1e6 for r in runs)
    print(f"\nbare aiomqtt subscriber, {len(messages):,} reference messages, medians of {args.repeat}:")
    print(f"  {rate:,.0f} msg/s taken and acknowledged; {us:.1f} us of CPU a message")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    ref = sub.add_parser("reference", help="the Node-RED peer's workload, side by side")
    ref.add_argument("--rates", default="4000,8000,12000,16000,20000,24000,30000")
    ref.add_argument("--duration", type=float, default=10.0)
    ref.add_argument("--recorders", type=int, default=2)
    ref.add_argument("--peer", default=str(ROOT.parent / "shared" / "peers" / "nodered"))
    bat = sub.add_parser("batched", help="the contract's batches through recorder and leakage")
    bat.add_argument("--theatres", type=int, default=20)
    bat.add_argument("--batch", type=int, default=100)
    bat.add_argument("--recorders", type=int, default=2)
    bat.add_argument("--leakage", type=int, default=2)
    bat.add_argument("--repeat", type=int, default=3)
    est = sub.add_parser("estimator", help="the leakage estimator's cost per count, scalar against numpy")
    est.add_argument("--repeat", type=int, default=5)
    mem = sub.add_parser("memory", help="every consumer's memory over long sessions of many theatres")
    mem.add_argument("--theatres", type=int, default=50)
    mem.add_argument("--hours", type=float, default=4.0)
    mem.add_argument("--speed", type=float, default=30.0, help="simulated seconds published each second")
    mem.add_argument("--sample-s", type=float, default=5.0)
    cli = sub.add_parser("client", help="the floor of the MQTT client library: a bare subscriber")
    cli.add_argument("--messages", type=int, default=200000)
    cli.add_argument("--repeat", type=int, default=3)
    child = sub.add_parser("client-subscriber", help=argparse.SUPPRESS)
    child.add_argument("--port", type=int, required=True)
    child.add_argument("--n", type=int, required=True)
    args = ap.parse_args()
    if args.mode == "client-subscriber":
        asyncio.run(_bare_subscriber(args.port, args.n))
        return
    {"client": client, "reference": reference, "batched": batched, "estimator": estimator, "memory": memory}[args.mode](
        args
    )


if __name__ == "__main__":
    main()
