"""``isoperf demo``: a whole simulated IHHP session through the real local stack.

Starts Mosquitto and InfluxDB, the recorder and leakage services and the
acquisition simulator, each as its own process; prints the session as it goes
(events, and leakage once a simulated minute); stops everything cleanly and
prints a summary read back from InfluxDB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt

from isoperf.codec import decode
from isoperf.queries import count, leakage_caught_up, session_where
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


def _describe(leak: dict[str, object]) -> str:
    state = str(leak.get("state"))
    pct = leak.get("percent")
    if not isinstance(pct, float):
        return {"background": "measuring background", "calibrating": "waiting for the calibration plateau"}.get(
            state, "calibrated; the zero point is set 1-2 min after the circuit dose"
        )
    return (
        f"leakage {pct:5.2f} %  (95% CI {leak['ci_low']:5.2f} to {leak['ci_high']:5.2f})"
        f"  trend {leak['rate_pct_min']:+.2f} %/min  [{state}]"
    )


def _describe_pk(pk: dict[str, object]) -> str:
    text = (
        f"MELPHALAN circuit {pk['circuit_ug_ml']:.1f} ug/mL predicted"
        f" (95% PI {pk['circuit_low_ug_ml']:.1f} to {pk['circuit_high_ug_ml']:.1f}, samples: {pk['n_circuit']})"
    )
    if pk.get("systemic_ug_ml") is not None:
        text += f"; in the body from the leak {pk['systemic_ug_ml']:.3f} ug/mL ({pk['leaked_mg']:.2f} mg)"
    return text


async def _watch(stack: LocalStack, theatre: str, session: str, done: asyncio.Event) -> None:
    """Print events as they happen and the leakage once per simulated minute."""
    topics = Topics()
    t0: float | None = None
    time_now = 0.0
    next_minute = next_pk = 0.0
    async with aiomqtt.Client(stack.host, stack.mqtt_port, identifier=f"isoperf-demo-watch-{os.getpid()}") as client:
        await client.subscribe(topics.session(theatre, session, "event"), qos=1)
        await client.subscribe(topics.session(theatre, session, "leakage"), qos=1)
        await client.subscribe(topics.session(theatre, session, "alert"), qos=1)
        await client.subscribe(topics.session(theatre, session, "sample"), qos=1)
        await client.subscribe(topics.session(theatre, session, "pk"), qos=1)
        messages = aiter(client.messages)
        while not done.is_set():
            try:
                message = await asyncio.wait_for(anext(messages), timeout=0.5)
            except TimeoutError:
                continue
            data = decode(message.payload if isinstance(message.payload, bytes) else b"")
            t = float(data["t"])
            t0 = t if t0 is None else t0
            if not message.topic.value.endswith("/sample"):  # a lab result is stamped with its draw time
                time_now = max(time_now, t)
            if message.topic.value.endswith("/alert"):
                if data["status"] == "resolved":
                    what = "RESOLVED"
                else:
                    what = f"ALERT {str(data['severity']).upper()} ({data.get('kind', 'firing')})"
                print(f"  {_clock(t, t0)}  {what}: {data['message']}", flush=True)
            elif message.topic.value.endswith("/sample"):
                drawn = _clock(t, t0).strip()
                conc = float(data["melphalan_ug_ml"])
                print(
                    f"  {_clock(time_now, t0)}  LAB {data['site']} melphalan {conc:.3g} ug/mL (drawn at {drawn})",
                    flush=True,
                )
                continue
            elif message.topic.value.endswith("/pk"):
                circuit = data.get("circuit_ug_ml")
                if isinstance(circuit, float) and circuit > 0 and t - t0 >= next_pk:
                    next_pk = (t - t0) // 300 * 300 + 300
                    print(f"  {_clock(t, t0)}  {_describe_pk(data)}", flush=True)
                continue
            elif message.topic.value.endswith("/event"):
                print(f"  {_clock(t, t0)}  EVENT {Event.model_validate(data).label()}", flush=True)
            elif t - t0 >= next_minute:
                next_minute = (t - t0) // 60 * 60 + 60
                print(f"  {_clock(t, t0)}  {_describe(data)}", flush=True)


def _summary(stack: LocalStack, theatre: str, session: str, wall_s: float) -> None:
    w = session_where(theatre, session)
    events = {r["type"]: r["time"] for r in stack.rows(f"SELECT label, type FROM event WHERE {w}")}
    isolation_end = events.get("isolation_end", 2**62)
    during = stack.rows(f"SELECT max(percent), ci_low, ci_high FROM leakage WHERE {w} AND time < {isolation_end}ms")
    overall = stack.rows(f"SELECT max(percent), ci_low, ci_high FROM leakage WHERE {w}")
    alarms = stack.rows(f"SELECT severity, message FROM alert WHERE {w} AND kind='new'")
    print("\nSummary")
    print(f"  session              {theatre}/{session}")
    if "session_start" in events and "session_end" in events:
        minutes = (events["session_end"] - events["session_start"]) / 60000
        print(f"  simulated duration   {minutes:.0f} min, played in {wall_s:.0f} s")
    print(f"  readings stored      {count(stack, f'SELECT count(value) FROM reading WHERE {w}')}")
    for label, r in (("peak leakage, isolation", during), ("peak leakage, session  ", overall)):
        if r and r[0]["max"] is not None:
            print(f"  {label}   {r[0]['max']:.2f} % (95% CI {r[0]['ci_low']:.2f} to {r[0]['ci_high']:.2f})")
    print(f"  alarms raised        {len(alarms)}" + "".join(f"\n    {a['severity']}: {a['message']}" for a in alarms))
    pk = stack.rows(f"SELECT * FROM pk WHERE {w} ORDER BY time DESC LIMIT 1")
    if pk:
        p = pk[0]
        print(
            f"  melphalan, circuit   peak {p['cmax_circuit']:.1f} ug/mL at {p['tmax_circuit_min']:.0f} min,"
            f" AUC {p['auc_circuit']:.0f} ug*min/mL (linear-up/log-down; linear {p['auc_circuit_linear']:.0f})"
        )
        print(f"  melphalan, systemic  peak {p['cmax_systemic']:.3f} ug/mL, AUC {p['auc_systemic']:.2f} ug*min/mL")
        if p.get("release_peak_ug_ml") is not None:
            print(
                f"  after the release    predicted peak {p['release_peak_ug_ml']:.2f} ug/mL"
                f" (95% PI {p['release_peak_low_ug_ml']:.2f} to {p['release_peak_high_ug_ml']:.2f},"
                f" refitted to {p['n_release']:.0f} samples); lab peak {p.get('cmax_systemic_release') or 0:.2f} ug/mL"
                " (IHHP series median 4.2)"
            )
        print(f"  regional/systemic    AUC ratio {p['auc_ratio']:.0f}, peak ratio {p['peak_ratio']:.0f}")
        print(
            f"  circuit model        V {p['v_ml']:.0f} +- {p['v_se_ml']:.0f} mL,"
            f" uptake {p['k_uptake_min']:.4f} +- {p['k_uptake_se_min']:.4f} /min (refitted to {p['n_circuit']} samples)"
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


def _wait_pk(stack: LocalStack, theatre: str, session: str, timeout_s: float = 30.0) -> bool:
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
            watcher = asyncio.create_task(_watch(stack, theatre, session, done))
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
            await asyncio.to_thread(_wait_pk, stack, theatre, session)
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
