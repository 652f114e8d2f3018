"""The ``isoperf`` command: run a service, the local stack, or a whole simulated session."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

SERVICES = {
    "acquisition": "services.acquisition.__main__",
    "recorder": "services.recorder.__main__",
    "leakage": "services.leakage.__main__",
    "alerts": "services.alerts.__main__",
    "pk": "services.pk.__main__",
}


def _stack(args: argparse.Namespace) -> int:
    from isoperf.stack import LocalStack, StackError

    try:
        stack = LocalStack(Path(args.dir), mqtt_port=args.mqtt_port, influx_port=args.influx_port).start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Mosquitto  mqtt://{stack.host}:{stack.mqtt_port}")
    print(f"InfluxDB   {stack.influx_url}  (database {stack.database})")
    print(f"Data in    {stack.directory}")
    print("Point the services at it with:")
    for k, v in stack.env().items():
        print(f"  export {k}={v}")
    print("Ctrl-C stops both.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reanalyse"]:  # its own parser, options and all
        from services.leakage.reanalysis import main as reanalyse

        return reanalyse(argv[1:])
    if argv[:1] and argv[0] in ("sessions", "summary", "export", "report"):
        from isoperf.review_cli import main as review

        return review(argv[0], argv[1:])
    if argv[:1] == ["health"]:
        from isoperf.health import main as health

        return health(argv[1:])
    if argv[:1] == ["boards"]:
        from isoperf.boards import main as boards

        return boards(argv[1:])
    if argv[:1] in (["sample"], ["import-samples"]):
        from services.pk.commands import import_main, sample_main

        return (sample_main if argv[0] == "sample" else import_main)(argv[1:])
    if argv[:1] in (["ack"], ["silence"]):
        from services.alerts.commands import ack_main, silence_main

        return (ack_main if argv[0] == "ack" else silence_main)(argv[1:])
    parser = argparse.ArgumentParser(prog="isoperf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} service (configured by ISOPERF_* variables)")
    st = sub.add_parser("stack", help="run Mosquitto and InfluxDB locally until Ctrl-C")
    st.add_argument("--dir", default=".isoperf/stack", help="state directory (default: %(default)s)")
    st.add_argument("--mqtt-port", type=int, default=1883)
    st.add_argument("--influx-port", type=int, default=8086)
    sub.add_parser("reanalyse", help="recompute leakage for a stored session as a separate series (see --help)")
    sub.add_parser("sessions", help="list the stored sessions")
    sub.add_parser("summary", help="one stored session's figures (see --help)")
    sub.add_parser("export", help="export a stored session to CSV or Parquet (see --help)")
    sub.add_parser("report", help="a stored session's report, HTML and PDF (see --help)")
    sub.add_parser("health", help="exit 0 if a service's MQTT status is online (container health checks)")
    sub.add_parser("boards", help="write the Grafana boards, or install them into a Grafana (see --help)")
    sub.add_parser("sample", help="send one lab result (see --help)")
    sub.add_parser("import-samples", help="send a laboratory's CSV of results, all or nothing (see --help)")
    sub.add_parser("ack", help="acknowledge a firing alert, or list them (see --help)")
    sub.add_parser("silence", help="silence a session's alerts, or one rule, for a while (see --help)")
    demo = sub.add_parser("demo", help="run a whole simulated IHHP session through the real stack")
    demo.add_argument("--dir", default=".isoperf/demo", help="where the demo keeps its data (default: %(default)s)")
    demo.add_argument("--speed", type=float, default=60.0, help="simulation speed factor (default: %(default)s)")
    demo.add_argument("--leak", choices=["none", "steady", "step"], default="step")
    demo.add_argument("--isotope", choices=["Tc-99m", "I-131", "In-111"], default="Tc-99m")
    demo.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    if args.command in SERVICES:
        importlib.import_module(SERVICES[args.command]).main()
        return 0
    if args.command == "stack":
        return _stack(args)
    from isoperf.demo import run_demo

    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
