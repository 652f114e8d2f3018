"""``isoperf devices test``: commission a device from its profile (``devices/commission.py``)."""

from __future__ import annotations

import argparse

from services.acquisition.devices import commission


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    devices = commands.add_parser("devices", help="theatre equipment: commission a device from its profile")
    sub = devices.add_subparsers(dest="what", required=True)
    test = sub.add_parser("test", help=commission.DESCRIPTION, description=commission.DESCRIPTION)
    commission.add_arguments(test)
    test.set_defaults(run=commission.run)
