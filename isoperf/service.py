"""Wiring shared by every service's ``__main__``: settings, clients, the source, the lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from isoperf.backoff import Backoff, wait_or_stop
from isoperf.influx import InfluxClient, InfluxError, InfluxWriter
from isoperf.lifecycle import configure_logging, stop_on_signals
from isoperf.runtime import Handler, Link, ServiceLoop, status_topic
from isoperf.settings import ServiceSettings
from isoperf.sources import Source
from isoperf.sources.mqtt import MqttSource
from isoperf.topics import Topics

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)


@dataclass(frozen=True)
class Wiring:
    """What a handler may be built from: topics, a publisher, stored data, a writer."""

    topics: Topics
    link: Link
    influx: InfluxClient
    writer: InfluxWriter


def source_for(settings: ServiceSettings, service: str, *, announce: bool = True, persistent: bool = True) -> Source:
    """The broker connection of one service instance (a fixed client id; ``persistent``: the broker
    keeps what it has not acknowledged while it is away); ``announce``: its ``offline`` status is the
    connection's last will."""
    will = status_topic(settings, service) if announce else None
    return MqttSource(settings, f"isoperf-{service}-{settings.instance}", will, persistent=persistent)


def consumer_source_for(settings: ServiceSettings, service: str) -> Source:
    """A consumer's source: MQTT on Mosquitto, or AMQP on a RabbitMQ cluster (``ISOPERF_TRANSPORT``)."""
    if settings.transport == "amqp":
        from isoperf.sources.amqp import AmqpSource  # aio-pika only where the cluster is used

        return AmqpSource(settings, service)
    return source_for(settings, service)


async def run_consumer(service: str, settings: S, make_handler: Callable[[S, Wiring], Handler]) -> None:
    """Run a consumer until SIGTERM/SIGINT: connect, handle, store, acknowledge; then drain and exit."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with InfluxClient(settings) as influx:
        await _wait_for_influx(influx, influx.url, stop)
        writer = InfluxWriter(influx)
        link = Link()
        handler = make_handler(settings, Wiring(Topics(settings.mqtt_root), link, influx, writer))
        loop = ServiceLoop(settings, service, consumer_source_for(settings, service), handler=handler, link=link)
        log.info("%s starting (instance %s)", service, settings.instance)
        await loop.run(stop)
        log.info(
            "%s stopped: %d messages handled, %d rejected (%s), %d lines stored, %d refused by InfluxDB",
            service,
            loop.handled,
            loop.deadletters.count,
            loop.deadletters.path,
            writer.written,
            writer.refused,
        )


async def _wait_for_influx(influx: InfluxClient, url: str, stop: asyncio.Event) -> None:
    backoff = Backoff(0.5, 30.0)
    while not stop.is_set():
        if await influx.ping():
            try:
                await influx.create_database()
            except (InfluxError, aiohttp.ClientError) as exc:  # no admin rights: fine if it exists
                log.info("could not create database %s (%s); assuming it exists", influx.database, exc)
            return
        delay = backoff.next_delay()
        log.warning("InfluxDB at %s not answering; retrying in %.1f s", url, delay)
        await wait_or_stop(stop, delay)


def main_for(service: str, settings_cls: type[S], make_handler: Callable[[S, Wiring], Handler]) -> None:
    settings = settings_cls()
    configure_logging(settings.log_level)
    asyncio.run(run_consumer(service, settings, make_handler))
