"""The ``isoperf`` command: one tree, in which every command registers itself.

A module that offers commands has ``register(commands)``, which adds its
subparsers and sets ``run`` (a function of the parsed arguments returning the
exit code). Registration is cheap: heavy imports wait until a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

SERVICES = ("acquisition", "recorder", "leakage", "alerts", "pk")
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def registers() -> tuple[Register, ...]:
    """Every command module's ``register``, in the order of ``isoperf --help``. Imported here, not
    at the top: a service process started as ``isoperf recorder`` never needs them."""
    from isoperf.tools import (
        boards,
        brokerconf,
        cluster,
        demo,
        devcerts,
        health,
        replay,
        review_cli,
        stack,
        topology,
    )
    from services.acquisition import commands as acquisition_commands
    from services.alerts import commands as alerts_commands
    from services.leakage import commands as leakage_commands
    from services.pk import commands as pk_commands

    return (
        stack.register,
        demo.register,
        replay.register,
        acquisition_commands.register,
        leakage_commands.register,
        pk_commands.register,
        alerts_commands.register,
        review_cli.register,
        boards.register,
        health.register,
        brokerconf.register,
        devcerts.register,
        cluster.register,
        topology.register,
    )


def _run_service(args: argparse.Namespace) -> int:
    importlib.import_module(f"services.{args.command}.__main__").main()
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="isoperf", description="Real-time data acquisition for isolated perfusion.")
    commands = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SERVICES:
        service = commands.add_parser(name, help=f"run the {name} service (configured by ISOPERF_* variables)")
        service.set_defaults(run=_run_service)
    for register in registers():
        register(commands)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0] in SERVICES:
        # A service imports what it runs, not every command's modules (the recorder would carry
        # the simulator's and pk's scientific libraries: about 60 MB more, a second more to start).
        return _run_service(argparse.Namespace(command=argv[0]))
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
