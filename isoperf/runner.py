"""Wiring shared by every consumer service's ``main``: settings, clients, lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from isoperf.influx import InfluxClient, InfluxError, InfluxWriter
from isoperf.lifecycle import configure_logging, stop_on_signals
from isoperf.mqtt import Handler, MqttLink, MqttService
from isoperf.settings import ServiceSettings
from isoperf.topics import Topics

log = logging.getLogger(__name__)

HandlerFactory = Callable[[ServiceSettings, Topics, MqttLink, InfluxClient, InfluxWriter], Handler]


async def run_consumer(service: str, settings: ServiceSettings, make_handler: HandlerFactory) -> None:
    """Run a consumer until SIGTERM/SIGINT: connect, handle, store, acknowledge; then drain and exit."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    topics = Topics(settings.mqtt_root)
    async with InfluxClient(settings) as influx:
        await _wait_for_influx(influx, settings.influx_url, stop)
        writer = InfluxWriter(influx)
        link = MqttLink()
        handler = make_handler(settings, topics, link, influx, writer)
        mqtt = MqttService(settings, service, handler=handler, link=link)
        log.info("%s starting (instance %s)", service, settings.instance)
        await mqtt.run(stop)
        close = getattr(handler, "aclose", None)
        if close is not None:
            await close()
        log.info(
            "%s stopped: %d messages handled, %d rejected (%s), %d lines stored, %d refused by InfluxDB",
            service,
            mqtt.handled,
            mqtt.deadletters.count,
            mqtt.deadletters.path,
            writer.written,
            writer.refused,
        )


async def _wait_for_influx(influx: InfluxClient, url: str, stop: asyncio.Event) -> None:
    delay = 0.5
    while not stop.is_set():
        if await influx.ping():
            try:
                await influx.create_database()
            except (InfluxError, aiohttp.ClientError) as exc:  # no admin rights: fine if it exists
                log.info("could not create database %s (%s); assuming it exists", influx.database, exc)
            return
        log.warning("InfluxDB at %s not answering; retrying in %.0f s", url, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


def main_for(service: str, make_handler: HandlerFactory, settings_cls: type[ServiceSettings] = ServiceSettings) -> None:
    settings = settings_cls()
    configure_logging(settings.log_level)
    asyncio.run(run_consumer(service, settings, make_handler))
