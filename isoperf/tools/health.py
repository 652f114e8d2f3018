"""``isoperf health SERVICE``: exit 0 if the service's retained MQTT status says ``online``.

For container health checks: run with the service's own environment, it reads
``{root}/status/{SERVICE}/{ISOPERF_INSTANCE}`` from the broker (the service
publishes ``online`` once it is subscribed, and the broker publishes its
``offline`` last will if it dies).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiomqtt

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


def _health(args: argparse.Namespace) -> int:
    try:
        got = asyncio.run(status(ServiceSettings(), args.service))
    except aiomqtt.MqttError as exc:
        print(f"unhealthy: broker: {exc}", file=sys.stderr)
        return 1
    print(got or "no status")
    return 0 if got == "online" else 1
