"""``isoperf health SERVICE``: exit 0 if the service is connected and working.

For container health checks, run with the service's own environment. On MQTT it reads
``{root}/status/{SERVICE}/{ISOPERF_INSTANCE}`` from the broker (the service publishes
``online`` once it is subscribed, and the broker publishes its ``offline`` last will if it
dies). On AMQP (a cluster: no retained messages, no last will) it reads the service's
heartbeat file in ``ISOPERF_HEALTH_DIR``, touched every ``ISOPERF_HEARTBEAT_S`` while it is
connected: healthy if touched within three heartbeats.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiomqtt

from isoperf.runtime import health_file
from isoperf.settings import ServiceSettings
from isoperf.sources.mqtt import tool_client
from isoperf.topics import Topics


async def status(settings: ServiceSettings, service: str, timeout_s: float = 5.0) -> str | None:
    topic = Topics(settings.mqtt_root).status(service, settings.instance)
    async with tool_client(settings) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    return bytes(message.payload).decode() if isinstance(message.payload, bytes | bytearray) else None
        except TimeoutError:
            return None
    return None


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ap = commands.add_parser(
        "health", help="exit 0 if a service's MQTT status is online (container health checks)", description=__doc__
    )
    ap.add_argument("service")
    ap.set_defaults(run=_health)


def heartbeat_age(settings: ServiceSettings, service: str) -> float | None:
    """Seconds since the service's last heartbeat (``None``: it never beat here)."""
    try:
        return time.time() - health_file(settings, service).stat().st_mtime
    except FileNotFoundError:
        return None


def _health(args: argparse.Namespace) -> int:
    settings = ServiceSettings()
    if settings.transport == "amqp":
        age = heartbeat_age(settings, args.service)
        if age is None or age > 3 * settings.heartbeat_s:
            print("no heartbeat" if age is None else f"last heartbeat {age:.0f} s ago", file=sys.stderr)
            return 1
        print("online")
        return 0
    try:
        got = asyncio.run(status(settings, args.service))
    except aiomqtt.MqttError as exc:
        print(f"unhealthy: broker: {exc}", file=sys.stderr)
        return 1
    print(got or "no status")
    return 0 if got == "online" else 1
