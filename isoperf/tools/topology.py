"""``isoperf topology``: declare the RabbitMQ cluster's exchanges, queues and bindings (idempotent),
and enrol a new theatre.

The theatres come from the same list that generates the broker's users and ACL
(``deploy/theatres.txt``, read by ``isoperf broker-acl``); each is bound to the partition
:func:`isoperf.partition.partition_of` gives it. The consumers' queues are bound with the
topic filters of the kinds their handlers take, so a service's queue holds exactly what it
would subscribe to on Mosquitto. The layout is described in :mod:`isoperf.sources.amqp` and
docs/scaling.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from isoperf.messages import subscriptions
from isoperf.partition import partition_of
from isoperf.settings import ServiceSettings
from isoperf.sources import ConnectionLost
from isoperf.sources.amqp import connect_any, declare_routing, declare_service
from isoperf.tools.brokerconf import read_theatres
from isoperf.topics import Topics, check_id
from services.alerts.handler import AlertsHandler
from services.leakage.handler import LeakageHandler
from services.pk.handler import PkHandler
from services.recorder.handler import RecorderHandler

# The consumers and the kinds they take (their handlers' ``kinds``).
CONSUMERS: dict[str, tuple[str, ...]] = {
    "recorder": RecorderHandler.kinds,
    "leakage": LeakageHandler.kinds,
    "pk": PkHandler.kinds,
    "alerts": AlertsHandler.kinds,
}


def bindings(theatres: list[str], partitions: int) -> dict[str, int]:
    """Theatre -> partition."""
    return {t: partition_of(check_id(t, "theatre"), partitions) for t in theatres}


async def declare(settings: ServiceSettings, theatres: list[str]) -> dict[str, int]:
    """Declare everything (exchanges, queues, bindings) on the cluster; the theatres' partitions."""
    topics = Topics(settings.mqtt_root)
    bound = bindings(theatres, settings.amqp_partitions)
    async with connect_any(settings.amqp_url_list(), "isoperf-topology", settings.amqp_ca_file) as connection:
        channel = await connection.channel()
        await declare_routing(channel, topics.root, settings.amqp_partitions, bound)
        for service, kinds in CONSUMERS.items():
            await declare_service(channel, service, subscriptions(topics, kinds), settings.amqp_partitions)
    return bound


async def enrol(settings: ServiceSettings, theatre: str) -> int:
    """Bind one new theatre to its partition; its partition."""
    topics = Topics(settings.mqtt_root)
    bound = bindings([theatre], settings.amqp_partitions)
    async with connect_any(settings.amqp_url_list(), "isoperf-topology", settings.amqp_ca_file) as connection:
        channel = await connection.channel()
        await declare_routing(channel, topics.root, settings.amqp_partitions, bound)
    return bound[theatre]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tp = commands.add_parser("topology", help="declare the RabbitMQ cluster's exchanges, queues and bindings")
    sub = tp.add_subparsers(dest="action", required=True)
    dc = sub.add_parser("declare", help="declare everything for the theatres of a list (safe to run again)")
    dc.add_argument("--theatres", type=Path, default=Path("deploy/theatres.txt"), help="default: %(default)s")
    dc.set_defaults(run=_run_declare)
    en = sub.add_parser(
        "enrol", help="bind a new theatre to its partition (add it to the list too: broker-acl reads it)"
    )
    en.add_argument("theatre")
    en.add_argument("--theatres", type=Path, default=Path("deploy/theatres.txt"), help="appended to if absent")
    en.set_defaults(run=_run_enrol)


def _run_declare(args: argparse.Namespace) -> int:
    settings = ServiceSettings()
    try:
        bound = asyncio.run(declare(settings, read_theatres(args.theatres)))
    except (ConnectionLost, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"declared {settings.amqp_partitions} partitions, {len(bound)} theatres, {len(CONSUMERS)} consumers")
    for theatre, partition in sorted(bound.items()):
        print(f"  {theatre} -> partition {partition}")
    return 0


def _run_enrol(args: argparse.Namespace) -> int:
    settings = ServiceSettings()
    try:
        check_id(args.theatre, "theatre")
        partition = asyncio.run(enrol(settings, args.theatre))
    except (ConnectionLost, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    listed = read_theatres(args.theatres) if args.theatres.exists() else []
    if args.theatre not in listed:
        with args.theatres.open("a") as f:
            f.write(f"{args.theatre}\n")
    print(f"{args.theatre} -> partition {partition}; now run: isoperf broker-acl --out deploy/mosquitto/acl")
    return 0
