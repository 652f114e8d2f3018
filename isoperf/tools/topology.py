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
import logging
import sys
import time
import uuid
from pathlib import Path

from isoperf.backoff import Backoff, wait_or_stop
from isoperf.codec import encode
from isoperf.influx import InfluxClient, InfluxWriter
from isoperf.lifecycle import configure_logging, stop_on_signals
from isoperf.messages import subscriptions
from isoperf.partition import partition_of, read_theatres
from isoperf.points import alert_line
from isoperf.schemas import Alert
from isoperf.settings import ServiceSettings
from isoperf.sources import ConnectionLost
from isoperf.sources.amqp import (
    QUORUM,
    UNBOUND_QUEUE,
    connect_any,
    declare_routing,
    declare_service,
    routing_key,
    topic_of,
)
from isoperf.topics import TopicError, Topics, check_id
from services.alerts.handler import AlertsHandler
from services.leakage.handler import LeakageHandler
from services.pk.handler import PkHandler
from services.recorder.handler import RecorderHandler

log = logging.getLogger(__name__)

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
    bound = bindings(theatres, settings.partitions)
    async with connect_any(settings.amqp_url_list(), "isoperf-topology", settings.amqp_ca_file) as connection:
        channel = await connection.channel()
        await declare_routing(channel, topics.root, settings.partitions, bound)
        for service, kinds in CONSUMERS.items():
            await declare_service(channel, service, subscriptions(topics, kinds), settings.partitions)
    return bound


async def enrol(settings: ServiceSettings, theatre: str) -> int:
    """Bind one new theatre to its partition; its partition."""
    topics = Topics(settings.mqtt_root)
    bound = bindings([theatre], settings.partitions)
    async with connect_any(settings.amqp_url_list(), "isoperf-topology", settings.amqp_ca_file) as connection:
        channel = await connection.channel()
        await declare_routing(channel, topics.root, settings.partitions, bound)
    return bound[theatre]


NOT_ENROLLED = "not_enrolled"


async def watch(settings: ServiceSettings, stop: asyncio.Event) -> None:
    """Read what reached no theatre binding (``isoperf.unbound``): for each theatre, once, an alarm
    (rule ``not_enrolled``) published to the session and stored; the messages themselves were
    stored by the recorder's catch-all. Until ``stop``; reconnects with backoff."""
    import aio_pika
    import aiormq
    from aio_pika.abc import AbstractExchange, AbstractQueue

    topics = Topics(settings.mqtt_root)
    alarmed: set[str] = set()
    backoff = Backoff()
    async with InfluxClient(settings) as influx:
        writer = InfluxWriter(influx)
        while not stop.is_set():
            try:
                async with connect_any(settings.amqp_url_list(), "isoperf-unbound", settings.amqp_ca_file) as conn:
                    channel = await conn.channel(publisher_confirms=True)
                    queue = await channel.declare_queue(UNBOUND_QUEUE, durable=True, arguments=QUORUM)
                    exchange = await channel.get_exchange("amq.topic", ensure=False)
                    backoff.reset()
                    log.info("watching %s for theatres without a binding", UNBOUND_QUEUE)

                    async def consume(queue: AbstractQueue, exchange: AbstractExchange) -> None:
                        async with queue.iterator() as messages:
                            async for message in messages:
                                alarm = _unbound_alarm(topics, topic_of(message.routing_key or ""), alarmed)
                                if alarm is not None:
                                    key, alert = alarm
                                    writer.add([alert_line(*key, alert)])
                                    await writer.flush()
                                    body = aio_pika.Message(
                                        encode(alert), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                                    )
                                    await exchange.publish(body, routing_key(topics.session(*key, "alert")))
                                    log.warning("%s/%s: %s", *key, alert.message)
                                await message.ack()

                    consuming = asyncio.ensure_future(consume(queue, exchange))
                    stopping = asyncio.ensure_future(stop.wait())
                    done, _ = await asyncio.wait({consuming, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    for task in (consuming, stopping):
                        task.cancel()
                    await asyncio.gather(consuming, stopping, return_exceptions=True)  # closed before the channel
                    if consuming in done:
                        consuming.result()
            except (ConnectionLost, aiormq.exceptions.AMQPError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("unbound watch: %s; reconnecting in %.1f s", exc, delay)
                await wait_or_stop(stop, delay)


def _unbound_alarm(topics: Topics, topic: str, alarmed: set[str]) -> tuple[tuple[str, str], Alert] | None:
    try:
        parsed = topics.parse(topic)
    except TopicError:
        return None
    if parsed.theatre in alarmed or parsed.kind == "alert":
        return None
    alarmed.add(parsed.theatre)
    alert = Alert(
        t=time.time(),
        id=f"{NOT_ENROLLED}-{parsed.theatre}-{uuid.uuid4().hex[:8]}",
        rule=NOT_ENROLLED,
        severity="warning",
        status="firing",
        value=1.0,
        threshold=0.0,
        message=(
            f"theatre {parsed.theatre} publishes but is not enrolled: its data are stored, but no leakage, "
            f"pk or alerts are computed; enrol it with: isoperf topology enrol {parsed.theatre}"
        ),
        kind="new",
    )
    return (parsed.theatre, parsed.session), alert


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
    wa = sub.add_parser("watch", help="raise an alarm for each theatre that publishes without a binding")
    wa.set_defaults(run=_run_watch)


def _run_watch(args: argparse.Namespace) -> int:
    settings = ServiceSettings()
    configure_logging(settings.log_level)
    stop = asyncio.Event()

    async def run() -> None:
        stop_on_signals(stop)
        await watch(settings, stop)

    asyncio.run(run())
    return 0


def _run_declare(args: argparse.Namespace) -> int:
    settings = ServiceSettings()
    try:
        bound = asyncio.run(declare(settings, read_theatres(args.theatres)))
    except (ConnectionLost, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"declared {settings.partitions} partitions, {len(bound)} theatres, {len(CONSUMERS)} consumers")
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
