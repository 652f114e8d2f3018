"""``isoperf demo``: a whole simulated IHHP session through the real local stack.

Starts Mosquitto and InfluxDB, the recorder and leakage services and the
acquisition simulator, each as its own process; prints the session as it goes
(events, and leakage once a simulated minute); stops everything cleanly and
prints a summary read back from InfluxDB.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from isoperf.codec import decode
from isoperf.queries import DURING_ISOLATION, count, leakage_caught_up, session_where
from isoperf.schemas import Event
from isoperf.tools.stack import LocalStack, StackError
from isoperf.topics import Topics

CONSUMERS = ("recorder", "leakage", "alerts", "pk")


def _spawn(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "isoperf.tools.cli", name], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    return proc


def _clock(t: float, t0: float) -> str:
    m, s = divmod(round(t - t0), 60)
    return f"{m:3d}:{s:02d}"


STATE_WORDS = {
    "background": "measuring the background",
    "calibrating": "calibration dose in: waiting for the calibration plateau",
    "calibrated": "calibrated; the zero point is set 1-2 min after the circuit dose",
    "monitoring": "monitoring the leakage",
    "washout": "washout: monitoring the leakage",
    "released": "clamps off: the tracer left in the liver reaches the body (expected, not a leak)",
    "ended": "session ended",
}
HOLD_S = 30.0  # lines are held this long in event time (at least), then printed in event-time order
HOLD_WALL_S = 2.0  # ... and at least as long as this in wall time at the simulation's speed


def _describe(leak: dict[str, object]) -> str:
    pct = leak.get("percent")
    if not isinstance(pct, float):
        return str(leak.get("probe_fault") or STATE_WORDS.get(str(leak.get("state")), leak.get("state")))
    what = "after release" if leak.get("state") == "released" else "leakage"
    return (
        f"{what:13} {pct:5.2f} %  (95% CI {leak['ci_low']:5.2f} to {leak['ci_high']:5.2f})"
        f"  trend {leak['rate_pct_min']:+.2f} %/min  [{leak.get('state')}]"
    )


def _describe_pk(pk: dict[str, object]) -> str:
    text = (
        f"MELPHALAN circuit {pk['circuit_ug_ml']:.1f} ug/mL predicted"
        f" (95% PI {pk['circuit_low_ug_ml']:.1f} to {pk['circuit_high_ug_ml']:.1f}, samples: {pk['n_circuit']})"
    )
    if pk.get("systemic_ug_ml") is not None:
        text += f"; in the body from the leak {pk['systemic_ug_ml']:.3f} ug/mL ({pk['leaked_mg']:.2f} mg)"
    return text


@dataclass
class Printer:
    """Lines of the session in event-time order: each is held ``hold_s`` of event time, since the
    services answer at their own pace (an alert comes after the leakage point it follows), then
    printed sorted; a lab result or a pk estimate is printed when it comes, naming the time it
    is for. Each leakage state change is printed once."""

    t0: float | None = None
    now: float = -math.inf
    state: str | None = None
    next_minute: float = 0.0
    next_pk: float = 0.0
    held: list[tuple[float, int, str]] = field(default_factory=list)
    out: Callable[[str], None] = print
    hold_s: float = HOLD_S

    def add(self, t: float, text: str) -> None:
        assert self.t0 is not None
        heapq.heappush(self.held, (t, len(self.held), f"  {_clock(t, self.t0)}  {text}"))

    def flush(self, until: float = math.inf) -> None:
        while self.held and self.held[0][0] <= until:
            self.out(heapq.heappop(self.held)[2])

    def message(self, kind: str, data: dict[str, object]) -> None:
        t = float(data["t"])  # type: ignore[arg-type]
        self.t0 = t if self.t0 is None else self.t0  # the first message: the session start
        if kind != "sample":  # a lab result is stamped with its draw time, and reported later
            self.now = max(self.now, t)
        if kind == "alert":
            if data["status"] == "resolved":
                what = "RESOLVED"
            else:
                what = f"ALERT {str(data['severity']).upper()} ({data.get('kind', 'firing')})"
            self.add(t, f"{what}: {data['message']}")
        elif kind == "sample":
            drawn = _clock(t, self.t0).strip()
            conc = float(data["melphalan_ug_ml"])  # type: ignore[arg-type]
            self.add(self.now, f"LAB {data['site']} melphalan {conc:.3g} ug/mL (drawn at {drawn})")
        elif kind == "pk":
            circuit = data.get("circuit_ug_ml")
            if isinstance(circuit, float) and circuit > 0 and t - self.t0 >= self.next_pk:
                self.next_pk = (t - self.t0) // 300 * 300 + 300
                # The pk service may lag the session by minutes (it refits as samples come):
                # printed when it comes, with the time it is for.
                self.add(max(t, self.now), f"{_describe_pk(data)} (at {_clock(t, self.t0).strip()})")
        elif kind == "event":
            self.add(t, f"EVENT {Event.model_validate(data).label()}")
        elif kind == "leakage":
            state = str(data.get("state"))
            if state != self.state:
                self.state = state
                self.add(t, f"STATE {state}: {STATE_WORDS.get(state, state)}")
            if isinstance(data.get("percent"), float) and t - self.t0 >= self.next_minute:
                self.next_minute = (t - self.t0) // 60 * 60 + 60
                self.add(t, _describe(data))
        self.flush(self.now - self.hold_s)


async def _watch(stack: LocalStack, theatre: str, session: str, done: asyncio.Event, speed: float) -> None:
    """Print events as they happen and the leakage once per simulated minute, in event-time order."""
    topics = Topics()
    printer = Printer(out=lambda line: print(line, flush=True), hold_s=max(HOLD_S, HOLD_WALL_S * speed))
    async with aiomqtt.Client(stack.host, stack.mqtt_port, identifier=f"isoperf-demo-watch-{os.getpid()}") as client:
        for kind in ("event", "leakage", "leakage/series", "alert", "sample", "pk"):
            await client.subscribe(topics.session(theatre, session, kind), qos=1)
        messages = aiter(client.messages)
        while not done.is_set():
            try:
                message = await asyncio.wait_for(anext(messages), timeout=0.5)
            except TimeoutError:
                continue
            data = decode(message.payload if isinstance(message.payload, bytes) else b"")
            kind = message.topic.value.rsplit("/", 1)[-1]
            for point in data["points"] if kind == "series" else [data]:  # points of a batch of counts
                printer.message("leakage" if kind == "series" else kind, point)
    printer.flush()


def _summary(stack: LocalStack, theatre: str, session: str, wall_s: float) -> None:
    w = session_where(theatre, session)
    events = {r["type"]: r["time"] for r in stack.rows(f"SELECT label, type FROM event WHERE {w}")}
    during = stack.rows(f"SELECT max(percent), ci_low, ci_high FROM leakage WHERE {w} AND {DURING_ISOLATION}")
    released = stack.rows(f"SELECT max(percent), ci_low, ci_high FROM leakage WHERE {w} AND state = 'released'")
    alarms = stack.rows(f"SELECT severity, message FROM alert WHERE {w} AND kind='new'")
    print("\nSummary")
    print(f"  session              {theatre}/{session}")
    if "session_start" in events and "session_end" in events:
        minutes = (events["session_end"] - events["session_start"]) / 60000
        print(f"  simulated duration   {minutes:.0f} min, played in {wall_s:.0f} s")
    print(f"  readings stored      {count(stack, f'SELECT count(value) FROM reading WHERE {w}')}")
    for label, r in (("peak leakage, isolation", during), ("after release (not a leak)", released)):
        if r and r[0]["max"] is not None:
            print(f"  {label:26} {r[0]['max']:.2f} % (95% CI {r[0]['ci_low']:.2f} to {r[0]['ci_high']:.2f})")
    print(f"  alarms raised        {len(alarms)}" + "".join(f"\n    {a['severity']}: {a['message']}" for a in alarms))
    pk = stack.rows(f"SELECT * FROM pk WHERE {w} ORDER BY time DESC LIMIT 1")
    if pk:
        p = pk[0]

        def f(key: str, spec: str) -> str:
            value = p.get(key)
            return format(value, spec) if isinstance(value, int | float) else "n/a"

        print(
            f"  melphalan, circuit   peak {f('cmax_circuit', '.1f')} ug/mL at {f('tmax_circuit_min', '.0f')} min,"
            f" AUC {f('auc_circuit', '.0f')} ug*min/mL (linear-up/log-down; linear {f('auc_circuit_linear', '.0f')})"
        )
        print(
            f"  melphalan, systemic  peak {f('cmax_systemic', '.3f')} ug/mL, AUC {f('auc_systemic', '.2f')} ug*min/mL"
        )
        if p.get("release_peak_ug_ml") is not None:
            print(
                f"  after the release    predicted peak {f('release_peak_ug_ml', '.2f')} ug/mL"
                f" (95% PI {f('release_peak_low_ug_ml', '.2f')} to {f('release_peak_high_ug_ml', '.2f')},"
                f" refitted to {f('n_release', '.0f')} samples); lab peak {f('cmax_systemic_release', '.2f')} ug/mL"
                " (IHHP series median 4.2)"
            )
        print(f"  regional/systemic    AUC ratio {f('auc_ratio', '.0f')}, peak ratio {f('peak_ratio', '.0f')}")
        print(
            f"  circuit model        V {f('v_ml', '.0f')} +- {f('v_se_ml', '.0f')} mL,"
            f" uptake {f('k_uptake_min', '.4f')} +- {f('k_uptake_se_min', '.4f')} /min"
            f" (refitted to {p.get('n_circuit')} samples)"
        )
    print(f"  data                 InfluxDB database '{stack.database}' in {stack.directory / 'influxdb'}")
    print(f"  logs                 {stack.directory / 'logs'}")
    print("\nTo look at it again:")
    print(f"  {_isoperf_command()} stack --dir {stack.directory} --influx-port 8086     # in one terminal, then:")
    print(f"  {_isoperf_command()} summary {theatre} {session}")
    print(f"  {_isoperf_command()} report {theatre} {session} --pdf          # HTML and PDF report")
    print(
        "  influx -port 8086 -database perfusion -precision rfc3339 -execute "
        f'"SELECT percent, ci_low, ci_high, state FROM leakage WHERE {w}"'
    )


def _isoperf_command() -> str:
    """How to call ``isoperf`` from here: it lives beside this Python, usually in .venv/bin."""
    script = Path(sys.executable).with_name("isoperf")
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _wait_caught_up(stack: LocalStack, theatre: str, session: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if leakage_caught_up(stack, theatre, session):
            return True
        time.sleep(0.5)
    return False


def _wait_pk(stack: LocalStack, theatre: str, session: str, timeout_s: float = 120.0) -> bool:
    """Until the last PK estimate counts every stored lab result."""
    w = session_where(theatre, session)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stored = count(stack, f"SELECT count(melphalan_ug_ml) FROM sample WHERE {w}")
        last = stack.rows(f"SELECT n_circuit, n_systemic FROM pk WHERE {w} ORDER BY time DESC LIMIT 1")
        if stored and last and (last[0]["n_circuit"] or 0) + (last[0]["n_systemic"] or 0) == stored:
            return True
        time.sleep(0.5)
    return False


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser("demo", help="run a whole simulated IHHP session through the real stack")
    demo.add_argument("--dir", default=".isoperf/demo", help="where the demo keeps its data (default: %(default)s)")
    demo.add_argument("--speed", type=float, default=60.0, help="simulation speed factor (default: %(default)s)")
    demo.add_argument("--leak", choices=["none", "steady", "step"], default="step")
    demo.add_argument("--isotope", choices=["Tc-99m", "I-131", "In-111"], default="Tc-99m")
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    theatre = "theatre-1"
    session = time.strftime("demo-%Y%m%d-%H%M%S", time.gmtime())
    print("isoperf demo: a simulated isolated hepatic perfusion (IHHP)")
    print(f"  leak scenario {args.leak}, tracer {args.isotope}, speed x{args.speed:g}\n")
    try:
        stack = LocalStack(directory).start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Mosquitto on 127.0.0.1:{stack.mqtt_port}, InfluxDB on {stack.influx_url}, data in {directory}")
    env = {
        **os.environ,
        **stack.env(),
        "ISOPERF_INSTANCE": "demo",
        "ISOPERF_LOG_LEVEL": "INFO",
        "ISOPERF_ALERTS_STATE_FILE": str(directory / "alerts-state.json"),
    }
    procs = {name: _spawn(name, env, logs) for name in CONSUMERS}
    started = time.monotonic()
    try:
        sim_env = {
            **env,
            "ISOPERF_THEATRE": theatre,
            "ISOPERF_SESSION": session,
            "ISOPERF_SIM_SPEED": str(args.speed),
            "ISOPERF_SIM_LEAK": args.leak,
            "ISOPERF_SIM_ISOTOPE": args.isotope,
            "ISOPERF_SIM_SEED": str(args.seed),
            "ISOPERF_SIM_TRUTH_FILE": str(directory / "truth" / f"{session}.jsonl"),
        }
        done = asyncio.Event()

        async def main() -> int:
            watcher = asyncio.create_task(_watch(stack, theatre, session, done, args.speed))
            await asyncio.sleep(0.5)  # let the watcher subscribe
            acq = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "isoperf.tools.cli",
                "acquisition",
                env=sim_env,
                stdout=(logs / "acquisition.log").open("ab"),
                stderr=subprocess.STDOUT,
            )
            code = await acq.wait()
            await asyncio.to_thread(_wait_caught_up, stack, theatre, session)
            if not await asyncio.to_thread(_wait_pk, stack, theatre, session):
                print("  (the pk service has not caught up with every lab result yet)", flush=True)
            await asyncio.sleep(0.5)
            done.set()
            await watcher
            return code

        code = asyncio.run(main())
        if code != 0:
            print(f"acquisition exited with {code}; see {logs / 'acquisition.log'}", file=sys.stderr)
            return 1
        wall = time.monotonic() - started
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            if proc.wait(timeout=30) != 0:
                print(f"{name} exited with {proc.returncode}; see {logs / (name + '.log')}", file=sys.stderr)
    try:
        _summary(stack, theatre, session, wall)
    finally:
        stack.stop()
    return 0
